"""Recall inside a probed read, replayed: which evicted sentences other rankings and bounds would
have read back, and how much of each answer the cache would then hold, from what a
bench/qa_budget.py run recorded (no model is run).

    .venv/bin/python bench/qa_recall_choice.py docs/bench/IN.json [--cache default] [--out OUT]

For every question where recall ran inside the read, the run recorded the cached history indices
when the document had been read, the candidates (evicted sentences), their BM25 scores, each
one's best probe score at the last pass that scored it (an evicted token keeps the score it was
evicted with), the bound and what was chosen. Each variant below ranks the same candidates and
chooses with pyrcedge.features.recall.choose; "answer after recall" is the share of the answer's
tokens cached then, assuming the cells freed for the recalled tokens held none of it (the run's
own figure, which includes that eviction, is in its table). Writes docs/bench/OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command  # noqa: E402

from pyrcedge.features.recall import Recall, choose  # noqa: E402

Ranking = Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """0 for the highest of x, 1 for the next, ..."""
    order = np.argsort(-x, kind="stable")
    out = np.empty(len(x))
    out[order] = np.arange(len(x))
    return out


def by_order(keys: npt.NDArray[np.float64], eligible: npt.NDArray[np.bool_]
             ) -> npt.NDArray[np.float64]:
    """Scores that rank the eligible candidates by `keys` (highest first), every one of them
    above recall's min_score, the others -inf: for choose with relative 0."""
    out = np.full(len(keys), -np.inf)
    out[eligible] = 1.0 + len(keys) - ranks(np.where(eligible, keys, -np.inf))[eligible]
    return out


def rrf(bm25: npt.NDArray[np.float64], probe: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Reciprocal rank fusion of the two rankings (k = 60)."""
    return 1 / (60 + ranks(bm25)) + 1 / (60 + ranks(probe))


VARIANTS: dict[str, tuple[Ranking, float, float]] = {
    # name: (scores from (bm25, probe), relative, bound multiplier)
    "BM25, relative 0.5 (the default)": (lambda b, p: b, 0.5, 1.0),
    "BM25, relative 0": (lambda b, p: b, 0.0, 1.0),
    "BM25, relative 0, bound x2": (lambda b, p: b, 0.0, 2.0),
    "probe score at eviction (BM25 >= min_score)": (lambda b, p: by_order(p, b >= 1.0), 0.0, 1.0),
    "probe score at eviction, any candidate": (lambda b, p: by_order(p, np.isfinite(p)), 0.0, 1.0),
    "BM25 and probe, rank fusion": (lambda b, p: by_order(rrf(b, p), b >= 1.0), 0.0, 1.0),
    "BM25 and probe, rank fusion, relative 0.5 of BM25 first": (
        lambda b, p: by_order(rrf(b, p), b >= max(1.0, 0.5 * b.max())), 0.0, 1.0),
}


def replay(row: dict[str, Any], ranking: Ranking, relative: float, scale: float
           ) -> tuple[float | None, int]:
    """(share of the answer cached after the replayed recall, tokens recalled)."""
    c = row["choice"]
    spans = [tuple(s) for s in c["spans"]]
    bm25 = np.asarray(c["bm25"], float)
    probe = np.asarray([-np.inf if v is None else v for v in c["probe"]], float)
    n = max(b for _, b in spans)
    cached = set(c["cached_before"])
    chosen = choose(spans, ranking(bm25, probe), Recall(relative=relative),
                    int(c["bound"] * scale), lambda i: 0 <= i < n and i not in cached)
    held = cached | {i for a, b in chosen for i in range(a, b)}
    answer = row["answer_tokens"]
    share = float(np.mean([i in held for i in answer])) if answer else None
    return share, sum(b - a for a, b in chosen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache", default="default")
    ap.add_argument("--out")
    a = ap.parse_args()
    record = json.loads(a.run.read_text())
    rows = [r for r in record["rows"][a.cache] if "choice" in r and r["answer_tokens"]]
    before = [float(np.mean([i in set(r["choice"]["cached_before"]) for i in r["answer_tokens"]]))
              for r in rows]
    lines = [f"# Recall inside the probed read, replayed: {record['dataset']}, {record['model']}",
             "", f"Command: `{command()}`  ",
             f"From `{record['command']}` (cache {a.cache}): {len(rows)} questions whose answer "
             "was located in the context and whose read ended with a recall; answer cached "
             f"when the document had been read: {np.mean(before):.3f} on average, whole in "
             f"{sum(b == 1.0 for b in before)}.", "",
             "| ranking | answer cached after recall | whole | tokens recalled, mean |",
             "|---|---|---|---|"]
    for name, (ranking, relative, scale) in VARIANTS.items():
        got = [replay(r, ranking, relative, scale) for r in rows]
        shares = [s for s, _ in got if s is not None]
        lines.append(f"| {name} | {np.mean(shares):.3f} | {sum(s == 1.0 for s in shares)} | "
                     f"{np.mean([t for _, t in got]):.1f} |")
    text = "\n".join(lines + [""])
    if a.out:
        (REPO / "docs" / "bench" / a.out).with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
