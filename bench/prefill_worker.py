"""Benchmark worker: times prompt reading (prefill) in one environment. Uses llama_cpp alone
(pyrcedge.scoring only when scoring is on: "on" every query, "window" the query window that
pyrcedge.Llama uses with A2SF, "a2sf" that window and a2sf alone without the logit moments, as
pyrcedge.Llama ran an A2SF policy before the ninth session, "read" that and decay only for the
calls with at least the window's tokens after them, as it runs it on GPUs, "default" a2sf alone
with pyrcedge.Llama's default A2SF, alpha 0.3, and its window), so the same file runs in the stock
and the patched environment. Protocol: one JSON command per stdin line, one JSON reply per stdout line.

  {"n": 2048, "threads": 2, "flash": true, "type_k": "f16"} -> {"seconds": ..., "tok_s": ..., "cpu_s": ...}

cpu_s is the process's CPU time over the prefill (all its threads, spin-waits included).

A context is made once per (n, flash, type_k) and kept; each command clears its memory and reads
the first n tokens of the text in ubatches of 512, timed.
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp

GGML_TYPES = {"f16": 1, "q8_0": 8}


def main() -> None:
    model_path, scoring_mode, text_path = sys.argv[1], sys.argv[2], sys.argv[3]
    quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
    llama_cpp.llama_log_set(quiet, None)
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    text = open(text_path, "rb").read()
    buf = (llama_cpp.llama_token * (len(text) + 16))()
    n_tok = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), True, False)
    tokens = list(buf[:n_tok])
    contexts: dict[tuple[int, bool, str], object] = {}

    for line in sys.stdin:
        cmd = json.loads(line)
        n, flash, type_k, threads = cmd["n"], bool(cmd["flash"]), cmd["type_k"], cmd["threads"]
        if n > len(tokens):
            raise SystemExit(f"the text has {len(tokens)} tokens, {n} asked")
        key = (n, flash, type_k)
        if key not in contexts:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n
            params.n_batch = params.n_ubatch = 512
            params.type_k = GGML_TYPES[type_k]
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
            params.no_perf = True
            ctx = llama_cpp.llama_init_from_model(model, params)
            if not ctx:
                raise SystemExit(f"no context for {key}")
            if scoring_mode in ("on", "window", "a2sf", "read", "default"):
                from pyrcedge import scoring
                from pyrcedge.cache.policies import A2SF

                # alpha 0.9 (a 64-query window), or pyrcedge.Llama's default A2SF (alpha 0.3)
                policy = A2SF() if scoring_mode == "default" else A2SF(alpha=0.9)
                scoring.enable_scoring(ctx, policy.alpha)
                if scoring_mode != "on":     # the query window that pyrcedge.Llama sets for A2SF
                    scoring.set_query_window(ctx, policy.prefill_window())
                if scoring_mode in ("a2sf", "read", "default"):   # and a2sf alone (A2SF.reads_moments)
                    scoring.set_moments(ctx, False)
            contexts[key] = ctx
        ctx = contexts[key]
        llama_cpp.llama_set_n_threads(ctx, threads, threads)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, 512):
            part = tokens[i:min(n, i + 512)]
            if scoring_mode == "read":      # as Llama._unread_chunk chooses
                from pyrcedge import scoring

                scoring.set_decay_only(ctx, n - (i + len(part)) >= 64)
            arr = (llama_cpp.llama_token * len(part))(*part)
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(part)))
            if rc != 0:
                raise SystemExit(f"llama_decode returned {rc}")
        llama_cpp.llama_synchronize(ctx)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": dt, "tok_s": n / dt, "cpu_s": cpu}), flush=True)


if __name__ == "__main__":
    main()
