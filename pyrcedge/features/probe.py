"""Question-probed reading: which cached tokens a prompt's question needs, asked of the model.

When a prompt longer than the budget is read chunk by chunk, the question is usually already in
it: its tail (for a chat, the end of the last user message and the assistant header). Before
each eviction during the read, the probe tokens are decoded after the cached cells as temporary
cells (at the next positions: llama.cpp requires a sequence's positions to continue its
cache's, so they cannot sit where they will be at the prompt's end); the attention they pay every cached
cell is the score eviction goes by; then the probe's cells are removed and the statistics the
policy keeps are put back as they were. The probe's cells count inside the budget: while a
probed prompt is read, the engine keeps room for them (docs/probe.md).

The attention a probe pays is what the kernels already accumulate: with the A2SF statistic
reset and alpha = 1 it is, per layer, KV head and cell, the sum over the probe's queries and
the query heads of the group of their softmax probabilities. Nothing is added to the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import BudgetError
from ..native import stats as kernel_stats

# InfiniPot's "catalyst" prompt: a generic question for a document read before its questions
CATALYST = "Summarize the previous context highlighting the most important parts."
HEAD_REDUCTIONS = ("sum", "max")
# a tail probe shortened to fit a small budget is dropped below this many tokens
MIN_FIT = 8


@dataclass(frozen=True)
class Probe:
    """How a prompt that does not fit the budget is probed while it is read.

    tokens: the probe is the prompt's last `tokens` tokens (its question), or
    text: a fixed probe (CATALYST, or any question), read after the cached cells instead.
    pool: a cached token scores the most any token within `pool` history indices of it scored
        (max-pooling, as SnapKV does), so that a fact survives whole rather than token by token.
    heads: how the attention aggregates over layers and KV heads ("sum" or "max").
    refill: the share of the budget each probe pass evicts, to read the next chunk into (fewer,
        larger evictions mean fewer probe passes).
    min_prompt: prompts shorter than this many tokens are read without a probe.
    fit: shorten a tail probe to what the budget leaves room for (off below MIN_FIT tokens)
        instead of refusing the budget: what probe="tail", the default, does.
    """

    tokens: int = 48
    text: str | None = None
    pool: int = 6
    heads: str = "sum"
    refill: float = 0.5
    min_prompt: int = 64
    fit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise BudgetError(f"probe tokens must be an integer >= 1, got {self.tokens!r}")
        if self.text is not None and not self.text.strip():
            raise BudgetError("the probe text is empty")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 0:
            raise BudgetError(f"probe pool must be an integer >= 0, got {self.pool!r}")
        if self.heads not in HEAD_REDUCTIONS:
            raise BudgetError(f"probe heads must be one of {HEAD_REDUCTIONS}, got {self.heads!r}")
        if not 0.0 < float(self.refill) < 1.0:
            raise BudgetError(f"probe refill must be in (0, 1), got {self.refill!r}")

    def describe(self) -> dict[str, Any]:
        return {"probe": "text" if self.text is not None else "tail",
                "probe_tokens": self.tokens, "probe_pool": self.pool, "probe_heads": self.heads,
                "probe_refill": self.refill}


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


def pooled(scores: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Max over a window of `width` neighbours on each side (scores in history order)."""
    if width <= 0 or len(scores) == 0:
        return scores
    padded = np.pad(scores, width, mode="constant", constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * width + 1)
    return np.asarray(windows.max(axis=1), np.float64)


def attention_of(ctx: Any, mem: Any, cells: npt.NDArray[np.int32], probe: Sequence[int],
                 first_pos: int, batch: Any, decode: Any, statistics_on: bool,
                 alpha: float, heads: str) -> npt.NDArray[np.float64]:
    """The attention the probe tokens, decoded at positions first_pos.., pay each of `cells`
    (summed over the probe's queries, then over layers and KV heads by `heads`). The probe's
    cells are removed afterwards and the statistics of `cells` restored, so that the policy
    and attribution see exactly what they saw before."""
    saved = kernel_stats.read_layers(ctx, cells) if statistics_on else None
    if not statistics_on:
        kernel_stats.enable_scoring(ctx, alpha=1.0)
    kernel_stats.set_alpha(ctx, 1.0)
    kernel_stats.reset_stats(ctx, a2sf=True, moments=False)
    end = first_pos + len(probe)
    try:
        batch.set_batch(batch=list(probe), n_past=first_pos, logits_all=False)
        decode(batch)
        got = kernel_stats.read_layers(ctx, cells)[..., kernel_stats.A2SF].astype(np.float64)
    finally:
        llama_cpp.llama_memory_seq_rm(mem, 0, first_pos, end)
        if statistics_on:
            assert saved is not None
            kernel_stats.write_layers(ctx, cells, saved)
            kernel_stats.set_alpha(ctx, alpha)
        else:
            kernel_stats.disable_scoring(ctx)
    per_head = got.transpose(1, 0, 2).reshape(len(cells), -1)      # [cell, (layer, head)]
    return per_head.sum(axis=1) if heads == "sum" else per_head.max(axis=1)


@dataclass
class ProbedRead:
    """One prompt read with a probe: the probe's tokens, where they sit, and the room they keep.

    While a tail probe is read ahead of (i < tail_start) the engine keeps len(ids) cells free
    for it; from tail_start on the tail is read for real. A text probe keeps its room for the
    whole read and sits after the prompt's end."""

    ids: list[int]
    tail_start: int          # index in the read's tokens where the probe's own tokens begin
    settings: Probe

    def reserve(self, i: int) -> int:
        """Cells to keep free while reading from index i of the prompt."""
        return len(self.ids) if i < self.tail_start else 0

    def chunk_limit(self, i: int) -> int | None:
        """A chunk read from i stops at the tail (where the reserve ends), or None."""
        return self.tail_start - i if i < self.tail_start else None


def plan(settings: Probe, tokens: Sequence[int], room: int,
         text_ids: Sequence[int] | None) -> ProbedRead | None:
    """The probe for reading `tokens`, or None when the read needs no probe (it is short, or
    it fits in the `room` left)."""
    n = len(tokens)
    if n < settings.min_prompt or n <= room:
        return None
    if settings.text is not None:
        return ProbedRead(ids=list(text_ids or ()), tail_start=n, settings=settings)
    p = min(settings.tokens, n)
    return ProbedRead(ids=list(tokens[n - p:]), tail_start=n - p, settings=settings)
