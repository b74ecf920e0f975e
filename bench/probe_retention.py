"""Probe settings side by side on SQuAD: how much of each answer (and of the sentence holding it)
is still cached when the answer is generated, and the answer's F1, in one process
(docs/bench/probe-retention.md).

    .venv/bin/python bench/probe_retention.py [--model qwen2.5-coder-0.5b] [--n 20]
        [--share 25%] [--dataset squad] VARIANT...

VARIANT: full (the whole context cached), off (a2sf without the probe), tail (the default
probe) or a JSON object of pyrcedge.Probe fields ('{"refill":0.5}'), optionally prefixed
by POLICY: ("window:tail"). Each question is read and answered as `pyrcedge eval qa` does it
(the chat template, greedy answers of at most 32 tokens, a budget that is a share of the
context's tokens); the answer is located in the prompt by its first occurrence in the
context. Retention is measured on the cache after the answer: "answer" is the share of
the answer's tokens cached, "whole" the share of questions whose answer is entirely cached,
"sentence" the share of the answer sentence's tokens cached.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

from pyrcedge import Llama, Probe  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402
from pyrcedge.cache.budget import Budget  # noqa: E402
from pyrcedge.evaluation.cli import tokenizer  # noqa: E402
from pyrcedge.evaluation.qa import (answer, f1_score, hotpotqa_examples,  # noqa: E402
                                    squad_examples)
from pyrcedge.llama.settings import min_evicting_budget  # noqa: E402


def parse_variant(v: str) -> tuple[str, object]:
    policy, _, spec = v.rpartition(":") if not v.startswith("{") else ("", "", v)
    policy = policy or "a2sf"
    if spec == "full":
        return "full", None
    if spec == "off":
        return policy, None
    if spec.startswith("{"):
        return policy, Probe(**{"fit": True, **json.loads(spec)})
    return policy, spec


def locate(text: str, context: str, answers: tuple[str, ...]) -> tuple[int, int] | None:
    """(start, end) characters of the answer's first occurrence in the prompt's context, or
    None."""
    c0 = text.find(context[:200])
    if c0 < 0:
        return None
    for a in answers:
        k = context.find(a)
        if k >= 0:
            return c0 + k, c0 + k + len(a)
    return None


def sentence_span(text: str, start: int, end: int) -> tuple[int, int]:
    lo = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start))
    m = re.search(r"\.(\s|$)|\n", text[end:])
    hi = end + (m.start() + 1 if m else len(text) - end)
    return lo + 1, hi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dataset", default="squad", choices=("squad", "hotpotqa"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--share", default="25%")
    ap.add_argument("--context-chars", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args()
    if a.dataset == "squad":
        examples = squad_examples(a.n, a.context_chars)
    else:
        examples = hotpotqa_examples(a.n)
    share = Budget.parse(a.share)
    path = str(model_path(a.model))
    tok = tokenizer(a.model)
    rows: dict[str, list[dict]] = {}
    for v in a.variants:
        policy, spec = parse_variant(v)
        out, t0 = [], time.time()
        for ex in examples:
            n_ctx = len(tok.tokenize(ex.context.encode(), False, False))
            cells = n_ctx + 320 if policy == "full" else share.of(n_ctx, min_evicting_budget()).value
            kw = {"kv_budget": cells, "policy": policy, "probe": spec}   # full: probe a no-op
            read_end: list[np.ndarray] = []

            def progress(done: int, total: int) -> None:
                if total > 1 and done == total and not read_end:
                    read_end.append(llm.kv_cache.cached.copy())

            llm = Llama(path, n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True,
                        seed=0, verbose=False, on_progress=progress, **kw)
            t = time.perf_counter()
            pred = answer(llm, ex.context, ex.question, 32)
            secs = time.perf_counter() - t
            hist = [int(x) for x in llm.input_ids[: llm.n_tokens]]
            text, offs = llm.token_offsets(hist)
            _, cached = llm.kv_cache.cached_cells()
            kept = np.zeros(len(hist), bool)
            kept[cached] = True
            kept_read = np.zeros(len(hist), bool)
            kept_read[read_end[0] if read_end else cached] = True
            span = locate(text, ex.context, ex.answers)
            row = {"id": ex.id, "f1": f1_score(pred, ex.answers), "pred": pred, "seconds": secs,
                   "passes": llm.kv_stats().probe_passes, "cells": cells}
            if span is not None:
                for name, (lo, hi) in (("answer", span), ("sentence", sentence_span(text, *span))):
                    toks = np.nonzero((offs[1:] > lo) & (offs[:-1] < hi))[0]
                    row[name] = float(kept[toks].mean()) if len(toks) else None
                    row[name + "_read"] = float(kept_read[toks].mean()) if len(toks) else None
            out.append(row)
            llm.close()
        rows[v] = out
        found = [r for r in out if r.get("answer") is not None]
        print(f"{v}: F1 {statistics.mean(r['f1'] for r in out):.3f} answer "
              f"{statistics.mean(r['answer'] for r in found):.3f} (read "
              f"{statistics.mean(r['answer_read'] for r in found):.3f}) whole "
              f"{statistics.mean(r['answer'] == 1.0 for r in found):.3f} sentence "
              f"{statistics.mean(r['sentence'] for r in found):.3f} (located {len(found)}) "
              f"passes {sum(r['passes'] for r in out)} read+answer s median "
              f"{statistics.median(r['seconds'] for r in out):.2f} wall {time.time() - t0:.0f}s",
              flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"command": command(), "machine": machine(),
                                           "args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
