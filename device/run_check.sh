#!/usr/bin/env bash
# On the GPU machine: builds the trimmed, patched llama.cpp with CUDA (once; the build folder is
# reused while the machine stays warm), then runs device/rcedge_gpu_check.cpp on the small model.
#   device/run_check.sh MODEL.gguf [check args...]      (logs and results under $OUT)
#   RCEDGE_PROGRAM=rcedge_gpu_session device/run_check.sh MODEL.gguf   (saved sessions)
set -euo pipefail
OUT=${OUT:-/tmp/rcedge-out}
mkdir -p "$OUT"
B=${RCEDGE_BUILD:-$PWD/build/device}
mkdir -p "$B/src" "$B/lib"
if [ ! -f "$B/src/pyrcedge/CMakeLists.txt" ]; then
    tar xzf device/llama-cuda-src.tar.gz -C "$B/src"
fi
t0=$(date +%s)
cmake -S "$B/src/pyrcedge" -B "$B/cuda" -Wno-dev --log-level=WARNING \
    -DPYRCEDGE_LLAMA_SOURCE_DIR="$B/src/pyrcedge/llama.cpp" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA_ALL_QUANTS=OFF >> "$OUT/build.log" 2>&1
cmake --build "$B/cuda" --target llama -j16 >> "$OUT/build.log" 2>&1
t1=$(date +%s)
echo "build (configure + compile): $((t1 - t0)) s" | tee -a "$OUT/build-time.txt"
find "$B/cuda" -name 'lib*.so*' -exec cp -P {} "$B/lib/" \;
S=$B/src/pyrcedge
for prog in rcedge_gpu_check rcedge_gpu_session; do
    g++ -O2 -std=c++17 -I"$S/llama.cpp/include" -I"$S/llama.cpp/ggml/include" -I"$S/native/include" \
        device/$prog.cpp -L"$B/lib" -lllama -lggml -lggml-base -Wl,-rpath,"$B/lib" -o "$B/$prog"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
prog=${RCEDGE_PROGRAM:-rcedge_gpu_check}     # rcedge_gpu_session: the saved-session check
"$B/$prog" "$@" 2>&1 | tee "$OUT/$prog.log"
