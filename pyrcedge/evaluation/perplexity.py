"""Streaming perplexity of a text read through a budgeted KV cache.

The text is fed in chunks of a few tokens through pyrcedge.Llama.eval, the same path generation
takes, so the cache evicts between chunks exactly as it would while reading a long prompt. Every
next-token prediction is scored: the Llama's on_logits hook receives the logits of every token
of a chunk, and the negative log-likelihood of the following tokens is added up.
With a budget at least as long as the text nothing is evicted and the result is the ordinary
full-context perplexity.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import llama_cpp
import numpy as np
from tqdm import tqdm

from ..errors import EvaluationError, PyrcedgeError
from ..llama import Llama
from ..native import binding as _native


@dataclass
class PerplexityResult:
    """What `pyrcedge ppl` prints. Field names are stable: tools parse the JSON."""

    ppl: float
    nll: float                 # mean negative log-likelihood (nats per predicted token)
    tokens: int                # tokens read (the first is not predicted)
    predicted: int             # next-token predictions scored: tokens - 1
    policy: str
    budget_cells: int
    kv_cells_used_max: int
    kv_cells_used_mean: float  # mean over chunks of the cells in use after each decode
    evictions: int
    evicted_tokens: int
    chunk: int
    seconds: float
    tok_s: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_chunk_stock(llm: Any, tokens: Sequence[int],
                     on_logits: Callable[[int, np.ndarray], None]) -> None:
    """Decode tokens after llm's history with a llama_cpp.Llama (no budget), passing the logits
    of every token to on_logits(history index of the first, logits [n, n_vocab]), as
    pyrcedge.Llama's on_logits hook does."""
    n = len(tokens)
    llm._batch.set_batch(batch=list(tokens), n_past=llm.n_tokens, logits_all=True)
    llm._ctx.decode(llm._batch)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n, llm.n_vocab()))
    on_logits(llm.n_tokens, logits)
    llm.input_ids[llm.n_tokens:llm.n_tokens + n] = tokens
    llm.n_tokens += n


def text_tokens(llm: Any, text: str, limit: int | None = None) -> list[int]:
    """The tokens of `text` as generation reads a prompt (BOS added when the model has one),
    the first `limit` of them."""
    if not text.strip():
        raise EvaluationError("the text is empty")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if limit is not None:
        if limit < 2:
            raise EvaluationError(f"tokens must be at least 2 (one prediction), got {limit}")
        if len(tokens) < limit:
            raise EvaluationError(f"the text has {len(tokens)} tokens, fewer than the {limit} "
                                  "asked for")
        tokens = tokens[:limit]
    if len(tokens) < 2:
        raise EvaluationError("the text has fewer than 2 tokens: nothing to predict")
    return tokens


def log_likelihoods(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log p(target) under each row of logits (float64, numerically stable)."""
    x = logits[: len(targets)].astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return x[np.arange(len(targets)), np.asarray(targets)] - lse


def streaming_perplexity(llm: Any, tokens: Sequence[int], *, chunk: int = 8,
                         progress: bool = False) -> PerplexityResult:
    """Perplexity of `tokens` read `chunk` tokens at a time through llm (a pyrcedge.Llama, or a
    llama_cpp.Llama with a context that holds them all)."""
    tokens = [int(t) for t in tokens]
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise EvaluationError(f"chunk must be a positive integer, got {chunk!r}")
    if len(tokens) < 2:
        raise EvaluationError("need at least 2 tokens to score one prediction")
    n = len(tokens)
    nll = np.zeros(n - 1)
    seen = np.zeros(n - 1, bool)

    def score(start: int, logits: np.ndarray) -> None:
        # row i predicts token start + i + 1
        k = min(len(logits), n - 1 - start)
        if k > 0:
            nll[start:start + k] = -log_likelihoods(logits, tokens[start + 1:start + 1 + k])
            seen[start:start + k] = True

    budgeted = isinstance(llm, Llama)
    llm.reset()
    used: list[int] = []
    bar = tqdm(total=n, desc="ppl", unit="tok", disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    if budgeted:
        before, llm.on_logits = llm.on_logits, score
    try:
        for i in range(0, n, chunk):
            if budgeted:
                llm.eval(tokens[i:i + chunk])
            else:
                read_chunk_stock(llm, tokens[i:i + chunk], score)
            used.append(_native.kv_cells_used(llm.ctx))
            done = min(n, i + chunk)
            bar.update(done - bar.n)
            if done > 1:
                bar.set_postfix(ppl=f"{math.exp(nll[:done - 1].mean()):.3f}", refresh=False)
    finally:
        if budgeted:
            llm.on_logits = before
        bar.close()
    seconds = time.perf_counter() - t0
    if not seen.all():
        raise PyrcedgeError(f"internal: {int((~seen).sum())} predictions were not scored")
    stats = llm.kv_stats() if budgeted else None
    mean = float(nll.mean())
    return PerplexityResult(
        ppl=math.exp(mean), nll=mean, tokens=n, predicted=n - 1,
        policy=llm.policy.name if budgeted else "stock",
        budget_cells=stats.budget_cells if stats else _native.kv_cells_total(llm.ctx),
        kv_cells_used_max=max(used), kv_cells_used_mean=float(np.mean(used)),
        evictions=stats.evictions if stats else 0,
        evicted_tokens=stats.evicted_tokens if stats else 0,
        chunk=chunk, seconds=seconds, tok_s=n / seconds if seconds > 0 else 0.0,
        settings=stats.policy if stats else {})
