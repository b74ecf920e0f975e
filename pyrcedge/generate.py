"""Greedy generation with the measurements `pyrcedge run` reports.

Prefill and decode go through llama_cpp.Llama.eval, exactly as llama-cpp-python runs them; the
next token is the argmax of the last logits. KV occupancy is read from libllama after every step
(pyrcedge's C API), not inferred from token counts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _native
from .errors import ContextOverflowError


@dataclass
class RunResult:
    """What one run produced and measured. Field names are stable: tools parse the JSON."""

    prompt_tokens: int
    generated_tokens: int
    prefill_s: float
    decode_s: float
    prefill_tok_s: float
    decode_tok_s: float
    kv_cells_used_max: int
    kv_budget_cells: int
    evictions: int             # eviction events (each evicts up to an eviction batch of cells)
    evicted_tokens: int
    finish_reason: str  # "stop" (end-of-generation token), "length" (max_tokens) or "context_full"
    text: str
    token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_context(llm: Any) -> int:
    """Tokens a llama_cpp.Llama can hold. llama.cpp rounds the context up (to a multiple of 256)
    but Llama sizes its token history by the size asked for: the smaller of the two counts.
    A pyrcedge.Llama that evicts holds a history of any length."""
    from .llama import LOGICAL_CONTEXT, Llama

    if isinstance(llm, Llama) and llm.policy.evicts:
        return LOGICAL_CONTEXT
    return min(llm.n_ctx(), len(llm.input_ids))


def greedy(llm: Any, prompt: str, max_tokens: int) -> RunResult:
    """Generate up to max_tokens tokens greedily after `prompt` on a fresh cache."""
    import llama_cpp

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if not tokens:
        raise ValueError("the prompt is empty and the model adds no BOS token: nothing to condition on")
    n_ctx = usable_context(llm)
    if len(tokens) >= n_ctx:
        raise ContextOverflowError(
            f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}: "
            "the prompt alone fills the KV cache"
        )
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    prefill_s = time.perf_counter() - t0
    used_max = _native.kv_cells_used(llm.ctx)

    out: list[int] = []
    finish = "length"
    decode_s = 0.0
    n_decodes = 0
    while True:
        tok = next_token()
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            finish = "stop"
            break
        out.append(tok)
        if len(out) >= max_tokens:
            break
        if llm.n_tokens >= n_ctx:
            finish = "context_full"
            break
        t0 = time.perf_counter()
        llm.eval([tok])
        decode_s += time.perf_counter() - t0
        n_decodes += 1
        used_max = max(used_max, _native.kv_cells_used(llm.ctx))

    from .llama import Llama

    stats = llm.kv_stats() if isinstance(llm, Llama) else None
    return RunResult(
        prompt_tokens=len(tokens),
        generated_tokens=len(out),
        prefill_s=prefill_s,
        decode_s=decode_s,
        prefill_tok_s=len(tokens) / prefill_s if prefill_s > 0 else 0.0,
        decode_tok_s=n_decodes / decode_s if decode_s > 0 else 0.0,
        kv_cells_used_max=used_max,
        kv_budget_cells=_native.kv_cells_total(llm.ctx),
        evictions=stats.evictions if stats else 0,
        evicted_tokens=stats.evicted_tokens if stats else 0,
        finish_reason=finish,
        text=llm.detokenize(out).decode("utf-8", errors="replace"),
        token_ids=out,
    )
