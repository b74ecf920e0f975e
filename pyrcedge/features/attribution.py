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

from ..errors import AttributionError
from ..native import rcstat
from ..native import stats as kernel_stats
from .seam import BudgetedModel

METHODS = ("rc", "rc-all", "attention")
GRANULARITIES = ("token", "sentence", "chunk")

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n+")


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
    st = np.asarray(stats, np.float64).transpose(0, 2, 1, 3).reshape(-1, len(logical),
                                                                     kernel_stats.N_STATS)

    def moments(mask: npt.NDArray[np.bool_]) -> rcstat.Moments:
        return rcstat.Moments.from_stats(st, axis=1, where=mask)

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
        a = np.asarray(stats, np.float64)[..., kernel_stats.A2SF].sum(axis=(0, 2))   # per cell
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


# --- attributing a Llama's last answer ---------------------------------------------------------

def attribute(llm: BudgetedModel, spans: str | Sequence[tuple[int, int]] = "sentence", *,
              method: str = "rc", top_k: int = 8, chunk_tokens: int = 32,
              prompt_start: int = 0) -> Attribution:
    """Which spans of the last prompt the last answer drew on (docs/rcstat.md).

    spans: "sentence", "token" or "chunk" (of chunk_tokens tokens) over the prompt from
    history index prompt_start, or (start, end) history token index ranges inside the prompt.
    method: "rc" (top_k heads by expected RC), "rc-all" (every head) or "attention" (the
    post-softmax baseline: the a2sf statistic, accumulated attention when alpha is 1).
    Spans whose tokens were all evicted score NaN and are listed in .evicted.
    """
    if not llm.statistics or not kernel_stats.scoring_enabled(llm.ctx):
        raise AttributionError("attribution needs the attention statistics: use a policy that "
                               "keeps them, or pass track_attention=True")
    a0 = llm.answer_start
    if a0 is None or llm.n_tokens - a0 < 1:
        raise AttributionError("nothing to attribute: generate an answer first")
    if not 0 <= prompt_start < a0:
        raise AttributionError(f"prompt_start must be in [0, {a0}), got {prompt_start}")
    history = llm.input_ids[: llm.n_tokens]
    if isinstance(spans, str):
        if spans not in GRANULARITIES:
            raise AttributionError(f"spans must be one of {GRANULARITIES} or a list of "
                                   f"(start, end) token ranges, got {spans!r}")
        ranges = spans_by(llm, spans, prompt_start, a0, chunk_tokens)
    else:
        ranges = [check_token_span(sp, prompt_start, a0) for sp in spans]
    cells, logical = llm.kv_cache.cached_cells()
    stats = kernel_stats.read_layers(llm.ctx, cells)
    scores, heads = score_spans(stats, logical, ranges, a0, method, top_k,
                                kernel_stats.n_head_kv(llm.ctx, 0))
    cached = set(logical.tolist())
    out = []
    for (s0, s1), sc in zip(ranges, scores):
        share = sum(1 for i in range(s0, s1) if i in cached) / (s1 - s0)
        text = llm.detokenize(history[s0:s1].tolist()).decode("utf-8", errors="replace")
        out.append(SpanScore(start=s0, end=s1, text=text, score=float(sc), cached=share))
    return Attribution(method=method, spans=out, heads=heads, answer=(a0, llm.n_tokens))


def spans_by(llm: BudgetedModel, granularity: str, start: int, end: int,
             chunk: int) -> list[tuple[int, int]]:
    """Token spans of history[start:end]: each token, chunks of `chunk`, or sentences."""
    if granularity == "token":
        return [(i, i + 1) for i in range(start, end)]
    if granularity == "chunk":
        if chunk < 1:
            raise AttributionError(f"chunk_tokens must be at least 1, got {chunk}")
        return [(i, min(i + chunk, end)) for i in range(start, end, chunk)]
    text, offsets = llm.token_offsets(llm.input_ids[start:end].tolist())
    return char_to_token_spans(offsets, sentence_spans(text), base=start)


def check_token_span(span: Sequence[int], lo: int, hi: int) -> tuple[int, int]:
    try:
        s, e = (int(x) for x in span)
    except (TypeError, ValueError):
        raise AttributionError(f"a span is (start, end) token indices, got {span!r}") from None
    if not lo <= s < e <= hi:
        raise AttributionError(f"span {span!r} is outside the prompt: spans must lie in "
                               f"[{lo}, {hi}) and be non-empty")
    return s, e
