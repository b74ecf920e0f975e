"""The RC estimator of docs/rcstat.md, in float64, from the moments the kernels keep.

Every function takes a `Moments` of per-cell (or per-span) statistics: count n, sum s1, sum of
squares s2 and maximum M of raw scaled logits. `Moments.from_stats` turns what the kernels keep
(pyrcedge.native.stats) into moments; spans and heads compose by `combine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .stats import COUNT, MAX, SUM, SUMSQ

Array = npt.NDArray[np.float64]

# |b| below this uses the series of phi(b) = (e^b - 1 - b) / b^2 = 1/2 + b/6 + b^2/24 + ...
_PHI_SERIES_BELOW = 1e-4


@dataclass(frozen=True)
class Moments:
    """Count, sum, sum of squares and maximum of a multiset of logits (arrays of one shape)."""

    count: Array
    sum: Array
    sumsq: Array
    max: Array

    @classmethod
    def of(cls, logits: npt.ArrayLike, axis: int | tuple[int, ...] | None = None) -> Moments:
        """Moments of explicit logits over `axis` (NaN entries are left out): the reference."""
        z = np.asarray(logits, dtype=np.float64)
        seen = ~np.isnan(z)
        zz = np.where(seen, z, 0.0)
        return cls(count=seen.sum(axis=axis).astype(np.float64), sum=zz.sum(axis=axis),
                   sumsq=(zz * zz).sum(axis=axis),
                   max=np.where(seen, z, -np.inf).max(axis=axis))

    @classmethod
    def from_stats(cls, stats: npt.ArrayLike, axis: int | None = None,
                   where: npt.ArrayLike | None = None) -> Moments:
        """Moments from kernel statistics [..., stat] (the order of pyrcedge.native.stats.STATS).

        With no axis: one multiset per entry (a cell in a head). With `axis` (counted over the
        leading dimensions, >= 0): the union along it, of the entries where the boolean mask
        `where` (one per entry of that axis) is true. An empty union has count 0 and max -inf.
        """
        st = np.asarray(stats, np.float64)
        if where is not None:
            if axis is None:
                raise ValueError("Moments.from_stats: `where` selects along `axis`; give both")
            st = np.compress(np.asarray(where, bool), st, axis=axis)
        m = cls(count=np.asarray(st[..., COUNT], np.float64), sum=np.asarray(st[..., SUM], np.float64),
                sumsq=np.asarray(st[..., SUMSQ], np.float64), max=np.asarray(st[..., MAX], np.float64))
        return m if axis is None else m.combine(axis)

    def combine(self, axis: int | tuple[int, ...] | None = None) -> Moments:
        """Moments of the union of the multisets along `axis` (a span, a head's self keys...)."""
        def f64(a: Any) -> Array:
            return np.asarray(a, np.float64)

        return Moments(count=f64(np.sum(self.count, axis=axis)), sum=f64(np.sum(self.sum, axis=axis)),
                       sumsq=f64(np.sum(self.sumsq, axis=axis)),
                       max=f64(np.max(self.max, axis=axis, initial=-np.inf)))


def mean(m: Moments) -> Array:
    """mu = s1 / n: the Jensen lower bound (L) on the contextualization. NaN where n = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(m.sum, np.float64) / np.asarray(m.count, np.float64)


def variance(m: Moments) -> Array:
    """Population variance s2/n - mu^2, clipped at 0 against rounding."""
    mu = mean(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.maximum(np.asarray(m.sumsq, np.float64) / m.count - mu * mu, 0.0)


def _phi(b: Array) -> Array:
    """(e^b - 1 - b) / b^2, increasing, phi(0) = 1/2; inf where e^b overflows."""
    b = np.asarray(b, np.float64)
    small = np.abs(b) < _PHI_SERIES_BELOW
    safe = np.where(small, 1.0, b)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = (np.expm1(safe) - safe) / (safe * safe)
    return np.where(small, 0.5 + b / 6.0 + b * b / 24.0, exact)


def contextualization_upper(m: Moments) -> Array:
    """U+ = min(mu + log(1 + sigma^2 phi(M - mu)), M) >= log mean exp (bound (U))."""
    mu = mean(m)
    mx = np.asarray(m.max, np.float64)
    b = np.maximum(mx - mu, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        u = mu + np.log1p(variance(m) * _phi(b))
    return np.fmin(u, mx) if np.ndim(u) else np.float64(min(u, mx))


def contextualization_lower(m: Moments) -> Array:
    """mu <= log mean exp (bound (L))."""
    return mean(m)


def rc_upper(cross: Moments, self_: Moments) -> Array:
    """RC+ = U+(cross) - mu(self): upper bound on the relative contextualization."""
    return contextualization_upper(cross) - contextualization_lower(self_)


def rc_lower(cross: Moments, self_: Moments) -> Array:
    """RC- = mu(cross) - U+(self): lower bound on the relative contextualization."""
    return contextualization_lower(cross) - contextualization_upper(self_)


def eviction_margin(cells: Moments, self_: Moments, epsilon: float,
                    head_quantile: float = 1.0) -> Array:
    """Margin m_i of rule (T) per cell. `cells` has shape (heads, cells); `self_` (heads,).

    m_i = Q_q over heads of [U+({i}) - mu(Y_head)] - log(epsilon), Q_q the q-quantile (the
    lower order statistic, no interpolation). With q = 1 (the max) m_i < 0 means the cell is
    negligible in every head: the strict rule. With q = 0.5 it is negligible in at least half
    of the heads. Cells never observed (n = 0 in every head) get +inf, and so does a cell
    observed by a head that has no self keys yet: there is nothing to compare it with.
    """
    if not (0.0 < epsilon < 1.0):
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if not (0.0 <= head_quantile <= 1.0):
        raise ValueError(f"head_quantile must be in [0, 1], got {head_quantile}")
    observed = np.asarray(cells.count) > 0
    has_self = (np.asarray(self_.count) > 0)[:, None]
    with np.errstate(invalid="ignore"):
        rel = contextualization_upper(cells) - contextualization_lower(self_)[:, None]
    # a head that saw the cell but has no self keys to compare with cannot rule it out
    per_head = np.where(observed, np.where(has_self, rel, np.inf), -np.inf)
    agg = np.quantile(per_head, head_quantile, axis=0, method="inverted_cdf")
    margin = agg - np.log(epsilon)
    return np.where(observed.any(axis=0), margin, np.inf)
