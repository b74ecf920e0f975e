"""Benchmark worker: holds prefilled contexts of one environment and times decode steps on
request. Uses llama_cpp alone (pyrcedge.scoring only when scoring is on), so the same file runs
in the stock and the patched environment. Protocol: one JSON command per stdin line, one JSON
reply per stdout line.

  {"op": "prefill", "n": 1024}   -> {"ok": true, "seconds": ...}  (on every core: only decode is
     timed, with the threads given)
  {"op": "decode", "n": 1024, "steps": 32} -> {"tok_s": ..., "cpu_tok_s": ...}  (wall and CPU
     clock; then the steps are removed again)
"""

from __future__ import annotations

import json
import os
import sys
import time

import llama_cpp


def main() -> None:
    model_path, flash, scoring_mode, threads = sys.argv[1], sys.argv[2] == "on", sys.argv[3], int(sys.argv[4])
    quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(quiet, None)
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    text = open(sys.argv[5], "rb").read()
    buf = (llama_cpp.llama_token * (len(text) + 16))()
    n_tok = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), True, False)
    tokens = list(buf[:n_tok])
    contexts: dict[int, object] = {}

    def decode(ctx, toks) -> None:
        arr = (llama_cpp.llama_token * len(toks))(*toks)
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(toks)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    for line in sys.stdin:
        cmd = json.loads(line)
        n = cmd["n"]
        if cmd["op"] == "prefill":
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n + 256
            params.n_batch = params.n_ubatch = 512
            params.n_threads = threads                      # the timed decode steps
            params.n_threads_batch = max(threads, os.cpu_count() or 1)  # the prompt: not timed
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            params.no_perf = True
            ctx = llama_cpp.llama_init_from_model(model, params)
            if scoring_mode in ("on", "a2sf"):
                from pyrcedge import scoring

                scoring.enable_scoring(ctx, 0.5)
                if scoring_mode == "a2sf":      # the statistics an A2SF policy reads, alone
                    scoring.set_moments(ctx, False)
            t0 = time.perf_counter()
            for i in range(0, n, 512):
                decode(ctx, tokens[i:min(n, i + 512)])
            contexts[n] = ctx
            reply = {"ok": True, "seconds": time.perf_counter() - t0}
        else:
            ctx = contexts[n]
            steps = cmd["steps"]
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(steps):
                decode(ctx, [tokens[n + i]])
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            mem = llama_cpp.llama_get_memory(ctx)
            llama_cpp.llama_memory_seq_rm(mem, 0, n, -1)  # back to the prefilled state
            reply = {"tok_s": steps / dt, "cpu_tok_s": steps / cpu}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
