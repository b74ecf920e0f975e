"""pyrcedge.Llama: llama_cpp.Llama inside a fixed KV memory budget.

Change the import and keep the code:

    from pyrcedge import Llama
    llm = Llama("model.gguf", kv_budget=256, policy="a2sf")
    llm.create_chat_completion(messages=[...])   # never "Requested tokens exceed context window"

The KV cache is allocated with exactly the budget's cells. llama_cpp.Llama keeps the token
history in `input_ids` and matches new prompts against it to reuse the cache; here the history
grows without bound while the cache holds a subset of it, so this class keeps the history,
feeds only what is new, evicts (pyrcedge.cache.engine) before a chunk would not fit, and
re-reads a prompt from the start, chunk by chunk, when it diverges from the history before the
last eviction. That history protocol is this module's job; sessions, attribution and explain
are functions of pyrcedge.features that the methods below hand over to.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jinja2
import llama_cpp
import numpy as np
import numpy.typing as npt

from ..assets.gguf import check_gguf
from ..cache.budget import (
    FLOAT_KV_CACHE_TYPES,
    BudgetLike,
    ModelShape,
    cells_for,
    check_cache_type,
    model_shape,
)
from ..cache.engine import BudgetedKV, EvictionEvent, KVStats, RecallEvent, check_span
from ..cache.policies import Policy
from ..cache.view import CacheView
from ..errors import BudgetError, GenerationInputError, ModelLoadError
from ..features import attribution, explain, probe, recall, session, structure
from ..features.attribution import Attribution
from ..features.session import SessionState
from ..native import binding as _native
from ..native import stats as kernel_stats
from ..native.batch import fill_batch
from . import inputs, usage
from .chat_template import bound_chat_templates, bounded_environments
from .settings import DEFAULT_PROBE, DEFAULT_RECALL, BudgetSettings, check_count, check_threads
from .special_tokens import check_special_tokens

# The history a budgeted Llama may hold: positions are int32 in llama.cpp.
LOGICAL_CONTEXT = 2**31 - 1
DEFAULT_N_CTX = 512  # llama_cpp.Llama's default
# on the portable path, a read gives no statistics from its early chunks only when at least this
# many chunks go without (Llama._decay_only_pays)
DECAY_ONLY_MIN_CHUNKS = 4
# sentences whose words recall remembers (by token ids) before it starts again
SENTENCE_WORDS_KEPT = 8192
# the columns of Llama._token_kinds: what recall and the chat structure ask of a token
CONTROL, NEWLINE, SYSTEM, ENDS_SENTENCE = range(4)


def grow(a: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
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
    on_logits: called after each decode with (history index of the chunk's first token,
        logits [n, n_vocab] of every token of the chunk); setting it makes llama.cpp compute
        them all (perplexity reads them).
    probe: question-probed reading of prompts that do not fit (docs/probe.md): "tail" (the
        prompt's last tokens: its question), a number of tail tokens, "catalyst" (a generic
        summary question, for documents read before their questions), any question text, a
        pyrcedge.Probe, or None (evict by the policy alone).
    recall: read evicted history back when a new prompt asks about it (docs/recall.md): True
        (the default settings), a bound of tokens per prompt, a pyrcedge.Recall, or None/False.
    on_recall: called with a RecallEvent after each prompt that recalled history.
    chat_structure: keep the chat template's control tokens and role headers of the turns still
        cached, and the system prompt, when evicting (pyrcedge.features.structure).
    Every other keyword argument is llama_cpp.Llama's.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, kv_budget: BudgetLike = None,
                 policy: str | Policy | Callable[..., Any] = "a2sf", alpha: float | None = None,
                 rc_epsilon: float | None = None, sink_tokens: int = 4, recent_tokens: int = 16,
                 eviction_batch: int = 16, pinned: Sequence[Sequence[int]] = (),
                 positions: str = "keep", on_evict: Callable[[EvictionEvent], None] | None = None,
                 track_attention: bool = False,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_logits: Callable[[int, npt.NDArray[np.float32]], None] | None = None,
                 probe: probe.ProbeLike = DEFAULT_PROBE, recall: recall.RecallLike = DEFAULT_RECALL,
                 on_recall: Callable[[RecallEvent], None] | None = None,
                 chat_structure: bool = False, **kwargs: Any) -> None:
        self._kv: BudgetedKV | None = None
        self.settings = BudgetSettings(
            kv_budget=kv_budget, policy=policy, alpha=alpha, rc_epsilon=rc_epsilon,
            sink_tokens=sink_tokens, recent_tokens=recent_tokens, eviction_batch=eviction_batch,
            pinned=pinned, positions=positions, on_evict=on_evict,
            track_attention=track_attention, on_progress=on_progress, on_logits=on_logits,
            probe=probe, recall=recall, on_recall=on_recall, chat_structure=chat_structure)
        self.on_progress = on_progress
        self.on_logits = on_logits
        self.answer_start: int | None = None   # history index where the last answer began
        self._reset_a2sf_at_answer = False
        self._deadline: float | None = None     # time.monotonic() when generation must end
        self._every_query_on = False            # inside _every_query
        self._decay_only = False                # the kernels' llama_rcedge_set_decay_only
        self._decay_only_window = 0             # > 0: the read under way may use it (_decay_only_pays)
        policy_object = self.settings.policy_object
        if kwargs.get("draft_model") is not None and policy_object.evicts:
            raise BudgetError("draft models (speculative decoding) are not supported with eviction")
        check_threads(kwargs)
        path = os.fspath(model_path)
        check_gguf(path)
        cells, limit = self._budget_cells(path, kv_budget, kwargs)
        self.settings.check_cells(cells)
        kwargs.setdefault("verbose", False)
        lib = _native.lib()
        prev = lib.llama_rcedge_set_exact_n_ctx(1)
        try:
            with bounded_environments():   # llama_cpp compiles the model's chat templates here
                super().__init__(model_path=path, n_ctx=cells, **kwargs)
        except ValueError as e:
            raise ModelLoadError(f"llama.cpp could not load {path}: {e}") from e
        except jinja2.TemplateError as e:     # llama_cpp compiles tokenizer.chat_template
            raise ModelLoadError(f"{path}: its chat template (tokenizer.chat_template) does not "
                                 f"compile: {e}") from e
        finally:
            lib.llama_rcedge_set_exact_n_ctx(prev)
        bound_chat_templates(self._chat_handlers)     # the model file's templates: a budget
        try:
            check_special_tokens(self.model, path)
        except ModelLoadError:
            self.close()
            raise

        self._allocated = int(lib.llama_rcedge_kv_bytes(_native.context_ptr(self.ctx)))
        self._cell_bytes = self._allocated // max(1, _native.kv_cells_total(self.ctx))
        if limit is not None and self._allocated > limit:  # the sizing above is exact; guard it
            raise BudgetError(f"llama.cpp allocated {self._allocated} bytes of KV cache, over "
                              f"the budget of {limit}")
        self._kv = BudgetedKV(self.ctx, cells, policy_object, self.settings.protection(),
                              self.settings.eviction_batch, self.settings.positions, on_evict)
        if self.settings.chat_structure:
            self._kv.protection.structure = self._structure
        self._probe_text_ids = self.settings.check_probe(cells, self.tokenize)
        self._token_kind_of: dict[int, tuple[bool, bool, bool, bool]] = {}
        self._sentence_words: dict[bytes, list[str]] = {}
        # (history ids, which of them end a sentence) as recall last cut them
        self._sentence_ends_of: tuple[npt.NDArray[np.intc], npt.NDArray[np.bool_]] = (
            np.empty(0, np.intc), np.empty(0, bool))
        self.kv_usage_log = usage.UsageLog()     # completions' kv_cache usage, by id
        self.statistics = self.settings.statistics
        if self.statistics:
            kernel_stats.enable_scoring(self.ctx, alpha=policy_object.alpha)
            if not self.settings.track_attention:   # attribution reads every query's moments
                kernel_stats.set_query_window(self.ctx, policy_object.prefill_window())
                kernel_stats.set_moments(self.ctx, policy_object.reads_moments)
        if policy_object.evicts:
            self._n_ctx = LOGICAL_CONTEXT
        self.input_ids = np.zeros(cells, np.intc)
        if self._logits_all:
            self.scores = np.zeros((cells, self._n_vocab), np.single)

    @staticmethod
    def _budget_cells(path: str, kv_budget: BudgetLike,
                      kwargs: dict[str, Any]) -> tuple[int, int | None]:
        """(cells, byte limit) for the budget; pops n_ctx from kwargs."""
        if kv_budget is not None and "n_ctx" in kwargs:
            raise BudgetError("give kv_budget or n_ctx, not both: kv_budget sizes the cache")
        type_k = check_cache_type(kwargs.get("type_k"), "type_k")
        type_v = check_cache_type(kwargs.get("type_v"), "type_v")
        flash = bool(kwargs.get("flash_attn", False))
        shape: list[ModelShape] = []

        def shape_of() -> ModelShape:
            if not shape:
                shape.append(model_shape(path, type_k, type_v, flash))
            return shape[0]

        n_ctx = check_count(kwargs.pop("n_ctx", DEFAULT_N_CTX), "n_ctx", 0)
        default = n_ctx if n_ctx > 0 else shape_of().n_ctx_train
        return cells_for(kv_budget, shape_of, default)

    # --- what llama_cpp.Llama calls -----------------------------------------------------

    def reset(self) -> None:
        super().reset()
        if self._kv is not None:
            self._kv.clear()
            if self.statistics:
                kernel_stats.reset_stats(self.ctx)
        self.answer_start = None

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after the history's first n_tokens, evicting as the budget needs (by
        what the question probe attends to, when the Llama has one and the prompt does not
        fit: pyrcedge.features.probe)."""
        kv = self.kv_cache
        tokens = list(tokens)
        kv.truncate(self.n_tokens)
        recalled = self._recall(tokens)
        read = self._probed_read(tokens)
        if read is None:
            self._read(tokens, None)
            return
        if kv.room_without_eviction() < read.reserve(0):
            # a full cache (an earlier turn filled it) first makes room for the probe
            kv.make_room(read.reserve(0), self.n_tokens, self.input_ids)
        if self.statistics:
            # the probe compares with the moments of every query that read the document
            try:
                with self._every_query():
                    self._read_probed(tokens, read, recalled)
            finally:
                read.close(self.ctx)
            return
        # the probe reads the document queries' logit moments: on for this read only
        kernel_stats.enable_scoring(self.ctx, alpha=self.policy.alpha)
        try:
            self._read_probed(tokens, read, recalled)
        finally:
            kernel_stats.disable_scoring(self.ctx)     # frees the probe's kept queries too

    def _read_probed(self, tokens: list[int], read: probe.ProbedRead, recalled: int = 0) -> None:
        """Read a prompt that does not fit with its probe. With recall on and the question at
        the prompt's tail, the document is read first; then the sentences its reading evicted
        that the question asks about are read back (as recall does for earlier turns, within
        what is left of the prompt's bound after the `recalled` tokens read back before the
        document), and the question last, so that its last token's logits start the answer."""
        tail = read.tail_start
        if self.settings.recall_object is None or read.settings.text is not None or tail <= 0:
            self._read(tokens, read)
            return
        self._read(tokens, read, end=tail)
        self._recall(tokens[tail:], release=False, read=read, spent=recalled)
        self._read(tokens, read, begin=tail)

    def _read(self, tokens: list[int], read: probe.ProbedRead | None, begin: int = 0,
              end: int | None = None) -> None:
        """Evaluate tokens[begin:end] (all by default), chunk by chunk, evicting as needed."""
        stop = len(tokens) if end is None else end
        self._decay_only_window = self._decay_only_pays(stop - begin)
        try:
            self._read_chunks(tokens, read, begin, end)
        finally:
            self._set_decay_only(False)

    def _read_chunks(self, tokens: list[int], read: probe.ProbedRead | None, begin: int,
                     end: int | None) -> None:
        kv = self.kv_cache
        logits_all = self._logits_all or self.on_logits is not None
        stop = len(tokens) if end is None else end
        i = begin
        while i < stop:
            left = stop - i
            if read is not None and (
                    kv.max_chunk(self.n_tokens) <= read.room(i)
                    or read.decodes_next() and kv.room_without_eviction() < len(read.ids)):
                # protected tokens leave no room beside the probe, or the probe's own tokens
                # are being read and an eviction could not decode it on top: read plainly
                read = None
            reserve = read.reserve(i) if read else 0
            room = kv.room_without_eviction() - reserve
            fits = min(left, self.n_batch) <= room
            # fits: chunk as llama_cpp.Llama does
            n = min(left, self.n_batch) if fits else max(
                1, min(left, self.n_batch, kv.max_chunk(self.n_tokens) - reserve))
            limit = read.chunk_limit(i) if read else None
            if limit is not None:
                n = min(n, limit)
            self.input_ids = grow(self.input_ids, self.n_tokens + n)
            self.input_ids[self.n_tokens : self.n_tokens + n] = tokens[i : i + n]
            if read is None:
                kv.make_room(n, self.n_tokens, self.input_ids)
            elif fits:
                kv.make_room(n + reserve, self.n_tokens, self.input_ids,
                             probe=self._probe_scorer(read))
            else:
                # a pass evicts the probe's share of the budget (and its room), not all that
                # may go; the chunk after it leaves free what the next pass needs
                kv.make_room(min(read.pass_room(i, n, kv.budget), kv.max_chunk(self.n_tokens)),
                             self.n_tokens, self.input_ids, probe=self._probe_scorer(read))
                n = max(1, min(n, kv.room_without_eviction() - read.reserve(i)))
            chunk = tokens[i : i + n]
            self._set_decay_only(self._unread_chunk(read, i + n, stop, n))
            # only the prompt's last token is sampled from (a budgeted read decodes many chunks)
            fill_batch(self._batch, chunk, kv.next_pos(),
                       "all" if logits_all else "last" if i + n == len(tokens) else "none")
            self._ctx.decode(self._batch)
            if logits_all:
                logits = np.ctypeslib.as_array(self._ctx.get_logits(), shape=(n, self._n_vocab))
                if self._logits_all:
                    self.scores = grow(self.scores, self.n_tokens + n)
                    self.scores[self.n_tokens : self.n_tokens + n, :] = logits
                if self.on_logits is not None:
                    self.on_logits(self.n_tokens, logits)
            kv.appended(self.n_tokens, n)
            self.n_tokens += n
            self._requires_eval = False
            i += n
            if self.on_progress is not None:
                self.on_progress(i, len(tokens))

    def _unread_chunk(self, read: probe.ProbedRead | None, end: int, stop: int, n: int) -> bool:
        """Whether nothing needs the statistics of the n-token chunk about to be decoded, up to
        `end` of the tokens being read to `stop`: a plain read (no probe, no attribution) where
        decay only pays (_decay_only_pays: a policy that takes only the last queries before a read
        of the scores, its prefill window), at least that window's tokens still to read after the
        chunk, and room for the next chunk without an eviction. Its queries then only decay the
        scores: what they leave out weighs no more than what the window leaves out
        (docs/scoring.md, "Decay only")."""
        window = self._decay_only_window
        if read is not None or window <= 0 or self._every_query_on or stop - end < window:
            return False
        return min(stop - end, self.n_batch) <= self.kv_cache.room_without_eviction() - n

    def _decay_only_pays(self, n_tokens: int) -> int:
        """The prefill window of a read of n_tokens whose early chunks may give no statistics,
        or 0 where that does not save time, as measured (docs/scoring.md and docs/gpu.md, "Decay
        only"): it does on the portable path (GPUs) for reads that leave out at least
        DECAY_ONLY_MIN_CHUNKS chunks, under a policy with a prefill window and without
        attribution: in flash-attention contexts (an H100, the 1B shape at 4000 tokens: 0.82 of
        scoring off against the window's 0.76), and in soft_max contexts where the graph ops
        compute the statistics (what Metal runs; the 1B and 8B shapes: 0.83 and 0.90 against
        0.68 and 0.76). Not elsewhere: a change of the setting changes the graph's nodes, and
        ggml's scheduler then waits for the GPU, which cost more than it saved with ggml-cuda's
        fused kernels in soft_max contexts (0.87 against 0.96) and with one chunk left out;
        with the CPU kernels the window's statistics cost too little for the difference to show
        (2 threads, SmolLM2: read 0.963 / 0.914 of off, the window 1.003 / 0.946, at 2048 / 4096
        tokens, spreads of +-5-10%)."""
        if (not self.statistics or self.settings.track_attention
                or not kernel_stats.scoring_portable(self.ctx)):
            return 0
        window = self.settings.policy_object.prefill_window()
        flash = self.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        context_pays = flash or not kernel_stats.scoring_device_fused(self.ctx)
        pays = (window > 0 and context_pays
                and (n_tokens - window) // max(1, self.n_batch) >= DECAY_ONLY_MIN_CHUNKS)
        return window if pays else 0

    def _set_decay_only(self, on: bool) -> None:
        if on != self._decay_only:
            kernel_stats.set_decay_only(self.ctx, on)
            self._decay_only = on

    def _recall(self, tokens: list[int], release: bool = True,
                read: probe.ProbedRead | None = None, spent: int = 0) -> int:
        """Before `tokens` are read: read back the evicted history they ask about
        (pyrcedge.features.recall), held in the cache until the next prompt (release: the
        previous prompt's recalled spans become evictable first). Within a probed read
        (`read`, its tail still to come), the room is made by the probe's scores, and the
        tail's own room is kept; `spent` tokens of the prompt's bound were already read back
        before its document. Returns the tokens read back."""
        chosen = self._recall_runs(tokens, release, spent)
        if not chosen:
            return 0
        kv = self.kv_cache
        n = self.n_tokens
        total = sum(b - a for a, b in chosen)
        # the cached tokens of the chosen sentences are read again with them (Recall.whole)
        indices = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in chosen])
        kv.forget(np.intersect1d(indices, kv.cached), n)
        settings = self.settings.recall_object
        first = kv.read_back if settings is not None and settings.room == "recalled" else None
        if read is None:
            kv.make_room(total, n, self.input_ids, first=first)
        else:
            kv.make_room(total + len(read.ids), n, self.input_ids, probe=self._probe_scorer(read),
                         first=first)
        kv.reinsert(chosen, n, self._recall_decoder())
        self._recalled(chosen, spent, n)
        return total

    def _recall_runs(self, tokens: list[int], release: bool = True,
                     spent: int = 0) -> list[tuple[int, int]]:
        """The evicted history runs that `tokens` recall (pyrcedge.features.recall), within
        what is left of the prompt's bound after `spent` tokens; release: the previous
        prompt's recalled spans become evictable first."""
        settings = self.settings.recall_object
        kv = self.kv_cache
        if settings is None or len(tokens) < settings.min_prompt:
            return []
        if release:
            kv.protection.held = []
        n = self.n_tokens
        if len(kv.cached) >= n:
            return []       # nothing evicted
        history = self.input_ids[:n]
        spans = recall.evicted_sentences(self._sentence_ends(history), kv.cached,
                                         settings.sentence_max)
        docs = [self._words_of(history, a, b) for a, b in spans]
        query = recall.content_words(self.detokenize(tokens).decode("utf-8", "replace"))
        cached = set(kv.cached.tolist())
        in_cache = set(recall.content_words(self.detokenize(history[kv.cached].tolist()).decode(
            "utf-8", "replace")))
        scores = recall.rank(docs, query, in_cache, settings)
        # the bound is per prompt: a probed read's second recall gets what the first left
        bound = min(settings.max_tokens - spent, int(kv.budget * settings.share) - spent,
                    kv.max_chunk(n) - min(len(tokens), self.n_batch))
        if bound <= 0:
            return []
        if settings.room == "recalled" and settings.hold_asked:
            self._hold_asked_again(history, docs, query, in_cache, bound)
        rereadable = None
        if settings.whole:
            # cached tokens the policy could evict may be read again with their sentence
            free = set(kv.cached[kv.protection.evictable(kv.cached, n)].tolist())
            rereadable = free.__contains__
        chosen = recall.choose(spans, scores, settings, bound,
                               lambda i: 0 <= i < n and i not in cached, rereadable)
        return chosen if sum(b - a for a, b in chosen) > 0 else []

    def _hold_asked_again(self, history: npt.NDArray[np.intc], candidates: list[list[str]],
                          query: list[str], in_cache: set[str], bound: int) -> None:
        """Hold, while this prompt is read and answered, what earlier prompts read back, the
        cache still holds whole and this prompt asks about (up to `bound` tokens, the best
        first): recall's room comes from earlier reads first (Recall.room), and without this
        took the digits of a fact that the turn before had read back, for the question that
        asked for it (docs/recall.md, "Room")."""
        settings = self.settings.recall_object
        assert settings is not None
        kv = self.kv_cache
        again = recall.read_back_sentences(self._sentence_ends(history), kv.cached,
                                           kv.read_back, settings.sentence_max)
        words = [self._words_of(history, a, b) for a, b in again]
        held, total = [], 0
        for j in recall.asked_again(candidates, words, query, in_cache, settings):
            a, b = again[j]
            if total + b - a <= bound:
                held.append((a, b))
                total += b - a
        kv.protection.held = sorted(kv.protection.held + held)

    def _recall_decoder(self) -> Callable[[npt.NDArray[np.int64], int], None]:
        """decode(indices, pos) for BudgetedKV.reinsert: the history tokens at `indices`, with no
        logits (the prompt is read next and computes its own: the vocabulary's projection is a
        large part of a token's cost). The prompt is not read in the same batch: it would see
        the recalled words just before it instead of at their own positions, which lost the
        chat fact at 256 cells (docs/recall.md, "Reading back")."""
        history = self.input_ids

        def decode(indices: npt.NDArray[np.int64], pos: int) -> None:
            ids = history[indices].tolist()
            for a in range(0, len(ids), self.n_batch):
                chunk = ids[a:a + self.n_batch]
                fill_batch(self._batch, chunk, pos + a, "none")
                self._ctx.decode(self._batch)

        return decode

    def _recalled(self, chosen: list[tuple[int, int]], spent: int, n_history: int) -> None:
        """Hold the runs read back for this prompt, and count them (kv_stats, on_recall)."""
        kv = self.kv_cache
        total = sum(b - a for a, b in chosen)
        kv.protection.held = sorted(kv.protection.held + chosen)
        kv.recalls += int(spent == 0)   # prompts that recalled, not recall passes
        kv.recalled_spans += len(chosen)
        kv.recalled_tokens += total
        if self.settings.on_recall is not None:
            self.settings.on_recall(RecallEvent(spans=chosen, tokens=total,
                                                history_tokens=n_history))

    def _sentence_ends(self, history: npt.NDArray[np.intc]) -> npt.NDArray[np.bool_]:
        """Which history tokens end a sentence, remembered from the last prompt: only the
        tokens the history gained since are looked up (a chat's history grows at its end, and
        recall cuts all of it into sentences at every prompt)."""
        ids, ends = self._sentence_ends_of
        k = len(ids)
        if k <= len(history) and np.array_equal(ids, history[:k]):
            ends = np.concatenate([ends, self._token_kinds(history[k:])[:, ENDS_SENTENCE]])
        else:
            ends = self._token_kinds(history)[:, ENDS_SENTENCE]
        self._sentence_ends_of = (history.copy(), ends)
        return ends

    def _words_of(self, history: Any, start: int, end: int) -> list[str]:
        """The content words of history[start:end], remembered by its token ids (a chat
        ranks the same sentences again at every turn)."""
        ids = history[start:end]
        key = ids.tobytes()
        words = self._sentence_words.get(key)
        if words is None:
            if len(self._sentence_words) >= SENTENCE_WORDS_KEPT:
                self._sentence_words.clear()
            words = recall.content_words(self.detokenize(ids.tolist()).decode("utf-8", "replace"))
            self._sentence_words[key] = words
        return words

    def _probed_read(self, tokens: list[int]) -> probe.ProbedRead | None:
        settings = self.settings.probe_object
        if settings is None or not self.policy.evicts:
            return None
        kv = self.kv_cache
        return probe.plan(settings, tokens, kv.room_without_eviction(), self._probe_text_ids,
                          self._kept_queries_work)

    @functools.cached_property
    def _kept_queries_work(self) -> bool:
        """Whether a probe's kept queries can score this context's cells (the K cache's type
        and the model's KV heads, fixed for the Llama's life: asked once)."""
        return probe.kept_queries_work(self.ctx,
                                       self.context_params.type_k not in FLOAT_KV_CACHE_TYPES)

    def _probe_scorer(self, read: probe.ProbedRead) -> Callable[[Any], Any]:
        """cells -> the attention the probe pays them, pooled, for an eviction while reading.
        The probe is decoded right after the cached cells: llama.cpp requires a sequence's
        positions to continue its cache's (llama_batch_allocr: "Y = X + 1")."""
        kv = self.kv_cache

        def score(view: CacheView) -> Any:
            scores, decoded = read.scores(self.ctx, kv.mem, view.cells, kv.cached, kv.next_pos(),
                                          self._batch, self._ctx.decode, self.policy.alpha)
            kv.probe_tokens += decoded
            return scores

        return score

    def generate(  # type: ignore[override]
            self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, typical_p: float = 1.0, temp: float = 0.80,
                 repeat_penalty: float = 1.0, reset: bool = True,
                 **kwargs: Any) -> Iterator[int]:
        """llama_cpp.Llama.generate, reusing the cached prefix of the history when it can. A
        grammar llama.cpp cannot parse is a GenerationInputError (llama_cpp would crash)."""
        inputs.check_grammar(self._model.vocab, kwargs.get("grammar"))
        tokens = list(tokens)
        if not tokens and (reset or self.n_tokens == 0):
            # nothing to read and nothing to continue: llama_cpp asserts (with python -O it
            # samples logits that were never computed)
            raise GenerationInputError("the prompt has no tokens: there is nothing to continue")
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
            if self._deadline is not None and time.monotonic() > self._deadline:
                return      # as max_tokens ends it: finish_reason "length"
            try:
                token = inner.send(sent)  # type: ignore[attr-defined]
            except StopIteration:
                return

    def _start_answer(self) -> None:
        self.answer_start = self.n_tokens
        if self.statistics:
            kernel_stats.reset_stats(self.ctx, a2sf=self._reset_a2sf_at_answer, moments=True)
            self.kv_cache.window_start = self.n_tokens

    def _reuse_prefix(self, tokens: list[int]) -> list[int]:
        """What of `tokens` must still be evaluated; truncates or resets the cache to match."""
        kv = self.kv_cache
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
        target = b"".join(self.token_piece(t) for t in self.input_ids[p:n])
        got = b""
        for k in range(p, len(tokens)):
            if len(got) >= len(target):
                break
            got += self.token_piece(tokens[k])
        else:
            k = len(tokens)
        if got != target or k == len(tokens):
            return None     # another text, or nothing new to read: read the prompt again
        return tokens[k:]

    def limit_generation(self, seconds: float | None) -> None:
        """From now on, generation ends (finish_reason "length", as max_tokens ends it) once
        `seconds` have passed; None: no limit. pyrcedge serve sets it as each request starts
        (--request-timeout), so that no request holds the model longer."""
        self._deadline = None if seconds is None else time.monotonic() + float(seconds)

    def create_completion(self, prompt: Any, suffix: str | None = None,
                          max_tokens: int | None = 16, *args: Any, **kwargs: Any) -> Any:
        """llama_cpp.Llama.create_completion. max_tokens None or <= 0 means up to one budget's
        worth of tokens (llama_cpp.Llama: up to the end of the context). Token ids outside the
        vocabulary (a prompt of ids, logit_bias) are a GenerationInputError."""
        if self.policy.evicts and (max_tokens is None or max_tokens <= 0):
            max_tokens = self.kv_budget_cells
        inputs.check_prompt_tokens(prompt, self._n_vocab)
        inputs.check_logit_bias(kwargs.get("logit_bias"), self._n_vocab)
        before = usage.counters(self.kv_cache)
        out = super().create_completion(prompt, suffix, max_tokens, *args, **kwargs)
        if isinstance(out, dict):
            kv = usage.kv_usage(before, self.kv_cache, self.n_tokens)
            out["usage"]["kv_cache"] = kv  # type: ignore[typeddict-unknown-key]
            self.kv_usage_log.remember(out["id"], kv)
            return out
        return self._stream_usage(out, before)

    def _stream_usage(self, chunks: Iterator[Any], before: dict[str, int]) -> Iterator[Any]:
        """The chunks of a streamed completion; once they are all read, its kv_cache usage
        is kept in kv_usage_log under the completion's id."""
        last = None
        for chunk in chunks:
            last = chunk.get("id")
            yield chunk
        if last is not None:
            self.kv_usage_log.remember(last, usage.kv_usage(before, self.kv_cache, self.n_tokens))

    def close(self) -> None:
        if hasattr(self, "_stack"):  # __init__ may have failed before llama_cpp set it up
            super().close()

    # --- the seam the features use ------------------------------------------------------

    @property
    def kv_cache(self) -> BudgetedKV:
        """The budgeted cache engine: which history tokens are cached, where, and eviction."""
        assert self._kv is not None, "the Llama was not fully constructed"
        return self._kv

    def _structure(self, logical: npt.NDArray[np.int64], n_history: int) -> npt.NDArray[np.bool_]:
        """Which cached tokens (history indices `logical`) the chat's structure keeps."""
        history = self.input_ids[:n_history]
        kinds = self._token_kinds(history)
        cached = np.zeros(n_history, bool)
        cached[logical] = True
        keep = structure.protected(history, kinds[:, CONTROL], kinds[:, NEWLINE], cached,
                                   kinds[:, SYSTEM],
                                   int(structure.SYSTEM_SHARE * self.kv_cache.budget))
        return keep[logical]

    def _token_kinds(self, ids: npt.NDArray[np.intc]) -> npt.NDArray[np.bool_]:
        """[len(ids), 4]: each token's kind (the columns CONTROL, NEWLINE, SYSTEM,
        ENDS_SENTENCE), looked up once per distinct id."""
        distinct, inverse = np.unique(ids, return_inverse=True)
        rows = np.array([self._token_kind(int(t)) for t in distinct], bool).reshape(-1, 4)
        return rows[inverse.reshape(-1)]

    def _token_kind(self, token: int) -> tuple[bool, bool, bool, bool]:
        """(a control token, holds a newline, is the word "system", ends a sentence: its text
        holds one of recall.SENTENCE_ENDS) for a token id."""
        kind = self._token_kind_of.get(token)
        if kind is None:
            attr = llama_cpp.llama_vocab_get_attr(self._model.vocab, token)
            piece = self.token_piece(token).decode("utf-8", "replace")
            kind = (bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL), "\n" in piece,
                    piece.strip().lower() == "system",
                    any(c in recall.SENTENCE_ENDS for c in piece))
            self._token_kind_of[token] = kind
        return kind

    def token_piece(self, token: int) -> bytes:
        """The bytes of one token, special tokens spelled out."""
        return bytes(self._model.token_to_piece(int(token), special=True).rstrip(b"\0"))

    def token_offsets(self, tokens: Sequence[int]) -> tuple[str, npt.NDArray[np.int64]]:
        """The text of tokens (special tokens spelled out) and the character offset where each
        token starts (one more entry: the end)."""
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        parts, offsets, n = [], [0], 0
        for t in tokens:
            piece = dec.decode(self.token_piece(t))
            parts.append(piece)
            n += len(piece)
            offsets.append(n)
        tail = dec.decode(b"", final=True)
        parts.append(tail)
        offsets[-1] += len(tail)
        return "".join(parts), np.asarray(offsets, np.int64)

    def decode_last(self, token: int, pos: int) -> None:
        """Decode one token at position `pos` again (its cell removed first), for its logits."""
        llama_cpp.llama_memory_seq_rm(self.kv_cache.mem, 0, pos, -1)
        fill_batch(self._batch, [int(token)], pos)
        self._ctx.decode(self._batch)

    @contextlib.contextmanager
    def statistics_window(self, alpha: float, reset_a2sf_at_answer: bool = True) -> Iterator[None]:
        """While active the kernels run with `alpha` (statistics on, turned on if need be), and
        the next answer starts a fresh window for the A2SF scores too; restored on exit."""
        if not self.statistics:
            kernel_stats.enable_scoring(self.ctx, alpha=alpha)
            self.statistics = True
        before = self.policy.alpha
        kernel_stats.set_alpha(self.ctx, alpha)
        self._reset_a2sf_at_answer = reset_a2sf_at_answer
        try:
            with self._every_query():   # attribution reads the moments
                yield
        finally:
            self._reset_a2sf_at_answer = False
            kernel_stats.set_alpha(self.ctx, before)

    @contextlib.contextmanager
    def _every_query(self) -> Iterator[None]:
        """While active the kernels keep every statistic of every query, not only the policy's
        prefill window and what the policy reads (the probe and attribution read the logit
        moments); restored on exit."""
        window = kernel_stats.set_query_window(self.ctx, 0)
        moments = kernel_stats.set_moments(self.ctx, True)
        outer, self._every_query_on = self._every_query_on, True
        try:
            yield
        finally:
            self._every_query_on = outer
            kernel_stats.set_moments(self.ctx, moments)
            kernel_stats.set_query_window(self.ctx, window)

    # --- pyrcedge's own -----------------------------------------------------------------

    @property
    def kv_budget_cells(self) -> int:
        return self.kv_cache.budget

    @property
    def policy(self) -> Policy:
        return self.kv_cache.policy if self._kv is not None else self.settings.policy_object

    def pin(self, start: int, end: int) -> None:
        """Never evict history tokens start..end-1 (from now on)."""
        self.kv_cache.protection.pinned.append(check_span((start, end)))

    def kv_stats(self) -> KVStats:
        """Cells used, budget in cells and bytes, evictions, evicted tokens, positions kept,
        time spent evicting."""
        return self.kv_cache.stats(self._cell_bytes, self._allocated, self.n_tokens)

    def save_state(self) -> SessionState:  # type: ignore[override]
        """The session in memory: the evicted cache, statistics, positions and history
        (pyrcedge.features.session.save_state)."""
        return session.save_state(self)

    def load_state(self, state: SessionState) -> None:  # type: ignore[override]
        """Continue from a state save_state returned; SessionError, this Llama unchanged, when
        it was made for another model, budget or cache type."""
        session.load_state(self, state)

    def save_session(self, path: str | os.PathLike[str],
                     metadata: dict[str, Any] | None = None) -> None:
        """Save the session to a file, atomically; metadata (JSON-serialisable) travels with it."""
        session.save_session(self, path, metadata)

    def load_session(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a session file written by save_session; returns the metadata saved with it."""
        return session.load_session(self, path)

    def attribute(self, spans: str | Sequence[tuple[int, int]] = "sentence", *,
                  method: str = "rc", top_k: int = 8, chunk_tokens: int = 32,
                  prompt_start: int = 0) -> Attribution:
        """Which spans of the last prompt the last answer drew on (pyrcedge.features.attribution
        .attribute says how)."""
        return attribution.attribute(self, spans, method=method, top_k=top_k,
                                     chunk_tokens=chunk_tokens, prompt_start=prompt_start)

    def explain(self, context: str, question: str, *, max_tokens: int = 64,
                spans: str | Sequence[tuple[int, int]] = "sentence", method: str = "rc",
                top_k: int = 8, system: str = explain.SYSTEM) -> tuple[str, Attribution]:
        """Answer `question` about `context` and attribute the answer to spans of the context
        (pyrcedge.features.explain.explain)."""
        return explain.explain(self, context, question, max_tokens=max_tokens, spans=spans,
                               method=method, top_k=top_k, system=system)
