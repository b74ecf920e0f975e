"""Eviction policies: each is a small dataclass with its parameters as fields and one scoring
method.

When the KV budget is full, pyrcedge builds a `CacheView` of the cached tokens (cells,
positions, token ids, which of them may go) with lazy numpy access to the attention statistics
the patched kernels keep (docs/scoring.md), and asks the policy which cells to evict. A policy
scores every cached token (higher = more useful); by default the lowest-scored evictable cells
go, older first among equals. Policies that decide how many to evict (rcstat) override
`select`. Sink, recent and pinned tokens are never offered. The engine checks every answer
(pyrcedge.cache.engine) and raises PolicyError, the cache unchanged, for a bad one.

Write your own by subclassing `Policy` and implementing `score`, or pass any function
`view -> scores`. Old class names (A2SFPolicy, RandomPolicy, RCStatPolicy, CallablePolicy)
remain as aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np
import numpy.typing as npt

from ..errors import BudgetError, PolicyError
from ..native import rcstat
from .view import CacheView

# A2SF prompt reading: the kernels keep the statistics of each ubatch's last n queries only
# (docs/scoring.md, "Query window"), the fewest whose left-out share of the ubatch's A2SF mass,
# at most alpha^n, is within PREFILL_WINDOW_TOLERANCE: 64 queries at alpha 0.9, 6 at the default
# 0.3, the last query alone for TOVA; every query past PREFILL_WINDOW_MAX
PREFILL_WINDOW_TOLERANCE = 0.9 ** 64           # 1.2e-3
PREFILL_WINDOW_MAX = 64
# keyword of pyrcedge.Llama -> the policy field it sets
_KEYWORD_FIELDS = {"alpha": "alpha", "rc_epsilon": "epsilon", "seed": "seed"}


def check_alpha(alpha: Any) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise BudgetError(f"alpha must be in [0, 1], got {alpha!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise BudgetError(f"alpha must be in [0, 1], got {alpha}")
    return value


def prefill_window(alpha: float) -> int:
    """The query window of an A2SF read with this alpha (0: every query). A query d positions
    before the end of its ubatch adds alpha^d of its attention, so the queries before the last n
    leave out at most alpha^n of the ubatch's a2sf; alpha 1 (H2O) weighs every query alike."""
    if alpha <= 0.0:
        return 1
    if alpha >= 1.0:
        return 0
    n = max(1, math.ceil(math.log(PREFILL_WINDOW_TOLERANCE) / math.log(alpha) - 1e-9))
    return n if n <= PREFILL_WINDOW_MAX else 0


@dataclass
class Policy:
    """Base of eviction policies. Subclasses set the class flags and implement score."""

    name: ClassVar[str] = "custom"
    evicts: ClassVar[bool] = True              # False: never evicts (the stock behaviour)
    uses_statistics: ClassVar[bool] = True     # False: scoring stays off, nothing is computed
    proactive: ClassVar[bool] = False          # also asked every eviction batch below budget
    # False: while a prompt is read with a question probe, the engine evicts by the probe's
    # scores (the built-in policies); True: select() decides, view.probe in hand (user code)
    reads_probe: ClassVar[bool] = True
    # False: score() reads view.a2sf() alone, so the kernels may skip the logit moments (count,
    # sum, sumsq, max: four of the five statistics read and written per cell each step)
    reads_moments: ClassVar[bool] = True
    alpha = 1.0                                # A2SF forgetting factor the kernels run with

    def score(self, view: CacheView) -> npt.ArrayLike:
        """One number per cached token: how useful it is to keep (higher = keep)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(view)")

    def select(self, view: CacheView, n: int) -> npt.ArrayLike:
        """The cells to evict: at least n (exactly n by default), all evictable."""
        if n <= 0:
            return np.empty(0, np.int32)
        return lowest_first(view, checked_scores(self, view), n)

    def prefill_window(self) -> int:
        """How many of a ubatch's last queries the kernels need statistics from while a prompt
        is read (0: every query). Only A2SF scores can do with fewer: the moments that other
        policies (and user code, through the CacheView) read describe every query."""
        return 0

    def describe(self) -> dict[str, Any]:
        """The policy's name and numeric parameters (kv_stats(), `run --json`)."""
        out: dict[str, Any] = {"policy": self.name}
        names = {v: k for k, v in _KEYWORD_FIELDS.items()}
        for f in fields(self) if hasattr(self, "__dataclass_fields__") else ():
            value = getattr(self, f.name)
            if f.repr and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[names.get(f.name, f.name)] = value
        return out

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state that a saved session must carry (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from state_dict()'s result."""


def lowest_first(view: CacheView, scores: npt.ArrayLike, n: int) -> npt.NDArray[np.int32]:
    """The cells of the n evictable tokens with the lowest scores, older first among equals."""
    s = np.asarray(scores, np.float64)
    cand = np.flatnonzero(view.evictable)
    order = np.lexsort((view.logical[cand], s[cand]))
    return view.cells[cand[order[:n]]]


def checked_scores(policy: Policy, view: CacheView) -> npt.NDArray[np.float64]:
    """policy.score(view) as float64, one per cached token, or PolicyError."""
    raw = policy.score(view)    # what it raises, the engine reports (the cache unchanged)
    try:
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"policy {policy.name!r}: score() returned something that is not an "
                          f"array of numbers ({e}); the cache is unchanged") from e
    if scores.shape != (len(view),):
        raise PolicyError(f"policy {policy.name!r}: score() returned shape {scores.shape}, "
                          f"expected ({len(view)},): one score per cached token; the cache is "
                          "unchanged")
    if np.isnan(scores).any():
        raise PolicyError(f"policy {policy.name!r}: score() returned NaN; the cache is unchanged")
    return scores


@dataclass
class FullCache(Policy):
    """No eviction: the context fills and then fails as llama_cpp.Llama does (for comparison)."""

    name: ClassVar[str] = "full"
    reads_probe: ClassVar[bool] = False
    evicts: ClassVar[bool] = False
    uses_statistics: ClassVar[bool] = False

    def score(self, view: CacheView) -> npt.ArrayLike:
        return np.zeros(len(view))


@dataclass
class Window(Policy):
    """StreamingLLM: the sink tokens and the most recent ones stay; the oldest others go."""

    name: ClassVar[str] = "window"
    reads_probe: ClassVar[bool] = False
    uses_statistics: ClassVar[bool] = False

    def score(self, view: CacheView) -> npt.ArrayLike:
        return view.logical.astype(np.float64)


@dataclass
class ContextShift(Window):
    """llama.cpp's context shift: when the cache is full, keep the first n_keep tokens (the
    sink, sink_tokens) and discard the older half of the rest (at least what the budget needs).
    llama.cpp then shifts the survivors' positions down; with positions="compact" pyrcedge does
    exactly that, with positions="keep" the model sees the gap instead."""

    name: ClassVar[str] = "context-shift"

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


@dataclass
class A2SF(Policy):
    """A2SF: attention accumulated with forgetting factor alpha (REFERENCE.md section 1)."""

    name: ClassVar[str] = "a2sf"
    reads_probe: ClassVar[bool] = False
    reads_moments: ClassVar[bool] = False
    alpha: float = 0.3

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)

    def score(self, view: CacheView) -> npt.ArrayLike:
        return view.a2sf()

    def prefill_window(self) -> int:
        return prefill_window(self.alpha)


@dataclass
class H2O(A2SF):
    """H2O heavy hitters: all attention ever received (A2SF with alpha = 1)."""

    name: ClassVar[str] = "h2o"
    alpha: float = field(default=1.0, init=False)


@dataclass
class TOVA(A2SF):
    """TOVA: the attention of the newest query alone (A2SF with alpha = 0)."""

    name: ClassVar[str] = "tova"
    alpha: float = field(default=0.0, init=False)


@dataclass
class Random(Policy):
    """A control: uniformly random choices, reproducible from the seed."""

    name: ClassVar[str] = "random"
    reads_probe: ClassVar[bool] = False
    uses_statistics: ClassVar[bool] = False
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.seed = int(self.seed)
        self._rng = np.random.default_rng(self.seed)

    def score(self, view: CacheView) -> npt.ArrayLike:
        return self._rng.random(len(view))

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._rng.bit_generator.state = state["bit_generator"]


@dataclass
class RCStat(Policy):
    """The adaptive RC threshold of docs/rcstat.md: a token goes when its upper-bounded
    contextualization is below epsilon times the window's self-contextualization in a
    head_quantile share of the layers' KV heads (1.0: in every head, the strict rule; 0.5, the
    default: in at least half). Checked every eviction batch, so the cache may stay below
    budget; when the budget needs more than the negligible tokens, the lowest margins go."""

    name: ClassVar[str] = "rcstat"
    reads_probe: ClassVar[bool] = False
    proactive: ClassVar[bool] = True
    epsilon: float = 0.1
    head_quantile: float = 0.5

    def __post_init__(self) -> None:
        self.epsilon, self.head_quantile = float(self.epsilon), float(self.head_quantile)
        if not 0.0 < self.epsilon < 1.0:
            raise BudgetError(f"rc_epsilon must be in (0, 1), got {self.epsilon}")
        if not 0.0 <= self.head_quantile <= 1.0:
            raise BudgetError(f"head_quantile must be in [0, 1], got {self.head_quantile}")

    def score(self, view: CacheView) -> npt.ArrayLike:
        st = view.layer_stats()                                     # [layer, token, head, stat]
        st = st.transpose(0, 2, 1, 3).reshape(-1, len(view), st.shape[-1])  # [(l,g), token, stat]
        own = view.logical >= view.window_start              # the self set: keys of the window
        return rcstat.eviction_margin(rcstat.Moments.from_stats(st),
                                      rcstat.Moments.from_stats(st, axis=1, where=own),
                                      self.epsilon, self.head_quantile)

    def select(self, view: CacheView, n: int) -> npt.ArrayLike:
        margin = checked_scores(self, view)
        negligible = int((margin[view.evictable] < 0).sum())
        return lowest_first(view, margin, max(n, negligible))


@dataclass
class ScoreFunction(Policy):
    """A user function view -> scores, run on A2SF statistics with the given alpha."""

    fn: Callable[[CacheView], npt.ArrayLike] = field(default=lambda view: np.zeros(len(view)))
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.name = getattr(self.fn, "__name__", "callable")  # type: ignore[misc]

    def score(self, view: CacheView) -> npt.ArrayLike:
        return self.fn(view)


# the names the first releases used
A2SFPolicy, RandomPolicy, RCStatPolicy, CallablePolicy = A2SF, Random, RCStat, ScoreFunction

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (FullCache, Window, ContextShift, H2O, A2SF, TOVA, Random, RCStat)
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
        settable = {f.name for f in fields(cls) if f.init}
        extra = sorted(k for k in params if _KEYWORD_FIELDS.get(k) not in settable)
        if extra:
            raise BudgetError(f"policy {spec!r} takes no {', '.join(extra)}")
        return cls(**{_KEYWORD_FIELDS[k]: v for k, v in params.items()})
    if callable(spec):
        extra = sorted(set(params) - {"alpha"})
        if extra:
            raise BudgetError(f"a policy function takes no {', '.join(extra)}")
        return ScoreFunction(spec, **params)
    raise BudgetError(f"policy must be a name, a pyrcedge.Policy or a function, got {spec!r}")


__all__ = ["A2SF", "H2O", "POLICIES", "TOVA", "CacheView", "ContextShift", "FullCache", "Policy",
           "Random", "RCStat", "ScoreFunction", "Window", "checked_scores", "make_policy"]
