"""The budget and eviction settings of a pyrcedge.Llama, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..cache.budget import BudgetLike
from ..cache.engine import POSITION_MODES, EvictionEvent, Protection, RecallEvent, check_span
from ..cache.policies import Policy, make_policy
from ..errors import BudgetError
from ..features.probe import MIN_FIT, Probe, ProbeLike, make_probe
from ..features.recall import Recall, RecallLike, make_recall

# what a Llama reads long prompts with unless told otherwise (docs/probe.md: the measurements)
DEFAULT_PROBE: ProbeLike = "tail"
# whether a new prompt reads evicted history it asks about back: on, since it helped wherever
# it was measured (needles, QA, a fact asked after 8 turns, streaming perplexity: docs/recall.md)
DEFAULT_RECALL: RecallLike = True


# ggml's thread pool holds at most this many threads (GGML_MAX_N_THREADS): more segfaults
MAX_THREADS = 512


def check_threads(kwargs: dict[str, Any]) -> None:
    """BudgetError for n_threads / n_threads_batch beyond what ggml can run."""
    for name in ("n_threads", "n_threads_batch"):
        n = kwargs.get(name)
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer))
                              or n > MAX_THREADS):
            raise BudgetError(f"{name} must be an integer of at most {MAX_THREADS} (ggml's "
                              f"limit), got {n!r}")


def check_count(n: Any, name: str, low: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise BudgetError(f"{name} must be an integer >= {low}, got {n!r}")
    return int(n)


@dataclass
class BudgetSettings:
    """pyrcedge.Llama's own keywords (its docstring says what each does); checked on creation,
    so that a bad value fails before any model is loaded."""

    kv_budget: BudgetLike = None
    policy: str | Policy | Callable[..., Any] = "a2sf"
    alpha: float | None = None
    rc_epsilon: float | None = None
    sink_tokens: int = 4
    recent_tokens: int = 16
    eviction_batch: int = 16
    pinned: Sequence[Sequence[int]] = ()
    positions: str = "keep"
    on_evict: Callable[[EvictionEvent], None] | None = None
    track_attention: bool = False
    on_progress: Callable[[int, int], None] | None = None
    on_logits: Callable[[int, Any], None] | None = None
    probe: ProbeLike = DEFAULT_PROBE
    recall: RecallLike = DEFAULT_RECALL
    on_recall: Callable[[RecallEvent], None] | None = None
    chat_structure: bool = False
    policy_object: Policy = field(init=False, repr=False)
    probe_object: Probe | None = field(init=False, repr=False)
    recall_object: Recall | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.policy_object = make_policy(self.policy, alpha=self.alpha, rc_epsilon=self.rc_epsilon)
        self.sink_tokens = check_count(self.sink_tokens, "sink_tokens", 0)
        self.recent_tokens = check_count(self.recent_tokens, "recent_tokens", 1)
        self.eviction_batch = check_count(self.eviction_batch, "eviction_batch", 1)
        if self.positions not in POSITION_MODES:
            raise BudgetError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")
        if not isinstance(self.chat_structure, bool):
            raise BudgetError(f"chat_structure must be True or False, got {self.chat_structure!r}")
        for name in ("on_evict", "on_progress", "on_logits", "on_recall"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise BudgetError(f"{name} must be callable")
        self.pinned = [check_span(s) for s in self.pinned]
        self.probe_object = make_probe(self.probe)
        self.recall_object = make_recall(self.recall) if self.policy_object.evicts else None

    def check_probe(self, cells: int, tokenize: Callable[[bytes, bool, bool], list[int]]) -> list[int] | None:
        """The token ids of a text probe (None for a tail probe); BudgetError when the probe
        leaves no room to read in a budget of `cells`. A probe that may fit (the default) is
        shortened to the room there is, or dropped."""
        p = self.probe_object
        if p is None or not self.policy_object.evicts:
            return None
        ids = tokenize(p.text.encode("utf-8"), False, True) if p.text is not None else None
        n = len(ids) if ids is not None else p.tokens
        floor = min_evicting_budget(self.sink_tokens, self.recent_tokens, self.eviction_batch)
        if p.fit and ids is None and n + floor > cells:
            room = cells - floor
            self.probe_object = replace(p, tokens=room) if room >= MIN_FIT else None
            return None
        if n + floor > cells:
            raise BudgetError(f"a probe of {n} tokens leaves no room to read in a budget of "
                              f"{cells} cells: it needs probe + sink_tokens + recent_tokens + "
                              f"eviction_batch = {n + floor} (shorten the probe)")
        return ids

    @property
    def statistics(self) -> bool:
        """Whether the kernels keep attention statistics: the policy reads them, or the user
        asked for them (attribution with any policy). A question probe turns them on for the
        reads it probes only."""
        return self.policy_object.uses_statistics or bool(self.track_attention)

    def protection(self) -> Protection:
        return Protection(self.sink_tokens, self.recent_tokens, list(self.pinned))  # type: ignore[arg-type]

    def check_cells(self, cells: int) -> None:
        """Refuse a budget too small for anything to be evicted."""
        floor = min_evicting_budget(self.sink_tokens, self.recent_tokens, self.eviction_batch)
        if self.policy_object.evicts and cells < floor:
            raise BudgetError(f"kv_budget of {cells} cells is smaller than sink_tokens + "
                              f"recent_tokens + eviction_batch = {floor}: "
                              "nothing could ever be evicted")


def min_evicting_budget(sink_tokens: int = 4, recent_tokens: int = 16,
                        eviction_batch: int = 16) -> int:
    """The smallest budget in which an eviction can happen: the protected tokens and a batch."""
    return sink_tokens + recent_tokens + eviction_batch
