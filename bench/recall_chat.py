"""Memory across a long chat: a fact stated in turn 1, then turns of other content that push it
out of the budget, then a question that needs it (docs/bench/recall-chat.md).

    .venv/bin/python bench/recall_chat.py [--model qwen2.5-coder-0.5b] [--n 30] [--turns 8]
        [--budget 25%] [--out recall-chat] CACHE...

CACHE (in this order; full first when the budget is a share): full (a cache that holds the
whole chat, which answers as stock llama-cpp-python does: tests/test_budgeted.py), or a cache
as bench/common.py's cache_options names it (a2sf, context-shift, a2sf+recall,
a2sf+recall{"relative":0.5}, a2sf+structure...). Every cache answers the same conversations
(seed 0) in one process, conversation by conversation: turn 1 states a fact ("Please remember: my locker number is 4817."), each
later turn pastes a passage of the essay haystack (pyrcedge eval niah's) for a one-sentence
summary, the last asks for the fact. A hit is the fact's key word in the answer. The budget is a
share of the whole chat's tokens as the full cache read it. Replies are greedy, through
create_chat_completion, as a chat app sends them (the whole message list each turn).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import cache_options, command, machine, quartiles  # noqa: E402

from pyrcedge import Llama  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402
from pyrcedge.cache.budget import Budget  # noqa: E402
from pyrcedge.evaluation.niah import haystack_sentences  # noqa: E402
from pyrcedge.evaluation.qa import f1_score  # noqa: E402

FACTS = [  # (statement, question, key), with {} filled from the choices
    ("my locker number is {}", "What is my locker number?",
     ["4817", "2093", "7164", "3558", "9021", "6342"]),
    ("my favourite object is a {} compass", "What is my favourite object?",
     ["jade", "brass", "silver", "copper", "ivory", "cobalt"]),
    ("my dog is called {}", "What is my dog called?",
     ["Biscuit", "Pepper", "Juniper", "Marlow", "Tansy", "Rufus"]),
    ("I was born in {}", "In which city was I born?",
     ["Valparaiso", "Tampere", "Ljubljana", "Cartagena", "Hobart", "Dunedin"]),
    ("my car is painted {}", "What colour is my car?",
     ["teal", "maroon", "lavender", "mustard", "turquoise", "crimson"]),
]


def conversations(n: int, turns: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    sentences = haystack_sentences()
    out = []
    for _ in range(n):
        stmt, question, choices = rng.choice(FACTS)
        key = rng.choice(choices)
        passages = []
        for _ in range(turns):
            s = rng.randrange(len(sentences) - 8)
            passages.append(" ".join(sentences[s:s + 6]))
        out.append({"fact": "Please remember this: " + stmt.format(key) + ".",
                    "passages": passages, "question": question, "key": key})
    return out


def run_chat(llm: Llama, conv: dict, reply_tokens: int) -> tuple[list[str], float, list[float]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    per_turn, replies = [], []
    asks = [conv["fact"]] + [f"Summarize this passage in one sentence:\n{p}"
                             for p in conv["passages"]] + [conv["question"]]
    text = ""
    for k, ask in enumerate(asks):
        messages.append({"role": "user", "content": ask})
        t = time.perf_counter()
        r = llm.create_chat_completion(messages=messages, temperature=0.0,
                                       max_tokens=24 if k == len(asks) - 1 else reply_tokens)
        per_turn.append(time.perf_counter() - t)
        text = r["choices"][0]["message"]["content"] or ""
        replies.append(text)
        messages.append({"role": "assistant", "content": text})
    return replies, per_turn[-1], per_turn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--budget", default="25%")
    ap.add_argument("--reply-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("caches", nargs="+")
    a = ap.parse_args()
    path = str(model_path(a.model))
    convs = conversations(a.n, a.turns)
    common = dict(n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True, seed=0,
                  verbose=False)
    share = Budget.parse(a.budget)
    if share.kind == "share" and a.caches[0] != "full":
        raise SystemExit("a budget that is a share of the history needs full first")
    rows: dict[str, list[dict]] = {name: [] for name in a.caches}
    # conversation by conversation, every cache in turn: a drift of the machine's speed falls
    # on all caches alike, and the full cache's history sets the others' budget
    for conv in convs:
        history, full_replies = 0, None
        for name in a.caches:
            if name == "full":
                llm = Llama(path, kv_budget=8192, policy="full", **common)
            else:
                cells = share.of(history, 36).value
                llm = Llama(path, kv_budget=cells, **cache_options(name), **common)
            replies, last_s, per_turn = run_chat(llm, conv, a.reply_tokens)
            reply = replies[-1]
            st = llm.kv_stats()
            if name == "full":
                history, full_replies = st.history_tokens, replies
            agree = ([f1_score(r, [f]) for r, f in zip(replies[:-1], full_replies[:-1])]
                     if full_replies is not None else [])
            rows[name].append({"hit": conv["key"].lower() in reply.lower(), "reply": reply,
                               "replies": replies, "turn_f1_vs_full": agree,
                               "key": conv["key"], "history": st.history_tokens,
                               "cells": st.budget_cells, "last_turn_s": last_s,
                               "turn_s": per_turn, "turn_s_median": statistics.median(per_turn),
                               "recalls": st.recalls, "recalled_tokens": st.recalled_tokens,
                               "evicted": st.evicted_tokens})
            llm.close()
        print(f"conversation {len(rows[a.caches[0]])}: " + ", ".join(
            f"{name} {'hit' if rows[name][-1]['hit'] else 'miss'} {rows[name][-1]['last_turn_s']:.2f}s"
            for name in a.caches), file=sys.stderr, flush=True)
    # the first budgeted cache is the baseline of the time ratios (a policy without recall)
    base = next((name for name in a.caches if name != "full"), a.caches[0])
    results: dict[str, dict] = {}
    for name, rs in rows.items():
        paired = list(zip(rs, rows[base]))
        results[name] = {
            "hits": sum(r["hit"] for r in rs), "n": len(rs), "rows": rs,
            "last_turn_s_median": statistics.median(r["last_turn_s"] for r in rs),
            "turn_s_median": statistics.median(r["turn_s_median"] for r in rs),
            "last_turn_ratio": quartiles([r["last_turn_s"] / b["last_turn_s"] for r, b in paired]),
            "turn_ratio": quartiles([x / y for r, b in paired
                                     for x, y in zip(r["turn_s"], b["turn_s"])]),
            "cells_mean": statistics.mean(r["cells"] for r in rs),
            "history_mean": statistics.mean(r["history"] for r in rs),
            "recalled_tokens_mean": statistics.mean(r["recalled_tokens"] for r in rs),
            "turn_f1_vs_full_mean": statistics.mean(
                f for r in rs for f in r["turn_f1_vs_full"]) if "full" in rows else None}
    if a.out:
        out = REPO / "docs" / "bench" / a.out
        record = {"command": command(), "machine": machine(), "args": vars(a), "results": results}
        out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        full = results["full"]["hits"] if "full" in results else 0
        lines = [f"# A fact from turn 1, asked after {a.turns} more turns: {a.model}", "",
                 f"Command: `{record['command']}`  ",
                 f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, "
                 f"{a.threads} threads, one conversation at a time.  ",
                 f"{a.n} conversations (seed 0; bench/recall_chat.py says how they are made); "
                 f"budget {a.budget} of each conversation's history as the full cache read it. "
                 "Hit: the fact's key word in the last answer. Reply F1: the token F1 of each "
                 "earlier turn's reply against the full cache's reply to the same messages (how "
                 "far the chat drifts from what the whole history gives), averaged over the "
                 "turns. Seconds: the last turn (the question), and the median turn.", "",
                 f"Time ratios: to {base} in the same conversation (the question turn; every "
                 "turn), median (25th-75th percentile).", "",
                 "| cache | hits | / full | reply F1 vs full | cells, mean | history, mean | "
                 "recalled tokens, mean | last turn s, median | turn s, median | last turn / "
                 f"{base} | turn / {base} |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            ratio = r["hits"] / full if full else float("nan")
            f1 = r["turn_f1_vs_full_mean"]
            lines.append(f"| {name} | {r['hits']}/{r['n']} | {ratio:.2f} | "
                         f"{'' if f1 is None else f'{f1:.3f}'} | {r['cells_mean']:.0f} | "
                         f"{r['history_mean']:.0f} | {r['recalled_tokens_mean']:.1f} | "
                         f"{r['last_turn_s_median']:.2f} | {r['turn_s_median']:.2f} | "
                         + " | ".join("{1:.2f} ({0:.2f}-{2:.2f})".format(*r[k])
                                      for k in ("last_turn_ratio", "turn_ratio")) + " |")
        lines += ["", "Per-conversation replies are in the json.", ""]
        out.with_suffix(".md").write_text("\n".join(lines))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
