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

import ctypes
import json
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

import llama_cpp

from . import _native, scoring, session
from .attribution import (GRANULARITIES, Attribution, AttributionError, SpanScore,
                          char_to_token_spans, score_spans, sentence_spans)
from .budget import GGML_TYPE_F16, Budget, ModelShape, cells_for, model_shape
from .errors import BudgetError, ModelLoadError, SessionError
from .kvcache import POSITION_MODES, BudgetedKV, EvictionEvent, KVStats, Protection, check_span
from .loading import check_gguf
from .policies import Policy, make_policy
from .session import SessionState

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
    track_attention: keep the attention statistics even when the policy needs none, so that
        attribute() works with every policy.
    on_progress: called with (tokens done, tokens to do) after each chunk a prompt is read in
        (a progress bar for long prompts).
    Every other keyword argument is llama_cpp.Llama's.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, kv_budget: Budget = None,
                 policy: str | Policy | Callable[..., Any] = "a2sf", alpha: float | None = None,
                 rc_epsilon: float | None = None, sink_tokens: int = 4, recent_tokens: int = 16,
                 eviction_batch: int = 16, pinned: Sequence[Sequence[int]] = (),
                 positions: str = "keep", on_evict: Callable[[EvictionEvent], None] | None = None,
                 track_attention: bool = False,
                 on_progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> None:
        self._kv: BudgetedKV | None = None
        self.on_progress = on_progress
        self._answer_start: int | None = None   # history index where the last answer began
        self._reset_a2sf_at_answer = False
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
        self._statistics = self._policy.uses_statistics or bool(track_attention)
        if self._statistics:
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
            if self._statistics:
                scoring.reset_stats(self.ctx)
        self._answer_start = None

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
            if self.on_progress is not None:
                self.on_progress(i, len(tokens))

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, typical_p: float = 1.0, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True,
                 **kwargs: Any) -> Iterator[int]:
        """llama_cpp.Llama.generate, reusing the cached prefix of the history when it can."""
        tokens = list(tokens)
        if reset:
            tokens = self._reuse_prefix(tokens)
        inner = super().generate(tokens, top_k=top_k, top_p=top_p, min_p=min_p,
                                 typical_p=typical_p, temp=temp, repeat_penalty=repeat_penalty,
                                 reset=False, **kwargs)
        return self._answer(inner)

    def _answer(self, inner: Iterator[int]) -> Iterator[int]:
        """Pass the tokens of `inner` through (send() included), marking where the answer
        starts: when the first token is sampled the prompt has been read, and the statistics
        window restarts, so that attribute() sees the answer's queries only."""
        try:
            token = next(inner)
        except StopIteration:
            return
        self._start_answer()
        while True:
            sent = yield token
            try:
                token = inner.send(sent)
            except StopIteration:
                return

    def _start_answer(self) -> None:
        assert self._kv is not None
        self._answer_start = self.n_tokens
        if self._statistics:
            scoring.reset_stats(self.ctx, a2sf=self._reset_a2sf_at_answer, moments=True)
            self._kv.window_start = self.n_tokens

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
        rest = self._same_text_continuation(tokens, p)
        if rest is not None:
            return rest
        self.reset()
        return tokens

    def _same_text_continuation(self, tokens: list[int], p: int,
                                max_tail: int = 4096) -> list[int] | None:
        """When the prompt spells the history's text from p on with other tokens (a chat
        template re-tokenizing the last reply differently from how it was sampled) and the cache
        cannot be cut back to p, keep the history as sampled and return what follows its text;
        None if the prompt does not continue the history's text. Stock llama.cpp's server keeps
        the sampled tokens too."""
        n = self.n_tokens
        if not p < n or n - p > max_tail or self._requires_eval:
            return None

        def piece(t: int) -> bytes:
            return self._model.token_to_piece(int(t), special=True).rstrip(b"\0")

        target = b"".join(piece(t) for t in self.input_ids[p:n])
        got = b""
        for k in range(p, len(tokens)):
            if len(got) >= len(target):
                break
            got += piece(tokens[k])
        else:
            k = len(tokens)
        if got != target or k == len(tokens):
            return None     # another text, or nothing new to read: read the prompt again
        return tokens[k:]

    def create_completion(self, prompt: Any, suffix: str | None = None,
                          max_tokens: int | None = 16, *args: Any, **kwargs: Any) -> Any:
        """llama_cpp.Llama.create_completion. max_tokens None or <= 0 means up to one budget's
        worth of tokens (llama_cpp.Llama: up to the end of the context)."""
        if self._policy.evicts and (max_tokens is None or max_tokens <= 0):
            max_tokens = self.kv_budget_cells
        return super().create_completion(prompt, suffix, max_tokens, *args, **kwargs)

    def save_state(self) -> SessionState:
        """The session in memory: the evicted cache, statistics, positions and history.

        The cache is re-laid out as a restore lays it out (pyrcedge/session.py says why), so
        that this Llama and one that loads the state continue with identical logits."""
        state = self._capture()
        self._restore(state)
        return state

    def load_state(self, state: SessionState) -> None:
        """Continue from a state save_state returned (in this process or, through a file,
        another). Refused with SessionError, this Llama unchanged, when it was made for another
        model, budget or cache type."""
        if not isinstance(state, SessionState):
            raise SessionError("pyrcedge.Llama.load_state takes what pyrcedge.Llama.save_state "
                               f"returns, not {type(state).__name__}")
        session.check_compatible(state.header, self._session_identity(), "the session")
        backup = self._capture()
        try:
            self._restore(state)
        except BaseException:
            self._restore(backup)
            raise

    def save_session(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Save the session to a file, atomically (a crash mid-save keeps the previous file).
        metadata: JSON-serialisable data of the caller's that travels with it (a chat's
        messages, say); load_session returns it."""
        state = self.save_state()
        if metadata is not None:
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as e:
                raise SessionError(f"session metadata must be JSON-serialisable: {e}") from e
            state.header["metadata"] = metadata
        session.write_atomic(path, session.encode(state))

    def load_session(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a session file written by save_session, in this or another process; returns
        the metadata saved with it ({} if none). Refused with SessionError, this Llama unchanged,
        if the file is corrupt, truncated, or was saved for another model, budget or cache type."""
        state = session.read(path)
        session.check_compatible(state.header, self._session_identity(), f"session file {path}")
        self.load_state(state)
        return dict(state.header.get("metadata") or {})

    def _session_identity(self) -> dict[str, Any]:
        if not hasattr(self, "_fingerprint"):
            m = self._model
            self._fingerprint = session.model_fingerprint(
                self.model_path, m.desc(), m.n_params(), m.size(), self._n_vocab)
        p = self.context_params
        return {"model": self._fingerprint, "budget_cells": self.kv_budget_cells,
                "cache_types": [int(p.type_k), int(p.type_v), int(p.flash_attn_type)],
                "positions": "compact" if self._kv.compact else "keep",  # type: ignore[union-attr]
                "statistics": self._statistics}

    def _capture(self) -> SessionState:
        kv = self._kv
        assert kv is not None
        header = {**self._session_identity(), "n_tokens": int(self.n_tokens),
                  "seed": int(self._seed), "answer_start": self._answer_start,
                  "bookkeeping": kv.bookkeeping(), "policy": self._policy.describe(),
                  "policy_state": self._policy.state_dict()}
        arrays: dict[str, npt.NDArray[Any]] = {
            "history": self.input_ids[: self.n_tokens].astype(np.int32),
            "cached": kv.cached.astype(np.int64)}
        data = b""
        if self.n_tokens:
            size = llama_cpp.llama_state_get_size(self.ctx)
            buf = (ctypes.c_uint8 * size)()
            n = llama_cpp.llama_state_get_data(self.ctx, buf, size)
            data = bytes(memoryview(buf)[:n])
            cells = scoring.used_cells(self.ctx)
            arrays["cell_pos"] = cells.pos.astype(np.int32)
            if self._statistics:
                for il in range(scoring.n_layer(self.ctx)):
                    arrays[f"stats.{il}"] = scoring.read_scores(self.ctx, il, cells.index)
            if self._logits_all:
                arrays["scores"] = self.scores[: self.n_tokens].copy()
        return SessionState(header=header, kv=data, arrays=arrays)

    def _restore(self, state: SessionState) -> None:
        """Make this Llama's cache, statistics and history those of `state` (compatible)."""
        kv = self._kv
        assert kv is not None
        h, a = state.header, state.arrays
        n = state.n_tokens
        history = a["history"]
        if len(history) != n or (n and int(a["cached"][-1]) != n - 1):
            raise SessionError("the session is inconsistent: its last history token is not cached")
        self.reset()
        kv.restore_bookkeeping(h["bookkeeping"], a["cached"])
        if n:
            buf = (ctypes.c_uint8 * len(state.kv)).from_buffer_copy(state.kv)
            if llama_cpp.llama_state_set_data(self.ctx, buf, len(state.kv)) != len(state.kv):
                raise SessionError("llama.cpp refused the session's KV cache state")
            # llama.cpp's state holds no logits: decode the last token again to have them
            last = int(kv.position_of(len(kv.cached) - 1))
            llama_cpp.llama_memory_seq_rm(kv.mem, 0, last, -1)
            self._batch.set_batch(batch=[int(history[-1])], n_past=last, logits_all=False)
            self._ctx.decode(self._batch)
            if self._statistics:
                self._restore_statistics(a)
        self.input_ids = _grow(np.zeros(0, np.intc), max(n, 1))
        self.input_ids[:n] = history
        if self._logits_all and "scores" in a:
            self.scores = _grow(self.scores, n)
            self.scores[:n] = a["scores"]
        self.n_tokens = n
        self._requires_eval = False
        self._seed = int(h["seed"])
        self._answer_start = h["answer_start"]
        self._policy.load_state_dict(h["policy_state"])

    def _restore_statistics(self, a: dict[str, npt.NDArray[Any]]) -> None:
        """Write the saved statistics into the cells that now hold the saved positions."""
        cells = scoring.used_cells(self.ctx)
        where = {int(p): int(c) for p, c in zip(cells.pos, cells.index)}
        try:
            target = np.asarray([where[int(p)] for p in a["cell_pos"]], np.int32)
        except KeyError:
            raise SessionError("the restored cache lacks a position the session lists") from None
        scoring.reset_stats(self.ctx)
        for il in range(scoring.n_layer(self.ctx)):
            scoring.write_scores(self.ctx, il, target, a[f"stats.{il}"])

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

    def attribute(self, spans: str | Sequence[tuple[int, int]] = "sentence", *,
                  method: str = "rc", top_k: int = 8, chunk_tokens: int = 32,
                  prompt_start: int = 0) -> Attribution:
        """Which spans of the last prompt the last answer drew on (docs/rcstat.md).

        spans: "sentence", "token" or "chunk" (of chunk_tokens tokens) over the prompt from
        history index prompt_start, or (start, end) history token index ranges inside the prompt.
        method: "rc" (top_k heads by expected RC), "rc-all" (every head) or "attention" (the
        post-softmax baseline: the a2sf statistic, accumulated attention when alpha is 1).
        Spans whose tokens were all evicted score NaN and are listed in .evicted.
        """
        kv = self._kv
        assert kv is not None
        if not self._statistics or not scoring.scoring_enabled(self.ctx):
            raise AttributionError("attribution needs the attention statistics: use a policy that "
                                   "keeps them, or pass track_attention=True")
        if self._answer_start is None or self.n_tokens - self._answer_start < 1:
            raise AttributionError("nothing to attribute: generate an answer first")
        a0 = self._answer_start
        if not 0 <= prompt_start < a0:
            raise AttributionError(f"prompt_start must be in [0, {a0}), got {prompt_start}")
        history = self.input_ids[: self.n_tokens]
        if isinstance(spans, str):
            if spans not in GRANULARITIES:
                raise AttributionError(f"spans must be one of {GRANULARITIES} or a list of "
                                       f"(start, end) token ranges, got {spans!r}")
            ranges = self._spans_by(spans, prompt_start, a0, chunk_tokens)
        else:
            ranges = [check_token_span(sp, prompt_start, a0) for sp in spans]
        cells, logical = kv.cached_cells()
        n_layer = scoring.n_layer(self.ctx)
        stats = np.stack([scoring.read_scores(self.ctx, il, cells) for il in range(n_layer)])
        scores, heads = score_spans(stats, logical, ranges, a0, method, top_k,
                                    scoring.n_head_kv(self.ctx, 0))
        cached = set(logical.tolist())
        out = []
        for (s0, s1), sc in zip(ranges, scores):
            share = sum(1 for i in range(s0, s1) if i in cached) / (s1 - s0)
            text = self.detokenize(history[s0:s1].tolist()).decode("utf-8", errors="replace")
            out.append(SpanScore(start=s0, end=s1, text=text, score=float(sc), cached=share))
        return Attribution(method=method, spans=out, heads=heads, answer=(a0, self.n_tokens))

    def _spans_by(self, granularity: str, start: int, end: int, chunk: int) -> list[tuple[int, int]]:
        if granularity == "token":
            return [(i, i + 1) for i in range(start, end)]
        if granularity == "chunk":
            if chunk < 1:
                raise AttributionError(f"chunk_tokens must be at least 1, got {chunk}")
            return [(i, min(i + chunk, end)) for i in range(start, end, chunk)]
        text, offsets = self.token_offsets(self.input_ids[start:end].tolist())
        return char_to_token_spans(offsets, sentence_spans(text), base=start)

    def token_offsets(self, tokens: Sequence[int]) -> tuple[str, npt.NDArray[np.int64]]:
        """The text of tokens (special tokens spelled out) and the character offset where each
        token starts (one more entry: the end)."""
        import codecs

        dec = codecs.getincrementaldecoder("utf-8")("replace")
        parts, offsets, n = [], [0], 0
        for t in tokens:
            piece = dec.decode(self._model.token_to_piece(int(t), special=True).rstrip(b"\0"))
            parts.append(piece)
            n += len(piece)
            offsets.append(n)
        tail = dec.decode(b"", final=True)
        parts.append(tail)
        offsets[-1] += len(tail)
        return "".join(parts), np.asarray(offsets, np.int64)

    def explain(self, context: str, question: str, *, max_tokens: int = 64,
                spans: str | Sequence[tuple[int, int]] = "sentence", method: str = "rc",
                top_k: int = 8, system: str = "Answer the question from the context, briefly."
                ) -> tuple[str, Attribution]:
        """Answer `question` about `context` (greedy, chat template) and attribute the answer to
        spans of the context: "sentence", "token", "chunk", or (start, end) character spans."""
        if not context.strip():
            raise AttributionError("the context is empty: there is nothing to attribute to")
        if not isinstance(spans, str):
            spans = [check_char_span(sp, len(context)) for sp in spans]
        if not self._statistics:
            scoring.enable_scoring(self.ctx, alpha=1.0)
            self._statistics = True
        alpha = self._policy.alpha
        scoring.set_alpha(self.ctx, 1.0)     # the baseline: attention accumulated over the answer
        self._reset_a2sf_at_answer = True
        try:
            self.reset()
            r = self.create_chat_completion(messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}],
                max_tokens=max_tokens, temperature=0.0)
        finally:
            self._reset_a2sf_at_answer = False
            scoring.set_alpha(self.ctx, alpha)
        answer = r["choices"][0]["message"]["content"] or ""
        a0 = self._answer_start or self.n_tokens
        text, offsets = self.token_offsets(self.input_ids[:a0].tolist())
        at = text.find(context)
        if at < 0:
            raise AttributionError("the context was not found verbatim in the formatted prompt")
        char_spans = sentence_spans(context) if spans == "sentence" else spans
        if isinstance(char_spans, str):     # token or chunk granularity over the context
            t0, t1 = char_to_token_spans(offsets, [(at, at + len(context))])[0]
            ranges = self._spans_by(char_spans, t0, t1, 32)
            labels = [""] * len(ranges)
        else:
            ranges = char_to_token_spans(offsets, [(at + s, at + e) for s, e in char_spans])
            labels = [context[s:e] for s, e in char_spans]
        result = self.attribute(ranges, method=method, top_k=top_k)
        n = len(context)
        if isinstance(char_spans, str):
            result.char_spans = [(min(max(int(offsets[t0]) - at, 0), n),
                                  min(max(int(offsets[t1]) - at, 0), n)) for t0, t1 in ranges]
        else:
            result.char_spans = list(char_spans)
        result.spans = [SpanScore(**{**vars(sp), "label": lab or context[c0:c1]})
                        for sp, lab, (c0, c1) in zip(result.spans, labels, result.char_spans)]
        return answer, result

    def kv_stats(self) -> KVStats:
        """Cells used, budget in cells and bytes, evictions, evicted tokens, positions kept."""
        assert self._kv is not None
        return self._kv.stats(self._cell_bytes, self._allocated, self.n_tokens)


def _check_count(n: Any, name: str, low: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low:
        raise BudgetError(f"{name} must be an integer >= {low}, got {n!r}")
    return int(n)


def check_token_span(span: Sequence[int], lo: int, hi: int) -> tuple[int, int]:
    try:
        s, e = (int(x) for x in span)
    except (TypeError, ValueError):
        raise AttributionError(f"a span is (start, end) token indices, got {span!r}") from None
    if not lo <= s < e <= hi:
        raise AttributionError(f"span {span!r} is outside the prompt: spans must lie in "
                               f"[{lo}, {hi}) and be non-empty")
    return s, e


def check_char_span(span: Sequence[int], n: int) -> tuple[int, int]:
    try:
        s, e = (int(x) for x in span)
    except (TypeError, ValueError):
        raise AttributionError(f"a span is (start, end) character offsets, got {span!r}") from None
    if not 0 <= s < e <= n:
        raise AttributionError(f"span {span!r} is outside the context of {n} characters")
    return s, e
