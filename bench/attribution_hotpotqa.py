"""Sentence-level attribution on HotpotQA supporting facts (issue: RC attribution).

    .venv/bin/python bench/attribution_hotpotqa.py [--examples 100] [--oracle 10] [--top-k 8]

For each question (the first N of the distractor dev set, 10 paragraphs each), Qwen2.5-Coder-0.5B
answers greedily from the context through pyrcedge.Llama.explain, and every sentence of the
context is scored by: RC with the top-k heads, RC with all heads, post-softmax attention (the
accumulated attention of the answer's queries), and, on the first --oracle examples, a
leave-one-sentence-out ablation (the drop in the answer's log-probability when that sentence is
removed). A sentence is relevant when HotpotQA lists it as a supporting fact. Reported: top-1 and
top-2 hit rate (a relevant sentence ranked first / among the first two) and AUROC, with the
completion and attribution times. Results: docs/bench/attribution-hotpotqa.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

import pyrcedge  # noqa: E402
from pyrcedge.assets import datasets  # noqa: E402
from pyrcedge.assets.models import fetch  # noqa: E402

METHODS = ("rc", "rc-all", "attention")


def build_context(ex: datasets.HotpotExample, drop: int | None = None):
    context, spans, labels = "", [], []
    for k, (title, i, text) in enumerate(ex.sentences):
        if i == 0:
            context += ("\n" if context else "") + title + ": "
        if k == drop:
            continue
        s = len(context)
        context += text.strip() + " "
        spans.append((s, s + len(text.strip())))
        labels.append((title, i))
    return context, spans, labels


def auroc(scores: np.ndarray, relevant: np.ndarray) -> float:
    pos, neg = scores[relevant], scores[~relevant]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def answer_logprob(llm: pyrcedge.Llama, context: str, question: str, answer_ids: list[int]) -> float:
    """log p(answer tokens | the explain() prompt with this context), teacher-forced."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    msgs = [{"role": "system", "content": "Answer the question from the context, briefly."},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]
    fmt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                              eos_token=llm._model.token_get_text(llm.token_eos()),
                              bos_token=llm._model.token_get_text(llm.token_bos()))
    toks = llm.tokenize(fmt(messages=msgs).prompt.encode(), special=True)
    llm.reset()
    llm.eval(toks)
    total = 0.0
    for t in answer_ids:   # token by token: only the last logits are needed each time
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                       shape=(llm.n_vocab(),)).astype(np.float64)
        mx = logits.max()
        total += float(logits[t] - mx - np.log(np.exp(logits - mx).sum()))
        llm.eval([t])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--oracle", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--tuned", type=int, default=30,
                    help="the first N questions informed design choices: also report the rest")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "attribution-hotpotqa"))
    a = ap.parse_args()
    model = fetch("qwen2.5-coder-0.5b")
    exs = datasets.hotpotqa(a.examples)
    llm = pyrcedge.Llama(str(model), kv_budget=4096, policy="h2o", flash_attn=True,
                         n_threads=a.threads, n_threads_batch=a.threads)
    oracle_llm = pyrcedge.Llama(str(model), kv_budget=4096, policy="full",
                                flash_attn=True, n_threads=a.threads,
                                n_threads_batch=a.threads) if a.oracle else None
    rows = []
    for n, ex in enumerate(exs):
        context, spans, labels = build_context(ex)
        rel = np.array([lab in ex.supporting for lab in labels])
        t0 = time.perf_counter()
        answer, at = llm.explain(context, ex.question, spans=spans, max_tokens=a.max_tokens,
                                 top_k=a.top_k)
        t1 = time.perf_counter()
        ranges = [(s.start, s.end) for s in at.spans]
        res = {"rc": np.array([s.score for s in at.spans])}
        t2 = time.perf_counter()
        llm.attribute(ranges, method="rc", top_k=a.top_k)   # what explain() added: timed alone
        t3 = time.perf_counter()
        res["rc-all"] = np.array([s.score for s in llm.attribute(ranges, method="rc-all").spans])
        res["attention"] = np.array([s.score for s in llm.attribute(ranges, method="attention").spans])
        row = {"id": ex.id, "answer": answer, "gold": ex.answer, "n_sentences": len(spans),
               "completion_s": t1 - t0, "attribution_s": t3 - t2,
               "answer_tokens": at.answer[1] - at.answer[0]}
        if n < a.oracle:
            answer_ids = llm.input_ids[at.answer[0]: at.answer[1]].tolist()
            full = answer_logprob(oracle_llm, context, ex.question, answer_ids)
            drops = []
            for k in range(len(spans)):
                ctx_k, _, _ = build_context(ex, drop=k)
                drops.append(full - answer_logprob(oracle_llm, ctx_k, ex.question, answer_ids))
            res["oracle"] = np.array(drops)
        for m, sc in res.items():
            sc = np.nan_to_num(sc, nan=-np.inf)
            order = np.argsort(-sc, kind="stable")
            row[m] = {"top1": bool(rel[order[0]]), "top2": bool(rel[order[:2]].any()),
                      "auroc": auroc(sc, rel)}
        rows.append(row)
        print(n, {m: row[m]["top1"] for m in res}, f"{row['completion_s']:.1f}s", file=sys.stderr,
              flush=True)

    def agg(m: str, rows_: list) -> dict:
        rs = [r[m] for r in rows_ if m in r]
        return {"n": len(rs), "top1": float(np.mean([r["top1"] for r in rs])),
                "top2": float(np.mean([r["top2"] for r in rs])),
                "auroc": float(np.nanmean([r["auroc"] for r in rs]))}

    summary = {m: agg(m, rows) for m in METHODS}
    held_out = {m: agg(m, rows[a.tuned:]) for m in METHODS} if len(rows) > a.tuned else {}
    sample = rows[: a.oracle]
    summary_sample = {m: agg(m, sample) for m in METHODS + ("oracle",)} if a.oracle else {}
    cost = float(np.median([r["attribution_s"] / r["completion_s"] for r in rows]))
    result = {"command": command(), "machine": machine(), "examples": len(rows), "top_k": a.top_k,
              "summary": summary, "held_out": held_out, "tuned": a.tuned,
              "oracle_sample": summary_sample,
              "attribution_over_completion_median": cost, "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    lines = [f"# Sentence attribution on HotpotQA supporting facts ({len(rows)} questions)", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             f"Qwen2.5-Coder-0.5B-Instruct Q4_K_M, greedy answers of up to {a.max_tokens} tokens, "
             f"top-k = {a.top_k} heads of 24 x 2.", "",
             "| method | top-1 hit | top-2 hit | AUROC |", "|---|---|---|---|"]
    for m in METHODS:
        s = summary[m]
        lines.append(f"| {m} | {s['top1']:.3f} | {s['top2']:.3f} | {s['auroc']:.3f} |")
    if held_out:
        lines += ["", f"Questions {a.tuned + 1} to {len(rows)} only (the first {a.tuned} were used "
                  "to choose how heads are ranked, docs/rcstat.md):", "",
                  "| method | top-1 hit | top-2 hit | AUROC |", "|---|---|---|---|"]
        for m in METHODS:
            s_ = held_out[m]
            lines.append(f"| {m} | {s_['top1']:.3f} | {s_['top2']:.3f} | {s_['auroc']:.3f} |")
    if summary_sample:
        lines += ["", f"On the first {a.oracle} questions, with the leave-one-sentence-out oracle:", "",
                  "| method | top-1 hit | top-2 hit | AUROC |", "|---|---|---|---|"]
        for m, s in summary_sample.items():
            lines.append(f"| {m} | {s['top1']:.3f} | {s['top2']:.3f} | {s['auroc']:.3f} |")
    lines += ["", f"Attribution time over completion time (median): {100 * cost:.3f}%.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
