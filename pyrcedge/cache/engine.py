"""The budgeted KV cache of one sequence: which history tokens are cached, where, and eviction.

`BudgetedKV` keeps the bookkeeping that llama_cpp.Llama does not: the token history can grow
without end while the KV cache holds a subset of it (at most `budget` cells). It asks the
policy which cells to evict, checks the answer before touching anything, removes the cells
from libllama's cache and, with positions="compact", shifts the survivors' positions down so
that they stay contiguous (llama.cpp re-rotates the keys at the next decode, StreamingLLM-style).

Positions: with "keep" a token keeps the position of its history index for ever (the model
sees the gaps); with "compact" the cached tokens hold positions 0..n-1 in history order, so a
stream can run past the model's trained context.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import BudgetError, ContextOverflowError, PolicyError, PyrcedgeError
from ..native import binding as _native
from ..native import stats as kernel_stats
from .policies import Policy, lowest_first
from .view import CacheView

# cells (position order) -> one score per cell: what a probe pays each (features/probe.py)
ProbeFn = Callable[[CacheView], npt.NDArray[np.float64]]

POSITION_MODES = ("keep", "compact")


@dataclass(frozen=True)
class EvictionEvent:
    """One eviction: what went, and the cache around it (passed to on_evict callbacks)."""

    evicted: npt.NDArray[np.int64]   # history indices of the evicted tokens
    tokens: npt.NDArray[np.int32]    # their token ids
    cells_before: int
    cells_after: int
    history_tokens: int              # history length when it happened
    policy: str


@dataclass(frozen=True)
class RecallEvent:
    """One prompt's recall: the history spans read back into the cache (on_recall callbacks)."""

    spans: list[tuple[int, int]]     # (start, end) history indices, in history order
    tokens: int                      # tokens read again
    history_tokens: int              # history length when it happened


@dataclass(frozen=True)
class KVStats:
    """The state of a budgeted cache (Llama.kv_stats())."""

    cells_used: int
    budget_cells: int
    budget_bytes: int          # K and V of budget_cells cells at the cache types
    allocated_bytes: int       # what llama.cpp allocated for K and V
    statistics_bytes: int      # the scoring statistics beside the cache (0 with scoring off)
    evictions: int             # eviction events
    evicted_tokens: int
    history_tokens: int        # tokens of the history (cached or not)
    positions: npt.NDArray[np.int64] = field(repr=False)  # history indices still cached
    policy: dict[str, Any] = field(default_factory=dict)
    eviction_seconds: float = field(default=0.0, compare=False)  # time spent evicting
    probe_passes: int = 0           # evictions a question probe decided (features/probe.py)
    probe_tokens: int = 0           # probe tokens evaluated for them
    recalls: int = 0                # prompts that brought evicted history back (features/recall.py)
    recalled_spans: int = 0
    recalled_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        # the cache's state: deterministic, so that two runs compare equal (the time spent
        # evicting is a measurement: read it as .eviction_seconds)
        d = {k: getattr(self, k) for k in self.__dataclass_fields__
             if k not in ("positions", "eviction_seconds")}
        d["positions_kept"] = int(len(self.positions))
        return d


# (cached history indices, history length) -> which of them a chat's structure keeps
StructureFn = Callable[[npt.NDArray[np.int64], int], npt.NDArray[np.bool_]]


@dataclass
class Protection:
    """Tokens no policy may evict: the first `sink`, the last `recent`, pinned spans, the
    spans recalled for the prompt being read and answered (`held`), and what `structure` says
    a chat's template needs (pyrcedge.features.structure; yielded when nothing else could go)."""

    sink: int
    recent: int
    pinned: list[tuple[int, int]] = field(default_factory=list)
    held: list[tuple[int, int]] = field(default_factory=list)
    structure: StructureFn | None = None

    def evictable(self, logical: npt.NDArray[np.int64], n_history: int,
                  structure: bool = True) -> npt.NDArray[np.bool_]:
        ok = (logical >= self.sink) & (logical < n_history - self.recent)
        for start, end in self.pinned + self.held:
            ok &= ~((logical >= start) & (logical < end))
        if structure and self.structure is not None and len(logical):
            ok &= ~self.structure(logical, n_history)
        return ok


def check_span(span: Sequence[int]) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in span)
    except (TypeError, ValueError):
        raise BudgetError(f"a pinned span is (start, end) in token indices, got {span!r}") from None
    if not 0 <= start < end:
        raise BudgetError(f"pinned span {span!r} must satisfy 0 <= start < end")
    return start, end


class BudgetedKV:
    """Bookkeeping and eviction for sequence 0 of a llama_context (ctypes pointer)."""

    def __init__(self, ctx: Any, budget_cells: int, policy: Policy, protection: Protection,
                 eviction_batch: int, positions: str,
                 on_evict: Callable[[EvictionEvent], None] | None = None) -> None:
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.budget = budget_cells
        self.policy = policy
        self.protection = protection
        self.batch = eviction_batch
        self.compact = positions == "compact"
        self.on_evict = on_evict
        if self.compact and not llama_cpp.llama_memory_can_shift(self.mem):
            raise BudgetError("positions='compact' needs a model whose keys can be shifted; "
                              "this one cannot (use positions='keep')")
        self.cached = np.empty(0, np.int64)   # history indices of cached tokens, position order
        self.horizon = 0                      # history length at the last eviction
        self.window_start = 0                 # history index where the statistics window began
        self.last_check = 0                   # history length at the last eviction point
        self.evictions = 0
        self.evicted_tokens = 0
        self.eviction_seconds = 0.0
        self.probe_passes = 0          # evictions decided by a probe (question-probed reading)
        self.probe_tokens = 0          # probe tokens decoded for them
        self.recalls = 0               # prompts that read evicted history back (features/recall.py)
        self.recalled_spans = 0
        self.recalled_tokens = 0
        # history indices recall read back (some evicted since): recall's room comes from them
        # first (Recall.room)
        self.read_back = np.empty(0, np.int64)

    # --- where tokens are ---------------------------------------------------------------

    def position_of(self, k: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Positions of the cached tokens at indices k of `cached`."""
        k = np.asarray(k)
        return k.astype(np.int64) if self.compact else self.cached[k]

    def next_pos(self) -> int:
        if len(self.cached) == 0:
            return 0
        return len(self.cached) if self.compact else int(self.cached[-1]) + 1

    def appended(self, start: int, n: int) -> None:
        self.cached = np.concatenate([self.cached, np.arange(start, start + n, dtype=np.int64)])

    def can_truncate(self, n: int) -> bool:
        """Whether dropping history from n on leaves exactly what a run on history[:n] left:
        true unless an eviction happened after the history passed n."""
        return n >= self.horizon

    def truncate(self, n: int) -> None:
        """Remove the cached tokens of history index >= n."""
        k = int(np.searchsorted(self.cached, n))
        if k < len(self.cached):
            p0 = int(self.position_of(k))
            llama_cpp.llama_memory_seq_rm(self.mem, 0, p0, -1)
            self.cached = self.cached[:k]
        self.horizon = min(self.horizon, n)
        self.window_start = min(self.window_start, n)
        self.last_check = min(self.last_check, n)
        self.read_back = self.read_back[self.read_back < n]

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)
        self.cached = np.empty(0, np.int64)
        self.read_back = np.empty(0, np.int64)
        self.horizon = self.window_start = self.last_check = 0

    # --- sessions ---------------------------------------------------------------------

    _SAVED = ("horizon", "window_start", "last_check", "evictions", "evicted_tokens")
    # counters added after the first session format: a file without them restores them as 0
    _COUNTERS = {"probe_passes": int, "probe_tokens": int, "recalls": int,
                 "recalled_spans": int, "recalled_tokens": int}

    def bookkeeping(self) -> dict[str, Any]:
        """What a saved session needs besides the cached indices (features/session.py)."""
        return {**{k: int(getattr(self, k)) for k in self._SAVED},
                **{k: kind(getattr(self, k)) for k, kind in self._COUNTERS.items()},
                "pinned": [list(s) for s in self.protection.pinned],
                "held": [list(s) for s in self.protection.held],
                "read_back": self.read_back.tolist()}

    def restore_bookkeeping(self, saved: dict[str, Any], cached: npt.NDArray[np.int64]) -> None:
        for k in self._SAVED:
            setattr(self, k, int(saved[k]))
        for k, kind in self._COUNTERS.items():
            setattr(self, k, kind(saved.get(k, 0)))
        self.protection.pinned = [check_span(s) for s in saved["pinned"]]
        self.protection.held = [check_span(s) for s in saved.get("held", [])]
        self.read_back = np.asarray(saved.get("read_back", []), np.int64)
        self.cached = np.asarray(cached, np.int64).copy()

    # --- recall -------------------------------------------------------------------------

    def reinsert(self, runs: Sequence[tuple[int, int]], n_history: int,
                 decode: Callable[[npt.NDArray[np.int64], int], None]) -> None:
        """Bring the evicted history runs (start, end) back at the positions they would hold.
        llama.cpp only appends to a sequence ("Y = X + 1"), so decode(indices, pos) decodes
        the history tokens at `indices` at positions pos.. after every cached cell; their keys
        are then shifted into place (llama.cpp re-rotates them at the next decode, as it does
        for positions="compact"). With positions kept, all runs are decoded in one call; with
        compacted positions, run by run, a gap opened for each at its rank."""
        runs = sorted(runs)
        for start, end in runs:
            k = int(np.searchsorted(self.cached, start))
            if k < len(self.cached) and self.cached[k] < end:
                raise BudgetError(f"internal: history {start}..{end} is partly cached")
        if not runs:
            return
        self.read_back = np.union1d(self.read_back, np.concatenate(
            [np.arange(a, b, dtype=np.int64) for a, b in runs]))
        if self.compact:
            for start, end in runs:
                self._reinsert_compact(start, end, decode)
        else:
            at = self.next_pos()
            indices = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])
            decode(indices, at)
            for a, b in runs:       # each run from its place in the batch to its own positions
                llama_cpp.llama_memory_seq_add(self.mem, 0, at, at + b - a, a - at)
                at += b - a
            self.cached = np.sort(np.concatenate([self.cached, indices]))
        self.horizon = n_history

    def forget(self, indices: npt.NDArray[np.int64], n_history: int) -> None:
        """Remove the cached history tokens `indices` (all evictable) without asking the policy:
        recall reads them again at once with their sentence (Recall.whole), so they count as
        neither evicted nor recalled elsewhere than in what recall reads."""
        if len(indices) == 0:
            return
        rows = np.searchsorted(self.cached, indices)
        if (np.any(rows >= len(self.cached)) or not np.array_equal(self.cached[rows], indices)
                or not self.protection.evictable(indices, n_history).all()):
            raise BudgetError(f"internal: history {indices.tolist()} is not all cached and "
                              "evictable")
        self._remove_rows(self._cells_by_position()[1].astype(np.int64), np.sort(rows))

    def _reinsert_compact(self, start: int, end: int,
                          decode: Callable[[npt.NDArray[np.int64], int], None]) -> None:
        k = int(np.searchsorted(self.cached, start))
        n = end - start
        at = len(self.cached)
        if k < len(self.cached):     # open a gap at rank k
            llama_cpp.llama_memory_seq_add(self.mem, 0, k, -1, n)
            at += n
        decode(np.arange(start, end, dtype=np.int64), at)
        if at != k:
            llama_cpp.llama_memory_seq_add(self.mem, 0, at, at + n, k - at)
        self.cached = np.insert(self.cached, k, np.arange(start, end, dtype=np.int64))

    # --- eviction -----------------------------------------------------------------------

    def room_without_eviction(self) -> int:
        return self.budget - len(self.cached)

    def max_chunk(self, n_history: int) -> int:
        """The most tokens one decode may add when the cache must evict to take them."""
        protected = int((~self.protection.evictable(self.cached, n_history, structure=False)).sum())
        return max(1, self.budget - max(protected, self.protection.sink + self.protection.recent))

    def make_room(self, n_new: int, n_history: int, history: npt.NDArray[np.int32],
                  probe: ProbeFn | None = None,
                  first: npt.NDArray[np.int64] | None = None) -> None:
        """Evict so that n_new more tokens fit; raises and leaves the cache unchanged if that
        cannot be done. The time it takes adds up in kv_stats().eviction_seconds.

        probe: when an eviction is due, called with the view of the cached tokens for one score
        each, which then decides what goes (CacheView.probe; a policy that sets
        reads_probe decides itself).
        first: history indices that go before any other cached token (the policy, or the
        probe, chooses among them while they are enough; all of them go, and the policy
        chooses the rest among the others, when they are not)."""
        t0 = time.perf_counter()
        try:
            self._make_room(n_new, n_history, history, probe, first)
        finally:
            self.eviction_seconds += time.perf_counter() - t0

    def _make_room(self, n_new: int, n_history: int, history: npt.NDArray[np.int32],
                   probe: ProbeFn | None,
                   first: npt.NDArray[np.int64] | None = None) -> None:
        used = len(self.cached)
        need = used + n_new - self.budget
        due = self.policy.proactive and n_history - self.last_check >= self.batch
        if need <= 0 and not due:
            return
        if need > 0 and not self.policy.evicts:
            raise ContextOverflowError(
                f"Requested tokens ({n_history + n_new}) exceed context window of {self.budget}")
        evictable = self.protection.evictable(self.cached, n_history)
        n_evictable = int(evictable.sum())
        if need > n_evictable:      # the chat's structure yields before the budget does
            evictable = self.protection.evictable(self.cached, n_history, structure=False)
            n_evictable = int(evictable.sum())
        if need > n_evictable:
            raise BudgetError(
                f"cannot make room for {n_new} tokens: {used} tokens are cached in a budget of "
                f"{self.budget} and only {n_evictable} may be evicted (the sink, the recent "
                "window and pinned spans hold the rest)")
        target = min(max(need, self.batch), n_evictable) if need > 0 else 0
        view = self._view(evictable, need, history)
        if probe is not None and need > 0:
            view.probe = probe(view)
            self.probe_passes += 1
        shown = copy.copy(view)     # what the answer is checked against, whatever view becomes
        forced = np.empty(0, np.int64)      # rows that go whatever the policy says
        if first is not None and need > 0:
            preferred = evictable & np.isin(self.cached, first)
            if preferred.sum() >= need:     # the policy chooses among them alone
                target = min(target, int(preferred.sum()))
                view = dataclasses.replace(view, evictable=preferred)
            elif preferred.any():           # all of them, and the rest from the others
                forced = np.flatnonzero(preferred)
                target -= len(forced)
                view = dataclasses.replace(view, evictable=evictable & ~preferred,
                                           n_required=need - len(forced))
        chosen: Any
        try:
            if view.probe is not None and not self.policy.reads_probe:
                chosen = lowest_first(view, view.probe, target)
            else:
                chosen = self.policy.select(view, target)
            chosen = np.asarray(chosen)
            if len(forced) and chosen.ndim == 1 and (
                    chosen.size == 0 or np.issubdtype(chosen.dtype, np.integer)):
                chosen = np.concatenate([shown.cells[forced].astype(np.int64),
                                         chosen.astype(np.int64)])
        except PyrcedgeError:
            raise
        except Exception as e:  # a user policy's own failure
            raise PolicyError(f"policy {self.policy.name!r} raised {type(e).__name__}: {e}; "
                              "the cache is unchanged") from e
        rows = self._check_choice(shown, chosen, need)
        self._evict_rows(shown, rows, n_history)
        self.last_check = n_history

    def cached_cells(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """The cells of the cached tokens and their history indices, in position order."""
        return self._cells_by_position()[0], self.cached.copy()

    def _cells_by_position(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """(cell indices, positions) of the used cells in position order, checked against the
        bookkeeping."""
        cells = kernel_stats.used_cells(self.ctx)
        if len(cells) != len(self.cached):
            raise PyrcedgeError(f"internal: the KV cache holds {len(cells)} cells but pyrcedge "
                                f"tracks {len(self.cached)} tokens")
        order = np.argsort(cells.pos, kind="stable")
        return cells.index[order], cells.pos[order]

    def _view(self, evictable: npt.NDArray[np.bool_], need: int,
              history: npt.NDArray[np.int32]) -> CacheView:
        cell_idx, pos = self._cells_by_position()
        if not np.array_equal(pos, self.position_of(np.arange(len(self.cached)))):
            raise PyrcedgeError("internal: cached positions differ from pyrcedge's bookkeeping")
        stats_on = self.policy.uses_statistics
        n_layer = kernel_stats.n_layer(self.ctx) if stats_on else 0

        def read(layer: int | None) -> npt.NDArray[np.float32]:
            return kernel_stats.read_scores(self.ctx, layer, cell_idx)

        return CacheView(cells=cell_idx, positions=pos, logical=self.cached.copy(),
                         tokens=history[self.cached], evictable=evictable,
                         n_required=max(need, 0), window_start=self.window_start,
                         read_stats=read if stats_on else None, n_layer=n_layer)

    def _check_choice(self, view: CacheView, chosen: npt.NDArray[Any], need: int) -> npt.NDArray[np.int64]:
        name = self.policy.name
        if chosen.ndim != 1 or (chosen.size and not np.issubdtype(chosen.dtype, np.integer)):
            raise PolicyError(f"policy {name!r} must return a one-dimensional array of cell "
                              f"indices, got {chosen!r}; the cache is unchanged")
        row_of = {int(c): r for r, c in enumerate(view.cells)}
        rows = []
        for c in chosen.tolist():
            r = row_of.get(int(c))
            if r is None:
                raise PolicyError(f"policy {name!r} chose cell {c}, which holds no cached token; "
                                  "the cache is unchanged")
            if not view.evictable[r]:
                raise PolicyError(f"policy {name!r} chose cell {c}, which holds a protected token "
                                  f"(history index {view.logical[r]}); the cache is unchanged")
            rows.append(r)
        if len(set(rows)) != len(rows):
            raise PolicyError(f"policy {name!r} chose a cell twice; the cache is unchanged")
        if len(rows) < need:
            raise PolicyError(f"policy {name!r} chose {len(rows)} cells but {need} must go for "
                              "the new tokens to fit; the cache is unchanged")
        return np.sort(np.asarray(rows, np.int64))

    def _remove_rows(self, positions: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        """Remove the cached tokens at `rows` (ascending) of the position-ordered cells whose
        positions are `positions`, compacting the rest when positions are compact."""
        pos = positions[rows]
        # remove runs of consecutive positions with one call each
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        for run in np.split(pos, breaks):
            llama_cpp.llama_memory_seq_rm(self.mem, 0, int(run[0]), int(run[-1]) + 1)
        keep = np.ones(len(self.cached), bool)
        keep[rows] = False
        if self.compact:
            self._compact(positions[keep])
        self.cached = self.cached[keep]

    def _evict_rows(self, view: CacheView, rows: npt.NDArray[np.int64], n_history: int) -> None:
        before = len(self.cached)
        if len(rows):
            evicted = self.cached[rows]
            self._remove_rows(view.positions.astype(np.int64), rows)
            self.horizon = n_history
            self.evictions += 1
            self.evicted_tokens += len(rows)
        if self.policy.proactive and self.policy.uses_statistics:
            # a new statistics window: the RC moments describe the queries since this check
            kernel_stats.reset_stats(self.ctx, a2sf=False, moments=True)
            self.window_start = n_history
        if len(rows) and self.on_evict is not None:
            self.on_evict(EvictionEvent(evicted=evicted, tokens=view.tokens[rows],
                                        cells_before=before, cells_after=len(self.cached),
                                        history_tokens=n_history, policy=self.policy.name))

    def _compact(self, old: npt.NDArray[np.int64]) -> None:
        """Shift the kept positions `old` (ascending) to 0..n-1, one call per run of equal shift."""
        delta = np.arange(len(old), dtype=np.int64) - old
        starts: Any = np.flatnonzero(np.diff(delta, prepend=delta[:1] + 1) != 0) if len(old) else []
        bounds = list(starts) + [len(old)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if delta[a] != 0:
                llama_cpp.llama_memory_seq_add(self.mem, 0, int(old[a]), int(old[b - 1]) + 1,
                                                     int(delta[a]))

    def stats(self, cell_bytes: int, allocated: int, history_tokens: int) -> KVStats:
        stat_bytes = 0
        if self.policy.uses_statistics and kernel_stats.scoring_enabled(self.ctx):
            n_layer = kernel_stats.n_layer(self.ctx)
            heads = sum(kernel_stats.n_head_kv(self.ctx, il) for il in range(n_layer))
            stat_bytes = heads * _native.kv_cells_total(self.ctx) * kernel_stats.N_STATS * 4
        return KVStats(cells_used=len(self.cached), budget_cells=self.budget,
                       budget_bytes=self.budget * cell_bytes, allocated_bytes=allocated,
                       statistics_bytes=stat_bytes, evictions=self.evictions,
                       evicted_tokens=self.evicted_tokens, history_tokens=history_tokens,
                       positions=self.cached.copy(), policy=self.policy.describe(),
                       eviction_seconds=self.eviction_seconds, probe_passes=self.probe_passes,
                       probe_tokens=self.probe_tokens, recalls=self.recalls,
                       recalled_spans=self.recalled_spans, recalled_tokens=self.recalled_tokens)
