"""One decode run for bench/eviction_cost.py (stock: llama_cpp only; pyrcedge: a budget).

usage: python eviction_worker.py VARIANT MODEL PROMPT_FILE PREFILL DECODE THREADS [BUDGET POLICY BATCH]
prints one JSON object: decode_s, steps, and for pyrcedge eviction_s, evictions
"""

import json
import sys
import time

import numpy as np

variant, model, prompt_file, prefill, decode, threads = sys.argv[1:7]
prefill, decode, threads = int(prefill), int(decode), int(threads)
common = dict(n_threads=threads, n_threads_batch=threads, flash_attn=True, seed=0, verbose=False)
if variant == "stock":
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=prefill + decode + 1, **common)
else:
    import pyrcedge

    budget, policy, batch = sys.argv[7], sys.argv[8], int(sys.argv[9])
    llm = pyrcedge.Llama(model, kv_budget=int(budget), policy=policy, eviction_batch=batch, **common)
tokens = llm.tokenize(open(prompt_file, encoding="utf-8").read().encode())[:prefill]
llm.eval(tokens)
n_vocab = llm.n_vocab()
import llama_cpp as lc  # noqa: E402

tok = int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
t0 = time.perf_counter()
for _ in range(decode):
    llm.eval([tok])
    tok = int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
out = {"decode_s": time.perf_counter() - t0, "steps": decode}
if variant != "stock":
    out.update(eviction_s=llm.kv_stats().eviction_seconds, evictions=llm.kv_stats().evictions,
               evicted_tokens=llm.kv_stats().evicted_tokens)
print(json.dumps(out))
