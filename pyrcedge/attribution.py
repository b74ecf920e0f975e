"""RC attribution: which spans of the prompt an answer drew on (docs/rcstat.md).

After a completion, the kernels' statistics describe the answer's queries (the window W, since
generation started) against every cached key. Per layer and KV head (l, g) pyrcedge bounds the
relative contextualization of a span S of the prompt,

    RC+_{l,g}(S) = U+(X_S) - mu(Y),

ranks heads by their expected RC over the spans, and scores a span by the mean of RC+(S) over
the top-k heads ("rc"), or over all heads ("rc-all"). The post-softmax baseline ("attention")
is the span's attention mass: the a2sf statistic summed over the span's cells, layers and heads.
Heads are ranked by the mean logit's relative contextualization over the spans' union.
Everything is computed from the per-cell statistics, which compose by sums (docs/rcstat.md).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from . import rcstat
from .errors import PyrcedgeError

METHODS = ("rc", "rc-all", "attention")
GRANULARITIES = ("token", "sentence", "chunk")
A2SF, COUNT, SUM, SUMSQ, MAX = range(5)

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n+")


class AttributionError(PyrcedgeError, ValueError):
    """Attribution was asked for what cannot be attributed (no answer, spans outside it...)."""


@dataclass(frozen=True)
class SpanScore:
    start: int           # history token index of the span's first token
    end: int             # one past its last
    text: str
    score: float         # NaN when none of its tokens is cached any more
    cached: float        # share of its tokens still in the KV cache
    label: str = ""

    @property
    def evicted(self) -> bool:
        return self.cached == 0.0


@dataclass
class Attribution:
    method: str
    spans: list[SpanScore]
    heads: list[tuple[int, int]] = field(default_factory=list)   # (layer, KV head) used
    answer: tuple[int, int] = (0, 0)                              # history range of the answer
    char_spans: list[tuple[int, int]] = field(default_factory=list)  # explain(): places in the context

    def ranked(self) -> list[SpanScore]:
        """Spans still cached, best first."""
        live = [s for s in self.spans if not s.evicted]
        return sorted(live, key=lambda s: -s.score)

    def top(self, n: int = 1) -> list[SpanScore]:
        return self.ranked()[:n]

    @property
    def evicted(self) -> list[SpanScore]:
        return [s for s in self.spans if s.evicted]

    def to_dict(self) -> dict[str, Any]:
        d = {"method": self.method, "heads": self.heads, "answer": list(self.answer),
             "char_spans": [list(c) for c in self.char_spans],
             "spans": [dict(asdict(s), score=None if np.isnan(s.score) else s.score)
                       for s in self.spans]}
        return d


def head_scores(stats: npt.NDArray[np.floating], logical: npt.NDArray[np.int64],
                spans: Sequence[tuple[int, int]], answer_start: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """RC+ of every span in every head, and every head's expected RC over the spans' union.

    stats: [layer, cell, KV head, 5] for the cached cells; logical: their history indices.
    Returns (per_span [heads, spans], rank [heads]), heads flattened as layer-major (l, g):
    per_span = U+(X_S) - mu(Y); rank = mu(X_C) - mu(Y) for C the union of the spans, the mean
    logit's relative contextualization (docs/rcstat.md says why the mean ranks heads).
    NaN where the answer has no self keys in a head, or a span has no cached cell.
    """
    st = np.asarray(stats, np.float64).transpose(0, 2, 1, 3).reshape(-1, len(logical), 5)

    def moments(mask: npt.NDArray[np.bool_]) -> rcstat.Moments:
        return rcstat.Moments(count=st[:, mask, COUNT].sum(axis=1), sum=st[:, mask, SUM].sum(axis=1),
                              sumsq=st[:, mask, SUMSQ].sum(axis=1),
                              max=st[:, mask, MAX].max(axis=1, initial=-np.inf))

    own = moments(logical >= answer_start)
    with np.errstate(invalid="ignore", divide="ignore"):
        self_mu = np.where(own.count > 0, rcstat.contextualization_lower(own), np.nan)

        def rc(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
            m = moments(mask)
            return np.where(m.count > 0, rcstat.contextualization_upper(m), np.nan) - self_mu

        masks = [(logical >= s) & (logical < e) for s, e in spans]
        per_span = np.stack([rc(m) for m in masks], axis=1) if spans else np.empty((st.shape[0], 0))
        union = np.logical_or.reduce(masks) if masks else np.zeros(len(logical), bool)
        c = moments(union)
        rank = np.where(c.count > 0, rcstat.mean(c), np.nan) - self_mu
    return per_span, rank


def score_spans(stats: npt.NDArray[np.floating], logical: npt.NDArray[np.int64],
                spans: Sequence[tuple[int, int]], answer_start: int, method: str, top_k: int,
                n_head_kv: int) -> tuple[npt.NDArray[np.float64], list[tuple[int, int]]]:
    """Span scores by `method`, and the heads they came from."""
    if method not in METHODS:
        raise AttributionError(f"method must be one of {METHODS}, got {method!r}")
    if method == "attention":
        a = np.asarray(stats, np.float64)[..., A2SF].sum(axis=(0, 2))   # per cell
        return np.array([a[(logical >= s) & (logical < e)].sum() if ((logical >= s) & (logical < e)).any()
                         else np.nan for s, e in spans]), []
    per_span, context = head_scores(stats, logical, spans, answer_start)
    usable = np.flatnonzero(~np.isnan(context))
    if len(usable) == 0:
        raise AttributionError("no head saw the answer attend to itself: generate at least two "
                               "tokens before attributing")
    if method == "rc":
        if top_k < 1:
            raise AttributionError(f"top_k must be at least 1, got {top_k}")
        chosen = usable[np.argsort(-context[usable], kind="stable")[:top_k]]
    else:
        chosen = usable
    with warnings.catch_warnings():   # an evicted span is NaN in every head: its score is NaN
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        scores = np.nanmean(per_span[chosen], axis=0) if per_span.size else np.empty(0)
    return scores, [(int(h // n_head_kv), int(h % n_head_kv)) for h in chosen]


# --- spans ---------------------------------------------------------------------------------

def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (ends at . ! ? before a space, or newlines)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    # trim surrounding whitespace, so a span is its words
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        out.append((s, e))
    return out


def char_to_token_spans(offsets: npt.NDArray[np.int64], char_spans: Sequence[tuple[int, int]],
                        base: int = 0) -> list[tuple[int, int]]:
    """Token spans covering character spans. offsets[i]: char offset where token i starts
    (length n + 1, the last entry the text's end); base: history index of token 0."""
    out = []
    for s, e in char_spans:
        t0 = int(np.searchsorted(offsets, s, side="right")) - 1
        t1 = int(np.searchsorted(offsets, e, side="left"))
        out.append((base + max(t0, 0), base + max(t1, t0 + 1)))
    return out
