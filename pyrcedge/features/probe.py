"""Question-probed reading: which cached tokens a prompt's question needs, asked of the model.

When a prompt longer than the budget is read chunk by chunk, the question is usually already in
it: its tail (for a chat, the end of the last user message and the assistant header). Before
each eviction during the read, the probe tokens are decoded after the cached cells as temporary
cells (at the next positions: llama.cpp requires a sequence's positions to continue its
cache's, so they cannot sit where they will be at the prompt's end); the attention they pay every cached
cell is the score eviction goes by; then the probe's cells are removed and the statistics the
policy keeps are put back as they were. The probe's cells count inside the budget: while a
probed prompt is read, the engine keeps room for them (docs/probe.md).

A pass need not decode the probe: with `reuse`, the probe's queries are kept from the pass that
decoded it (llama_rcedge_probe_capture), and up to `reuse` later passes score the cells against
them from the keys the cache holds (llama_rcedge_probe_max: q.k only, with the queries moved by
RoPE to where the probe would sit now), which is what a decode gives for the max statistic that
relmax reads, but for queries that have not seen the cells read since they were kept.

What a cell scores is read from what the kernels already keep (nothing is added to them): the
statistics are reset before the probe, so that afterwards they describe the probe's queries
alone, and saved beforehand, when they describe the queries that read the document. The score
("relmax") is, per layer and KV head, the probe's largest raw logit on the cell minus the
document queries' mean logit on it, standardised over the cells; then the largest over KV
heads, summed over layers. It is RCStat's idea turned to eviction: what the question singles
out relative to what every query attends to. The default ("relmax_sd" over the middle half of
the layers) divides that excess by the spread of the document queries' logits on the cell
before standardising, and sums the layers from a quarter to three quarters of the model: it
kept more SQuAD answers than relmax over every layer, and the probe's decode stops after the
last layer it needs (docs/probe.md). Summed post-softmax attention ("attention") is
dominated by attention sinks (" the", ".", the first token), which every query attends to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import BudgetError, ScoringError
from ..native import stats as kernel_stats
from ..native.batch import fill_batch

# InfiniPot's "catalyst" prompt: a generic question for a document read before its questions
CATALYST = "Summarize the previous context highlighting the most important parts."
HEAD_REDUCTIONS = ("sum", "max")
SCORES = ("relmax", "relmax_sd", "attention")
# the scores read from the logit moments (the rest from the attention the probe pays)
LOGIT_SCORES = ("relmax", "relmax_sd")
# a tail probe shortened to fit a small budget is dropped below this many tokens
MIN_FIT = 8
# Probe.reuse's default: three passes on the kept queries between two that decode the probe.
# Measured with the probe's room read into between decodes (docs/probe.md, item 3), 1k needles,
# 20 prompts on SmolLM2-135M and 10 on Qwen2.5-0.5B at 25% and 12.5% (docs/bench/
# probe-room-sweep-*-1k.md): every needle kept (60 of 60), for 1.20x / 1.22x (SmolLM2) and
# 1.24x / 1.30x (Qwen) a2sf's read, against 1.21x / 1.34x and 1.25x / 1.46x with one pass
# between decodes (56 of 60) and 1.17x / 1.19x and 1.16x / 1.26x with seven (60 of 60); SQuAD,
# Qwen, 50 questions at 25% (probe-room-qa-squad-50.md): F1 1.03 of full's with three, 1.07
# with one, 0.94 with seven.
DEFAULT_REUSE = 3


@dataclass(frozen=True)
class Probe:
    """How a prompt that does not fit the budget is probed while it is read.

    tokens: the probe is the prompt's last `tokens` tokens (its question), or
    text: a fixed probe (CATALYST, or any question), read after the cached cells instead.
    score: "relmax" (the probe's largest logit on a cell against the document's mean logit on
        it), "relmax_sd" (the same divided by the spread of the document's logits on it) or
        "attention" (the probe's summed attention probabilities).
    pool_before, pool_after: a cached token scores the most any token from pool_before history
        indices before it to pool_after after it scored (max-pooling, as SnapKV does, leaning
        back: the question matches a fact's key, and the value follows the key), so that a fact
        survives whole rather than token by token.
    heads: how the score aggregates over KV heads ("max" or "sum"); layers are summed.
    layers: the layers whose scores are summed, (first, end) as shares of the model's layers
        ((0.25, 0.75): the middle half); a decode of the probe stops after the last of them.
    refill: the share of the budget each probe pass evicts, to read the next chunk into (fewer,
        larger evictions mean fewer probe passes).
    lend_room: a chunk that a pass on kept queries follows (no decode of the probe) also reads
        into the room kept for the probe (fewer passes; docs/probe.md, "Room").
    reuse: how many passes after one that decodes the probe score the cells against the queries
        that decode kept instead of decoding it again (0: every pass decodes it; the default
        DEFAULT_REUSE is measured: docs/probe.md). relmax only; a quantised K cache decodes
        every pass.
    min_prompt: prompts shorter than this many tokens are read without a probe.
    fit: shorten a tail probe to what the budget leaves room for (off below MIN_FIT tokens)
        instead of refusing the budget: what probe="tail", the default, does.
    """

    tokens: int = 24
    text: str | None = None
    score: str = "relmax_sd"
    pool_before: int = 12
    pool_after: int = 2
    heads: str = "max"
    layers: tuple[float, float] = (0.25, 0.75)
    refill: float = 0.25
    lend_room: bool = True
    reuse: int = DEFAULT_REUSE
    min_prompt: int = 64
    fit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise BudgetError(f"probe tokens must be an integer >= 1, got {self.tokens!r}")
        if self.text is not None and not self.text.strip():
            raise BudgetError("the probe text is empty")
        for name in ("pool_before", "pool_after", "reuse"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BudgetError(f"probe {name} must be an integer >= 0, got {v!r}")
        if self.score not in SCORES:
            raise BudgetError(f"probe score must be one of {SCORES}, got {self.score!r}")
        if self.heads not in HEAD_REDUCTIONS:
            raise BudgetError(f"probe heads must be one of {HEAD_REDUCTIONS}, got {self.heads!r}")
        try:
            first, end = (float(x) for x in self.layers)
        except (TypeError, ValueError):
            raise BudgetError(f"probe layers must be (first, end) shares, got {self.layers!r}") from None
        if not 0.0 <= first < end <= 1.0:
            raise BudgetError(f"probe layers must be shares with 0 <= first < end <= 1, got "
                              f"{self.layers!r}")
        object.__setattr__(self, "layers", (first, end))     # a JSON list becomes the tuple
        if not isinstance(self.lend_room, bool):
            raise BudgetError(f"probe lend_room must be True or False, got {self.lend_room!r}")
        if not 0.0 < float(self.refill) < 1.0:
            raise BudgetError(f"probe refill must be in (0, 1), got {self.refill!r}")


ProbeLike = Probe | str | int | None


def make_probe(spec: ProbeLike) -> Probe | None:
    """A Probe from what pyrcedge.Llama(probe=...) takes: None (off), "tail" (the prompt's
    question, the default settings), an int (a tail of that many tokens), "catalyst" (the
    generic summary question), any other string (a fixed question), or a Probe."""
    if spec is None or isinstance(spec, Probe):
        return spec
    if isinstance(spec, bool):
        raise BudgetError(f"probe must be None, 'tail', 'catalyst', a number of tokens, a "
                          f"question or a pyrcedge.Probe, got {spec!r}")
    if isinstance(spec, int):
        return Probe(tokens=spec)
    if isinstance(spec, str):
        if spec == "tail":
            return Probe(fit=True)
        if spec == "catalyst":
            return Probe(text=CATALYST)
        return Probe(text=spec)
    raise BudgetError(f"probe must be None, 'tail', 'catalyst', a number of tokens, a question "
                      f"or a pyrcedge.Probe, got {spec!r}")


def pooled(scores: npt.NDArray[np.float64], history: npt.NDArray[np.int64], before: int,
           after: int) -> npt.NDArray[np.float64]:
    """Each token's score: the most any cached token from `before` history indices before it to
    `after` after it scored (scores and history indices in history order)."""
    if len(scores) == 0 or before + after == 0:
        return scores
    lo = int(history.min())
    dense = np.full(int(history.max()) - lo + 1 + before + after, -np.inf)
    dense[history - lo + before] = scores
    window = np.lib.stride_tricks.sliding_window_view(dense, before + after + 1).max(axis=1)
    return np.asarray(window[history - lo], np.float64)


def standardised(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(x - mean) / std over the cells (the middle axis), per layer and head."""
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)


def cell_scores(probe_stats: npt.NDArray[np.float32], document_stats: npt.NDArray[np.float32],
                settings: Probe) -> npt.NDArray[np.float64]:
    """One score per cell from the probe's statistics and the document's, both [layer, cell,
    KV head, stat] (the module docstring says what the scores are)."""
    if settings.score == "attention":
        x = probe_stats[..., kernel_stats.A2SF].astype(np.float64)
    else:
        probe_max = probe_stats[..., kernel_stats.MAX].astype(np.float64)
        count = document_stats[..., kernel_stats.COUNT].astype(np.float64)
        total = document_stats[..., kernel_stats.SUM].astype(np.float64)
        seen = count > 0
        doc_mean = seen_or_head_mean(np.divide(total, count, out=np.zeros_like(total),
                                               where=seen), seen, 0.0)
        x = np.where(np.isfinite(probe_max), probe_max, 0.0) - doc_mean
        if settings.score == "relmax_sd":
            square = document_stats[..., kernel_stats.SUMSQ].astype(np.float64)
            var = np.divide(square, count, out=np.zeros_like(square), where=seen) - doc_mean ** 2
            x = x / (seen_or_head_mean(np.sqrt(np.maximum(var, 0.0)), seen, 1.0) + 1e-3)
        x = standardised(x)
    per_layer = x.max(axis=2) if settings.heads == "max" else x.sum(axis=2)     # [layer, cell]
    first, end = scored_layers(len(per_layer), settings.layers)
    return np.asarray(per_layer[first:end].sum(axis=0), np.float64)


def seen_or_head_mean(x: npt.NDArray[np.float64], seen: npt.NDArray[np.bool_],
                      none: float) -> npt.NDArray[np.float64]:
    """x where a document query saw the cell; elsewhere (the newest cells) the mean of x over
    the seen cells of its layer and head, or `none` where the layer and head saw no cell."""
    n_seen = seen.sum(axis=1, keepdims=True)
    head = np.divide((x * seen).sum(axis=1, keepdims=True), n_seen,
                     out=np.full(n_seen.shape, none), where=n_seen > 0)
    return np.where(seen, x, head)


def scored_layers(n_layer: int, shares: tuple[float, float]) -> tuple[int, int]:
    """The layers [first, end) that a probe with Probe.layers `shares` scores with."""
    first = min(n_layer - 1, round(shares[0] * n_layer))
    return first, max(first + 1, min(n_layer, round(shares[1] * n_layer)))


def probe_stats(ctx: Any, mem: Any, cells: npt.NDArray[np.int32], probe: Sequence[int],
                first_pos: int, batch: Any, decode: Any, alpha: float, attention: bool = True,
                keep: bool = False, layers: int = 0,
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(the probe's statistics, the document's) for `cells`, [layer, cell, KV head, stat]: the
    probe decoded at positions first_pos.. with fresh statistics, then its cells removed and
    the cells' statistics restored as they were. With attention, a2sf is the probe's summed
    attention (alpha 1 while it runs); without, only its logit moments are fresh (changing
    alpha rebuilds the graph, which relmax does not need). keep: the decode keeps the probe's
    queries (for kept_probe_stats). layers > 0: the decode stops after that many layers'
    attention where it can (the later layers' statistics stay as reset)."""
    saved = kernel_stats.read_layers(ctx, cells)
    if attention:
        kernel_stats.set_alpha(ctx, 1.0)
    moments = kernel_stats.set_moments(ctx, True)   # on already within a probed read
    kernel_stats.reset_stats(ctx, a2sf=attention, moments=True)
    if keep:
        kernel_stats.probe_capture(ctx, len(probe))
    try:
        if layers > 0:
            try:
                kernel_stats.set_stop_layer(ctx, layers)
            except ScoringError:
                pass                                # the portable path: the whole model
        fill_batch(batch, probe, first_pos, "none")     # read for its statistics alone
        decode(batch)
        got = kernel_stats.read_layers(ctx, cells)
    finally:
        if layers > 0:
            kernel_stats.set_stop_layer(ctx, 0)
        if keep:
            kernel_stats.probe_capture(ctx, 0)
        llama_cpp.llama_memory_seq_rm(mem, 0, first_pos, -1)
        kernel_stats.write_layers(ctx, cells, saved)
        kernel_stats.set_moments(ctx, moments)
        if attention:
            kernel_stats.set_alpha(ctx, alpha)
    return got, saved


def kept_probe_stats(ctx: Any, cells: npt.NDArray[np.int32], shift: int, layers: int = 0,
                     ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """What probe_stats returns for relmax, from the queries an earlier decode kept, moved
    `shift` positions later, without decoding: the document's statistics, and as the probe's
    the same with the max statistic replaced by the kept queries' largest logits (of the
    first `layers` layers; 0: all)."""
    document = kernel_stats.read_layers(ctx, cells)
    got = document.copy()
    got[..., kernel_stats.MAX] = kernel_stats.probe_max(ctx, cells, shift, layers)
    return got, document


@dataclass
class ProbedRead:
    """One prompt read with a probe: the probe's tokens, where they sit, and the room they keep.

    While a tail probe is read ahead of (i < tail_start) the engine keeps len(ids) cells free
    for it; from tail_start on the tail is read for real. A text probe keeps its room for the
    whole read and sits after the prompt's end."""

    ids: list[int]
    tail_start: int          # index in the read's tokens where the probe's own tokens begin
    settings: Probe
    kept_pos: int | None = None   # where the kept queries were decoded (None: none kept)
    reused: int = 0               # passes since the probe was last decoded
    decode_only: bool = False     # the kept queries cannot be scored here: decode every pass
    # each history index's pooled score at the last pass that scored it (NaN: none did): an
    # evicted token keeps the score it was evicted with, which recall inside the read can use
    last_scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def scores(self, ctx: Any, mem: Any, cells: npt.NDArray[np.int32],
               history: npt.NDArray[np.int64], first_pos: int, batch: Any, decode: Any,
               alpha: float) -> tuple[npt.NDArray[np.float64], int]:
        """(one pooled score per cell, probe tokens decoded) for a pass with the probe at
        first_pos; history: the cells' history indices."""
        s = self.settings
        got, document, decoded = self.stats(ctx, mem, cells, first_pos, batch, decode, alpha)
        scores = pooled(cell_scores(got, document, s), history, s.pool_before, s.pool_after)
        self.note(history, scores)
        return scores, decoded

    def note(self, history: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> None:
        """Remember each scored token's score (history: their history indices)."""
        if len(history) == 0:
            return
        size = int(history.max()) + 1
        if size > len(self.last_scores):
            grown = np.full(max(size, 2 * len(self.last_scores)), np.nan)
            grown[: len(self.last_scores)] = self.last_scores
            self.last_scores = grown
        self.last_scores[history] = scores

    def stats(self, ctx: Any, mem: Any, cells: npt.NDArray[np.int32], first_pos: int, batch: Any,
              decode: Any, alpha: float) -> tuple[npt.NDArray[np.float32],
                                                  npt.NDArray[np.float32], int]:
        """One pass's (probe statistics, document statistics, probe tokens decoded), the probe
        sitting at first_pos: from the kept queries while `reuse` allows, else decoded."""
        s = self.settings
        keep = self.keeps()
        # the probe's decode needs the layers up to the last it scores (0: every layer)
        n_layer = kernel_stats.n_layer(ctx)
        _, layers = scored_layers(n_layer, s.layers)
        layers = 0 if layers >= n_layer else layers
        if self.kept_pos is not None and not self.decodes_next():
            try:
                got, document = kept_probe_stats(ctx, cells, first_pos - self.kept_pos, layers)
            except ScoringError:
                # what kept_queries_work did not foresee: decode from now on
                keep, self.decode_only = False, True
                self.close(ctx)
            else:
                self.reused += 1
                return got, document, 0
        got, document = probe_stats(ctx, mem, cells, self.ids, first_pos, batch, decode, alpha,
                                    attention=s.score not in LOGIT_SCORES, keep=keep,
                                    layers=layers)
        if keep:
            self.kept_pos, self.reused = first_pos, 0
        return got, document, len(self.ids)

    def close(self, ctx: Any) -> None:
        """Free the kept queries, at the end of the read."""
        if self.kept_pos is not None:
            kernel_stats.probe_capture(ctx, -1)
            self.kept_pos = None

    def keeps(self) -> bool:
        """Whether a decode of the probe keeps its queries for the passes after it."""
        s = self.settings
        return s.score in LOGIT_SCORES and s.reuse > 0 and not self.decode_only

    def decodes_next(self) -> bool:
        """Whether the next pass decodes the probe (else it scores with the kept queries)."""
        return not self.keeps() or self.kept_pos is None or self.reused >= self.settings.reuse

    def room(self, i: int) -> int:
        """The probe's cells while reading from index i of the prompt: its tokens while they
        are read ahead of, none once they are read for real."""
        return len(self.ids) if i < self.tail_start else 0

    def reserve(self, i: int) -> int:
        """Cells to keep free after a chunk read from index i: the probe's room where the next
        pass decodes it; a pass on the kept queries needs none, and its chunk reads into it."""
        return self.room(i) if self.decodes_next() or not self.settings.lend_room else 0

    def pass_room(self, i: int, n: int, budget: int) -> int:
        """What a pass before a chunk of up to n tokens read from i makes room for: the
        `refill` share of the budget and the probe's room (reserve() says how much of it the
        chunk after the pass leaves free), no more than the chunk and that room need."""
        return self.room(i) + min(n, max(1, int(self.settings.refill * budget)))

    def chunk_limit(self, i: int) -> int | None:
        """A chunk read from i stops at the tail (where the reserve ends), or None."""
        return self.tail_start - i if i < self.tail_start else None


def plan(settings: Probe, tokens: Sequence[int], room: int,
         text_ids: Sequence[int] | None, kept: bool = True) -> ProbedRead | None:
    """The probe for reading `tokens`, or None when the read needs no probe (it is short, or
    it fits in the `room` left). kept: whether kept queries can be scored in this context
    (kept_queries_work); where they cannot, every pass decodes the probe."""
    n = len(tokens)
    if n < settings.min_prompt or n <= room:
        return None
    if settings.text is not None:
        return ProbedRead(ids=list(text_ids or ()), tail_start=n, settings=settings,
                          decode_only=not kept)
    p = min(settings.tokens, n)
    return ProbedRead(ids=list(tokens[n - p:]), tail_start=n - p, settings=settings,
                      decode_only=not kept)


def kept_queries_work(ctx: Any, k_quantised: bool) -> bool:
    """Whether llama_rcedge_probe_max can score this context's cells from kept queries: a K
    cache that is not quantised and the same number of KV heads in every layer (what it
    refuses otherwise). Known before a read, so that the passes between decodes need keep no
    room for a decode."""
    n_layer = kernel_stats.n_layer(ctx)
    return not k_quantised and len({kernel_stats.n_head_kv(ctx, layer)
                                    for layer in range(n_layer)}) == 1
