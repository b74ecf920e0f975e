"""kvpress side of bench/kvpress_compare.py (runs in .venv-kvpress: torch, transformers, kvpress,
gguf). stdin: {"gguf": path, "tokens": [...], "runs": [{"name", "press", "budget"}], "interval",
"threads"}. The GGUF is loaded by transformers (dequantized to float32, eager attention), the
tokens are fed one at a time with their own positions, every next-token prediction is scored,
and each press runs inside kvpress's DecodingPress (compress to budget - interval cells every
`interval` steps: the cache oscillates between them, as pyrcedge's eviction batch does).
Prints one JSON line per run."""

import json
import math
import sys
import time

import torch  # noqa: E402
from kvpress_model import job_and_model  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import kvpress  # noqa: E402

job, model = job_and_model("eager")
ids = torch.tensor([job["tokens"]])
n = ids.shape[1]


def make_press(name: str, budget: int):
    base = {"streamingllm": lambda: kvpress.StreamingLLMPress(n_sink=4),
            "tova": lambda: kvpress.TOVAPress(),
            "observed-attention": lambda: kvpress.ObservedAttentionPress(),
            "snapkv": lambda: kvpress.SnapKVPress(window_size=job["interval"] - 1),
            "knorm": lambda: kvpress.KnormPress()}[name]()
    return kvpress.DecodingPress(base_press=base, compression_interval=job["interval"],
                                 target_size=budget - job["interval"],
                                 hidden_states_buffer_size=job["interval"])


_compress = kvpress.ScorerPress.compress


def compress_in_cache_order(self, module, hidden_states, keys, values, attentions, kwargs):
    """ScorerPress.compress keeping the survivors in cache (= position) order: kvpress gathers
    them in topk order, which scrambles the cache for the next compression of an index-based
    press (StreamingLLM)."""
    if self.compression_ratio == 0:
        return keys, values
    scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
    n_kept = kvpress.presses.scorer_press.compute_n_kept(keys.shape[2], self.compression_ratio)
    indices = scores.topk(n_kept, dim=-1).indices.sort(dim=-1).values
    indices = indices.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
    return keys.gather(2, indices).contiguous(), values.gather(2, indices).contiguous()


for run in job["runs"]:
    kvpress.ScorerPress.compress = compress_in_cache_order if run.get("sorted") else _compress
    press = None if run["press"] == "full" else make_press(run["press"], run["budget"])
    cache = DynamicCache()
    nll, used_max = 0.0, 0
    t0 = time.perf_counter()
    ctx = press(model) if press is not None else None
    if ctx is not None:
        ctx.__enter__()
    try:
        with torch.no_grad():
            for i in range(n - 1):
                out = model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True,
                            position_ids=torch.tensor([[i]]), cache_position=torch.tensor([i]))
                logp = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
                nll -= float(logp[ids[0, i + 1]])
                used_max = max(used_max, cache.get_seq_length())
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    mean = nll / (n - 1)
    print(json.dumps({"name": run["name"], "press": run["press"], "budget": run["budget"],
                      "ppl": math.exp(mean), "nll": mean, "kv_cells_used_max": used_max,
                      "seconds": time.perf_counter() - t0}), flush=True)
    print(f"kvpress {run['name']}: ppl {math.exp(mean):.4f}", file=sys.stderr, flush=True)
