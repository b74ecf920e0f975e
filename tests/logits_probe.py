"""Logits of a fixed run, as a sha256 of their float32 bytes, using llama_cpp alone: the same
script runs in the stock and the patched environment.

usage: python logits_probe.py MODEL FLASH(on|off) SCORING(never|on|toggled)
Evaluates a 300-token prompt in one batch, then 3 tokens one at a time (every kernel path), and
prints one JSON line: {"sha256": ..., "n": ...}. SCORING other than "never" needs pyrcedge.
"""

import ctypes
import hashlib
import json
import sys

import llama_cpp

model_path, flash, mode = sys.argv[1:4]
quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
llama_cpp.llama_log_set(quiet, None)

model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
params = llama_cpp.llama_context_default_params()
params.n_ctx = 1024
params.n_batch = params.n_ubatch = 512
params.n_threads = params.n_threads_batch = 2
params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash == "on"
                          else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
ctx = llama_cpp.llama_init_from_model(model, params)
if mode != "never":
    from pyrcedge import scoring

    scoring.enable_scoring(ctx, 0.5)
    if mode == "toggled":
        scoring.disable_scoring(ctx)

vocab = llama_cpp.llama_model_get_vocab(model)
text = b"The quick brown fox jumps over the lazy dog while the cat sleeps. " * 30
buf = (llama_cpp.llama_token * 2048)()
n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 2048, True, False)
tokens = list(buf[:303])
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
digest = hashlib.sha256()
for chunk in (tokens[:300], *([t] for t in tokens[300:])):
    arr = (llama_cpp.llama_token * len(chunk))(*chunk)
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk))) == 0
    logits = llama_cpp.llama_get_logits_ith(ctx, -1)
    digest.update(ctypes.string_at(logits, n_vocab * 4))
print(json.dumps({"sha256": digest.hexdigest(), "n": len(tokens)}))
