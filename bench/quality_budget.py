"""Quality against KV budget for every policy: streaming perplexity of an Austen excerpt.

    .venv/bin/python bench/quality_budget.py [--tokens 2048] [--budgets 6.25 12.5 25 50]
        [--workers 1] [--threads 1]

The first --tokens tokens of a novel (pyrcedge data fetch austen) are read 8 at a time through
pyrcedge.Llama (pyrcedge.evaluation.perplexity) at budgets that are shares of the excerpt, with
every policy: full (the whole excerpt cached), window (sink + recent; positions kept),
streamingllm (window with compacted positions, as StreamingLLM), context-shift (llama.cpp's:
compacted positions), context-shift-keep (the same choice, positions kept), h2o, a2sf
(alpha 0.3), tova, rcstat (epsilon 0.1) and random. Then the A2SF alpha sweep and the rcstat
epsilon sweep (mean cache occupancy against perplexity). Results go to docs/bench/<out>.md/.json
and plots to docs/img/<out>*.png. Finished runs are kept in the json, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

# name -> pyrcedge.Llama keyword arguments
VARIANTS: dict[str, dict[str, Any]] = {
    "window": {"policy": "window"},
    "streamingllm": {"policy": "window", "positions": "compact"},
    "context-shift": {"policy": "context-shift", "positions": "compact"},
    "context-shift-keep": {"policy": "context-shift"},
    "h2o": {"policy": "h2o"},
    "a2sf": {"policy": "a2sf", "alpha": 0.3},
    "tova": {"policy": "tova"},
    "rcstat": {"policy": "rcstat", "rc_epsilon": 0.1},
    "random": {"policy": "random"},
    # the H2O paper's split and A2SF's later code: half the budget a recent window
    "h2o-recent50": {"policy": "h2o", "recent_share": 0.5},
    "a2sf-recent50": {"policy": "a2sf", "alpha": 0.3, "recent_share": 0.5},
    "a2sf-0.9": {"policy": "a2sf", "alpha": 0.9},
    "rcstat-0.01": {"policy": "rcstat", "rc_epsilon": 0.01},
    # recall (docs/recall.md): every chunk is a prompt that may read evicted sentences back
    "a2sf+recall": {"policy": "a2sf", "alpha": 0.3, "recall": True},
    "a2sf-0.9+recall": {"policy": "a2sf", "alpha": 0.9, "recall": True},
}
for _kw in VARIANTS.values():     # recall is named, whatever pyrcedge.Llama's default
    _kw.setdefault("recall", None)
EXTRA = ("h2o-recent50", "a2sf-recent50", "a2sf-0.9", "rcstat-0.01", "a2sf+recall",
         "a2sf-0.9+recall")
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in EXTRA]
# the policies that read attention statistics, and those that do not (targets compare them)
SCORED = ("h2o", "a2sf", "tova", "rcstat")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import pyrcedge
    from pyrcedge.evaluation.perplexity import streaming_perplexity

    kw = dict(job["kwargs"])
    share = kw.pop("recent_share", None)
    if share is not None:
        kw["recent_tokens"] = int(share * job["budget"])
    llm = pyrcedge.Llama(job["model"], kv_budget=job["budget"], n_threads=job["threads"],
                         n_threads_batch=job["threads"], flash_attn=True, seed=0, **kw)
    try:
        r = streaming_perplexity(llm, job["tokens"], chunk=job["chunk"])
        stats = llm.kv_stats()
    finally:
        llm.close()
    out = {k: v for k, v in job.items() if k not in ("tokens", "model")}
    out.update(ppl=r.ppl, nll=r.nll, kv_cells_used_max=r.kv_cells_used_max,
               kv_cells_used_mean=r.kv_cells_used_mean, evictions=r.evictions,
               evicted_tokens=r.evicted_tokens, seconds=r.seconds,
               recalls=stats.recalls, recalled_tokens=stats.recalled_tokens)
    return out


def jobs_for(a: argparse.Namespace, n: int) -> list[dict[str, Any]]:
    budgets = {b: max(36, math.ceil(b / 100 * n)) for b in a.budgets}
    jobs = [{"key": "full", "variant": "full", "share": 100.0, "budget": n,
             "kwargs": {"policy": "full"}}]
    for v in a.policies:
        for share, cells in budgets.items():
            jobs.append({"key": f"{v}@{share}", "variant": v, "share": share, "budget": cells,
                         "kwargs": VARIANTS[v]})
    for alpha in a.alphas:
        for share in a.sweep_budgets:
            jobs.append({"key": f"a2sf-alpha{alpha}@{share}", "variant": "a2sf-alpha", "share": share,
                         "budget": budgets[share], "alpha": alpha,
                         "kwargs": {"policy": "a2sf", "alpha": alpha, "recall": None}})
    for eps in a.epsilons:
        for share in a.sweep_budgets:
            jobs.append({"key": f"rcstat-eps{eps}@{share}", "variant": "rcstat-eps", "share": share,
                         "budget": budgets[share], "epsilon": eps,
                         "kwargs": {"policy": "rcstat", "rc_epsilon": eps, "recall": None}})
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="GGUF path or model name (default SmolLM2-135M)")
    ap.add_argument("--novel", default="prideprejudice")
    ap.add_argument("--skip-chars", type=int, default=0, help="start the excerpt this far in")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--budgets", type=float, nargs="+", default=[6.25, 12.5, 25.0, 50.0])
    ap.add_argument("--policies", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    ap.add_argument("--epsilons", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.2, 0.4])
    ap.add_argument("--sweep-budgets", type=float, nargs="*", default=[12.5, 25.0])
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="quality-budget")
    a = ap.parse_args()

    from pyrcedge.evaluation import austen
    from pyrcedge.evaluation.cli import tokenizer
    from pyrcedge.evaluation.perplexity import text_tokens
    from pyrcedge.assets.gguf import resolve_model

    model = str(resolve_model(a.model))
    text = austen.novel(a.novel)[a.skip_chars:]
    tokens = text_tokens(tokenizer(a.model), text, a.tokens)
    out = REPO / "docs" / "bench" / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    commands = [command()]
    if out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        if old.get("tokens") == a.tokens and old.get("model") == model and old.get("novel") == a.novel:
            done = {r["key"]: r for r in old["runs"]}
            commands = old.get("commands", [old["command"]]) + commands
    jobs = [j for j in jobs_for(a, len(tokens)) if j["key"] not in done]
    header = {"command": commands[0], "commands": commands, "machine": machine(), "model": model, "novel": a.novel,
              "skip_chars": a.skip_chars, "tokens": a.tokens, "chunk": a.chunk,
              "threads": a.threads, "workers": a.workers,
              "load_average_start": os.getloadavg()}
    t0 = time.time()

    def save() -> None:
        runs = sorted(done.values(), key=lambda r: r["key"])
        out.with_suffix(".json").write_text(json.dumps({**header, "runs": runs}, indent=1) + "\n")

    full = [j for j in jobs if j["key"] == "full"]
    rest = [j for j in jobs if j["key"] != "full"]
    common_args = {"model": model, "tokens": tokens, "chunk": a.chunk, "threads": a.threads}
    with ProcessPoolExecutor(a.workers) as pool:
        futures = [pool.submit(run_one, {**j, **common_args}) for j in full + rest]
        for i, f in enumerate(futures):
            r = f.result()
            done[r["key"]] = r
            save()
            print(f"[{i + 1}/{len(futures)}, {time.time() - t0:.0f} s] {r['key']}: ppl "
                  f"{r['ppl']:.4f}, mean cells {r['kv_cells_used_mean']:.0f}, {r['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    header["load_average_end"] = os.getloadavg()
    save()
    from quality_report import write_report

    write_report(out, REPO / "docs" / "img")


if __name__ == "__main__":
    main()
