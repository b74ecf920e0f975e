"""The RC estimator's bounds (docs/rcstat.md) against exact float64 computation."""

from __future__ import annotations

import numpy as np
import pytest

from pyrcedge import rcstat
from pyrcedge.native.rcstat import Moments


def _log_mean_exp(z: np.ndarray) -> float:
    z = np.asarray(z, np.float64)
    top = z.max()
    return float(top + np.log(np.mean(np.exp(z - top))))


def _samples():
    rng = np.random.default_rng(7)
    yield "normal", rng.normal(2.0, 1.5, 500)
    yield "wide normal", rng.normal(0.0, 8.0, 2000)
    yield "two-point", np.r_[np.full(97, -3.0), np.full(3, 11.0)]
    yield "heavy tail", rng.standard_t(2, 1000) * 3
    yield "constant", np.full(40, 4.25)
    yield "single", np.array([-7.5])
    yield "tiny spread", 3.0 + rng.normal(0, 1e-6, 100)
    yield "huge logits", rng.uniform(-900, 900, 300)
    for k in range(20):
        yield f"random {k}", rng.normal(rng.uniform(-20, 20), rng.uniform(0, 10), rng.integers(1, 300))


@pytest.mark.parametrize("name,z", list(_samples()), ids=[n for n, _ in _samples()])
def test_bounds_bracket_the_contextualization(name, z):
    m = Moments.of(z)
    exact = _log_mean_exp(z)
    lower = float(rcstat.contextualization_lower(m))
    upper = float(rcstat.contextualization_upper(m))
    tol = 1e-9 * max(1.0, abs(exact))
    assert lower <= exact + tol
    assert exact <= upper + tol
    assert upper <= z.max() + tol


def test_upper_bound_limits():
    # all equal: the bound is exact; small spread: the Gaussian value mu + sigma^2 / 2
    assert rcstat.contextualization_upper(Moments.of(np.full(10, 2.0))) == pytest.approx(2.0)
    z = np.array([-1e-3, 1e-3])
    assert rcstat.contextualization_upper(Moments.of(z)) == pytest.approx(0.5e-6, rel=1e-3)


def test_moments_compose_over_spans_and_heads():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 50))  # heads x cells x queries
    logits[1, 2, :30] = np.nan  # key 2 not visible to 30 queries in head 1
    per_cell = Moments.of(logits, axis=2)
    span = per_cell.combine(axis=1)
    direct = Moments.of(logits.transpose(0, 2, 1).reshape(4, -1), axis=1)
    for field in ("count", "sum", "sumsq", "max"):
        np.testing.assert_allclose(getattr(span, field), getattr(direct, field), rtol=1e-12)


def test_rc_bounds_bracket_exact_rc():
    rng = np.random.default_rng(11)
    for _ in range(50):
        cross = rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 4), rng.integers(1, 200))
        self_ = rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 4), rng.integers(1, 200))
        exact = _log_mean_exp(cross) - _log_mean_exp(self_)
        mc, ms = Moments.of(cross), Moments.of(self_)
        assert rcstat.rc_lower(mc, ms) <= exact + 1e-9 <= rcstat.rc_upper(mc, ms) + 2e-9


def test_eviction_margin_separates_attended_from_ignored_cells():
    rng = np.random.default_rng(5)
    queries = 64
    self_logits = rng.normal(0.0, 1.0, (2, queries * 8))
    cells = np.stack([
        np.stack([rng.normal(6.0, 0.5, queries), rng.normal(-12.0, 0.5, queries),
                  np.full(queries, np.nan), rng.normal(-12.0, 0.5, queries)]),
        np.stack([rng.normal(-12.0, 0.5, queries), rng.normal(-12.0, 0.5, queries),
                  np.full(queries, np.nan), rng.normal(4.0, 0.5, queries)]),
    ])  # heads x cells x queries
    margin = rcstat.eviction_margin(Moments.of(cells, axis=2), Moments.of(self_logits, axis=1),
                                    epsilon=1e-3)
    assert margin[0] > 0  # strong in head 0
    assert margin[1] < 0  # negligible in every head
    assert margin[2] == np.inf  # never observed: no evidence either way
    assert margin[3] > 0  # strong in head 1 only: still kept


def test_eviction_margin_without_self_keys_keeps_everything():
    cells = Moments.of(np.full((1, 3, 4), -20.0), axis=2)
    no_self = Moments.of(np.full((1, 1), np.nan), axis=1)
    assert np.all(rcstat.eviction_margin(cells, no_self, 1e-3) == np.inf)


@pytest.mark.parametrize("eps", [0.0, 1.0, -1.0, float("nan")])
def test_eviction_margin_rejects_bad_epsilon(eps):
    cells = Moments.of(np.zeros((1, 2, 3)), axis=2)
    with pytest.raises(ValueError, match="epsilon"):
        rcstat.eviction_margin(cells, Moments.of(np.zeros((1, 3)), axis=1), eps)
