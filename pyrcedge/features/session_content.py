"""What a session must hold to be restored: its content checked against itself and the Llama.

A checksum proves a file is whole, not that it is sane: a session file is data users share, and
one crafted with a valid checksum (a token id past the vocabulary, cached indices reversed or
beyond the history, statistics all NaN) would load and make the Llama misbehave, or crash
llama.cpp. Every check here runs before anything is loaded, so a refused session leaves the
Llama exactly as it was.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import SessionError
from ..native import stats as kernel_stats
from .seam import BudgetedModel

# the largest history a budgeted Llama may hold: positions are int32 in llama.cpp
MAX_HISTORY = 2**31 - 1


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, what: str) -> SessionError:
        return SessionError(f"{self.source} is inconsistent: {what}; nothing was loaded")

    def integer(self, value: Any, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        return value

    def array(self, arrays: dict[str, npt.NDArray[Any]], name: str, kind: str,
              shape: tuple[int | None, ...]) -> npt.NDArray[Any]:
        """arrays[name], of dtype kind ('i' integers, as int64; 'f' floats) and this shape
        (None: any length)."""
        a = arrays.get(name)
        if a is None:
            raise self.fail(f"it lacks the array {name!r}")
        if a.dtype.kind not in (("i", "u") if kind == "i" else ("f",)):
            raise self.fail(f"{name} has dtype {a.dtype}")
        if a.ndim != len(shape) or any(w is not None and w != d for w, d in zip(shape, a.shape)):
            raise self.fail(f"{name} has shape {a.shape}, expected {shape}")
        # unsigned values past int64 turn negative here, which the range checks refuse
        return a.astype(np.int64) if kind == "i" else a

    def spans(self, value: Any, name: str) -> None:
        if not isinstance(value, list):
            raise self.fail(f"{name} must be a list of [start, end] spans")
        for s in value:
            if not isinstance(s, list) or len(s) != 2:
                raise self.fail(f"{name} holds {s!r}, not a [start, end] span")
            start = self.integer(s[0], name, 0, MAX_HISTORY)
            self.integer(s[1], name, start + 1, MAX_HISTORY)


def check_content(llm: BudgetedModel, header: dict[str, Any],
                  arrays: dict[str, npt.NDArray[Any]], kv: bytes, source: str) -> None:
    """SessionError unless the session's history, cached indices, statistics and bookkeeping
    are consistent with each other and with llm (its vocabulary, budget, layers)."""
    c = _Checker(source)
    n = c.integer(header.get("n_tokens"), "n_tokens", 0, MAX_HISTORY)
    history = c.array(arrays, "history", "i", (n,))
    outside = (history < 0) | (history >= llm._n_vocab)
    if outside.any():
        raise c.fail(f"its history holds token id {int(history[outside][0])}, outside the "
                     f"vocabulary of {llm._n_vocab} tokens")
    kvc = llm.kv_cache
    cached = c.array(arrays, "cached", "i", (None,))
    m = len(cached)
    if m > kvc.budget:
        raise c.fail(f"it caches {m} tokens in a budget of {kvc.budget} cells")
    if n and not m:
        raise c.fail("it has a history but no cached token")
    if m and n == 0:
        raise c.fail("it caches tokens but has no history")
    if m:
        if np.any(np.diff(cached) <= 0):
            raise c.fail("its cached history indices are not strictly increasing")
        if int(cached[0]) < 0 or int(cached[-1]) != n - 1:
            raise c.fail(f"its cached history indices must lie in [0, {n}) and end with the "
                         "last history token")
        pos = c.array(arrays, "cell_pos", "i", (m,))
        want = np.arange(m) if kvc.compact else cached
        if not np.array_equal(np.sort(pos), want):
            raise c.fail("the positions of its cells do not match its cached history indices")
        if not kv:
            raise c.fail("it caches tokens but holds no KV cache state")
        if llm.statistics:
            _check_statistics(c, llm, arrays, m)
    if "scores" in arrays:
        c.array(arrays, "scores", "f", (n, llm._n_vocab))
    _check_header(c, llm, header, n)


def _check_statistics(c: _Checker, llm: BudgetedModel, arrays: dict[str, npt.NDArray[Any]],
                      m: int) -> None:
    for il in range(kernel_stats.n_layer(llm.ctx)):
        shape = (m, kernel_stats.n_head_kv(llm.ctx, il), kernel_stats.N_STATS)
        stats = c.array(arrays, f"stats.{il}", "f", shape)
        ok = np.isfinite(stats)
        # a cell no query has counted (the moments off: Policy.reads_moments) reads max -inf
        ok[..., kernel_stats.MAX] |= ((stats[..., kernel_stats.COUNT] == 0)
                                      & (stats[..., kernel_stats.MAX] == -np.inf))
        if not ok.all():
            raise c.fail(f"the statistics of layer {il} are not all finite")


def _check_header(c: _Checker, llm: BudgetedModel, header: dict[str, Any], n: int) -> None:
    c.integer(header.get("seed"), "seed", 0, 2**32 - 1)
    start = header.get("answer_start")
    if start is not None:
        c.integer(start, "answer_start", 0, n)
    book = header.get("bookkeeping")
    if not isinstance(book, dict):
        raise c.fail("it lacks the eviction bookkeeping")
    for key in ("horizon", "window_start", "last_check"):
        c.integer(book.get(key), key, 0, n)
    for key in ("evictions", "evicted_tokens"):
        c.integer(book.get(key), key, 0, 2**63 - 1)
    for key in ("probe_passes", "probe_tokens", "recalls", "recalled_spans", "recalled_tokens"):
        c.integer(book.get(key, 0), key, 0, 2**63 - 1)
    c.spans(book.get("pinned"), "pinned")
    c.spans(book.get("held", []), "held")
    state = header.get("policy_state")
    if not isinstance(state, dict):
        raise c.fail("its policy state is not a JSON object")
    try:    # on a copy: the Llama's own policy changes only once everything has been checked
        copy.deepcopy(llm.kv_cache.policy).load_state_dict(state)
    except Exception as e:
        raise c.fail(f"its policy state does not load ({type(e).__name__}: {e})") from None
