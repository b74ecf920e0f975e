"""What question-probed reading costs and what it keeps: the time to read a needle prompt longer
than the budget with the probe (and recall) against without it, and the needle hit rate, in
one process (docs/bench/probe-cost*.md).

    .venv/bin/python bench/probe_cost.py [--model smollm2-135m] [--context-tokens 1024]
        [--n 10] [--rounds 3] [--shares 25% 12.5%] [--threads 1] [CACHE ...]

CACHE is named as bench/common.py's cache_options reads it: a2sf (no probe, no recall),
a2sf+probe (the default tail probe), a2sf+probe{"tokens":12}+recall (pyrcedge.Probe fields);
the first CACHE is the baseline every other is divided by. Every prompt is read by every cache at every share in each round, the caches'
order rotating from prompt to prompt, so that a drift of the machine's speed falls on all of
them alike. Only the read is timed (Llama.eval of the whole prompt: what `eval niah` reports as
prefill), in wall seconds and in the process's CPU seconds (less disturbed by other work on a
shared machine); the answer is not generated. Reported per cache: the median over prompts and
rounds of its time divided by the baseline's on the same prompt in the same round, with the
25th-75th percentiles, and the tokens it decoded per prompt token (the probe's and the
recalled tokens included). In the first round each read is followed by a greedy answer of
at most 24 tokens (not timed): the hit rate is eval niah's (the needle's value in the answer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import cache_options, command, machine, quartiles, split_share  # noqa: E402

from pyrcedge.cli import build_parser  # noqa: E402
from pyrcedge.evaluation.cli import _llm_opener, floor_cells, tokenizer  # noqa: E402
from pyrcedge.evaluation.niah import make_needles  # noqa: E402


def answer(llm: Any, max_tokens: int = 24) -> str:
    """The greedy continuation of what llm has read (the prompt), at most max_tokens tokens."""
    out: list[int] = []
    for t in llm.generate([], temp=0.0, reset=False):
        if llm.token_eos() == t or len(out) == max_tokens:
            break
        out.append(t)
    return llm.detokenize(out).decode("utf-8", "replace")


def open_cache(model: str, cache: str, share: str, context_tokens: int, threads: int) -> Any:
    """pyrcedge.Llama as `pyrcedge eval niah --budget SHARE` opens it, with this cache."""
    args = build_parser().parse_args(
        ["eval", "niah", "--model", model, "--threads", str(threads), "--budget", share])
    for key, value in cache_options(cache).items():
        setattr(args, key, value)
    return _llm_opener(args)(args.budget.of(context_tokens, floor_cells(args)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shares", nargs="+", default=["25%", "12.5%"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="probe-cost")
    ap.add_argument("caches", nargs="*", default=["a2sf", "a2sf+probe", "a2sf+probe+recall"])
    a = ap.parse_args()
    tok = tokenizer(a.model)
    count = lambda t: len(tok.tokenize(t.encode("utf-8"), False, False))  # noqa: E731
    needles = make_needles(a.n, a.context_tokens, [0.1, 0.3, 0.5, 0.7, 0.9], count, 0)
    names = [f"{c}@{s}" for s in a.shares for c in a.caches]
    llms = {name: open_cache(a.model, *split_share(name, "25%"), a.context_tokens, a.threads)
            for name in names}
    prompts = [llms[names[0]].tokenize(nd.prompt.encode("utf-8"), add_bos=True, special=False)
               for nd in needles]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(a.rounds):
        for i, tokens in enumerate(prompts):
            k = (i + r) % len(a.caches)
            order = a.caches[k:] + a.caches[:k]
            for share in a.shares:
                for cache in order:
                    name = f"{cache}@{share}"
                    llm = llms[name]
                    llm.reset()
                    before = llm.kv_stats()
                    w0, c0 = time.perf_counter(), time.process_time()
                    llm.eval(tokens)
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    after = llm.kv_stats()
                    decoded = (len(tokens) + after.probe_tokens - before.probe_tokens
                               + after.recalled_tokens - before.recalled_tokens)
                    run = {"round": r, "prompt": i, "tokens": len(tokens), "wall_s": wall,
                           "cpu_s": cpu, "decoded_per_token": decoded / len(tokens),
                           "probe_passes": after.probe_passes - before.probe_passes}
                    if r == 0:
                        run["hit"] = needles[i].value in answer(llm)
                    runs[name].append(run)
            print(f"round {r} prompt {i}: " + ", ".join(
                f"{n} {runs[n][-1]['wall_s']:.2f}s" for n in names), file=sys.stderr, flush=True)
    for llm in llms.values():
        llm.close()
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        cache, share = split_share(name, "25%")
        base = runs[f"{a.caches[0]}@{share}"]
        rows = runs[name]
        summary[name] = {
            "budget_cells": llms[name].kv_budget_cells,
            "wall_ratio": quartiles([x["wall_s"] / b["wall_s"] for x, b in zip(rows, base)]),
            "cpu_ratio": quartiles([x["cpu_s"] / b["cpu_s"] for x, b in zip(rows, base)]),
            "wall_s_median": statistics.median(x["wall_s"] for x in rows),
            "decoded_per_token": statistics.mean(x["decoded_per_token"] for x in rows),
            "hit_rate": statistics.mean(x["hit"] for x in rows if "hit" in x),
            "probe_passes_per_prompt": statistics.mean(x["probe_passes"] for x in rows)}
    out = REPO / "docs" / "bench" / a.out
    record = {"command": command(), "machine": machine(), "model": a.model,
              "context_tokens": a.context_tokens, "n": a.n, "rounds": a.rounds,
              "threads": a.threads, "summary": summary, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# The cost of question-probed reading: {a.context_tokens}-token needle prompts, "
             f"{a.model}", "",
             f"Command: `{record['command']}`  ",
             f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores (shared "
             f"with other work); {a.threads} thread(s).  ",
             f"{a.n} prompts (eval niah's, seed 0) x {a.rounds} rounds, every cache reading "
             "every prompt in each round in rotating order; only the prompt's read is timed. "
             f"Ratios are to `{a.caches[0]}` at the same share on the same prompt and round: "
             "median (25th-75th percentile) of "
             f"{a.n * a.rounds} pairs. \"decoded / prompt token\" counts the probe's and the "
             "recalled tokens as well.", "",
             "| cache | cells | hit rate | wall ratio | CPU ratio | read s, median | decoded / "
             "prompt token | probe passes / prompt |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        w, c = s["wall_ratio"], s["cpu_ratio"]
        lines.append(f"| {name} | {s['budget_cells']} | {s['hit_rate']:.2f} | {w[1]:.3f} ({w[0]:.3f}-{w[2]:.3f}) | "
                     f"{c[1]:.3f} ({c[0]:.3f}-{c[2]:.3f}) | {s['wall_s_median']:.2f} | "
                     f"{s['decoded_per_token']:.3f} | {s['probe_passes_per_prompt']:.1f} |")
    lines += [""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
