"""Prompt reading (prefill) speed with scoring on, scoring off and stock llama-cpp-python, side by
side (issue 17).

    .venv/bin/python bench/scoring_prefill.py [--model smollm2-135m] [--prompts 512 2048 8192]
        [--threads 1 2] [--flash on off] [--type-k f16 q8_0] [--rounds 5] [--procs 3]
        [--clock wall|cpu] [--before PYTHON] [--out NAME]

Workers (bench/prefill_worker.py), one per variant: stock (.venv-stock), patched with scoring
off, patched with scoring on (alpha 0.9) with every query ("on"), with the query window that
pyrcedge.Llama sets for A2SF ("window": each ubatch's last 64 queries; docs/scoring.md) and with
that window and a2sf alone ("a2sf": what pyrcedge.Llama ran with an A2SF policy until the ninth
session), and with that and decay only for the calls with 64 or more tokens after them ("read":
what it runs on GPUs, docs/scoring.md "Decay only"), and pyrcedge.Llama's default on the CPU
("default": alpha 0.3, a2sf alone and the window that alpha needs, 6 queries). A round
times one prefill of every configuration (prompt length, threads, flash attention, K type) in
every variant, the variants of a configuration back to back in a rotating order, so drift of the
machine hits them alike. A prefill reads the prompt into a cleared context of exactly its size in
ubatches of 512. Ratios are medians over rounds of the ratio within a round; the spread is their
min and max. --before PYTHON adds "before" variants of the scoring variants chosen, run with
another environment's build, so that a kernel change is timed side by side with what it replaces
(ratios "a2sf/a2sf before" and so on). Writes docs/bench/NAME.md and .json with the command and
the machine.

A process's speed depends by a few per cent on where its stack and heap happen to land (measured:
the same variant 0.96-1.00 of itself with only the environment's size changed), a bias that
rounds within one process never average out. So each variant runs in --procs worker processes
started with environments of random sizes (common.padded_env), round r on process r % procs, and
that bias becomes spread. --clock cpu takes the workers' CPU time instead of wall time (robust to
other jobs on the machine at 1 thread; at 2 threads it counts the threads' spin-waits too).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import JsonWorker, command, machine, padded_env  # noqa: E402
from scoring_decode import text_file  # noqa: E402

from pyrcedge.assets.models import model_path  # noqa: E402

VARIANTS = {
    "stock": (REPO / ".venv-stock" / "bin" / "python", "off"),
    "off": (Path(sys.executable), "off"),
    "on": (Path(sys.executable), "on"),
    "window": (Path(sys.executable), "window"),
    "a2sf": (Path(sys.executable), "a2sf"),
    "read": (Path(sys.executable), "read"),
    "default": (Path(sys.executable), "default"),
}
RATIOS = (("a2sf", "a2sf before"), ("read", "read before"), ("default", "default before"),
          ("on", "on before"), ("a2sf before", "off"), ("default before", "off"),
          ("on before", "off"), ("on", "off"), ("window", "off"),
          ("a2sf", "off"), ("read", "off"), ("default", "off"), ("off", "stock"), ("on", "stock"),
          ("window", "stock"), ("a2sf", "stock"), ("read", "stock"), ("default", "stock"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--flash", choices=("on", "off"), nargs="+", default=["on", "off"])
    ap.add_argument("--type-k", choices=("f16", "q8_0"), nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--procs", type=int, default=3, help="worker processes per variant")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--before", type=Path, metavar="PYTHON",
                    help="also run the chosen scoring variants with this environment's build")
    ap.add_argument("--out", default="scoring-prefill")
    args = ap.parse_args()
    chosen = {v: VARIANTS[v] for v in args.variants}
    if args.before is not None:
        chosen.update({f"{v} before": (args.before, mode) for v, (_, mode) in VARIANTS.items()
                       if v in args.variants and mode != "off"})

    configs = list(itertools.product(args.prompts, args.threads, args.flash, args.type_k))
    rng = random.Random(0)
    workers = {v: [JsonWorker([str(py), str(REPO / "bench" / "prefill_worker.py"),
                               str(model_path(args.model)), mode, str(text_file())],
                              env=padded_env(rng)) for _ in range(args.procs)]
               for v, (py, mode) in chosen.items()}
    samples: dict[tuple, dict[str, list[float]]] = {c: {v: [] for v in workers} for c in configs}
    seconds = "seconds" if args.clock == "wall" else "cpu_s"
    t_start = time.time()
    try:
        for rnd in range(-1, args.rounds):  # round -1 warms every process's contexts up, untimed
            for i, (n, threads, flash, type_k) in enumerate(configs):
                names = list(workers)
                k = (rnd + i) % len(names)
                for v in names[k:] + names[:k]:
                    for w in workers[v] if rnd < 0 else [workers[v][rnd % args.procs]]:
                        r = w.ask(n=n, threads=threads, flash=flash == "on", type_k=type_k)
                        if rnd >= 0:
                            samples[(n, threads, flash, type_k)][v].append(n / r[seconds])
            print(f"round {rnd + 1}/{args.rounds} done ({time.time() - t_start:.0f} s)", flush=True)
    finally:
        for ws in workers.values():
            for w in ws:
                w.close()

    rows = []
    for c in configs:
        s = samples[c]
        row: dict = {"prompt": c[0], "threads": c[1], "flash": c[2], "type_k": c[3],
                     "tok_s": {v: round(statistics.median(x), 1) for v, x in s.items()},
                     "samples": {v: [round(y, 1) for y in x] for v, x in s.items()}}
        for a, b in RATIOS:
            if a in s and b in s:
                r = [x / y for x, y in zip(s[a], s[b])]
                row[f"{a}/{b}"] = [round(statistics.median(r), 3), round(min(r), 3), round(max(r), 3)]
        rows.append(row)
    m = machine()
    out = REPO / "docs" / "bench" / args.out
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command(), "machine": m, "date": time.strftime("%Y-%m-%d"), "model": args.model,
         "rounds": args.rounds, "procs": args.procs, "clock": args.clock, "rows": rows}, indent=1) + "\n")
    ratio_names = [f"{a}/{b}" for a, b in RATIOS if a in workers and b in workers]
    lines = [f"# Prefill speed: scoring on vs off vs stock llama-cpp-python ({args.model})", "",
             f"Command: `{command()}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores (load average at the end {m['load_average'][0]:.2f}).  ",
             f"Date: {time.strftime('%Y-%m-%d')}. A prefill reads `prompt` tokens into a cleared context "
             f"of that size in ubatches of 512; {args.rounds} rounds after a warm-up round, the variants "
             f"of a configuration back to back in a rotating order, each variant in {args.procs} "
             f"processes of random environment sizes, taken in turn; {args.clock} clock. "
             "Speeds: medians (tok/s); ratios: "
             "median [min, max] over rounds of the ratio within a round. Samples are in the .json.", "",
             "| prompt | threads | flash | K | " + " | ".join(f"{v} tok/s" for v in workers) + " | "
             + " | ".join(ratio_names) + " |",
             "|---" * (4 + len(workers) + len(ratio_names)) + "|"]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['threads']} | {r['flash']} | {r['type_k']} | "
                     + " | ".join(str(r["tok_s"][v]) for v in workers) + " | "
                     + " | ".join("{} [{}, {}]".format(*r[k]) for k in ratio_names) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
