"""Eviction policies: each is a small class with one scoring method.

When the KV budget is full, pyrcedge builds a `CacheView` of the cached tokens (cells,
positions, token ids, which of them may go) with lazy numpy access to the attention statistics
the patched kernels keep (docs/scoring.md), and asks the policy which cells to evict. A policy
scores every cached token (higher = more useful); by default the lowest-scored evictable cells
go, older first among equals. Policies that decide how many to evict (rcstat) override
`select`. Sink, recent and pinned tokens are never offered.

Write your own by subclassing `Policy` and implementing `score`, or pass any function
`view -> scores`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import numpy.typing as npt

from . import rcstat
from .errors import BudgetError
from .scoring import STATS

A2SF, COUNT, SUM, SUMSQ, MAX = (STATS.index(s) for s in ("a2sf", "count", "sum", "sumsq", "max"))


@dataclass
class CacheView:
    """The cached tokens of one sequence at an eviction point, in position order.

    Arrays have one entry per cached token. Statistics are read from libllama on first use:
    `stats()` [token, KV head, stat] summed over layers, `layer_stats()` [layer, token, KV head,
    stat]; stat order is pyrcedge.scoring.STATS (a2sf, count, sum, sumsq, max).
    """

    cells: npt.NDArray[np.int32]       # KV cell holding the token
    positions: npt.NDArray[np.int32]   # its RoPE position
    logical: npt.NDArray[np.int64]     # its index in the token history
    tokens: npt.NDArray[np.int32]      # its token id
    evictable: npt.NDArray[np.bool_]   # False for sink, recent and pinned tokens
    n_required: int                    # evictions the budget needs now (0: a proactive check)
    window_start: int                  # history index where the statistics window began
    read_stats: Callable[[int | None], npt.NDArray[np.float32]] | None = None
    n_layer: int = 0
    _cache: dict[Any, npt.NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cells)

    def stats(self, layer: int | None = None) -> npt.NDArray[np.float32]:
        if self.read_stats is None:
            raise BudgetError("this policy runs without attention statistics (scoring is off)")
        if layer not in self._cache:
            self._cache[layer] = self.read_stats(layer)
        return self._cache[layer]

    def layer_stats(self) -> npt.NDArray[np.float32]:
        if "all" not in self._cache:
            self._cache["all"] = np.stack([self.stats(il) for il in range(self.n_layer)])
        return self._cache["all"]

    def a2sf(self) -> npt.NDArray[np.float64]:
        """Decayed attention of every token, summed over layers and KV heads."""
        return self.stats()[:, :, A2SF].astype(np.float64).sum(axis=1)


class Policy:
    """Base of eviction policies. Subclasses set the class attributes and implement score."""

    name: ClassVar[str] = "custom"
    evicts: ClassVar[bool] = True              # False: never evicts (the stock behaviour)
    uses_statistics: ClassVar[bool] = True     # False: scoring stays off, nothing is computed
    proactive: ClassVar[bool] = False          # also asked every eviction batch below budget
    alpha: float = 1.0                         # A2SF forgetting factor the kernels run with

    def score(self, view: CacheView) -> npt.ArrayLike:
        """One number per cached token: how useful it is to keep (higher = keep)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(view)")

    def select(self, view: CacheView, n: int) -> npt.ArrayLike:
        """The cells to evict: at least n (exactly n by default), all evictable."""
        if n <= 0:
            return np.empty(0, np.int32)
        scores = checked_scores(self, view)
        cand = np.flatnonzero(view.evictable)
        order = np.lexsort((view.logical[cand], scores[cand]))  # lowest score, then oldest
        return view.cells[cand[order[:n]]]

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state that a saved session must carry (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from state_dict()'s result."""


def checked_scores(policy: Policy, view: CacheView) -> npt.NDArray[np.float64]:
    try:
        raw = policy.score(view)
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BudgetError(f"policy {policy.name!r}: score() returned something that is not an "
                          f"array of numbers ({e})") from e
    if scores.shape != (len(view),):
        raise BudgetError(f"policy {policy.name!r}: score() returned shape {scores.shape}, "
                          f"expected ({len(view)},): one score per cached token")
    if np.isnan(scores).any():
        raise BudgetError(f"policy {policy.name!r}: score() returned NaN")
    return scores


class FullCache(Policy):
    """No eviction: the context fills and then fails as llama_cpp.Llama does (for comparison)."""

    name = "full"
    evicts = False
    uses_statistics = False

    def score(self, view: CacheView) -> npt.ArrayLike:
        return np.zeros(len(view))


class Window(Policy):
    """StreamingLLM: the sink tokens and the most recent ones stay; the oldest others go."""

    name = "window"
    uses_statistics = False

    def score(self, view: CacheView) -> npt.ArrayLike:
        return view.logical.astype(np.float64)


class ContextShift(Window):
    """llama.cpp's context shift: when the cache is full, keep the first n_keep tokens (the
    sink, sink_tokens) and discard the older half of the rest (at least what the budget needs).
    llama.cpp then shifts the survivors' positions down; with positions="compact" pyrcedge does
    exactly that, with positions="keep" the model sees the gap instead."""

    name = "context-shift"

    def select(self, view: CacheView, n: int) -> npt.ArrayLike:
        if n <= 0:
            return np.empty(0, np.int32)
        cand = np.flatnonzero(view.evictable)
        if len(cand) == 0:
            return np.empty(0, np.int32)
        n_keep = int(cand[0])                     # the protected tokens before the first evictable
        n_discard = (len(view) - n_keep) // 2     # llama.cpp: n_discard = (n_past - n_keep) / 2
        order = cand[np.argsort(view.logical[cand], kind="stable")]
        return view.cells[order[:min(len(order), max(n, n_discard))]]


class A2SFPolicy(Policy):
    """A2SF: attention accumulated with forgetting factor alpha (REFERENCE.md section 1)."""

    name = "a2sf"

    def __init__(self, alpha: float = 0.3) -> None:
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:  # NaN fails too
            raise BudgetError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def score(self, view: CacheView) -> npt.ArrayLike:
        return view.a2sf()

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "alpha": self.alpha}


class H2O(A2SFPolicy):
    """H2O heavy hitters: all attention ever received (A2SF with alpha = 1)."""

    name = "h2o"

    def __init__(self) -> None:
        super().__init__(alpha=1.0)


class TOVA(A2SFPolicy):
    """TOVA: the attention of the newest query alone (A2SF with alpha = 0)."""

    name = "tova"

    def __init__(self) -> None:
        super().__init__(alpha=0.0)


class RandomPolicy(Policy):
    """A control: uniformly random choices, reproducible from the seed."""

    name = "random"
    uses_statistics = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def score(self, view: CacheView) -> npt.ArrayLike:
        return self._rng.random(len(view))

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._rng.bit_generator.state = state["bit_generator"]


class RCStatPolicy(Policy):
    """The adaptive RC threshold of docs/rcstat.md: a token goes when its upper-bounded
    contextualization is below epsilon times the window's self-contextualization in a
    head_quantile share of the layers' KV heads (1.0: in every head, the strict rule; 0.5, the
    default: in at least half). Checked every eviction batch, so the cache may stay below
    budget; when the budget needs more than the negligible tokens, the lowest margins go."""

    name = "rcstat"
    proactive = True

    def __init__(self, epsilon: float = 0.1, head_quantile: float = 0.5) -> None:
        epsilon, head_quantile = float(epsilon), float(head_quantile)
        if not 0.0 < epsilon < 1.0:
            raise BudgetError(f"rc_epsilon must be in (0, 1), got {epsilon}")
        if not 0.0 <= head_quantile <= 1.0:
            raise BudgetError(f"head_quantile must be in [0, 1], got {head_quantile}")
        self.epsilon, self.head_quantile = epsilon, head_quantile

    def score(self, view: CacheView) -> npt.ArrayLike:
        st = view.layer_stats().astype(np.float64)           # [layer, token, head, stat]
        st = st.transpose(0, 2, 1, 3).reshape(-1, len(view), st.shape[-1])  # [(l,g), token, stat]
        cells = rcstat.Moments(count=st[..., COUNT], sum=st[..., SUM], sumsq=st[..., SUMSQ],
                               max=st[..., MAX])
        own = view.logical >= view.window_start              # the self set: keys of the window
        self_ = rcstat.Moments(count=st[:, own, COUNT].sum(axis=1), sum=st[:, own, SUM].sum(axis=1),
                               sumsq=st[:, own, SUMSQ].sum(axis=1),
                               max=st[:, own, MAX].max(axis=1, initial=-np.inf))
        return rcstat.eviction_margin(cells, self_, self.epsilon, self.head_quantile)

    def select(self, view: CacheView, n: int) -> npt.ArrayLike:
        margin = checked_scores(self, view)
        cand = np.flatnonzero(view.evictable)
        order = cand[np.lexsort((view.logical[cand], margin[cand]))]
        negligible = int((margin[order] < 0).sum())
        return view.cells[order[:max(n, negligible)]]

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "rc_epsilon": self.epsilon, "head_quantile": self.head_quantile}


class CallablePolicy(Policy):
    """A user function view -> scores, run on A2SF statistics with the given alpha."""

    name = "callable"

    def __init__(self, fn: Callable[[CacheView], npt.ArrayLike], alpha: float = 1.0) -> None:
        self.fn = fn
        self.alpha = A2SFPolicy(alpha).alpha
        self.name = getattr(fn, "__name__", "callable")

    def score(self, view: CacheView) -> npt.ArrayLike:
        return self.fn(view)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (FullCache, Window, ContextShift, H2O, A2SFPolicy, TOVA, RandomPolicy,
                        RCStatPolicy)
}


def make_policy(spec: str | Policy | Callable[[CacheView], npt.ArrayLike],
                **params: Any) -> Policy:
    """A policy from its name (with its parameters: alpha, rc_epsilon, seed), a Policy object,
    or a scoring function."""
    params = {k: v for k, v in params.items() if v is not None}
    if isinstance(spec, Policy):
        if params:
            raise BudgetError(f"policy parameters {sorted(params)} apply to policies given by "
                              "name; set them on the policy object instead")
        return spec
    if isinstance(spec, str):
        cls = POLICIES.get(spec)
        if cls is None:
            raise BudgetError(f"unknown policy {spec!r}: choose from {', '.join(POLICIES)}, "
                              "or pass a pyrcedge.Policy")
        accepted = {A2SFPolicy: {"alpha"}, RCStatPolicy: {"rc_epsilon"},
                    RandomPolicy: {"seed"}}.get(cls, set())
        given = {k: v for k, v in params.items() if v is not None}
        extra = set(given) - accepted
        if extra:
            raise BudgetError(f"policy {spec!r} takes no {', '.join(sorted(extra))}")
        if cls is RCStatPolicy and "rc_epsilon" in given:
            return RCStatPolicy(epsilon=given["rc_epsilon"])
        return cls(**given)
    if callable(spec):
        return CallablePolicy(spec, **{k: v for k, v in params.items() if v is not None})
    raise BudgetError(f"policy must be a name, a pyrcedge.Policy or a function, got {spec!r}")
