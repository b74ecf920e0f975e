"""Saves per-layer statistics of explain() on the first 30 HotpotQA questions to /tmp/dump.pkl
(input of bench/attribution_variants.py)."""
import pickle
import sys

import numpy as np

sys.path.insert(0, "bench")
from attribution_hotpotqa import build_context  # noqa: E402

import pyrcedge  # noqa: E402
from pyrcedge import scoring  # noqa: E402
from pyrcedge.assets import datasets  # noqa: E402
exs = datasets.hotpotqa(30)
llm = pyrcedge.Llama("models/files/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", kv_budget=4096, policy="h2o", flash_attn=True, n_threads=2)
out = []
for ex in exs:
    context, spans, labels = build_context(ex)
    ans, at = llm.explain(context, ex.question, spans=spans, max_tokens=24)
    cells, logical = llm.kv_cache.cached_cells()
    stats = scoring.read_layers(llm.ctx, cells)
    rel = np.array([lab in ex.supporting for lab in labels])
    out.append(dict(stats=stats, logical=logical, ranges=[(s.start, s.end) for s in at.spans], a0=at.answer[0], rel=rel))
    print(len(out), file=sys.stderr, flush=True)
pickle.dump(out, open("/tmp/dump.pkl", "wb"))
