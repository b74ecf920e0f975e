"""What one decode call costs per token by batch size (stock llama-cpp-python or the patched
one, whichever venv runs it): a 256-token prefix is read, then batches of n tokens are decoded
after it and removed again, 5 times each, median. Why a probed read's small chunks and the
probe's 24-token decodes cost more per token than a plain read's (docs/RESULTS.md, the tenth
session's probe cost).

    .venv-stock/bin/python bench/batch_sizes.py [--model qwen2.5-coder-0.5b] [--threads 1]
        [--flash 1] [--out batch-sizes-qwen]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parent.parent
FILES = {"qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
         "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}
SIZES = (1, 8, 16, 24, 32, 48, 64, 128)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", choices=sorted(FILES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flash", type=int, default=1)
    ap.add_argument("--out", default="batch-sizes")
    a = ap.parse_args()
    llm = llama_cpp.Llama(str(REPO / "models" / "files" / FILES[a.model]), n_ctx=2048,
                          n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                          flash_attn=bool(a.flash), verbose=False)
    toks = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 200)[:512]
    mem = llama_cpp.llama_get_memory(llm.ctx)
    batch = llm._batch
    batch.set_batch(toks[:256], n_past=0, logits_all=False)
    llm._ctx.decode(batch)
    lines = [f"# Decode cost by batch size: {a.model}", "",
             f"Command: `{shlex.join(['.venv-stock/bin/python'] + sys.argv)}`  ",
             f"{a.threads} thread(s), flash attention {'on' if a.flash else 'off'}, after 256 "
             "cached tokens; median of 5.", "", "| tokens | ms | ms / token |", "|---|---|---|"]
    for n in SIZES:
        times = []
        for _ in range(5):
            batch.set_batch(toks[256:256 + n], n_past=256, logits_all=False)
            t0 = time.perf_counter()
            llm._ctx.decode(batch)
            times.append(time.perf_counter() - t0)
            llama_cpp.llama_memory_seq_rm(mem, 0, 256, -1)
        t = statistics.median(times) * 1000
        lines.append(f"| {n} | {t:.1f} | {t / n:.2f} |")
    (REPO / "docs" / "bench" / f"{a.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
