"""`pyrcedge run`: greedy generation with the measurements it reports.

Prefill and decode go through llama_cpp.Llama.eval, exactly as llama-cpp-python runs them; the
next token is the argmax of the last logits. KV occupancy is read from libllama after every step
(pyrcedge's C API), not inferred from token counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from ..assets.gguf import resolve_model
from ..errors import ContextOverflowError
from ..llama import LOGICAL_CONTEXT, Llama
from ..native import binding as _native
from . import options


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
    if isinstance(llm, Llama) and llm.policy.evicts:
        return LOGICAL_CONTEXT
    return min(llm.n_ctx(), len(llm.input_ids))


def greedy(llm: Any, prompt: str, max_tokens: int) -> RunResult:
    """Generate up to max_tokens tokens greedily after `prompt` on a fresh cache."""
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


def cmd_run(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else options.read_text(args.prompt_file, "prompt file")
    llm = options.open_from_args(args, flash_attn=args.flash_attn == "on")
    try:
        result = greedy(llm, prompt, args.max_tokens)
        n_ctx = min(usable_context(llm), llm.n_ctx())
        kv = llm.kv_stats()
    finally:
        llm.close()
    if args.json:
        record = {"model": str(resolve_model(args.model)), "n_ctx": n_ctx,
                  "threads": args.threads, "flash_attn": args.flash_attn, **kv.policy,
                  "kv_budget_bytes": kv.budget_bytes, "positions": args.positions,
                  "probe": args.probe, "probe_passes": kv.probe_passes,
                  "probe_tokens": kv.probe_tokens,
                  **result.to_dict()}
        print(json.dumps(record))
    else:
        print(prompt + result.text)
        print(f"\n[{result.prompt_tokens} prompt tokens, {result.generated_tokens} generated "
              f"({result.finish_reason}), prefill {result.prefill_tok_s:.1f} tok/s, "
              f"decode {result.decode_tok_s:.1f} tok/s, KV {result.kv_cells_used_max}/"
              f"{result.kv_budget_cells} cells, {result.evictions} evictions]", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="generate greedily and report speed and KV occupancy",
                         parents=[options.model_options(), options.max_tokens_option(None), options.budget_options()])
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt (UTF-8)")
    run.add_argument("--n-ctx", type=options.positive_int, default=2048, help="KV cache size in tokens")
    run.add_argument("--flash-attn", choices=("on", "off"), default="on")
    run.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    run.set_defaults(func=cmd_run)
