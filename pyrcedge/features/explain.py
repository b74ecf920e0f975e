"""Explain: answer a question about a context and attribute the answer to spans of the context
(`pyrcedge explain`, Llama.explain)."""

from __future__ import annotations

from typing import Sequence

from ..errors import AttributionError
from .attribution import (
    Attribution,
    SpanScore,
    attribute,
    char_to_token_spans,
    sentence_spans,
    spans_by,
)
from .seam import BudgetedModel

SYSTEM = "Answer the question from the context, briefly."


def explain(llm: BudgetedModel, context: str, question: str, *, max_tokens: int = 64,
            spans: str | Sequence[tuple[int, int]] = "sentence", method: str = "rc",
            top_k: int = 8, system: str = SYSTEM) -> tuple[str, Attribution]:
    """Answer `question` about `context` (greedy, chat template) and attribute the answer to
    spans of the context: "sentence", "token", "chunk", or (start, end) character spans.
    The answer's attention is accumulated over the answer alone (alpha 1, a fresh window)."""
    if not context.strip():
        raise AttributionError("the context is empty: there is nothing to attribute to")
    if not isinstance(spans, str):
        spans = [check_char_span(sp, len(context)) for sp in spans]
    with llm.statistics_window(alpha=1.0):
        llm.reset()
        r = llm.create_chat_completion(messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}],
            max_tokens=max_tokens, temperature=0.0)
    answer = r["choices"][0]["message"]["content"] or ""
    a0 = llm.answer_start or llm.n_tokens
    text, offsets = llm.token_offsets(llm.input_ids[:a0].tolist())
    at = text.find(context)
    if at < 0:
        raise AttributionError("the context was not found verbatim in the formatted prompt")
    char_spans = sentence_spans(context) if spans == "sentence" else spans
    if isinstance(char_spans, str):     # token or chunk granularity over the context
        t0, t1 = char_to_token_spans(offsets, [(at, at + len(context))])[0]
        ranges = spans_by(llm, char_spans, t0, t1, 32)
        labels = [""] * len(ranges)
    else:
        ranges = char_to_token_spans(offsets, [(at + s, at + e) for s, e in char_spans])
        labels = [context[s:e] for s, e in char_spans]
    result = attribute(llm, ranges, method=method, top_k=top_k)
    n = len(context)
    if isinstance(char_spans, str):
        result.char_spans = [(min(max(int(offsets[t0]) - at, 0), n),
                              min(max(int(offsets[t1]) - at, 0), n)) for t0, t1 in ranges]
    else:
        result.char_spans = list(char_spans)
    result.spans = [SpanScore(**{**vars(sp), "label": lab or context[c0:c1]})
                    for sp, lab, (c0, c1) in zip(result.spans, labels, result.char_spans)]
    return answer, result


def check_char_span(span: Sequence[int], n: int) -> tuple[int, int]:
    try:
        s, e = (int(x) for x in span)
    except (TypeError, ValueError):
        raise AttributionError(f"a span is (start, end) character offsets, got {span!r}") from None
    if not 0 <= s < e <= n:
        raise AttributionError(f"span {span!r} is outside the context of {n} characters")
    return s, e
