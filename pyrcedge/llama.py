"""pyrcedge.Llama: llama_cpp.Llama inside a fixed KV memory budget.

Change the import and keep the code:

    from pyrcedge import Llama
    llm = Llama("model.gguf", kv_budget=256, policy="a2sf")
    llm.create_chat_completion(messages=[...])   # never "Requested tokens exceed context window"

The KV cache is allocated with exactly the budget's cells. llama_cpp.Llama keeps the token
history in `input_ids` and matches new prompts against it to reuse the cache; here the history
grows without bound while the cache holds a subset of it, so this class keeps the history,
feeds only what is new, evicts (BudgetedKV) before a chunk would not fit, and re-reads a prompt
from the start, chunk by chunk, when it diverges from the history before the last eviction.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

import llama_cpp

from . import _native, scoring
from .budget import GGML_TYPE_F16, Budget, ModelShape, cells_for, model_shape
from .errors import BudgetError, ModelLoadError
from .kvcache import POSITION_MODES, BudgetedKV, EvictionEvent, KVStats, Protection, check_span
from .loading import check_gguf
from .policies import Policy, make_policy

# The history a budgeted Llama may hold: positions are int32 in llama.cpp.
LOGICAL_CONTEXT = 2**31 - 1
DEFAULT_N_CTX = 512  # llama_cpp.Llama's default


def _grow(a: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """`a` with room for at least `rows` rows (capacity doubles; contents kept)."""
    if rows <= len(a):
        return a
    out = np.zeros((max(rows, 2 * len(a)),) + a.shape[1:], a.dtype)
    out[: len(a)] = a
    return out


class Llama(llama_cpp.Llama):
    """llama_cpp.Llama whose KV cache never exceeds `kv_budget`.

    kv_budget: tokens (int), a size ("256MiB", "1.5GB": K and V of all layers at type_k /
        type_v), or "auto" (a quarter of the memory available now, at most the model's trained
        context). Default: n_ctx cells, as llama_cpp.Llama would allocate.
    policy: "a2sf" (default), "h2o", "tova", "window", "rcstat", "random", "full" (no eviction:
        the stock error when full), a pyrcedge.Policy, or a function view -> scores.
    alpha: A2SF forgetting factor (policy "a2sf"). rc_epsilon: the rcstat threshold.
    sink_tokens, recent_tokens: never evicted (the first and the newest tokens of the history).
    eviction_batch: cells evicted at once when the cache is full (amortises the cost).
    pinned: (start, end) spans of history token indices never evicted (a system prompt, say).
    positions: "keep" (a token keeps its position) or "compact" (positions 0..n-1 after each
        eviction, keys re-rotated, so a stream can run past the trained context).
    on_evict: called with an EvictionEvent after each eviction.
    Every other keyword argument is llama_cpp.Llama's.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, kv_budget: Budget = None,
                 policy: str | Policy | Callable[..., Any] = "a2sf", alpha: float | None = None,
                 rc_epsilon: float | None = None, sink_tokens: int = 4, recent_tokens: int = 16,
                 eviction_batch: int = 16, pinned: Sequence[Sequence[int]] = (),
                 positions: str = "keep", on_evict: Callable[[EvictionEvent], None] | None = None,
                 **kwargs: Any) -> None:
        self._kv: BudgetedKV | None = None
        self._policy = make_policy(policy, alpha=alpha, rc_epsilon=rc_epsilon)
        sink, recent, batch = (_check_count(n, name, low) for n, name, low in (
            (sink_tokens, "sink_tokens", 0), (recent_tokens, "recent_tokens", 1),
            (eviction_batch, "eviction_batch", 1)))
        if positions not in POSITION_MODES:
            raise BudgetError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if on_evict is not None and not callable(on_evict):
            raise BudgetError("on_evict must be callable")
        spans = [check_span(s) for s in pinned]
        if kwargs.get("draft_model") is not None and self._policy.evicts:
            raise BudgetError("draft models (speculative decoding) are not supported with eviction")
        path = os.fspath(model_path)
        check_gguf(__import__("pathlib").Path(path))

        type_k = kwargs.get("type_k") or GGML_TYPE_F16
        type_v = kwargs.get("type_v") or GGML_TYPE_F16
        flash = bool(kwargs.get("flash_attn", False))
        shape: list[ModelShape] = []

        def shape_of() -> ModelShape:
            if not shape:
                shape.append(model_shape(path, type_k, type_v, flash))
            return shape[0]

        if kv_budget is not None and "n_ctx" in kwargs:
            raise BudgetError("give kv_budget or n_ctx, not both: kv_budget sizes the cache")
        n_ctx = int(kwargs.pop("n_ctx", DEFAULT_N_CTX))
        default = n_ctx if n_ctx > 0 else shape_of().n_ctx_train
        cells, limit = cells_for(kv_budget, shape_of, default)
        if self._policy.evicts and cells < sink + recent + batch:
            raise BudgetError(f"kv_budget of {cells} cells is smaller than sink_tokens + "
                              f"recent_tokens + eviction_batch = {sink + recent + batch}: "
                              "nothing could ever be evicted")
        kwargs.setdefault("verbose", False)
        lib = _native.lib()
        prev = lib.llama_rcedge_set_exact_n_ctx(1)
        try:
            super().__init__(model_path=path, n_ctx=cells, **kwargs)
        except ValueError as e:
            raise ModelLoadError(f"llama.cpp could not load {path}: {e}") from e
        finally:
            lib.llama_rcedge_set_exact_n_ctx(prev)

        self._allocated = int(lib.llama_rcedge_kv_bytes(_native.context_ptr(self.ctx)))
        self._cell_bytes = self._allocated // max(1, _native.kv_cells_total(self.ctx))
        if limit is not None and self._allocated > limit:  # the sizing above is exact; guard it
            raise BudgetError(f"llama.cpp allocated {self._allocated} bytes of KV cache, over "
                              f"the budget of {limit}")
        self._kv = BudgetedKV(self.ctx, cells, self._policy, Protection(sink, recent, spans),
                              batch, positions, on_evict)
        if self._policy.uses_statistics:
            scoring.enable_scoring(self.ctx, alpha=self._policy.alpha)
        if self._policy.evicts:
            self._n_ctx = LOGICAL_CONTEXT
        self.input_ids = np.zeros(cells, np.intc)
        if self._logits_all:
            self.scores = np.zeros((cells, self._n_vocab), np.single)

    # --- what llama_cpp.Llama calls -----------------------------------------------------

    def reset(self) -> None:
        super().reset()
        if self._kv is not None:
            self._kv.clear()
            if self._policy.uses_statistics:
                scoring.reset_stats(self.ctx)

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after the history's first n_tokens, evicting as the budget needs."""
        kv = self._kv
        assert kv is not None
        tokens = list(tokens)
        kv.truncate(self.n_tokens)
        i = 0
        while i < len(tokens):
            left = len(tokens) - i
            room = kv.room_without_eviction()
            if min(left, self.n_batch) <= room:
                n = min(left, self.n_batch)   # fits: chunk as llama_cpp.Llama does
            else:
                n = min(left, self.n_batch, kv.max_chunk(self.n_tokens))
            chunk = tokens[i : i + n]
            self.input_ids = _grow(self.input_ids, self.n_tokens + n)
            self.input_ids[self.n_tokens : self.n_tokens + n] = chunk
            kv.make_room(n, self.n_tokens, self.input_ids)
            self._batch.set_batch(batch=chunk, n_past=kv.next_pos(), logits_all=self._logits_all)
            self._ctx.decode(self._batch)
            if self._logits_all:
                self.scores = _grow(self.scores, self.n_tokens + n)
                logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(n * self._n_vocab,))
                self.scores[self.n_tokens : self.n_tokens + n, :].reshape(-1)[:] = logits
            kv.appended(self.n_tokens, n)
            self.n_tokens += n
            self._requires_eval = False
            i += n

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, typical_p: float = 1.0, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True,
                 **kwargs: Any) -> Iterator[int]:
        """llama_cpp.Llama.generate, reusing the cached prefix of the history when it can."""
        tokens = list(tokens)
        if reset:
            tokens = self._reuse_prefix(tokens)
        return super().generate(tokens, top_k=top_k, top_p=top_p, min_p=min_p,
                                typical_p=typical_p, temp=temp, repeat_penalty=repeat_penalty,
                                reset=False, **kwargs)

    def _reuse_prefix(self, tokens: list[int]) -> list[int]:
        """What of `tokens` must still be evaluated; truncates or resets the cache to match."""
        kv = self._kv
        assert kv is not None
        hist = self.input_ids[: self.n_tokens]
        m = min(len(hist), len(tokens))
        same = hist[:m] == np.asarray(tokens[:m], dtype=hist.dtype)
        p = int(m if same.all() else np.argmin(same))
        if p == len(tokens) == self.n_tokens and not self._requires_eval:
            return []                                   # the prompt is the history: sample now
        reuse = p - 1 if p == len(tokens) else p        # re-evaluate one token for its logits
        if reuse > 0 and kv.can_truncate(reuse):
            kv.truncate(reuse)
            self.n_tokens = reuse
            self._requires_eval = True
            return tokens[reuse:]
        self.reset()
        return tokens

    def create_completion(self, prompt: Any, suffix: str | None = None,
                          max_tokens: int | None = 16, *args: Any, **kwargs: Any) -> Any:
        """llama_cpp.Llama.create_completion. max_tokens None or <= 0 means up to one budget's
        worth of tokens (llama_cpp.Llama: up to the end of the context)."""
        if self._policy.evicts and (max_tokens is None or max_tokens <= 0):
            max_tokens = self.kv_budget_cells
        return super().create_completion(prompt, suffix, max_tokens, *args, **kwargs)

    def set_cache(self, cache: Any) -> None:
        if cache is not None:
            raise BudgetError("prompt caches (set_cache) are not supported by pyrcedge.Llama: a "
                              "saved llama_cpp state lacks the evicted cache's bookkeeping")
        super().set_cache(cache)

    def save_state(self) -> Any:
        raise NotImplementedError("pyrcedge.Llama cannot save llama_cpp states yet: they lack the "
                                  "evicted cache's positions and statistics")

    def load_state(self, state: Any) -> None:
        raise NotImplementedError("pyrcedge.Llama cannot load llama_cpp states yet")

    def close(self) -> None:
        if hasattr(self, "_stack"):  # __init__ may have failed before llama_cpp set it up
            super().close()

    # --- pyrcedge's own -----------------------------------------------------------------

    @property
    def kv_budget_cells(self) -> int:
        assert self._kv is not None
        return self._kv.budget

    @property
    def policy(self) -> Policy:
        return self._policy

    def pin(self, start: int, end: int) -> None:
        """Never evict history tokens start..end-1 (from now on)."""
        assert self._kv is not None
        self._kv.protection.pinned.append(check_span((start, end)))

    def kv_stats(self) -> KVStats:
        """Cells used, budget in cells and bytes, evictions, evicted tokens, positions kept."""
        assert self._kv is not None
        return self._kv.stats(self._cell_bytes, self._allocated, self.n_tokens)


def _check_count(n: Any, name: str, low: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise BudgetError(f"{name} must be an integer >= {low}, got {n!r}")
    return int(n)
