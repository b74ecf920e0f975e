"""What eviction costs during decode, against stock llama-cpp-python in the same run.

    .venv/bin/python bench/eviction_cost.py [--rounds 5] [--budget 512] [--decode 256]

pyrcedge.Llama decodes with a full budget (eviction every `eviction batch` tokens, the default
16) after a prefill that fills it; stock llama-cpp-python decodes the same tokens with a context
large enough to hold everything (it attends to up to budget + decode cells). Rounds alternate
the two (bench/eviction_worker.py in each environment). Reported: the share of pyrcedge's decode
time spent choosing and evicting cells (everything in BudgetedKV.make_room, timed in-process),
and decode tok/s of both with their ratio, as medians. Results go to docs/bench/eviction-cost.md
(and .json) with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

from pyrcedge.assets.models import model_path  # noqa: E402

WORKER = REPO / "bench" / "eviction_worker.py"


def prose() -> Path:
    path = REPO / "bench" / ".cache" / "eviction-prose.txt"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join((REPO / p).read_text() for p in ("docs/rcstat.md", "docs/scoring.md",
                                                                 "docs/build.md", "README.md")))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--policies", nargs="+", default=["a2sf", "window", "rcstat"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "eviction-cost"))
    a = ap.parse_args()
    model, text = str(model_path()), str(prose())
    prefill = a.budget - 16
    runs: dict[str, list[dict]] = {"stock": []} | {p: [] for p in a.policies}
    for r in range(a.rounds):
        for name in runs:
            py = REPO / ".venv-stock/bin/python" if name == "stock" else Path(sys.executable)
            args = [str(py), str(WORKER), "stock" if name == "stock" else "pyrcedge", model, text,
                    str(prefill), str(a.decode), str(a.threads)]
            if name != "stock":
                args += [str(a.budget), name, str(a.batch)]
            done = subprocess.run(args, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    stock_tps = statistics.median(x["steps"] / x["decode_s"] for x in runs["stock"])
    rows = []
    for name in a.policies:
        xs = runs[name]
        tps = statistics.median(x["steps"] / x["decode_s"] for x in xs)
        share = statistics.median(x["eviction_s"] / x["decode_s"] for x in xs)
        rows.append({"policy": name, "decode_tok_s": tps, "vs_stock": tps / stock_tps,
                     "eviction_share": share, "evictions": xs[0]["evictions"],
                     "evicted_tokens": xs[0]["evicted_tokens"],
                     "ms_per_eviction": 1e3 * statistics.median(
                         x["eviction_s"] / max(1, x["evictions"]) for x in xs)})
    result = {"command": command(), "machine": machine(), "budget": a.budget, "prefill": prefill,
              "decode": a.decode, "eviction_batch": a.batch, "threads": a.threads,
              "stock_decode_tok_s": stock_tps, "rows": rows, "runs": runs}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Eviction cost during decode (budget {a.budget}, eviction batch {a.batch})", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             f"{a.threads} threads, flash attention on, {a.rounds} alternating rounds, medians.", "",
             f"Prefill {prefill} tokens, then {a.decode} greedy decode steps. Stock "
             f"llama-cpp-python: n_ctx {prefill + a.decode + 1}, nothing evicted, "
             f"{stock_tps:.1f} tok/s.", "",
             "| policy | decode tok/s | vs stock | time in eviction | evictions (tokens) | ms per eviction |",
             "|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['policy']} | {x['decode_tok_s']:.1f} | {x['vs_stock']:.3f} | "
                     f"{100 * x['eviction_share']:.2f}% | {x['evictions']} ({x['evicted_tokens']}) | "
                     f"{x['ms_per_eviction']:.2f} |")
    lines += ["", "Time in eviction: everything in BudgetedKV.make_room (the per-step check, "
              "reading the statistics, the policy, removing cells), as a share of decode time. "
              "vs stock also carries the scoring kernels' cost (docs/bench/scoring-decode.md) and "
              "the smaller cache pyrcedge attends to (budget vs up to budget + decode cells).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
