"""Paired F1 differences between caches of bench/qa_budget.py runs on the same questions, over
one or several data sets together (the runs may come from different code: their full caches'
rows must agree, which checks that the questions and the model are the same).

    .venv/bin/python bench/qa_paired.py --out NAME  LABEL=RUN.json:CACHE[;RUN.json:CACHE...] ...

Each LABEL names one cache's rows, the ";" joining data sets (in the same order for every
label); every label after the first is compared with the first: mean F1 difference with a
paired bootstrap 95% interval (questions resampled), questions better and worse, and F1 over the
full caches' of the same runs. Writes docs/bench/NAME.md with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command  # noqa: E402
from qa_budget import paired_interval  # noqa: E402


def rows(spec: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(F1 per question, the full cache's F1, question ids) of RUN.json:CACHE[;...]."""
    f1: list[float] = []
    full: list[float] = []
    ids: list[str] = []
    for part in spec.split(";"):
        path, cache = part.split(":", 1)
        record = json.loads((REPO / path).read_text())
        f1 += [r["f1"] for r in record["rows"][cache]]
        full += [r["f1"] for r in record["rows"]["full"]]
        ids += [r["id"] for r in record["rows"][cache]]
    return np.array(f1), np.array(full), ids


def of_full(f1: np.ndarray, full: np.ndarray) -> str:
    """Mean F1 over the full cache's, with its paired bootstrap 95% interval."""
    point, lo, hi = paired_interval(f1, full, ratio=True)
    return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("caches", nargs="+", metavar="LABEL=SPEC")
    a = ap.parse_args()
    named = [c.split("=", 1) for c in a.caches]
    base_label, base_spec = named[0]
    base, base_full, base_ids = rows(base_spec)
    lines = ["# Paired F1 differences between QA runs", "", f"Command: `{command()}`  ",
             f"{len(base)} questions; differences are to `{base_label}`, with paired bootstrap 95% "
             "intervals (10000 resamples of the questions).", "",
             "| cache | F1 | F1 / full [95%] | difference [95%] | better / worse |",
             "|---|---|---|---|---|",
             f"| {base_label} | {base.mean():.3f} | {of_full(base, base_full)} | - | - |"]
    for label, spec in named[1:]:
        f1, full, ids = rows(spec)
        if ids != base_ids or not np.array_equal(full, base_full):
            raise SystemExit(f"{label}: not the same questions and full cache as {base_label}")
        d, lo, hi = paired_interval(f1, base, ratio=False)
        lines.append(f"| {label} | {f1.mean():.3f} | {of_full(f1, full)} | {d:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}] | {(f1 > base + 1e-9).sum()} / {(f1 < base - 1e-9).sum()} |")
    out = REPO / "docs" / "bench" / f"{a.out}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
