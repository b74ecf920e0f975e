"""What a policy sees at an eviction point: the cached tokens of one sequence (`CacheView`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from ..errors import PolicyError
from ..native import stats as kernel_stats


def _frozen(a: npt.ArrayLike, dtype: Any) -> npt.NDArray[Any]:
    """A read-only copy: a policy that writes into the view cannot change the engine's state.
    It is a view of a read-only base, so that `flags.writeable = True` is refused too (numpy
    lets an array that owns its memory be made writeable again)."""
    out = np.array(a, dtype=dtype)
    out.flags.writeable = False
    return out.view()


@dataclass
class CacheView:
    """The cached tokens of one sequence at an eviction point, in position order.

    Arrays have one entry per cached token and are read-only; the engine checks a policy's
    answer against its own copy of the view, so rebinding an attribute changes nothing either.
    Statistics are read from libllama
    on first use: `stats()` [token, KV head, stat] summed over layers, `layer_stats()` [layer,
    token, KV head, stat]; stat order is pyrcedge.native.stats.STATS (a2sf, count, sum, sumsq,
    max).
    """

    cells: npt.NDArray[np.int32]       # KV cell holding the token
    positions: npt.NDArray[np.int32]   # its RoPE position
    logical: npt.NDArray[np.int64]     # its history index
    tokens: npt.NDArray[np.int32]      # its token id
    evictable: npt.NDArray[np.bool_]   # False for sink, recent and pinned tokens
    n_required: int                    # evictions the budget needs now (0: a proactive check)
    window_start: int                  # history index where the statistics window began
    read_stats: Callable[[int | None], npt.NDArray[np.float32]] | None = None
    n_layer: int = 0
    # while a prompt is read with a question probe: the attention the probe paid each token
    probe: npt.NDArray[np.float64] | None = None
    _cache: dict[Any, npt.NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.cells = _frozen(self.cells, np.int32)
        self.positions = _frozen(self.positions, np.int32)
        self.logical = _frozen(self.logical, np.int64)
        self.tokens = _frozen(self.tokens, np.int32)
        self.evictable = _frozen(self.evictable, np.bool_)

    def __len__(self) -> int:
        return len(self.cells)

    def stats(self, layer: int | None = None) -> npt.NDArray[np.float32]:
        if self.read_stats is None:
            raise PolicyError("this policy runs without attention statistics (scoring is off)")
        if layer not in self._cache:
            self._cache[layer] = _frozen(self.read_stats(layer), np.float32)
        return self._cache[layer]

    def layer_stats(self) -> npt.NDArray[np.float32]:
        if "all" not in self._cache:
            self._cache["all"] = _frozen(np.stack([self.stats(il) for il in range(self.n_layer)]),
                                         np.float32)
        return self._cache["all"]

    def a2sf(self) -> npt.NDArray[np.float64]:
        """Decayed attention of every token, summed over layers and KV heads."""
        return self.stats()[:, :, kernel_stats.A2SF].astype(np.float64).sum(axis=1)
