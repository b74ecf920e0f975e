"""Where a probed read's time goes: the process's CPU time in each kind of llama_decode (the
document's chunks, the probe's decodes, recall's reads) and in the kept-query passes, for
needle prompts read by each cache in turn (one process, one thread).

    .venv/bin/python bench/probe_profile.py [--model smollm2-135m] [--n 4] [--share 25%]
        [CACHE ...]    (default: a2sf default)

CACHE as bench/common.py's cache_options names it. Prints one table per cache: CPU seconds
and share of the reads' total, and the tokens decoded (or calls, for the kept-query passes).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from probe_cost import open_cache  # noqa: E402

from pyrcedge.evaluation.cli import tokenizer  # noqa: E402
from pyrcedge.evaluation.niah import make_needles  # noqa: E402
from pyrcedge.native import stats as kernel_stats  # noqa: E402

spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])


def timed(fn: Callable[..., Any], label: Callable[..., tuple[str, int]]) -> Callable[..., Any]:
    """fn, its CPU time and count added to spent[label(args)]."""
    def wrapper(*args: Any, **kw: Any) -> Any:
        t = time.process_time()
        try:
            return fn(*args, **kw)
        finally:
            key, n = label(*args, **kw)
            spent[key][0] += time.process_time() - t
            spent[key][1] += n
    return wrapper


def decode_kind(batch: Any) -> tuple[str, int]:
    """What a llama_decode is reading, from its caller."""
    stack = "".join(traceback.format_stack(limit=8))
    kind = ("probe" if "probe_stats" in stack else
            "recall" if "reinsert" in stack else "document chunk")
    return f"decode: {kind} (tokens)", batch.batch.n_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--share", default="25%")
    ap.add_argument("caches", nargs="*", default=["a2sf", "default"])
    a = ap.parse_args()
    tok = tokenizer(a.model)
    count = lambda t: len(tok.tokenize(t.encode("utf-8"), False, False))  # noqa: E731
    needles = make_needles(a.n, 1024, [0.1, 0.3, 0.5, 0.7, 0.9], count, 0)
    kernel_stats.probe_max = timed(kernel_stats.probe_max,                 # type: ignore
                                   lambda *_a, **_k: ("kept-query passes (calls)", 1))
    for cache in a.caches:
        llm = open_cache(a.model, cache, a.share, 1024, 1)
        llm._ctx.decode = timed(llm._ctx.decode, decode_kind)
        prompts = [llm.tokenize(nd.prompt.encode(), add_bos=True, special=False) for nd in needles]
        spent.clear()
        total = 0.0
        for p in prompts:
            llm.reset()
            t = time.process_time()
            llm.eval(p)
            total += time.process_time() - t
        print(f"{cache}@{a.share}: {total:.2f} CPU s for {len(prompts)} prompts of "
              f"{sum(map(len, prompts)) / len(prompts):.0f} tokens")
        for key, (s, n) in sorted(spent.items(), key=lambda kv: -kv[1][0]):
            print(f"  {key:32s} {s:7.2f} s  {100 * s / total:5.1f}%  {n:.0f}")
        print(f"  {'the rest (Python, scoring)':32s} "
              f"{total - sum(s for s, _ in spent.values()):7.2f} s")
        llm.close()


if __name__ == "__main__":
    main()
