"""docs/bench/<name>.md and .json for `pyrcedge bench speed --report`."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": os.getloadavg()}


def write_speed_report(result: dict[str, Any], out: Path, plot: str | None) -> None:
    result = {**result, "machine": result.get("machine") or machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    s, p, r, m = result["stock"], result["pyrcedge"], result["ratios"], result["machine"]
    mib = 2**20
    lines = [f"# Speed and memory: a {result['target_tokens']}-token chat in {result['budget']} "
             "cells against stock llama-cpp-python", "",
             f"Command: `.venv/bin/{result['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, shared with another engineer's work "
             f"(load average at the end {m['load_average'][0]:.2f}); {result['threads']} thread(s), "
             "flash attention on, one run of each side, stock first.  ",
             f"Model: `{Path(result['model']).name}`. User turns: chitchat-dataset's human "
             f"messages; each reply exactly {result['decode_per_turn']} tokens (greedy, "
             "end-of-generation banned) so both sides decode the same number of tokens.", "",
             "| | stock llama-cpp-python | pyrcedge | pyrcedge / stock |", "|---|---|---|---|",
             f"| KV cache | n_ctx {s['n_ctx']} | budget {result['budget']} cells, {result['policy']}, "
             f"recall {recall_text(result.get('recall'))} | |",
             f"| turns, history tokens | {s['turns']}, {s['history_tokens']} | {p['turns']}, "
             f"{p['history_tokens']} | |",
             f"| decode tok/s, whole chat | {s['decode_tok_s']:.1f} | {p['decode_tok_s']:.1f} | "
             f"**{r['decode']:.2f}x** |",
             f"| decode tok/s, last quarter of turns | {s['decode_tok_s_last_quarter']:.1f} | "
             f"{p['decode_tok_s_last_quarter']:.1f} | {r['decode_last_quarter']:.2f}x |",
             f"| prefill tok/s | {s['prefill_tok_s']:.1f} | {p['prefill_tok_s']:.1f} | "
             f"{r['prefill']:.2f}x |",
             f"| KV bytes | {s['kv_bytes'] / mib:.1f} MiB | {p['kv_bytes'] / mib:.1f} MiB "
             f"(+ {result['pyrcedge_statistics_bytes'] / mib:.1f} MiB statistics) | "
             f"**{r['kv_bytes_less']:.2f}x less** |",
             f"| prompt tokens evaluated | {s['prefill_tokens']} | {p['prefill_tokens']} | |",
             f"| peak RSS | {s['peak_rss_bytes'] / mib:.0f} MiB | {p['peak_rss_bytes'] / mib:.0f} MiB"
             f" | {r['peak_rss']:.2f} |", "",
             f"Stock's n_ctx leaves room for the last turn; sized to the final history alone "
             f"({s['history_tokens']} cells) its KV would be {s['history_tokens'] / result['budget']:.2f}x "
             "pyrcedge's. pyrcedge evaluates more prompt tokens when a prompt diverges from its "
             "history before the last eviction (a reply that re-tokenizes differently): it then "
             "re-reads the whole conversation (docs/budget.md), where stock truncates.", "",
             f"pyrcedge evicted {result['pyrcedge_evictions']} times and recalled "
             f"{result.get('pyrcedge_recalled_tokens') or 0} tokens in "
             f"{result.get('pyrcedge_recalls') or 0} prompts (timed as prefill). KV bytes: llama.cpp's own log "
             "line (stock) and kv_stats().allocated_bytes (pyrcedge); the statistics the scoring "
             "keeps beside the cache are listed apart. Peak RSS includes the mapped model file.", ""]
    if plot:
        lines += [f"![decode tok/s per turn](../img/{Path(plot).name})", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def recall_text(recall: bool | int | None) -> str:
    """How a report names pyrcedge.Llama's recall setting."""
    if recall is None or recall is False:
        return "off"
    return "on" if recall is True else f"on ({recall} tokens a prompt)"
