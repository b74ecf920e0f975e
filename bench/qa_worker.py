"""One cache of bench/qa_budget.py: answers a slice of the questions as `pyrcedge eval qa` does
and says, for each, how much of its answer the cache held and what recall chose.

    .venv/bin/python bench/qa_worker.py '{"cache": "default", "model": "qwen2.5-coder-0.5b",
        "dataset": "squad", "n": 100, "start": 0, "stop": 50, "share": "25%",
        "context_chars": 3000, "threads": 1}'

Prints one JSON object (a list of rows, one per question) on its last line. The questions, the
prompt and the budget are pyrcedge.evaluation.qa's (Budgeted, answer); the cache is named as
bench/common.py cache_options() names them ("full": a cache that holds everything). Where the answer is: its first occurrence in the context
(bench/probe_retention.py locate), as history tokens.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import cache_options  # noqa: E402
from probe_retention import locate  # noqa: E402

from pyrcedge import Llama  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402
from pyrcedge.cache.budget import Budget  # noqa: E402
from pyrcedge.cache.engine import RecallEvent  # noqa: E402
from pyrcedge.evaluation.cli import tokenizer  # noqa: E402
from pyrcedge.evaluation.qa import (Budgeted, QAExample, answer, exact_match,  # noqa: E402
                                    f1_score, hotpotqa_examples, squad_examples)
from pyrcedge.features import recall as recall_module  # noqa: E402
from pyrcedge.features.probe import ProbedRead  # noqa: E402
from pyrcedge.llama.settings import min_evicting_budget  # noqa: E402


class Recorded(Llama):
    """pyrcedge.Llama that keeps the last probed read (whose probe scores recall may use)."""

    last_read: ProbedRead | None = None

    def _read_probed(self, tokens: list[int], read: ProbedRead, recalled: int = 0) -> None:
        self.last_read = read
        super()._read_probed(tokens, read, recalled)


class Trace:
    """What one question's reading left in the cache: the cached history indices when the
    document (the prompt before its probe tail) had been read, and what recall chose then."""

    def __init__(self) -> None:
        self.llm: Recorded | None = None
        self.clear()

    def clear(self) -> None:
        self.read_end: npt.NDArray[np.int64] | None = None
        self.prompt_end: npt.NDArray[np.int64] | None = None
        self.choice: dict[str, Any] | None = None
        self.recalled: list[tuple[int, int]] = []

    def progress(self, done: int, total: int) -> None:
        assert self.llm is not None
        read = self.llm.last_read
        if read is not None and done == read.tail_start:
            self.read_end = self.llm.kv_cache.cached.copy()
        if done == total:
            self.prompt_end = self.llm.kv_cache.cached.copy()

    def on_recall(self, event: RecallEvent) -> None:
        self.recalled += event.spans

    def wrap_choose(self, choose: Callable[..., Any]) -> Callable[..., Any]:
        """recall.choose, remembering its candidates, their scores, the bound and the choice."""
        def traced(spans: Sequence[tuple[int, int]], scores: npt.NDArray[np.float64],
                   settings: Any, bound: int, evicted: Callable[[int], bool],
                   rereadable: Callable[[int], bool] | None = None) -> Any:
            chosen = choose(spans, scores, settings, bound, evicted, rereadable)
            self.choice = {"spans": [list(s) for s in spans], "bm25": scores.tolist(),
                           "bound": bound, "chosen": [list(c) for c in chosen]}
            return chosen
        return traced


def answer_tokens(llm: Llama, ex: QAExample) -> npt.NDArray[np.int64]:
    """History indices of the answer's first occurrence in the prompt's context (empty if
    it is not found)."""
    hist = [int(x) for x in llm.input_ids[: llm.n_tokens]]
    text, offs = llm.token_offsets(hist)
    span = locate(text, ex.context, ex.answers)
    if span is None:
        return np.zeros(0, np.int64)
    lo, hi = span
    return np.nonzero((offs[1:] > lo) & (offs[:-1] < hi))[0].astype(np.int64)


def kept_share(tokens: npt.NDArray[np.int64], cached: npt.NDArray[np.int64] | None) -> float | None:
    if len(tokens) == 0 or cached is None:
        return None
    return float(np.isin(tokens, cached).mean())


def probe_of_candidates(llm: Recorded, spans: list[list[int]]) -> list[float | None]:
    """Each recall candidate's best probe score at its last probe pass (None: never scored)."""
    read = llm.last_read
    if read is None:
        return [None] * len(spans)
    out: list[float | None] = []
    for a, b in spans:
        s = read.last_scores[a:min(b, len(read.last_scores))]
        s = s[np.isfinite(s)]
        out.append(float(s.max()) if len(s) else None)
    return out


def row_of(llm: Recorded, ex: QAExample, pred: str, trace: Trace, n_ctx: int,
           seconds: float) -> dict[str, Any]:
    toks = answer_tokens(llm, ex)
    _, cached = llm.kv_cache.cached_cells()
    st = llm.kv_stats()
    row: dict[str, Any] = {
        "id": ex.id, "prediction": pred, "answers": list(ex.answers),
        "em": exact_match(pred, ex.answers), "f1": f1_score(pred, ex.answers),
        "context_tokens": n_ctx, "budget_cells": st.budget_cells, "seconds": seconds,
        "probe_passes": st.probe_passes, "recalled_tokens": st.recalled_tokens,
        "answer_tokens": toks.tolist(),
        "answer_read": kept_share(toks, trace.read_end if trace.read_end is not None
                                  else trace.prompt_end),
        "answer_prompt": kept_share(toks, trace.prompt_end),
        "answer_end": kept_share(toks, cached),
        "recalled": [list(s) for s in trace.recalled]}
    if trace.choice is not None and trace.read_end is not None:
        choice = dict(trace.choice)
        choice["probe"] = probe_of_candidates(llm, choice["spans"])
        choice["cached_before"] = trace.read_end.tolist()
        row["choice"] = choice
    return row


def examples_of(job: dict[str, Any]) -> list[QAExample]:
    if job["dataset"] == "squad":
        return squad_examples(job["n"], job["context_chars"])
    return hotpotqa_examples(job["n"])


def main() -> None:
    job = json.loads(sys.argv[1])
    name = job["cache"]
    options = cache_options(name)
    trace = Trace()
    recall_module.choose = trace.wrap_choose(recall_module.choose)   # type: ignore[assignment]
    path = str(model_path(job["model"]))

    def open_llm(cells: Budget) -> Recorded:
        llm = Recorded(path, kv_budget=cells, n_threads=job["threads"],
                       n_threads_batch=job["threads"], flash_attn=True, seed=0, verbose=False,
                       on_progress=trace.progress, on_recall=trace.on_recall, **options)
        trace.llm = llm
        return llm

    budgeted = Budgeted(open_llm, None if name == "full" else Budget.parse(job["share"]),
                        min_evicting_budget())
    tok = tokenizer(job["model"])
    rows = []
    try:
        for ex in examples_of(job)[job["start"]:job["stop"]]:
            n_ctx = len(tok.tokenize(ex.context.encode("utf-8"), False, False))
            llm = budgeted.for_context(n_ctx)
            trace.clear()
            llm.last_read = None
            t = time.perf_counter()
            pred = answer(llm, ex.context, ex.question, 32, job.get("question_first", False))
            rows.append(row_of(llm, ex, pred, trace, n_ctx, time.perf_counter() - t))
            print(f"{name} {len(rows)}: F1 {rows[-1]['f1']:.2f}", file=sys.stderr, flush=True)
    finally:
        budgeted.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
