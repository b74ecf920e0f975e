"""A long stream through a small budget: 50,000 generated tokens in a 512-token KV budget.

    .venv/bin/python bench/long_run.py [--tokens 50000] [--budget 512] [--policy a2sf]
                                       [--positions compact] [--threads 1]

Generates with pyrcedge.Llama.generate (sampling, fixed seed; end-of-generation tokens are fed
back so the stream never stops), reading RSS and time every `--every` tokens. Reports whether it
ran without error, RSS after warm-up (the first 10%), and decode tok/s of the first and last 10%
to docs/bench/long-run.md (and .json) with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

import pyrcedge  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--policy", default="a2sf")
    ap.add_argument("--positions", default="compact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "long-run"))
    a = ap.parse_args()

    proc = psutil.Process()
    llm = pyrcedge.Llama(str(model_path()), kv_budget=a.budget, policy=a.policy,
                         positions=a.positions, n_threads=a.threads, flash_attn=True, seed=1)
    prompt = llm.tokenize(b"Once upon a time, in a small village by the sea,")
    samples = []  # (generated, seconds since start, rss bytes, cells used)
    error = None
    t0 = time.perf_counter()
    n = 0
    try:
        for tok in llm.generate(prompt, temp=0.8, top_k=40, top_p=0.95):
            n += 1
            if n % a.every == 0:
                samples.append((n, time.perf_counter() - t0, proc.memory_info().rss,
                                llm.kv_stats().cells_used))
                print(f"{n} tokens, {samples[-1][1]:.0f} s, rss {samples[-1][2] / 2**20:.1f} MiB",
                      file=sys.stderr, flush=True)
            if n >= a.tokens:
                break
    except Exception as e:  # recorded: the benchmark's point is that there is none
        error = f"{type(e).__name__}: {e}"
    st = llm.kv_stats()

    tenth = max(1, len(samples) // 10)

    def rate(rows: list) -> float:
        (n0, s0, *_), (n1, s1, *_) = rows[0], rows[-1]
        return (n1 - n0) / (s1 - s0)

    first = rate(samples[: tenth + 1])
    last = rate(samples[-tenth - 1:])
    warm = [s[2] for s in samples[tenth:]]
    result = {
        "command": command(), "machine": machine(), "error": error, "generated": n,
        "budget_cells": st.budget_cells, "policy": a.policy, "positions": a.positions,
        "threads": a.threads, "evictions": st.evictions, "evicted_tokens": st.evicted_tokens,
        "cells_used_max": max(s[3] for s in samples),
        "rss_after_warmup_mib": {"min": min(warm) / 2**20, "max": max(warm) / 2**20,
                                 "spread": (max(warm) - min(warm)) / 2**20},
        "decode_tok_s_first_10pct": first, "decode_tok_s_last_10pct": last,
        "last_over_first": last / first,
        "samples": samples,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    r = result["rss_after_warmup_mib"]
    out.with_suffix(".md").write_text(f"""# Long run: {n} generated tokens in a {st.budget_cells}-token KV budget

Command: `{result['command']}`
Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; {a.threads} thread(s).

| measure | value |
|---|---|
| error | {error or 'none'} |
| generated tokens | {n} |
| policy / positions | {a.policy} / {a.positions} |
| evictions (events / tokens) | {st.evictions} / {st.evicted_tokens} |
| KV cells used, max | {result['cells_used_max']} of {st.budget_cells} |
| RSS after warm-up (first 10%) | {r['min']:.1f} to {r['max']:.1f} MiB (spread {r['spread']:.2f} MiB) |
| decode tok/s, first 10% | {first:.1f} |
| decode tok/s, last 10% | {last:.1f} |
| last / first | {last / first:.3f} |

Targets (issue: memory budget and eviction): no error; RSS after warm-up within a few MB;
last 10% within 10% of the first 10%. Raw samples (tokens, seconds, RSS, cells used) are in
long-run.json.
""")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
