"""Needle retrieval against the full cache at a budget that is a share of the haystack
(pyrcedge eval niah), every policy on the same prompts.

    .venv/bin/python bench/niah_budget.py [--model smollm2-135m] [--context-tokens 1024] [--n 10]
        [--share 25%] [--workers 2]

Writes docs/bench/<out>.md and .json with the commands, and a plot of hit rate by depth.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command, config_args, machine, run_cli_json, split_share  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--share", default="25%")
    ap.add_argument("--policies", nargs="+", metavar="CACHE",
                    default=["a2sf", "a2sf+probe", "window", "window+probe"],
                    help="POLICY, POLICY+probe or POLICY+probe=SPEC, each optionally @SHARE "
                         "(bench/common.py)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="niah-budget")
    a = ap.parse_args()
    base = [sys.executable, "-m", "pyrcedge", "eval", "niah", "--model", a.model,
            "--context-tokens", str(a.context_tokens), "--n", str(a.n), "--threads", str(a.threads),
            "--json", "--quiet"]
    configs = {"full": []} | {p: ["--budget", split_share(p, a.share)[1],
                                   *config_args(split_share(p, a.share)[0])] for p in a.policies}

    def run(name: str) -> tuple[str, dict]:
        r = run_cli_json(base + configs[name], name)
        print(f"{name}: hit rate {r['hit_rate']:.2f}", file=sys.stderr, flush=True)
        return name, r

    with ThreadPoolExecutor(a.workers) as pool:
        results = dict(pool.map(run, configs))
    out = REPO / "docs" / "bench" / a.out
    record = {"command": command(), "machine": machine(), "model": a.model,
              "context_tokens": a.context_tokens, "n": a.n, "share": a.share, "results": results}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    depths = list(results["full"]["hit_rate_by_depth"])
    lines = [f"# Needle in a haystack: {a.context_tokens}-token haystacks, {a.model}", "",
             f"Command: `{record['command']}`  ",
             f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores (shared); "
             f"{a.threads} thread(s) per run, {a.workers} run(s) at a time.  ",
             f"{a.n} prompts (RULER niah_single template, Paul Graham essays haystack, seed 0), "
             f"needle depths {', '.join(depths)}; budget {a.share} of the haystack unless the "
             "row names another share.", "",
             "| cache | hit rate | " + " | ".join(f"depth {d}" for d in depths)
             + " | cells | reading s, median (min-max) | probe passes |",
             "|---|---|" + "---|" * len(depths) + "---|---|---|"]
    for name, r in results.items():
        label = name if name == "full" or "@" in name else f"{name} @ {a.share}"
        lo, hi = r["prefill_s_spread"]
        lines.append(f"| {label} | {r['hit_rate']:.2f} | " + " | ".join(
            f"{r['hit_rate_by_depth'][d]:.2f}" for d in depths)
            + f" | {r['budget_cells']} | {r['prefill_s_median']:.2f} ({lo:.2f}-{hi:.2f}) | {r['probe_passes']} |")
    lines += ["", "Per-run commands are in the json (`results.<name>.command`).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
