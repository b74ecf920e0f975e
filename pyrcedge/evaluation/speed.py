"""`pyrcedge bench speed`: a long chat through pyrcedge.Llama inside a budget against stock
llama-cpp-python with a context that holds the whole chat, in the same run.

Both sides run pyrcedge/evaluation/speed_worker.py in their own environment (the stock one in
.venv-stock, or --stock-python), one after the other, on the same user turns (human messages of
chitchat-dataset) and the same reply length. Reported per side: prefill and decode tok/s over the
whole conversation and over its last quarter of turns, peak RSS, and KV cache bytes (from
llama.cpp's own log line; pyrcedge's also from kv_stats()), with pyrcedge / stock ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..assets.gguf import check_gguf, resolve_model
from ..errors import PyrcedgeError
from ..features.recall import RecallLike
from ..llama.settings import DEFAULT_RECALL
from .sources import chitchat_turns

WORKER = Path(__file__).with_name("speed_worker.py")


def user_turns(n: int, min_chars: int) -> list[str]:
    """n user messages, each at least min_chars long, from chitchat's human turns in order."""
    groups = chitchat_turns(limit=n * 40)
    out, cur = [], ""
    for g in groups:
        cur = f"{cur} {g}".strip()
        if len(cur) >= min_chars:
            out.append(cur)
            cur = ""
            if len(out) == n:
                return out
    raise PyrcedgeError(f"chitchat-dataset gave only {len(out)} turns of {min_chars} characters")


def run_side(python: str, job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([python, str(WORKER)], input=json.dumps(job), capture_output=False,
                          stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise PyrcedgeError(f"the {job['variant']} side failed (exit {done.returncode}); see above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(side: dict[str, Any]) -> dict[str, Any]:
    turns = side["turns"]
    q = turns[len(turns) - max(1, len(turns) // 4):]

    def rate(ts: list[dict], kind: str) -> float:
        s = sum(t[f"{kind}_s"] for t in ts)
        return sum(t[f"{kind}_tokens"] for t in ts) / s if s > 0 else 0.0

    kv = side.get("kv_allocated_bytes") or (side["kv_mib_llama_log"] or 0) * 2**20
    return {"turns": len(turns), "history_tokens": side["history_tokens"], "n_ctx": side["n_ctx"],
            "decode_tok_s": rate(turns, "decode"), "decode_tok_s_last_quarter": rate(q, "decode"),
            "prefill_tok_s": rate(turns, "prefill"),
            "decode_tokens": sum(t["decode_tokens"] for t in turns),
            "prefill_tokens": sum(t["prefill_tokens"] for t in turns),
            "peak_rss_bytes": side["peak_rss_bytes"], "kv_bytes": int(kv),
            "kv_mib_llama_log": side["kv_mib_llama_log"], "wall_s": side["wall_s"]}


def bench_speed(model: str, *, target_tokens: int = 8192, budget: int = 1024,
                policy: str = "a2sf", decode: int = 64, threads: int = 1,
                stock_python: str | None = None, min_chars: int = 300,
                recall: RecallLike = DEFAULT_RECALL) -> dict[str, Any]:
    path = resolve_model(model)
    check_gguf(path)
    if target_tokens < 2 * budget:
        raise PyrcedgeError(f"the conversation ({target_tokens} tokens) should be at least twice "
                            f"the budget ({budget}) for the comparison to mean anything")
    if decode < 2:
        raise PyrcedgeError(f"decode must be at least 2 tokens per turn, got {decode}")
    if not (recall is None or isinstance(recall, (bool, int))):
        raise PyrcedgeError("recall must be on (True), off (None) or a number of tokens here: "
                            "the worker process receives it as JSON")
    stock = stock_python or str(Path(__file__).resolve().parents[2] / ".venv-stock" / "bin" / "python")
    if not Path(stock).exists():
        raise PyrcedgeError(f"stock llama-cpp-python environment not found at {stock}: "
                            "scripts/setup.sh --stock makes it, or pass --stock-python")
    turns = user_turns(max(8, target_tokens // 40), min_chars)
    common = {"model": str(path), "turns": turns, "decode": decode, "threads": threads,
              "target_tokens": target_tokens}
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    stock_side = run_side(stock, {**common, "variant": "stock",
                                  "n_ctx": target_tokens + 4 * decode + 1024}, env)
    ours = run_side(sys.executable, {**common, "variant": "pyrcedge", "budget": budget,
                                     "policy": policy, "recall": recall}, env)
    s, p = summarise(stock_side), summarise(ours)
    return {"model": str(path), "target_tokens": target_tokens, "budget": budget, "policy": policy,
            "recall": recall, "pyrcedge_recalls": ours.get("recalls"),
            "pyrcedge_recalled_tokens": ours.get("recalled_tokens"),
            "decode_per_turn": decode, "threads": threads, "stock": s, "pyrcedge": p,
            "ratios": {"decode": p["decode_tok_s"] / s["decode_tok_s"],
                       "decode_last_quarter": p["decode_tok_s_last_quarter"]
                       / s["decode_tok_s_last_quarter"],
                       "prefill": p["prefill_tok_s"] / s["prefill_tok_s"],
                       "kv_bytes_less": s["kv_bytes"] / p["kv_bytes"],
                       "peak_rss": p["peak_rss_bytes"] / s["peak_rss_bytes"]},
            "per_turn": {"stock": stock_side["turns"], "pyrcedge": ours["turns"]},
            "pyrcedge_evictions": ours.get("evictions"),
            "pyrcedge_statistics_bytes": ours.get("statistics_bytes")}


def plot_speed(result: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for side in ("stock", "pyrcedge"):
        ts = result["per_turn"][side]
        ax.plot([t["history"] for t in ts], [t["decode_tokens"] / t["decode_s"] for t in ts],
                marker=".", label=f"{side}" + (f" (budget {result['budget']}, {result['policy']})"
                                               if side == "pyrcedge" else " (whole chat cached)"))
    ax.set_xlabel("conversation history (tokens)")
    ax.set_ylabel("decode tok/s in the turn")
    ax.set_title(f"{Path(result['model']).name}, {result['threads']} thread(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
