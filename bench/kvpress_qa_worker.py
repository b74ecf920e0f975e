"""kvpress side of bench/kvpress_qa.py (runs in .venv-kvpress: torch, transformers, kvpress,
gguf; how it is made: bench/kvpress_qa.py). stdin: {"gguf": path, "threads", "eog": [token ids],
"tasks": [{"run", "press" (full, snapkv, finch), "id", "tokens", "split", "kept",
"max_tokens"}]}.

The GGUF is loaded by transformers (dequantized to float32, sdpa attention), as in
bench/kvpress_worker.py. Per prompt and run, the way kvpress's pipeline answers with the question
inside compression: the prompt but its last token (tokens[:-1]: context, then from `split` on the
question) is prefilled in one forward with the press on, so the press sees context + question and
its observation window is the question (SnapKVPress: window_size = the question's tokens;
FinchPress: its delimiter token between context and question, which its embedding hook removes
and turns into the window); compression_ratio makes each layer keep `kept` - 1 cells. Then the
prompt's last token is decoded on the compressed cache (pyrcedge's budget holds `kept` cells
when the answer starts) and the answer follows greedily, at most max_tokens tokens, stopping at
an end-of-generation token: every answer token is predicted from the compressed cache. Positions
continue the prompt's (SnapKV), or the compacted cache's after FinchPress re-rotates its keys
(as kvpress's pipeline does). "full" is the same without a press.

Peak KV: a forward hook on every attention layer, registered before the press's own, reads the
cache's size while that layer's whole-prompt keys and values are in it (kvpress compresses a
layer right after its attention runs): the most token-layers held at once, and the whole
prompt's (every layer uncompressed, what a cache holds before compression).

Prints one JSON line per (run, prompt).
"""

import json
import sys
import time

import torch  # noqa: E402
from kvpress_model import job_and_model  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import kvpress  # noqa: E402

job, model = job_and_model("sdpa")
cfg = model.config
n_layers = cfg.num_hidden_layers
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
layer_cell_bytes = 2 * cfg.num_key_value_heads * head_dim * 4   # K and V, float32, one layer
eog = set(job["eog"])
# FinchPress's delimiter: an id of the embedding matrix no prompt uses (the GGUF vocabulary's
# padding rows); its embedding hook drops it before the first layer, so it needs no trained
# embedding (kvpress's update_model_and_tokenizer would add a token and resize the matrix)
delimiter = model.get_input_embeddings().weight.shape[0] - 1
assert all(delimiter not in t["tokens"] for t in job["tasks"])


def make_press(kind: str, n_prefill: int, window: int, kept: int):
    ratio = 1 - (kept + 0.5) / n_prefill        # compute_n_kept: int(k_len * (1 - ratio)) = kept
    if kind == "snapkv":
        return kvpress.SnapKVPress(compression_ratio=ratio, window_size=window)
    if kind == "finch":
        press = kvpress.FinchPress(compression_ratio=ratio)
        press.delimiter_token, press.delimiter_token_id = "<|finch_sep|>", delimiter
        return press
    raise ValueError(kind)


def layer_tokens(cache) -> int:
    return sum(int(layer.keys.shape[-2]) for layer in getattr(cache, "layers", [])
               if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4)


def answer(p: dict) -> dict:
    tokens, split, kept = p["tokens"], p["split"], p["kept"]
    prefix = tokens[:-1]
    window = len(prefix) - split
    press = None
    ids = prefix
    if p["press"] != "full":
        press = make_press(p["press"], len(prefix), window, kept - 1)
        if p["press"] == "finch":
            ids = prefix[:split] + [delimiter] + prefix[split:]
    cache = DynamicCache()
    peak = [0]

    def watch(module, args, kwargs, output):
        peak[0] = max(peak[0], layer_tokens(kwargs["past_key_values"]))

    hooks = [layer.self_attn.register_forward_hook(watch, with_kwargs=True)
             for layer in model.model.layers]
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            ctx = press(model) if press is not None else None
            if ctx is not None:
                ctx.__enter__()
            try:
                model.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
    finally:
        for h in hooks:
            h.remove()
    prefill_s = time.perf_counter() - t0
    cells_after = cache.get_seq_length()
    rerotated = p["press"] == "finch"
    pos = cells_after if rerotated else len(prefix)
    out: list[int] = []
    nxt = tokens[-1]
    with torch.no_grad():
        while True:
            o = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True,
                      position_ids=torch.tensor([[pos]]))
            pos += 1
            nxt = int(o.logits[0, -1].argmax())
            if nxt in eog:
                break
            out.append(nxt)
            if len(out) >= p["max_tokens"]:
                break
    return {"run": p["run"], "press": p["press"], "id": p["id"], "output_ids": out,
            "prompt_tokens": len(tokens), "kept_cells": kept if press is not None else len(tokens),
            "cells_after_prefill": cells_after, "cells_at_answer": cells_after + 1,
            "peak_layer_tokens": peak[0], "peak_kv_bytes": peak[0] * layer_cell_bytes,
            "prompt_kv_bytes": len(prefix) * n_layers * layer_cell_bytes,
            "cell_bytes": n_layers * layer_cell_bytes, "window": window,
            "prefill_s": prefill_s, "seconds": time.perf_counter() - t0}


for task in job["tasks"]:
    r = answer(task)
    print(json.dumps(r), flush=True)
    print(f"kvpress {r['run']} {r['id']}: {r['prefill_s']:.1f} s prefill, {r['cells_after_prefill']} "
          "cells", file=sys.stderr, flush=True)
