#!/usr/bin/env bash
# On the GPU machine: builds the trimmed, patched llama.cpp with CUDA (the build folder under
# RCEDGE_BUILD is reused while the machine stays warm: only the files that changed are rebuilt),
# checks the GPU statistics (device-fused kernels and portable graph ops) against the CPU kernels on
# the exact model when it is there, writes the random-weight models of the four shapes of issue 18
# (docs/bench/gpu-cost.md) and times them with device/rcedge_gpu_bench.cpp.
#   device/run_bench.sh [SHAPE...]     SHAPE: smollm2-135m qwen2.5-0.5b llama-3.2-1b llama-3-8b
#                                      (default: all four); results and logs under $OUT
#   RCEDGE_BENCH_REPS=3 (decode samples)  RCEDGE_BENCH_PREFILL_REPS=9  RCEDGE_BENCH_PROMPTS=256,1024,4000
#   RCEDGE_BENCH_WINDOW=64
#   RCEDGE_CHECK_MODEL=device/tiny-llama-exact.gguf (skipped when missing or RCEDGE_CHECK=0): against
#                                      the CPU kernels; and on the smallest shape run, the device-fused
#                                      kernels against the graph ops in ubatches of 512
#   RCEDGE_PREFILL_PROFILE="SHAPE..."   where those shapes' 4000-token prefill goes, node by node
#   RCEDGE_BENCH_GRAPH_OPS="SHAPE..."   those shapes timed once more with the portable graph ops
#                                      (LLAMA_RCEDGE_DEVICE_FUSED=0)
#   RCEDGE_BUILD_ONLY=1                 build (libllama, rcedge_gpu_bench, rcedge_gpu_check and the
#                                      tracing rcedge_gpu_trace) and stop
set -uo pipefail
OUT=${OUT:-/tmp/rcedge-out}
mkdir -p "$OUT"
B=${RCEDGE_BUILD:-$PWD/build/device}
MODELS=${RCEDGE_MODELS:-/tmp/rcedge-models}
mkdir -p "$B/src" "$B/lib" "$MODELS"
LOG=$OUT/gpu-cost.log
# the tarball's files over the source folder, rewriting only those that differ (make then rebuilds
# only what depends on them)
stage=$(mktemp -d)
tar xzf device/llama-cuda-src.tar.gz -C "$stage"
(cd "$stage" && find . -type f) | while read -r f; do
    cmp -s "$stage/$f" "$B/src/$f" || { mkdir -p "$(dirname "$B/src/$f")"; cp "$stage/$f" "$B/src/$f"; }
done
rm -rf "$stage"
t0=$(date +%s)
cmake -S "$B/src/pyrcedge" -B "$B/cuda" -Wno-dev --log-level=WARNING \
    -DPYRCEDGE_LLAMA_SOURCE_DIR="$B/src/pyrcedge/llama.cpp" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA_ALL_QUANTS=OFF >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cmake --build "$B/cuda" --target llama -j"$(nproc)" >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
t1=$(date +%s)
echo "build (configure + compile): $((t1 - t0)) s" | tee -a "$LOG"
find "$B/cuda" -name 'lib*.so*' -exec cp -P {} "$B/lib/" \;
S=$B/src/pyrcedge
for prog in rcedge_gpu_bench rcedge_gpu_check; do
    g++ -O2 -std=c++17 -I"$S/llama.cpp/include" -I"$S/llama.cpp/ggml/include" -I"$S/native/include" \
        device/$prog.cpp -L"$B/lib" -lllama -lggml -lggml-base -Wl,-rpath,"$B/lib" -o "$B/$prog" || exit 1
done
# the bench with the host-side tracer (prefill-trace): its ggml-backend calls timed on the way
g++ -O2 -std=c++17 -DRCEDGE_TRACE -rdynamic -I"$S/llama.cpp/include" -I"$S/llama.cpp/ggml/include" -I"$S/native/include" \
    device/rcedge_gpu_bench.cpp -L"$B/lib" -lllama -lggml -lggml-base -ldl -Wl,-rpath,"$B/lib" -o "$B/rcedge_gpu_trace" || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; } | tee -a "$LOG"
[ "${RCEDGE_BUILD_ONLY:-0}" = 1 ] && exit 0

CHECK_MODEL=${RCEDGE_CHECK_MODEL:-device/tiny-llama-exact.gguf}
if [ "${RCEDGE_CHECK:-1}" != 0 ] && [ -f "$CHECK_MODEL" ]; then
    # the portable path (flash and soft_max contexts, alpha 0.9 / 0 / 0.5 / 1) against the CPU kernels
    # (n_prompt n_decode rtol n_layer_checked n_ubatch)
    for args in "300 20 1e-3 1 128" "900 60 1e-3 1 128" "900 60 1e-3 1 512"; do
        echo "== rcedge_gpu_check $CHECK_MODEL $args" | tee -a "$LOG"
        RCEDGE_CHECK_NO_TIMING=1 timeout 120 "$B/rcedge_gpu_check" "$CHECK_MODEL" $args 2>&1 | tee -a "$LOG"
    done
fi
checked_shape=0

# name n_layer n_embd n_head n_head_kv n_ff n_vocab
shape() {
    case $1 in
        smollm2-135m) echo 30 576 9 3 1536 49152 ;;
        qwen2.5-0.5b) echo 24 896 14 2 4864 151936 ;;
        llama-3.2-1b) echo 16 2048 32 8 8192 128256 ;;
        llama-3-8b)   echo 32 4096 32 8 14336 128256 ;;
        *) return 1 ;;
    esac
}
[ $# -gt 0 ] || set -- smollm2-135m qwen2.5-0.5b llama-3.2-1b llama-3-8b
for name in "$@"; do
    dims=$(shape "$name") || { echo "unknown shape $name"; continue; }
    m=$MODELS/$name.gguf
    if [ ! -f "$m" ]; then
        t0=$(date +%s)
        "$B/rcedge_gpu_bench" make "$m" $dims | tee -a "$LOG"
        echo "written in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
    fi
    if [ "${RCEDGE_CHECK:-1}" != 0 ] && [ $checked_shape = 0 ]; then
        # the bench's own shape, every layer: device-fused kernels against the graph ops, ubatches
        # of 512 (the row kernel's warp-per-row case and the split statistics kernel)
        echo "== RCEDGE_CHECK_GPU_ONLY=1 rcedge_gpu_check $m 1000 20 1e-3 1000 512" | tee -a "$LOG"
        RCEDGE_CHECK_GPU_ONLY=1 RCEDGE_CHECK_NO_TIMING=1 timeout 120 "$B/rcedge_gpu_check" "$m" 1000 20 1e-3 1000 512 2>&1 | tee -a "$LOG"
        # the same with ggml-cuda's op fusion off: do the logits then repeat bit for bit?
        echo "== GGML_CUDA_DISABLE_FUSION=1 RCEDGE_CHECK_GPU_ONLY=1 rcedge_gpu_check $m 1000 20 1e-3 1000 512" | tee -a "$LOG"
        GGML_CUDA_DISABLE_FUSION=1 RCEDGE_CHECK_GPU_ONLY=1 RCEDGE_CHECK_NO_TIMING=1 timeout 120 "$B/rcedge_gpu_check" "$m" 1000 20 1e-3 1000 512 2>&1 | grep -v "^  after" | tee -a "$LOG"
        checked_shape=1
    fi
    case " ${RCEDGE_PREFILL_PROFILE:-} " in
        *" $name "*) "$B/rcedge_gpu_bench" prefill-profile "$m" 4000 "${RCEDGE_BENCH_WINDOW:-64}" 2>&1 | tee -a "$LOG" ;;
    esac
    t0=$(date +%s)
    "$B/rcedge_gpu_bench" run "$m" "$name" "${RCEDGE_BENCH_REPS:-3}" "${RCEDGE_BENCH_PROMPTS:-256,1024,4000}" \
        "${RCEDGE_BENCH_WINDOW:-64}" 2>&1 | tee -a "$LOG"
    echo "$name: bench took $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
    case " ${RCEDGE_BENCH_GRAPH_OPS:-} " in
        *" $name "*)
            t0=$(date +%s)
            LLAMA_RCEDGE_DEVICE_FUSED=0 "$B/rcedge_gpu_bench" run "$m" "$name" "${RCEDGE_BENCH_REPS:-3}" \
                "${RCEDGE_BENCH_PROMPTS:-256,1024,4000}" "${RCEDGE_BENCH_WINDOW:-64}" 2>&1 | tee -a "$LOG"
            echo "$name (graph ops): bench took $(( $(date +%s) - t0 )) s" | tee -a "$LOG" ;;
    esac
done
