"""Decode speed with scoring on, scoring off and stock llama-cpp-python, side by side.

    .venv/bin/python bench/scoring_decode.py [--contexts 256 1024 4096] [--reps 7] [--steps 32]

Three workers (bench/decode_worker.py) hold prefilled contexts: stock (.venv-stock), patched with
scoring off, patched with scoring on. Rounds interleave every (context, variant) pair, so drift of
the machine hits all alike; each measurement decodes `steps` tokens one at a time after a prompt
of `context` tokens, then removes them. Reports medians and ratios to docs/bench/scoring-decode.md
(and .json), with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import JsonWorker  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402

VARIANTS = {
    "stock": (REPO / ".venv-stock" / "bin" / "python", "off"),
    "scoring off": (Path(sys.executable), "off"),
    "scoring on": (Path(sys.executable), "on"),
}


def text_file() -> Path:
    """Prose long enough for the largest context (generated: no data set is needed here)."""
    path = REPO / "bench" / ".cache" / "prose.txt"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        words = ("the river ran past the old mill where children played and the miller "
                 "counted sacks of grain while rain fell on the hills beyond the town").split()
        out, x = [], 12345
        for _ in range(60000):
            x = (1103515245 * x + 12345) % 2**31
            out.append(words[x % len(words)])
        path.write_text(" ".join(out) + ".\n")
    return path


def worker(python: Path, scoring: str, flash: str, threads: int) -> JsonWorker:
    return JsonWorker([str(python), str(REPO / "bench" / "decode_worker.py"), str(model_path()), flash,
                       scoring, str(threads), str(text_file())])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--flash", choices=("on", "off"), default="on")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scoring-decode")
    args = ap.parse_args()

    workers = {name: worker(py, sc, args.flash, args.threads) for name, (py, sc) in VARIANTS.items()}
    try:
        for n in args.contexts:
            for name, w in workers.items():
                print(f"prefill {n} tokens: {name} {w.ask(op='prefill', n=n)['seconds']:.1f} s", flush=True)
        samples: dict[tuple[int, str], list[float]] = {(n, v): [] for n in args.contexts for v in workers}
        for rep in range(args.reps):
            for n in args.contexts:
                order = list(workers) if rep % 2 == 0 else list(reversed(workers))
                for name in order:
                    samples[(n, name)].append(workers[name].ask(op="decode", n=n, steps=args.steps)["tok_s"])
            print(f"round {rep + 1}/{args.reps} done", flush=True)
    finally:
        for w in workers.values():
            w.close()

    def paired(n: int, a: str, b: str) -> float:
        """Median over rounds of a/b measured back to back: drift between rounds cancels."""
        return statistics.median(x / y for x, y in zip(samples[(n, a)], samples[(n, b)]))

    rows = []
    for n in args.contexts:
        med = {v: statistics.median(samples[(n, v)]) for v in workers}
        rows.append({"context": n, **{f"{v} tok/s": round(med[v], 2) for v in workers},
                     "on/off": round(paired(n, "scoring on", "scoring off"), 3),
                     "off/stock": round(paired(n, "scoring off", "stock"), 3),
                     "on/stock": round(paired(n, "scoring on", "stock"), 3),
                     "samples": {v: [round(x, 2) for x in samples[(n, v)]] for v in workers}})
    command = "bench/scoring_decode.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; threads={args.threads}, flash attention {args.flash}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "machine": machine, "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
         "reps": args.reps, "rows": rows}, indent=2) + "\n")
    lines = ["# Decode speed: scoring on vs off vs stock llama-cpp-python", "",
             f"Command: `.venv/bin/python {command}`  ", f"Machine: {machine}  ",
             f"Date: {time.strftime('%Y-%m-%d')}; model SmolLM2-135M-Instruct Q4_1; {args.steps} decode steps per "
             f"sample after a prompt of `context` tokens, {args.reps} interleaved rounds. Speeds: medians; "
             f"ratios: medians over rounds of the ratio within a round (back-to-back runs). Per-round "
             f"samples are in the .json beside this file.", "",
             "| context | stock tok/s | scoring off tok/s | scoring on tok/s | on/off | off/stock | on/stock |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['stock tok/s']} | {r['scoring off tok/s']} | {r['scoring on tok/s']} | "
                     f"{r['on/off']} | {r['off/stock']} | {r['on/stock']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
