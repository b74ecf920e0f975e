"""One side of `pyrcedge bench speed`: a multi-turn chat, timed (runs in either environment).

Run as a script by pyrcedge.evaluation.speed: `python speed_worker.py < job.json`, in .venv for
pyrcedge.Llama or in the stock llama-cpp-python environment for llama_cpp.Llama (this file
imports pyrcedge only for the former). Every turn sends the next user message with the whole
conversation through create_chat_completion (greedy, end-of-generation tokens banned so each
reply is exactly `decode` tokens), until the history holds `target_tokens`. Every eval call is
timed: those before a turn's first token are prefill, the rest decode. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import tempfile
import time
from typing import Any


def kv_mib_from_log(log: str) -> float | None:
    """K + V MiB from llama.cpp's own log line 'llama_kv_cache: size = ... K (f16): X MiB, V
    (f16): Y MiB'."""
    m = re.search(r"K \([^)]*\):\s*([\d.]+) MiB, V \([^)]*\):\s*([\d.]+) MiB", log)
    return float(m.group(1)) + float(m.group(2)) if m else None


def peak_rss_bytes() -> int:
    """VmHWM of this process (getrusage's ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load(job: dict[str, Any]) -> tuple[Any, str]:
    """The model, with llama.cpp's load log (fd 2 captured while it loads)."""
    common = dict(n_threads=job["threads"], n_threads_batch=job["threads"], flash_attn=True,
                  seed=0, verbose=True)
    with tempfile.TemporaryFile(mode="w+b") as f:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(f.fileno(), 2)
        try:
            if job["variant"] == "stock":
                import llama_cpp

                llm = llama_cpp.Llama(job["model"], n_ctx=job["n_ctx"], **common)
            else:
                from pyrcedge.llama import Llama

                llm = Llama(job["model"], kv_budget=job["budget"], policy=job["policy"],
                            recall=job["recall"], **common)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        log = f.read().decode("utf-8", errors="replace")
    llm.verbose = False
    return llm, log


def main() -> None:
    import llama_cpp

    job = json.loads(sys.stdin.read())
    llm, log = load(job)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ban = {t: -1e9 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    phase = ["prefill"]
    calls: list[tuple[str, int, float]] = []
    inner = llm.eval

    def timed_eval(tokens: Any) -> None:
        t = time.perf_counter()
        inner(tokens)
        calls.append((phase[0], len(tokens), time.perf_counter() - t))

    llm.eval = timed_eval
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    turns = []
    t_start = time.perf_counter()
    for text in job["turns"]:
        if llm.n_tokens >= job["target_tokens"]:
            break
        messages.append({"role": "user", "content": text})
        phase[0] = "prefill"
        first = len(calls)
        reply = []
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=job["decode"],
                                                temperature=0.0, logit_bias=ban, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta is not None:
                phase[0] = "decode"
                reply.append(delta)
        messages.append({"role": "assistant", "content": "".join(reply)})
        mine = calls[first:]
        pre = [(n, s) for p, n, s in mine if p == "prefill"]
        dec = [(n, s) for p, n, s in mine if p == "decode"]
        turns.append({"history": llm.n_tokens, "prefill_tokens": sum(n for n, _ in pre),
                      "prefill_s": sum(s for _, s in pre), "decode_tokens": sum(n for n, _ in dec),
                      "decode_s": sum(s for _, s in dec)})
        print(f"{job['variant']}: turn {len(turns)}, history {llm.n_tokens} tokens", file=sys.stderr,
              flush=True)
    wall = time.perf_counter() - t_start
    out = {"variant": job["variant"], "turns": turns, "wall_s": wall,
           "peak_rss_bytes": peak_rss_bytes(),
           "kv_mib_llama_log": kv_mib_from_log(log), "history_tokens": llm.n_tokens,
           "n_ctx": llm.n_ctx()}
    if job["variant"] != "stock":
        st = llm.kv_stats()
        out.update(kv_allocated_bytes=st.allocated_bytes, statistics_bytes=st.statistics_bytes,
                   evictions=st.evictions, evicted_tokens=st.evicted_tokens,
                   cells_used_end=st.cells_used, recalls=st.recalls,
                   recalled_tokens=st.recalled_tokens)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
