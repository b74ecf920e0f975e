"""Saved sessions: what the re-layout on save buys, what saving and restoring cost, file size.

A Llama reads a text through a small budget (it evicts), saves a session file, and continues
token by token; a second Llama (a fresh context) loads the file and continues with the same
tokens. The largest logit difference between them is measured with the saver's cache re-laid
out as a restore lays it out (what save_session does) and without (the bare captured state).
Writes docs/bench/session.{md,json}.

    .venv/bin/python bench/session_cost.py [--budget 64] [--flash off]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import pyrcedge  # noqa: E402
from pyrcedge import session  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402

from common import command, machine  # noqa: E402

TEXT = b"The quick brown fox jumps over the lazy dog. " * 12
CONTINUATION = b" Once upon a time there was a princess who lived in a castle by the sea and" * 6


def make(args: argparse.Namespace) -> pyrcedge.Llama:
    return pyrcedge.Llama(str(model_path()), kv_budget=args.budget, policy=args.policy,
                          n_threads=2, n_threads_batch=2, flash_attn=args.flash == "on", seed=0)


def continue_logits(llm: pyrcedge.Llama) -> np.ndarray:
    out = []
    for t in llm.tokenize(CONTINUATION, add_bos=False):
        llm.eval([t])
        out.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
    return np.stack(out)


def difference(args: argparse.Namespace, relayout: bool, path: Path) -> tuple[float, int]:
    saver = make(args)
    saver.eval(saver.tokenize(TEXT))
    if relayout:
        saver.save_session(path)
    else:
        session.write_atomic(path, session.encode(session.capture(saver)))
    a = continue_logits(saver)
    loader = make(args)
    loader.load_session(path)
    b = continue_logits(loader)
    saver.close()
    loader.close()
    return float(np.abs(a - b).max()), len(a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--policy", default="a2sf")
    ap.add_argument("--flash", choices=("on", "off"), default="off")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.pyrcedge"
        with_relayout, steps = difference(args, True, path)
        without, _ = difference(args, False, path)
        llm = make(args)
        llm.eval(llm.tokenize(TEXT))
        save_ms, load_ms = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            state = llm.save_state()
            save_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            llm.load_state(state)
            load_ms.append((time.perf_counter() - t) * 1000)
        llm.save_session(path)
        size = path.stat().st_size
        kv = llm.kv_stats()
        llm.close()

    record = {"command": command(), "machine": machine(), "budget_cells": args.budget,
              "policy": args.policy, "flash_attn": args.flash, "history_tokens": kv.history_tokens,
              "evictions": kv.evictions, "steps": steps,
              "max_logit_difference": {"with_relayout": with_relayout, "without": without},
              "save_state_ms_median": round(statistics.median(save_ms), 1),
              "load_state_ms_median": round(statistics.median(load_ms), 1),
              "file_bytes": size, "kv_allocated_bytes": kv.allocated_bytes,
              "statistics_bytes": kv.statistics_bytes}
    out = REPO / "docs" / "bench" / "session"
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    out.with_suffix(".md").write_text(f"""# Saved sessions: re-layout, cost, size

Command: `{record['command']}`

Machine: {m['cpu']}, {m['cores']} cores. Model: the default (SmolLM2-135M Q4_1), policy
{args.policy}, {args.budget}-cell budget, flash attention {args.flash}; the text leaves
{kv.history_tokens} tokens of history after {kv.evictions} evictions.

| | result |
|---|---|
| max logit difference, saver vs a fresh context that loaded its file, over {steps} steps: saver re-laid out (save_session) | {with_relayout:.3g} |
| the same without the re-layout (the bare captured state) | {without:.3g} |
| save_state (capture and re-layout), median of {args.repeats} | {record['save_state_ms_median']} ms |
| load_state (snapshot and restore), median of {args.repeats} | {record['load_state_ms_median']} ms |
| session file | {size / 1e6:.2f} MB (KV cache allocated: {kv.allocated_bytes / 1e6:.2f} MB, statistics {kv.statistics_bytes / 1e6:.2f} MB) |
""")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
