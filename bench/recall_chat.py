"""Memory across a long chat: a fact stated in turn 1, then turns of other content that push it
out of the budget, then a question that needs it (docs/bench/recall-chat.md).

    .venv/bin/python bench/recall_chat.py [--model qwen2.5-coder-0.5b] [--n 30] [--turns 8]
        [--budget 25%|CELLS] [--kinds fact,instruction] [--out recall-chat] CACHE...

CACHE (in this order; full first when the budget is a share): full (a cache that holds the
whole chat, which answers as stock llama-cpp-python does: tests/test_budgeted.py), default
(pyrcedge.Llama(kv_budget=...) with its defaults: a2sf, the tail probe, recall),
default-norecall (the same with recall=None: what recall costs, the probe's cost left out), or
a cache as bench/common.py's cache_options names it (a2sf, context-shift, a2sf+recall,
a2sf+probe+recall{"relative":0.5}, a2sf+structure...). The baseline of the time ratios is
default-norecall when it is named, else the first budgeted cache; the ratios to a2sf are kept
beside them when a2sf is named. Each turn's time is the process's CPU time (time.process_time:
what the turn cost, whatever else the machine runs) and its wall time; ratios are given for both.
Every cache answers the same conversations (seed 0) in one process, conversation by
conversation. Turn 1 states a fact ("Please remember this: my locker number is 4817.", kind
fact) or an instruction ("From now on, always answer in French.", kind instruction); each later
turn pastes a passage of the essay haystack (pyrcedge eval niah's) for a one-sentence summary;
the last asks for the fact, or asks an ordinary question (which shares no word with the
instruction). A hit: the fact's key word in the answer, or the answer following the instruction
(`follows`). The budget is a share of the whole chat's tokens as the full cache read it, or a
number of cells. Replies are greedy, through create_chat_completion, as a chat app sends them
(the whole message list each turn): the prompt tokens stock llama-cpp-python would read without
its prefix cache are the whole history each turn; what each cache evaluated is recorded per
turn (the new prompt tokens after the reused prefix, the tokens recalled, the probe's tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

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


FRENCH = frozenset("le la les est une des du et je vous il elle nous sont avec pour dans qui "
                   "cette pas au aux sur ville capitale jours semaine couleurs".split())


def french(answer: str) -> bool:
    words = re.findall(r"[^\W\d_]+", answer.lower())
    hits = [w for w in words if w in FRENCH]
    return len(set(hits)) >= 2 and len(hits) >= 0.15 * len(words)


def capitals(answer: str) -> bool:
    letters = [c for c in answer if c.isalpha()]
    return len(letters) >= 5 and sum(c.isupper() for c in letters) >= 0.9 * len(letters)


# (instruction, its detector): a short instruction that an ordinary question later needs
INSTRUCTIONS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("From now on, always answer in French.", "french", french),
    ("From now on, always answer in capital letters only.", "capitals", capitals)]
QUESTIONS = ["What is the capital of Australia?", "How many days are there in a week?",
             "Name the colours of the rainbow.", "What do bees make?",
             "Which planet is closest to the sun?", "What is water made of?"]
FOLLOWS = {name: detect for _, name, detect in INSTRUCTIONS}


def conversations(n: int, turns: int, kind: str = "fact", seed: int = 0) -> list[dict[str, Any]]:
    """n conversations of a kind (fact: seed 0 gives the same chats as before there were
    kinds)."""
    rng = random.Random(seed)
    sentences = haystack_sentences()
    out = []
    for _ in range(n):
        if kind == "fact":
            stmt, question, choices = rng.choice(FACTS)
            key = rng.choice(choices)
            first = "Please remember this: " + stmt.format(key) + "."
        else:
            first, key, _ = rng.choice(INSTRUCTIONS)
            question = rng.choice(QUESTIONS)
        passages = []
        for _ in range(turns):
            s = rng.randrange(len(sentences) - 8)
            passages.append(" ".join(sentences[s:s + 6]))
        out.append({"kind": kind, "fact": first, "passages": passages, "question": question,
                    "key": key})
    return out


def hit(conv: dict[str, Any], answer: str) -> bool:
    if conv["kind"] == "fact":
        return bool(conv["key"].lower() in answer.lower())
    return FOLLOWS[conv["key"]](answer)


class EvalMeter:
    """Wraps a Llama's eval (llama_cpp's generate calls self.eval): each call's history length
    when it began (the prefix reused) and its tokens. A completion's first call reads its
    prompt; the sampled tokens follow one by one."""

    def __init__(self, llm: Llama) -> None:
        self.llm, self.inner = llm, llm.eval
        self.calls: list[tuple[int, int]] = []
        llm.eval = self  # type: ignore[method-assign]

    def __call__(self, tokens: Sequence[int]) -> None:
        self.calls.append((self.llm.n_tokens, len(tokens)))
        self.inner(tokens)


def run_chat(llm: Llama, conv: dict[str, Any], reply_tokens: int) -> dict[str, Any]:
    """The chat's replies, and per turn: seconds, the prompt's tokens (what stock re-reads
    without a prefix cache), the prefix reused, the new prompt tokens read, recalled, probed."""
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant."}]
    asks = [conv["fact"]] + [f"Summarize this passage in one sentence:\n{p}"
                             for p in conv["passages"]] + [conv["question"]]
    meter = EvalMeter(llm)
    turns: dict[str, list[Any]] = {k: [] for k in ("replies", "s", "cpu_s", "prompt", "prefix",
                                                   "read", "recalled", "probe")}
    for k, ask in enumerate(asks):
        messages.append({"role": "user", "content": ask})
        before, meter.calls = llm.kv_stats(), []
        t, c = time.perf_counter(), time.process_time()
        r: Any = llm.create_chat_completion(messages=messages, temperature=0.0,
                                       max_tokens=24 if k == len(asks) - 1 else reply_tokens)
        turns["cpu_s"].append(time.process_time() - c)
        turns["s"].append(time.perf_counter() - t)
        after = llm.kv_stats()
        text = r["choices"][0]["message"]["content"] or ""
        turns["replies"].append(text)
        prefix, read = meter.calls[0] if meter.calls else (llm.n_tokens, 0)
        turns["prompt"].append(r["usage"]["prompt_tokens"])
        turns["prefix"].append(prefix)
        turns["read"].append(read)
        turns["recalled"].append(after.recalled_tokens - before.recalled_tokens)
        turns["probe"].append(after.probe_tokens - before.probe_tokens)
        messages.append({"role": "assistant", "content": text})
    return turns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--budget", default="25%", help="a share of each chat's history, or cells")
    ap.add_argument("--kinds", default="fact", help="fact, instruction or both (comma): "
                    "n conversations of each")
    ap.add_argument("--full-cells", type=int, default=8192, help="the full cache's cells")
    ap.add_argument("--reply-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("caches", nargs="+")
    a = ap.parse_args()
    path = str(model_path(a.model))
    kinds = a.kinds.split(",")
    if not set(kinds) <= {"fact", "instruction"}:
        raise SystemExit(f"--kinds: fact, instruction or both, got {a.kinds!r}")
    convs = [c for kind in kinds for c in conversations(a.n, a.turns, kind)]
    common = dict(n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True, seed=0,
                  verbose=False)
    share = Budget.parse(a.budget)
    if share.kind not in ("share", "tokens"):
        raise SystemExit(f"--budget: a share ('25%') or cells ('512'), got {a.budget!r}")
    if share.kind == "share" and a.caches[0] != "full":
        raise SystemExit("a budget that is a share of the history needs full first")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in a.caches}
    # conversation by conversation, every cache in turn: a drift of the machine's speed falls
    # on all caches alike, and the full cache's history sets the others' budget
    for conv in convs:
        history, full_replies = 0, None
        for name in a.caches:
            if name == "full":
                llm = Llama(path, kv_budget=a.full_cells, policy="full", **common)
            else:
                cells = int(share.of(history, 36).value)
                options = ({} if name == "default" else {"recall": None}
                           if name == "default-norecall" else cache_options(name))
                llm = Llama(path, kv_budget=cells, **options, **common)
            turns = run_chat(llm, conv, a.reply_tokens)
            replies, per_turn = turns["replies"], turns["s"]
            st = llm.kv_stats()
            if name == "full":
                history, full_replies = st.history_tokens, replies
            agree = ([f1_score(r, [f]) for r, f in zip(replies[:-1], full_replies[:-1])]
                     if full_replies is not None else [])
            evaluated = [r + c + p for r, c, p in
                         zip(turns["read"], turns["recalled"], turns["probe"])]
            rows[name].append({"kind": conv["kind"], "hit": hit(conv, replies[-1]),
                               "reply": replies[-1], "replies": replies,
                               "turn_f1_vs_full": agree, "key": conv["key"],
                               "history": st.history_tokens, "cells": st.budget_cells,
                               "last_turn_s": per_turn[-1], "turn_s": per_turn,
                               "turn_s_median": statistics.median(per_turn),
                               "last_turn_cpu_s": turns["cpu_s"][-1], "turn_cpu_s": turns["cpu_s"],
                               "turn_cpu_s_median": statistics.median(turns["cpu_s"]),
                               "recalls": st.recalls, "recalled_tokens": st.recalled_tokens,
                               "evicted": st.evicted_tokens,
                               "turn_prompt_tokens": turns["prompt"],
                               "turn_prefix": turns["prefix"], "turn_read": turns["read"],
                               "turn_recalled": turns["recalled"], "turn_probe": turns["probe"],
                               "turn_evaluated": evaluated,
                               # a turn after the first that read its prompt from the start
                               "whole_rereads": sum(p == 0 for p in turns["prefix"][1:])})
            llm.close()
        print(f"conversation {len(rows[a.caches[0]])}: " + ", ".join(
            f"{name} {'hit' if rows[name][-1]['hit'] else 'miss'} "
            f"{sum(rows[name][-1]['turn_cpu_s']):.1f} cpu s {sum(rows[name][-1]['turn_s']):.1f} s"
            for name in a.caches), file=sys.stderr, flush=True)
        if a.out:     # after every conversation: a run cut short still leaves its record
            report(a, rows)


def ratios(rs: list[dict[str, Any]], bs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Quartiles of the question turn's and of every turn's time (key: "s" wall, "cpu_s" CPU)
    over the baseline's in the same conversation and turn."""
    paired = list(zip(rs, bs))
    return {"last_turn": quartiles([r[f"turn_{key}"][-1] / b[f"turn_{key}"][-1]
                                    for r, b in paired]),
            "turn": quartiles([x / y for r, b in paired
                               for x, y in zip(r[f"turn_{key}"], b[f"turn_{key}"])])}


def summary(rows: dict[str, list[dict[str, Any]]], base: str) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, rs in rows.items():
        paired = list(zip(rs, rows[base]))
        kinds = sorted({r["kind"] for r in rs})
        # the turns that paste a passage (not turn 1's fact, not the question)
        passage_recalled = [t for r in rs for t in r["turn_recalled"][1:-1]]
        results[name] = {
            "base": base,
            "cpu_ratio": ratios(rs, rows[base], "cpu_s"),
            "cpu_ratio_a2sf": ratios(rs, rows["a2sf"], "cpu_s") if "a2sf" in rows else None,
            "wall_ratio_a2sf": ratios(rs, rows["a2sf"], "s") if "a2sf" in rows else None,
            "last_turn_cpu_s_median": statistics.median(r["last_turn_cpu_s"] for r in rs),
            "turn_cpu_s_median": statistics.median(r["turn_cpu_s_median"] for r in rs),
            "chat_cpu_s_mean": statistics.mean(sum(r["turn_cpu_s"]) for r in rs),
            "passage_turns_recalling": (sum(t > 0 for t in passage_recalled)
                                        / max(1, len(passage_recalled))),
            "passage_turn_recalled_mean": (statistics.mean(passage_recalled)
                                           if passage_recalled else 0.0),
            "hits": sum(r["hit"] for r in rs), "n": len(rs), "rows": rs,
            "hits_by_kind": {k: [sum(r["hit"] for r in rs if r["kind"] == k),
                                 sum(r["kind"] == k for r in rs)] for k in kinds},
            "last_turn_s_median": statistics.median(r["last_turn_s"] for r in rs),
            "turn_s_median": statistics.median(r["turn_s_median"] for r in rs),
            "last_turn_ratio": quartiles([r["last_turn_s"] / b["last_turn_s"] for r, b in paired]),
            "turn_ratio": quartiles([x / y for r, b in paired
                                     for x, y in zip(r["turn_s"], b["turn_s"])]),
            "cells_mean": statistics.mean(r["cells"] for r in rs),
            "history_mean": statistics.mean(r["history"] for r in rs),
            "recalled_tokens_mean": statistics.mean(r["recalled_tokens"] for r in rs),
            "turn_recalled_max": max(max(r["turn_recalled"]) for r in rs),
            "evaluated_mean": statistics.mean(sum(r["turn_evaluated"]) for r in rs),
            "stock_reread_mean": statistics.mean(sum(r["turn_prompt_tokens"]) for r in rs),
            "last_turn_evaluated_mean": statistics.mean(r["turn_evaluated"][-1] for r in rs),
            "last_turn_prompt_mean": statistics.mean(r["turn_prompt_tokens"][-1] for r in rs),
            "whole_rereads": sum(r["whole_rereads"] for r in rs),
            "turn_f1_vs_full_mean": statistics.mean(
                f for r in rs for f in r["turn_f1_vs_full"]) if "full" in rows else None}
    return results


def report(a: argparse.Namespace, rows: dict[str, list[dict[str, Any]]]) -> None:
    """docs/bench/OUT.json and .md of the conversations done so far."""
    # the baseline of the time ratios: the default without recall (what recall costs), else
    # the first budgeted cache (a policy without recall)
    base = ("default-norecall" if "default-norecall" in a.caches
            else next((name for name in a.caches if name != "full"), a.caches[0]))
    results = summary(rows, base)
    done = len(rows[a.caches[0]])
    out = REPO / "docs" / "bench" / a.out
    record: dict[str, Any] = {"command": command(), "machine": machine(), "args": vars(a),
                              "done": done, "results": results}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    full = results["full"]["hits_by_kind"] if "full" in results else {}
    kinds = list(results[a.caches[0]]["hits_by_kind"])
    budget = (f"budget {a.budget} of each conversation's history as the full cache read it"
              if a.budget.strip().endswith("%") else f"budget {a.budget} cells")
    lines = [f"# Turn 1's {' or '.join(kinds)}, needed after {a.turns} more turns: {a.model}",
             "",
             f"Command: `{record['command']}`  ",
             f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, "
             f"{a.threads} threads, one conversation at a time, niceness {os.nice(0)} (the "
             "machine shared with other jobs: CPU time is the measure).  ",
             f"{done} conversations ({a.n} of each kind asked; seed 0; bench/recall_chat.py "
             f"says how they are made); {budget}. Hit: the fact's key word in the last answer "
             "(fact), the last answer following the instruction (instruction). Reply F1: the "
             "token F1 of each earlier turn's reply against the full cache's reply to the same "
             "messages (how far the chat drifts from what the whole history gives), averaged "
             "over the turns. Passage turns recalling: the share of the turns that paste a passage "
             "(not turn 1, not the question) that read history back, and the tokens they read "
             "back on average.", "",
             f"Time: the process's CPU time of a turn (its wall time in the second table). "
             f"Ratios: to {base} in the same conversation and turn (the question turn; every "
             "turn), median (25th-75th percentile).", "",
             "| cache | " + " | ".join(f"{k} hits | / full" for k in kinds)
             + " | reply F1 vs full | cells, mean | history, mean | recalled tokens, mean | "
             "passage turns recalling | tokens a passage turn recalls, mean | "
             "chat CPU s, mean | last turn CPU s, median | turn CPU s, median | "
             f"last turn / {base}, CPU | turn / {base}, CPU |"
             + (" last turn / a2sf, CPU | turn / a2sf, CPU |" if "a2sf" in results else ""),
             "|---|" + "---|---|" * len(kinds) + "---|" * 11
             + ("---|---|" if "a2sf" in results else "")]
    for name, r in results.items():
        hits = []
        for k in kinds:
            h, n = r["hits_by_kind"][k]
            f = full.get(k, [0, 0])[0]
            hits.append(f"{h}/{n} | " + (f"{h / f:.2f}" if f else "-"))
        f1 = r["turn_f1_vs_full_mean"]
        cpu = [r["cpu_ratio"]["last_turn"], r["cpu_ratio"]["turn"]]
        if r["cpu_ratio_a2sf"] is not None:
            cpu += [r["cpu_ratio_a2sf"]["last_turn"], r["cpu_ratio_a2sf"]["turn"]]
        lines.append(f"| {name} | " + " | ".join(hits) + " | "
                     f"{'' if f1 is None else f'{f1:.3f}'} | {r['cells_mean']:.0f} | "
                     f"{r['history_mean']:.0f} | {r['recalled_tokens_mean']:.1f} | "
                     f"{r['passage_turns_recalling']:.0%} | "
                     f"{r['passage_turn_recalled_mean']:.1f} | {r['chat_cpu_s_mean']:.1f} | "
                     f"{r['last_turn_cpu_s_median']:.2f} | {r['turn_cpu_s_median']:.2f} | "
                     + " | ".join("{1:.2f} ({0:.2f}-{2:.2f})".format(*q) for q in cpu) + " |")
    lines += ["", "Wall time (a shared machine: the CPU-time columns above are the measure; "
              "these are for reference).", "",
              f"| cache | last turn s, median | turn s, median | last turn / {base} | "
              f"turn / {base} |" + (" last turn / a2sf | turn / a2sf |" if "a2sf" in results
                                    else ""),
              "|---|---|---|---|---|" + ("---|---|" if "a2sf" in results else "")]
    for name, r in results.items():
        wall = [r["last_turn_ratio"], r["turn_ratio"]]
        if r["wall_ratio_a2sf"] is not None:
            wall += [r["wall_ratio_a2sf"]["last_turn"], r["wall_ratio_a2sf"]["turn"]]
        lines.append(f"| {name} | {r['last_turn_s_median']:.2f} | {r['turn_s_median']:.2f} | "
                     + " | ".join("{1:.2f} ({0:.2f}-{2:.2f})".format(*q) for q in wall) + " |")
    lines += ["", "Prompt tokens per chat, means: what each cache evaluated (the new prompt "
              "tokens after the prefix it reused, the tokens recalled, the probe's tokens), "
              "against the prompt tokens that stock llama-cpp-python re-reads when it reads the "
              "whole message list each turn (no prefix cache). Whole re-reads: turns after the "
              "first whose prompt was read from its start.", "",
              "| cache | evaluated per chat | stock re-read per chat | question turn evaluated | "
              "question turn prompt | most recalled in a turn | whole re-reads |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['evaluated_mean']:.0f} | {r['stock_reread_mean']:.0f} | "
                     f"{r['last_turn_evaluated_mean']:.0f} | {r['last_turn_prompt_mean']:.0f} | "
                     f"{r['turn_recalled_max']} | {r['whole_rereads']} |")
    lines += ["", "Per-conversation replies and per-turn tokens are in the json.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
