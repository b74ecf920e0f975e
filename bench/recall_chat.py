"""Memory across a long chat: a fact stated in turn 1, then turns of other content that push it
out of the budget, then a question that needs it (docs/bench/recall-chat.md).

    .venv/bin/python bench/recall_chat.py [--model qwen2.5-coder-0.5b] [--n 30] [--turns 8]
        [--budget 25%] [--out recall-chat] CACHE...

CACHE (in this order; full first when the budget is a share): full (a cache that holds the
whole chat, which answers as stock llama-cpp-python does: tests/test_budgeted.py), POLICY (a2sf,
window, context-shift) or POLICY+recall[=TOKENS], each optionally followed by +structure
(chat_structure=True). Every cache answers the same conversations (seed 0) in one process,
one after another: turn 1 states a fact ("Please remember: my locker number is 4817."), each
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

from common import command, machine  # noqa: E402

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
POLICY_KW = {"a2sf": {"policy": "a2sf"}, "window": {"policy": "window"},
             "context-shift": {"policy": "context-shift", "positions": "compact"}}


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
    results: dict[str, dict] = {}
    history: list[int] = []
    full_replies: list[list[str]] = []
    share = Budget.parse(a.budget)
    if share.kind == "share" and a.caches[0] != "full":
        raise SystemExit("a budget that is a share of the history needs full first")
    for name in a.caches:
        rows, t0 = [], time.time()
        for j, conv in enumerate(convs):
            if name == "full":
                llm = Llama(path, kv_budget=8192, policy="full", **common)
            else:
                base, structure = ((name[:-len("+structure")], True)
                                   if name.endswith("+structure") else (name, False))
                policy, _, rec = base.partition("+recall")
                recall = (int(rec.lstrip("=")) if rec.lstrip("=") else True) if _ else None
                cells = share.of(history[j] if history else 0, 36).value
                llm = Llama(path, kv_budget=cells, recall=recall, chat_structure=structure,
                            **POLICY_KW[policy], **common)
            replies, last_s, per_turn = run_chat(llm, conv, a.reply_tokens)
            reply = replies[-1]
            st = llm.kv_stats()
            if name == "full":
                history.append(st.history_tokens)
            if name == "full":
                full_replies.append(replies)
            agree = ([f1_score(r, [f]) for r, f in zip(replies[:-1], full_replies[j][:-1])]
                     if len(full_replies) > j else [])
            rows.append({"hit": conv["key"].lower() in reply.lower(), "reply": reply,
                         "replies": replies, "turn_f1_vs_full": agree,
                         "key": conv["key"], "history": st.history_tokens,
                         "cells": st.budget_cells, "last_turn_s": last_s,
                         "turn_s_median": statistics.median(per_turn),
                         "recalls": st.recalls, "recalled_tokens": st.recalled_tokens,
                         "evicted": st.evicted_tokens})
            llm.close()
        hits = sum(r["hit"] for r in rows)
        results[name] = {"hits": hits, "n": len(rows), "rows": rows,
                         "last_turn_s_median": statistics.median(r["last_turn_s"] for r in rows),
                         "turn_s_median": statistics.median(r["turn_s_median"] for r in rows),
                         "cells_mean": statistics.mean(r["cells"] for r in rows),
                         "history_mean": statistics.mean(r["history"] for r in rows),
                         "recalled_tokens_mean": statistics.mean(r["recalled_tokens"] for r in rows),
                         "turn_f1_vs_full_mean": statistics.mean(
                             f for r in rows for f in r["turn_f1_vs_full"]) if full_replies else None}
        print(f"{name}: {hits}/{len(rows)} cells {results[name]['cells_mean']:.0f} history "
              f"{results[name]['history_mean']:.0f} last turn s {results[name]['last_turn_s_median']:.2f} "
              f"recalled {results[name]['recalled_tokens_mean']:.1f} wall {time.time() - t0:.0f}s",
              flush=True)
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
                 "| cache | hits | / full | reply F1 vs full | cells, mean | history, mean | "
                 "recalled tokens, mean | last turn s, median | turn s, median |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for name, r in results.items():
            ratio = r["hits"] / full if full else float("nan")
            f1 = r["turn_f1_vs_full_mean"]
            lines.append(f"| {name} | {r['hits']}/{r['n']} | {ratio:.2f} | "
                         f"{'' if f1 is None else f'{f1:.3f}'} | {r['cells_mean']:.0f} | "
                         f"{r['history_mean']:.0f} | {r['recalled_tokens_mean']:.1f} | "
                         f"{r['last_turn_s_median']:.2f} | {r['turn_s_median']:.2f} |")
        lines += ["", "Per-conversation replies are in the json.", ""]
        out.with_suffix(".md").write_text("\n".join(lines))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
