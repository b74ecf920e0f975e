"""Perplexity from stock llama-cpp-python's full-context logits (run in .venv-stock).

stdin: {"model", "text", "tokens", "threads"}; prints {"ppl", "tokens"}: one eval of the whole
text with logits_all=True, log-softmax of every row in numpy.
"""

import json
import sys

import llama_cpp
import numpy as np

job = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(job["model"], n_ctx=job["tokens"] + 16, n_batch=job["tokens"] + 16,
                      logits_all=True, n_threads=job["threads"], n_threads_batch=job["threads"],
                      flash_attn=True, verbose=False)
tokens = llm.tokenize(job["text"].encode("utf-8"), add_bos=True, special=False)[: job["tokens"]]
llm.eval(tokens)
logits = llm.scores[: len(tokens) - 1].astype(np.float64)
logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
nll = logz - logits[np.arange(len(tokens) - 1), tokens[1:]]
print(json.dumps({"ppl": float(np.exp(nll.mean())), "tokens": len(tokens)}))
