"""The markdown report and plots of bench/quality_budget.py, from its json (rerun alone:
`.venv/bin/python bench/quality_report.py docs/bench/quality-budget`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID_ORDER = ["window", "streamingllm", "context-shift", "context-shift-keep", "h2o", "a2sf",
              "tova", "rcstat", "random", "h2o-recent50", "a2sf-recent50", "a2sf-0.9", "rcstat-0.01",
              "a2sf+recall", "a2sf-0.9+recall"]
BASELINES = ("window", "streamingllm", "context-shift", "context-shift-keep")


def label(r: dict) -> str:
    if r["variant"] == "a2sf-alpha":
        return f"a2sf alpha {r['alpha']:g}"
    if r["variant"] == "rcstat-eps":
        return f"rcstat epsilon {r['epsilon']:g}"
    return r["variant"]


def targets(grid: dict[str, dict[float, dict]], full: float, shares: list[float],
            runs: list[dict]) -> list[str]:
    lines = []
    if 25.0 in shares:
        best = min((r["ppl"], label(r)) for r in runs if r["share"] == 25.0)
        gap = best[0] / full - 1
        lines.append(f"- At 25% budget the best policy is {best[1]} at ppl {best[0]:.3f}, "
                     f"{100 * gap:+.2f}% against the full cache ({full:.3f}) (every run at 25%, sweeps "
                     "included): target (within 2%) "
                     f"{'met' if gap <= 0.02 else 'missed'}.")
    for p in ("a2sf", "rcstat"):
        if p not in grid:
            continue
        losses = [f"{b} at {s:g}% ({grid[p][s]['ppl']:.3f} vs {grid[b][s]['ppl']:.3f})"
                  for s in shares for b in BASELINES
                  if b in grid and s in grid[b] and s in grid[p]
                  and grid[p][s]["ppl"] > grid[b][s]["ppl"]]
        lines.append(f"- {p} at or below the perplexity of window, StreamingLLM and context shift "
                     f"at every budget: {'met' if not losses else 'missed; worse than ' + ', '.join(losses)}.")
    return lines


def cells_at(grid: dict[str, dict[float, dict]], share: float) -> int:
    return next(v[share]["budget"] for v in grid.values() if share in v)


def recall_lines(grid: dict[str, dict[float, dict]], shares: list[float]) -> list[str]:
    """Perplexity and reading time with recall against the same policy without."""
    pairs = [(v[: -len("+recall")], v) for v in grid if v.endswith("+recall")
             and v[: -len("+recall")] in grid]
    if not pairs:
        return []
    lines = ["", "## Recall (every chunk of 8 tokens is a prompt that may read evicted "
             "sentences back)", "", "| policy | budget | ppl without | ppl with recall | "
             "recalled tokens | seconds without | seconds with | time ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for base, rec in pairs:
        for s in shares:
            if s in grid[base] and s in grid[rec]:
                a, b = grid[base][s], grid[rec][s]
                lines.append(f"| {base} | {s:g}% | {a['ppl']:.3f} | {b['ppl']:.3f} | "
                             f"{b.get('recalled_tokens', '')} | {a['seconds']:.1f} | "
                             f"{b['seconds']:.1f} | {b['seconds'] / a['seconds']:.2f} |")
    lines += ["", "Seconds: the wall time of each run, with up to 2 runs sharing the 2 cores "
              "(a rough cost, not a clean timing)."]
    return lines


def fmt_command(c: str) -> str:
    """`command` (note), for a command recorded with a parenthesised note after it."""
    cmd, _, note = c.partition(" (")
    return f"`{cmd}`" + (f" ({note}" if note else "")


def write_report(out: Path, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(out.with_suffix(".json").read_text())
    runs = d["runs"]
    full = next(r for r in runs if r["key"] == "full")["ppl"]
    grid: dict[str, dict[float, dict]] = {}
    for r in runs:
        if r["variant"] in GRID_ORDER:
            grid.setdefault(r["variant"], {})[r["share"]] = r
    shares = sorted({s for v in grid.values() for s in v})
    name = out.name
    lines = [f"# Quality against KV budget: streaming perplexity ({d['tokens']} tokens)", "",
             "Commands: " + ", ".join(fmt_command(c) for c in d.get("commands", [d["command"]]))
             + "  ",
             f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, shared with another "
             f"engineer's work (load average {d['load_average_start'][0]:.2f} at the start); "
             f"{d['threads']} thread per run, up to 2 runs at a time. Perplexity does not "
             "depend on timing.  ",
             f"Model: `{Path(d['model']).name}`; text: the first {d['tokens']} tokens of "
             f"{d['novel']} (Debian r-cran-janeaustenr), read {d['chunk']} tokens per decode, every "
             "next-token prediction scored. Sink 4, recent 16, eviction batch 16 for every policy.",
             "", f"Full cache ({d['tokens']} cells): ppl **{full:.4f}**.", "",
             "## Perplexity by policy and budget (ratio to the full cache)", "",
             "| policy | " + " | ".join(f"{s:g}% ({cells_at(grid, s)} cells)" for s in shares) + " |",
             "|---|" + "---|" * len(shares)]
    best = {s: min(grid[v][s]["ppl"] for v in grid if s in grid[v]) for s in shares}
    for v in GRID_ORDER:
        if v not in grid:
            continue
        cells = []
        for s in shares:
            r = grid[v].get(s)
            if r is None:
                cells.append("")
                continue
            t = f"{r['ppl']:.3f} ({r['ppl'] / full:.3f})"
            cells.append(f"**{t}**" if r["ppl"] == best[s] else t)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "window and h2o, a2sf, tova, rcstat, random keep each token's position (the model "
              "sees gaps); streamingllm and context-shift compact positions after each eviction as "
              "StreamingLLM and llama.cpp do; context-shift-keep is the same choice of tokens with "
              "positions kept. Bold: the lowest perplexity at that budget.", "",
              "## Targets", ""] + targets(grid, full, shares, runs) + recall_lines(grid, shares)
    # sweeps
    alpha = [r for r in runs if r["variant"] == "a2sf-alpha"]
    if alpha:
        ss = sorted({r["share"] for r in alpha})
        lines += ["", "## A2SF alpha sweep", "", "| alpha | " + " | ".join(f"{s:g}%" for s in ss) + " |",
                  "|---|" + "---|" * len(ss)]
        for al in sorted({r["alpha"] for r in alpha}):
            row = {r["share"]: r for r in alpha if r["alpha"] == al}
            lines.append(f"| {al:g} | " + " | ".join(
                f"{row[s]['ppl']:.3f}" if s in row else "" for s in ss) + " |")
        lines += ["", "alpha 0 is TOVA's rule and alpha 1 H2O's (the same kernels)."]
    eps = [r for r in runs if r["variant"] == "rcstat-eps"]
    if eps:
        lines += ["", "## rcstat epsilon sweep: mean cache occupancy against perplexity", "",
                  "| budget | epsilon | mean cells used | max cells used | evicted tokens | ppl | ppl / full |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(eps, key=lambda r: (r["share"], r["epsilon"])):
            lines.append(f"| {r['share']:g}% ({r['budget']}) | {r['epsilon']:g} | "
                         f"{r['kv_cells_used_mean']:.0f} | {r['kv_cells_used_max']} | "
                         f"{r['evicted_tokens']} | {r['ppl']:.3f} | {r['ppl'] / full:.3f} |")
        lines += ["", "Mean cells used: the cache occupancy after each decode, averaged over the "
                  "run (a cache that fills from empty averages about half its budget over a text "
                  "twice its size even without eviction)."]
    # plots
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    for k, v in enumerate(GRID_ORDER):
        if v in grid:
            xs = sorted(grid[v])
            ax.plot(xs, [grid[v][x]["ppl"] for x in xs], marker="os^vD"[k % 5],
                    color=colors[(2 * k) % 20 + (k * 2 >= 20)],
                    linestyle="--" if v in BASELINES or v == "random" else "-", label=v)
    ax.axhline(full, color="black", linewidth=1, label="full cache")
    ax.set_xscale("log", base=2)
    ax.set_xticks(shares, [f"{s:g}%" for s in shares])
    ax.set_xlabel("KV budget (share of the text's tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{Path(d['model']).name}, {d['tokens']} tokens of {d['novel']}")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(img / f"{name}.png", dpi=110)
    plt.close(fig)
    lines += ["", f"![perplexity against budget](../img/{name}.png)"]
    if eps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for v in ("window", "a2sf", "context-shift"):
            if v in grid:
                xs = sorted(grid[v])
                ax.plot([grid[v][x]["kv_cells_used_mean"] for x in xs],
                        [grid[v][x]["ppl"] for x in xs], marker="o", label=f"{v} (budgets)")
        for s in sorted({r["share"] for r in eps}):
            pts = sorted((r["kv_cells_used_mean"], r["ppl"], r["epsilon"]) for r in eps if r["share"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", label=f"rcstat, budget {s:g}%")
            for x, y, e in pts:
                ax.annotate(f"{e:g}", (x, y), fontsize=7)
        ax.axhline(full, color="black", linewidth=1, label="full cache")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("mean KV cells used")
        ax.set_ylabel("perplexity")
        ax.set_title("rcstat epsilon sweep (labels: epsilon)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / f"{name}-occupancy.png", dpi=110)
        plt.close(fig)
        lines += ["", f"![occupancy against perplexity](../img/{name}-occupancy.png)"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    write_report(REPO / sys.argv[1] if not Path(sys.argv[1]).is_absolute() else Path(sys.argv[1]),
                 REPO / "docs" / "img")
