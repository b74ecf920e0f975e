"""Question answering with contexts longer than the KV budget: SQuAD and HotpotQA, exact match
and F1 (the SQuAD answer normalisation), and needle-in-a-haystack retrieval.

Each example is answered greedily through the chat template on a pyrcedge.Llama whose budget is
a number of cells or a share of the example's context tokens ("25%"): the context is read chunk
by chunk with eviction before the question arrives, so what the policy kept decides the answer.
"""

from __future__ import annotations

import random
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tqdm import tqdm

from ..assets.datasets import hotpotqa
from ..cache.budget import Budget
from ..errors import EvaluationError
from ..native import binding as _native
from .sources import load_json

SYSTEM = "Answer the question from the context with a short phrase, without explanation."


@dataclass(frozen=True)
class QAExample:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: Iterable[str]) -> float:
    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        if not p or not g:
            return float(p == g)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return max(f1(prediction, a) for a in answers)


def squad_examples(n: int, context_chars: int, seed: int = 0) -> list[QAExample]:
    """n answerable SQuAD v2 dev questions; each context is its paragraph among other
    paragraphs of the same article (in article order) up to about context_chars characters."""
    rng = random.Random(seed)
    articles = load_json("squad")["data"]
    pool = [(a, i, q) for a in articles for i, p in enumerate(a["paragraphs"]) for q in p["qas"]
            if not q.get("is_impossible") and q["answers"]]
    rng.shuffle(pool)
    out = []
    for art, i, q in pool[:n]:
        paras = [p["context"] for p in art["paragraphs"]]
        lo, hi = i, i + 1
        while sum(len(p) for p in paras[lo:hi]) < context_chars and (lo > 0 or hi < len(paras)):
            if hi < len(paras) and (rng.random() < 0.5 or lo == 0):
                hi += 1
            else:
                lo -= 1
        out.append(QAExample(q["id"], "\n\n".join(paras[lo:hi]), q["question"],
                             tuple(a["text"] for a in q["answers"])))
    return out


def hotpotqa_examples(n: int, seed: int = 0) -> list[QAExample]:
    """n HotpotQA dev questions with their ten paragraphs (distractor setting)."""
    rows = hotpotqa()
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), n)
    out = []
    for k in picked:
        r = rows[k]
        paras: dict[str, list[str]] = {}
        for title, _, text in r.sentences:
            paras.setdefault(title, []).append(text)
        context = "\n\n".join(f"{t}: {''.join(s)}" for t, s in paras.items())
        out.append(QAExample(r.id, context, r.question, (r.answer,)))
    return out


@dataclass
class Budgeted:
    """Opens pyrcedge.Llama per distinct budget ("25%" is a share of the context's tokens, at
    least `floor` cells: the smallest budget that can evict)."""

    open_llm: Callable[[Budget], Any]
    budget: Budget | None            # None: a full cache
    floor: int = 1
    margin: int = 64                 # cells for the template, question and answer (full cache)
    _llm: Any = None
    _cells: Budget | None = None

    def for_context(self, context_tokens: int) -> Any:
        if self.budget is None:
            cells = Budget("tokens", context_tokens + self.margin + 256)
        else:
            cells = self.budget.of(context_tokens, self.floor)
        if self._llm is None or (self.budget is None and self._cells is not None and cells.value > self._cells.value) or \
                (self.budget is not None and cells != self._cells):
            self.close()
            self._llm, self._cells = self.open_llm(cells), cells
        return self._llm

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def answer(llm: Any, context: str, question: str, max_tokens: int,
           question_first: bool = False) -> str:
    """The greedy answer; question_first also states the question before the context, so the
    context is read (and evicted) with the question already in the cache."""
    ask = f"Question: {question}\n\n" if question_first else ""
    r = llm.create_chat_completion(messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{ask}Context:\n{context}\n\nQuestion: {question}"}],
        max_tokens=max_tokens, temperature=0.0)
    return (r["choices"][0]["message"]["content"] or "").strip()


def run_qa(examples: list[QAExample], budgeted: Budgeted, tokenize: Callable[[str], list[int]],
           max_tokens: int = 32, progress: bool = False,
           question_first: bool = False) -> dict[str, Any]:
    if not examples:
        raise EvaluationError("no examples to evaluate")
    rows = []
    t0 = time.perf_counter()
    bar = tqdm(examples, desc="qa", unit="question", disable=not progress, file=sys.stderr)
    for ex in bar:
        n_ctx_tokens = len(tokenize(ex.context))
        llm = budgeted.for_context(n_ctx_tokens)
        pred = answer(llm, ex.context, ex.question, max_tokens, question_first)
        st = llm.kv_stats()
        rows.append({"id": ex.id, "prediction": pred, "answers": list(ex.answers),
                     "em": exact_match(pred, ex.answers), "f1": f1_score(pred, ex.answers),
                     "context_tokens": n_ctx_tokens, "history_tokens": st.history_tokens,
                     "budget_cells": st.budget_cells,
                     "kv_cells_allocated": _native.kv_cells_total(llm.ctx),
                     "kv_cells_used_end": _native.kv_cells_used(llm.ctx),
                     "evicted_tokens": st.evicted_tokens})
        bar.set_postfix(em=f"{sum(r['em'] for r in rows) / len(rows):.3f}",
                        f1=f"{sum(r['f1'] for r in rows) / len(rows):.3f}")
    n = len(rows)
    return {"n": n, "em": sum(r["em"] for r in rows) / n, "f1": sum(r["f1"] for r in rows) / n,
            "context_tokens_mean": sum(r["context_tokens"] for r in rows) / n,
            "budget_cells_mean": sum(r["budget_cells"] for r in rows) / n,
            "kv_cells_allocated_max": max(r["kv_cells_allocated"] for r in rows),
            "seconds": time.perf_counter() - t0, "examples": rows}
