"""Recall inside a probed read, replayed: which evicted sentences other rankings and bounds would
have read back, and how much of each answer the cache would then hold, from what a
bench/qa_budget.py run recorded (no model is run).

    .venv/bin/python bench/qa_recall_choice.py docs/bench/IN.json [--cache default] [--out OUT]

For every question where recall ran inside the read, the run recorded the cached history indices
when the document had been read, the candidates (evicted sentences), their BM25 scores, each
one's best probe score at the last pass that scored it (an evicted token keeps the score it was
evicted with), the bound and what was chosen. Each variant below ranks the same candidates and
chooses with pyrcedge.features.recall.choose; "answer after recall" is the share of the answer's
tokens cached then, assuming the cells freed for the recalled tokens held none of it (the run's
own figure, which includes that eviction, is in its table). Writes docs/bench/OUT.md.

With --rerank the candidates are also ranked again from their text (the prompt rebuilt with the
model's chat template and tokenized, vocabulary only; each row checked against the recorded
candidates and BM25 scores): Recall.covered, the weight of a question word that the cache
holds, at 1 (no discount) and counted only where the cache holds the word outside the candidate
itself, each with the recorded bound and twice it (SQuAD questions only: HotpotQA's prompt is
not rebuilt here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command  # noqa: E402

from pyrcedge import Probe  # noqa: E402

from pyrcedge.features import recall as recall_module  # noqa: E402
from pyrcedge.features.recall import Recall, choose  # noqa: E402

Ranking = Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], npt.NDArray[np.float64]]
# a text ranking: the candidates' scores from a Reranked row
TextRanking = Callable[["Reranked"], npt.NDArray[np.float64]]


def ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """0 for the highest of x, 1 for the next, ..."""
    order = np.argsort(-x, kind="stable")
    out = np.empty(len(x))
    out[order] = np.arange(len(x))
    return out


def by_order(keys: npt.NDArray[np.float64], eligible: npt.NDArray[np.bool_]
             ) -> npt.NDArray[np.float64]:
    """Scores that rank the eligible candidates by `keys` (highest first), every one of them
    above recall's min_score, the others -inf: for choose with relative 0."""
    out = np.full(len(keys), -np.inf)
    out[eligible] = 1.0 + len(keys) - ranks(np.where(eligible, keys, -np.inf))[eligible]
    return out


def rrf(bm25: npt.NDArray[np.float64], probe: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Reciprocal rank fusion of the two rankings (k = 60)."""
    return 1 / (60 + ranks(bm25)) + 1 / (60 + ranks(probe))


VARIANTS: dict[str, tuple[Ranking, float, float]] = {
    # name: (scores from (bm25, probe), relative, bound multiplier)
    "BM25, relative 0.5 (the default)": (lambda b, p: b, 0.5, 1.0),
    "BM25, relative 0": (lambda b, p: b, 0.0, 1.0),
    "BM25, relative 0, bound x2": (lambda b, p: b, 0.0, 2.0),
    "probe score at eviction (BM25 >= min_score)": (lambda b, p: by_order(p, b >= 1.0), 0.0, 1.0),
    "probe score at eviction, any candidate": (lambda b, p: by_order(p, np.isfinite(p)), 0.0, 1.0),
    "BM25 and probe, rank fusion": (lambda b, p: by_order(rrf(b, p), b >= 1.0), 0.0, 1.0),
    "BM25 and probe, rank fusion, relative 0.5 of BM25 first": (
        lambda b, p: by_order(rrf(b, p), b >= max(1.0, 0.5 * b.max())), 0.0, 1.0),
}


class Reranked:
    """One question's recall candidates ranked again from their text: the words of each
    candidate, of the question (the probe's tail, as recall reads it) and of the cache."""

    def __init__(self, llm: Any, formatter: Any, question: Any, row: dict[str, Any]) -> None:
        from pyrcedge.evaluation.qa import SYSTEM
        c = row["choice"]
        prompt = formatter(messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n{question.context}\n\n"
                                        f"Question: {question.question}"}]).prompt
        ids = np.asarray(llm.tokenize(prompt.encode(), add_bos=False, special=True), np.int64)
        tail = len(ids) - Probe().tokens
        history = ids[:tail]
        self.cached = np.asarray(c["cached_before"], np.int64)
        ends = np.array([any(ch in llm.detokenize([int(t)]).decode("utf-8", "replace")
                             for ch in recall_module.SENTENCE_ENDS) for t in history])
        self.spans = recall_module.evicted_sentences(ends, self.cached, Recall().sentence_max)
        if [list(s) for s in self.spans] != c["spans"]:
            raise SystemExit(f"{row['id']}: the rebuilt prompt gives other candidates than the run")

        def words(t: npt.NDArray[np.int64]) -> list[str]:
            return recall_module.content_words(llm.detokenize(t.tolist()).decode("utf-8", "replace"))

        self.history = history
        self.words = words
        self.docs = [words(history[a:b]) for a, b in self.spans]
        self.query = words(ids[tail:])
        self.in_cache = set(words(history[self.cached]))
        if not np.allclose(self.scores(Recall().covered), c["bm25"]):
            raise SystemExit(f"{row['id']}: the rebuilt prompt gives other BM25 scores than the run")

    def scores(self, covered: float) -> npt.NDArray[np.float64]:
        """recall.rank's scores with that `covered` weight."""
        return recall_module.rank(self.docs, self.query, self.in_cache, Recall(covered=covered))

    def scores_outside(self, covered: float) -> npt.NDArray[np.float64]:
        """BM25 where a question word weighs `covered` only if the cache holds it outside the
        candidate itself (a candidate whose question words were kept and whose answer was
        evicted is not discounted for holding them)."""
        out = np.zeros(len(self.docs))
        for j, (a, b) in enumerate(self.spans):
            outside = self.cached[(self.cached < a) | (self.cached >= b)]
            weight = {w: covered for w in self.words(self.history[outside])}
            out[j] = recall_module.bm25(self.docs, self.query, weight=weight)[j]
        return out


TEXT_VARIANTS: dict[str, tuple[TextRanking, float, float]] = {
    # name: (scores, relative, bound multiplier)
    "BM25, covered 1 (no discount), relative 0.5": (lambda r: r.scores(1.0), 0.5, 1.0),
    "BM25, covered 1, relative 0": (lambda r: r.scores(1.0), 0.0, 1.0),
    "BM25, covered 1, relative 0.5, bound x2": (lambda r: r.scores(1.0), 0.5, 2.0),
    "BM25, covered 1, relative 0, bound x2": (lambda r: r.scores(1.0), 0.0, 2.0),
    "BM25, covered 0.25 outside the candidate only, relative 0.5": (
        lambda r: r.scores_outside(0.25), 0.5, 1.0),
    "BM25, covered 0.25 outside the candidate only, relative 0.5, bound x2": (
        lambda r: r.scores_outside(0.25), 0.5, 2.0),
    "BM25 (covered 0.25, as run), relative 0.5, bound x2": (lambda r: r.scores(0.25), 0.5, 2.0),
}


def replay(row: dict[str, Any], ranking: Ranking | None, relative: float, scale: float,
           scores: npt.NDArray[np.float64] | None = None) -> tuple[float | None, int]:
    """(share of the answer cached after the replayed recall, tokens recalled), ranked by
    `ranking` of the recorded BM25 and probe scores, or by `scores`."""
    c = row["choice"]
    spans = [tuple(s) for s in c["spans"]]
    if scores is None:
        assert ranking is not None
        bm25 = np.asarray(c["bm25"], float)
        probe = np.asarray([-np.inf if v is None else v for v in c["probe"]], float)
        scores = ranking(bm25, probe)
    n = max(b for _, b in spans)
    cached = set(c["cached_before"])
    chosen = choose(spans, scores, Recall(relative=relative),
                    int(c["bound"] * scale), lambda i: 0 <= i < n and i not in cached)
    held = cached | {i for a, b in chosen for i in range(a, b)}
    answer = row["answer_tokens"]
    share = float(np.mean([i in held for i in answer])) if answer else None
    return share, sum(b - a for a, b in chosen)


def rerank_rows(record: dict[str, Any], rows: list[dict[str, Any]]) -> list[Reranked]:
    """Each row's candidates from their text, the prompt rebuilt as the run built it."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from pyrcedge.assets.models import model_path
    from pyrcedge.evaluation.qa import squad_examples

    if record["dataset"] != "squad":
        raise SystemExit("--rerank rebuilds SQuAD prompts only")
    llm = llama_cpp.Llama(str(model_path(record["model"])), vocab_only=True, verbose=False)
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                                    eos_token=llm.detokenize([llm.token_eos()]).decode(),
                                    bos_token="")
    questions = {q.id: q for q in squad_examples(record["n"], record.get("context_chars", 3000))}
    return [Reranked(llm, formatter, questions[r["id"]], r) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache", default="default")
    ap.add_argument("--out")
    ap.add_argument("--rerank", action="store_true",
                    help="also rank the candidates again from their text (SQuAD runs)")
    a = ap.parse_args()
    record = json.loads(a.run.read_text())
    rows = [r for r in record["rows"][a.cache] if "choice" in r and r["answer_tokens"]]
    before = [float(np.mean([i in set(r["choice"]["cached_before"]) for i in r["answer_tokens"]]))
              for r in rows]
    lines = [f"# Recall inside the probed read, replayed: {record['dataset']}, {record['model']}",
             "", f"Command: `{command()}`  ",
             f"From `{record['command']}` (cache {a.cache}): {len(rows)} questions whose answer "
             "was located in the context and whose read ended with a recall; answer cached "
             f"when the document had been read: {np.mean(before):.3f} on average, whole in "
             f"{sum(b == 1.0 for b in before)}.", "",
             "| ranking | answer cached after recall | whole | tokens recalled, mean |",
             "|---|---|---|---|"]
    def line(name: str, got: list[tuple[float | None, int]]) -> str:
        shares = [s for s, _ in got if s is not None]
        return (f"| {name} | {np.mean(shares):.3f} | {sum(s == 1.0 for s in shares)} | "
                f"{np.mean([t for _, t in got]):.1f} |")

    for name, (ranking, relative, scale) in VARIANTS.items():
        lines.append(line(name, [replay(r, ranking, relative, scale) for r in rows]))
    if a.rerank:
        reranked = rerank_rows(record, rows)
        for name, (text_ranking, relative, scale) in TEXT_VARIANTS.items():
            lines.append(line(name, [replay(r, None, relative, scale, text_ranking(t))
                                     for r, t in zip(rows, reranked)]))
    text = "\n".join(lines + [""])
    if a.out:
        (REPO / "docs" / "bench" / a.out).with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
