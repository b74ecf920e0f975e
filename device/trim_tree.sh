#!/usr/bin/env bash
# Packs what a CUDA build of libllama + ggml (CPU and CUDA backends) + pyrcedge's sources needs,
# from the patched llama.cpp tree that native/build.py prepared, into device/llama-cuda-src.tar.gz.
#   device/trim_tree.sh PATCHED_LLAMA_CPP_TREE
set -euo pipefail
src=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/device/llama-cuda-src.tar.gz"
stage=$(mktemp -d)
mkdir -p "$stage/pyrcedge/llama.cpp/ggml/src"
cp "$repo/CMakeLists.txt" "$stage/pyrcedge/"
cp -r "$repo/native" "$stage/pyrcedge/"
rm -rf "$stage/pyrcedge/native/patches"  # already applied to the tree
cd "$src"
cp -r CMakeLists.txt cmake include src LICENSE "$stage/pyrcedge/llama.cpp/"
cp -r ggml/CMakeLists.txt ggml/cmake ggml/include "$stage/pyrcedge/llama.cpp/ggml/"
# ggml/src: its own files, the CPU backend and the CUDA backend only
find ggml/src -maxdepth 1 -type f -exec cp {} "$stage/pyrcedge/llama.cpp/ggml/src/" \;
cp -r ggml/src/ggml-cpu ggml/src/ggml-cuda "$stage/pyrcedge/llama.cpp/ggml/src/"
mkdir -p "$stage/pyrcedge/llama.cpp/vendor" && cp -r vendor/* "$stage/pyrcedge/llama.cpp/vendor/" && rm -rf "$stage/pyrcedge/llama.cpp/vendor/cpp-httplib"  # configured unconditionally but for httplib
tar czf "$out" -C "$stage" pyrcedge
rm -rf "$stage"
ls -l "$out"
