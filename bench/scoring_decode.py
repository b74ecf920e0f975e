"""Decode speed with scoring on, scoring off and stock llama-cpp-python, side by side.

    .venv/bin/python bench/scoring_decode.py [--model smollm2-135m] [--contexts 256 1024 4096]
        [--reps 7] [--steps 32] [--procs 3] [--clock wall|cpu] [--out NAME]

Workers (bench/decode_worker.py) hold prefilled contexts: stock (.venv-stock), patched with
scoring off, patched with scoring on (all five statistics) and with a2sf alone (what
pyrcedge.Llama keeps for an A2SF policy: Policy.reads_moments). Rounds interleave every (context, variant) pair, so drift of
the machine hits all alike; each measurement decodes `steps` tokens one at a time after a prompt
of `context` tokens, then removes them. Each variant runs in --procs processes with environments of
random sizes, round r on process r % procs (a process's speed carries a fixed bias of a few per
cent from where its stack lands: bench/scoring_prefill.py, common.padded_env). --clock cpu takes
the worker's CPU time instead of wall time. --before PYTHON adds "before" variants: those
chosen, run by another environment's llama-cpp-python (an earlier build of the kernels), so a
kernel change is timed side by side with what it replaces (ratios "a2sf/a2sf before" and so on).
Reports medians and ratios (median [min, max] over
rounds of the ratio within a round) to docs/bench/NAME.md (and .json), with the command and the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import JsonWorker, command, machine, padded_env  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402

VARIANTS = {
    "stock": (REPO / ".venv-stock" / "bin" / "python", "off"),
    "scoring off": (Path(sys.executable), "off"),
    "scoring on": (Path(sys.executable), "on"),
    "scoring a2sf": (Path(sys.executable), "a2sf"),
}
# (name, numerator, denominator)
RATIOS = (("on/off", "scoring on", "scoring off"), ("a2sf/off", "scoring a2sf", "scoring off"),
          ("off/stock", "scoring off", "stock"), ("on/stock", "scoring on", "stock"),
          ("a2sf/stock", "scoring a2sf", "stock"),
          ("a2sf/a2sf before", "scoring a2sf", "scoring a2sf before"),
          ("on/on before", "scoring on", "scoring on before"),
          ("a2sf before/off", "scoring a2sf before", "scoring off"),
          ("on before/off", "scoring on before", "scoring off"))


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


def worker(python: Path, model: str, scoring: str, flash: str, threads: int,
           env: dict[str, str] | None = None) -> JsonWorker:
    return JsonWorker([str(python), str(REPO / "bench" / "decode_worker.py"), str(model_path(model)),
                       flash, scoring, str(threads), str(text_file())], env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--flash", choices=("on", "off"), default="on")
    ap.add_argument("--procs", type=int, default=3, help="worker processes per variant")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--before", type=Path, metavar="PYTHON",
                    help="also run the chosen scoring variants with this environment's build")
    ap.add_argument("--out", default="scoring-decode")
    args = ap.parse_args()

    chosen = {name: v for name, v in VARIANTS.items() if name in args.variants}
    if args.before is not None:
        chosen.update({f"{name} before": (args.before, sc) for name, (_, sc) in VARIANTS.items()
                       if name in args.variants and sc in ("on", "a2sf")})
    rng = random.Random(0)
    workers = {name: [worker(py, args.model, sc, args.flash, args.threads, padded_env(rng))
                      for _ in range(args.procs)]
               for name, (py, sc) in chosen.items()}
    speed = "tok_s" if args.clock == "wall" else "cpu_tok_s"
    try:
        for n in args.contexts:
            for name, ws in workers.items():
                for w in ws:
                    print(f"prefill {n} tokens: {name} {w.ask(op='prefill', n=n)['seconds']:.1f} s", flush=True)
        for n in args.contexts:      # warm-up round, untimed
            for ws in workers.values():
                for w in ws:
                    w.ask(op="decode", n=n, steps=args.steps)
        samples: dict[tuple[int, str], list[float]] = {(n, v): [] for n in args.contexts for v in workers}
        for rep in range(args.reps):
            for n in args.contexts:
                order = list(workers) if rep % 2 == 0 else list(reversed(workers))
                for name in order:
                    w = workers[name][rep % args.procs]
                    samples[(n, name)].append(w.ask(op="decode", n=n, steps=args.steps)[speed])
            print(f"round {rep + 1}/{args.reps} done", flush=True)
    finally:
        for ws in workers.values():
            for w in ws:
                w.close()

    def paired(n: int, a: str, b: str) -> list[float]:
        """[median, min, max] over rounds of a/b measured back to back: drift between rounds
        cancels."""
        r = [x / y for x, y in zip(samples[(n, a)], samples[(n, b)])]
        return [round(statistics.median(r), 3), round(min(r), 3), round(max(r), 3)]

    rows = []
    for n in args.contexts:
        med = {v: statistics.median(samples[(n, v)]) for v in workers}
        rows.append({"context": n, **{f"{v} tok/s": round(med[v], 2) for v in workers},
                     **{name: paired(n, a, b) for name, a, b in RATIOS if a in workers and b in workers},
                     "samples": {v: [round(x, 2) for x in samples[(n, v)]] for v in workers}})
    out = REPO / "docs" / "bench" / args.out
    result = {"command": command(), "machine": machine(), "threads": args.threads,
              "flash": args.flash, "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "steps": args.steps, "reps": args.reps, "procs": args.procs, "clock": args.clock,
              "variants": list(workers), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    """The markdown table of a result (what main writes beside its .json)."""
    m = r["machine"]
    lines = [f"# Decode speed: scoring on vs off vs stock llama-cpp-python ({r['model']})", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores (load average at the end "
             f"{m['load_average'][0]:.2f}); threads={r['threads']}, flash attention {r['flash']}.  ",
             f"Date: {r['date']}; {r['steps']} decode steps per sample after a prompt of `context` "
             f"tokens, {r['reps']} interleaved rounds, each variant in {r.get('procs', 1)} processes "
             f"of random environment sizes taken in turn, {r.get('clock', 'wall')} clock. Speeds: medians; ratios: median [min, max] "
             "over rounds of the ratio within a round (back-to-back runs). Per-round samples are in "
             "the .json beside this file.", "",
             ]
    variants = r.get("variants", ["stock", "scoring off", "scoring on"])
    ratios = [name for name, a, b in RATIOS if a in variants and b in variants]
    lines += ["| context | " + " | ".join(f"{v} tok/s" for v in variants) + " | " + " | ".join(ratios) + " |",
              "|---" * (1 + len(variants) + len(ratios)) + "|"]
    for row in r["rows"]:
        lines.append(f"| {row['context']} | " + " | ".join(str(row[f"{v} tok/s"]) for v in variants)
                     + " | " + " | ".join("{} [{}, {}]".format(*row[k]) for k in ratios) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
