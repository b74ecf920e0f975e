"""Where turn 1's fact went: replay conversations of bench/recall_chat.py with one cache and
trace, turn by turn, every eviction and recall that touched the fact's sentence
(docs/bench/recall-room-trace.md).

    .venv/bin/python bench/recall_room_trace.py [--n 8] [--turns 24] [--budget 1024]
        [--conversations 0,2,3,5] [--cache default] [--out recall-room-trace]

CACHE: as bench/recall_chat.py names them (default, default-norecall, or cache_options').
For each eviction: the turn, the phase that asked for it (recall: the room made for recalled
spans, before the prompt or, inside a probed read, before its question; read: the prompt's
own reading; answer: the reply's decoding), and which of the fact's tokens it evicted; for
each recall, the spans and whether they held the fact's tokens; at the question, the fact's
tokens cached before and after its recall, and the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import cache_options, command, machine  # noqa: E402
from recall_chat import conversations, hit  # noqa: E402

from pyrcedge import Llama  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402
from pyrcedge.cache.engine import EvictionEvent, RecallEvent  # noqa: E402


def trace(path: str, conv: dict[str, Any], cells: int, name: str, threads: int,
          reply_tokens: int) -> dict[str, Any]:
    state: dict[str, Any] = {"turn": 0, "phase": "read", "fact": set()}
    events: list[dict[str, Any]] = []

    def on_evict(e: EvictionEvent) -> None:
        gone = sorted(set(e.evicted.tolist()) & state["fact"])
        events.append({"turn": state["turn"], "phase": state["phase"], "what": "evict",
                       "n": len(e.evicted), "fact": gone})

    def on_recall(e: RecallEvent) -> None:
        back = {i for a, b in e.spans for i in range(a, b)}
        events.append({"turn": state["turn"], "phase": state["phase"], "what": "recall",
                       "n": e.tokens, "spans": e.spans, "fact": sorted(back & state["fact"])})

    options = ({} if name == "default" else {"recall": None} if name == "default-norecall"
               else cache_options(name))
    llm = Llama(path, kv_budget=cells, n_threads=threads, n_threads_batch=threads,
                flash_attn=True, seed=0, verbose=False, on_evict=on_evict, on_recall=on_recall,
                **options)
    inner_recall, inner_read = llm._recall, llm._read

    def recall_(*args: Any, **kw: Any) -> int:
        was, state["phase"] = state["phase"], "recall"
        try:
            return inner_recall(*args, **kw)
        finally:
            state["phase"] = was

    def read_(*args: Any, **kw: Any) -> None:
        was, state["phase"] = state["phase"], "read"
        try:
            inner_read(*args, **kw)
        finally:
            state["phase"] = was

    llm._recall = recall_  # type: ignore[method-assign]
    llm._read = read_  # type: ignore[method-assign]
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant."}]
    asks = [conv["fact"]] + [f"Summarize this passage in one sentence:\n{p}"
                             for p in conv["passages"]] + [conv["question"]]
    fact_cached: list[int] = []
    question: dict[str, Any] = {}
    t0 = time.process_time()
    for k, ask in enumerate(asks):
        state["turn"] = k
        messages.append({"role": "user", "content": ask})
        if k == len(asks) - 1:
            # the fact's tokens cached before the question's recall
            question["cached_before"] = sorted(set(llm.kv_cache.cached.tolist()) & state["fact"])
        state["phase"] = "prompt"
        r: Any = llm.create_chat_completion(messages=messages, temperature=0.0,
                                            max_tokens=24 if k == len(asks) - 1 else reply_tokens)
        text = r["choices"][0]["message"]["content"] or ""
        messages.append({"role": "assistant", "content": text})
        if k == 0:
            # the fact sentence: the history tokens of turn 1's statement
            ids = llm.input_ids[:llm.n_tokens].tolist()
            stmt = llm.tokenize(conv["fact"].encode(), add_bos=False)
            at = next(i for i in range(len(ids)) if ids[i:i + len(stmt)] == stmt)
            state["fact"] = set(range(at, at + len(stmt)))
            question["fact_span"] = [at, at + len(stmt)]
            question["fact_text"] = llm.detokenize(stmt).decode()
            question["fact_pieces"] = [llm.detokenize([t]).decode("utf-8", "replace") for t in stmt]
        fact_cached.append(len(set(llm.kv_cache.cached.tolist()) & state["fact"]))
    st = llm.kv_stats()
    question["cached_after"] = sorted(set(st.positions.tolist()) & state["fact"])
    question["answer"] = text
    question["hit"] = hit(conv, text)
    llm.close()
    return {"cache": name, "key": conv["key"], "events": [e for e in events if e["fact"]
                                                          or e["what"] == "recall"],
            "evictions": sum(e["what"] == "evict" for e in events),
            "evicted_by_phase": {p: sum(e["n"] for e in events
                                        if e["what"] == "evict" and e["phase"] == p)
                                 for p in ("recall", "read", "prompt")},
            "fact_cached_per_turn": fact_cached, "question": question,
            "cpu_s": time.process_time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--conversations", default="0,2,3,5")
    ap.add_argument("--reply-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="recall-room-trace")
    ap.add_argument("caches", nargs="*", default=["default"])
    a = ap.parse_args()
    path = str(model_path(a.model))
    convs = conversations(a.n, a.turns)
    out: list[dict[str, Any]] = []
    for j in [int(x) for x in a.conversations.split(",")]:
        for name in a.caches:
            t = trace(path, convs[j], a.budget, name, a.threads, a.reply_tokens)
            t["conversation"] = j
            out.append(t)
            q = t["question"]
            print(f"conversation {j} {name}: {'hit' if q['hit'] else 'miss'} {q['answer']!r}; "
                  f"fact {len(q['fact_pieces'])} tokens, cached before the question "
                  f"{len(q['cached_before'])}, after {len(q['cached_after'])}; "
                  f"{t['cpu_s']:.0f} cpu s", file=sys.stderr, flush=True)
            (REPO / "docs" / "bench" / f"{a.out}.json").write_text(json.dumps(
                {"command": command(), "machine": machine(), "args": vars(a), "runs": out},
                indent=1) + "\n")


if __name__ == "__main__":
    main()
