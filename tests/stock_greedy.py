"""Greedy generation with stock llama-cpp-python only (no pyrcedge), run by the stock
environment's Python: the independent side of the patched-vs-stock token comparison.

usage: python stock_greedy.py MODEL PROMPT MAX_TOKENS N_CTX THREADS FLASH_ATTN(on|off)
prints one JSON object: token_ids, system_info
"""

import json
import sys

import llama_cpp

model, prompt, max_tokens, n_ctx, threads, flash = sys.argv[1:7]
llm = llama_cpp.Llama(model_path=model, n_ctx=int(n_ctx), n_threads=int(threads),
                      n_threads_batch=int(threads), flash_attn=flash == "on", seed=0, verbose=False)
vocab = llama_cpp.llama_model_get_vocab(llm.model)
out = []
for tok in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), temp=0.0):
    if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(out) == int(max_tokens):
        break
    out.append(tok)
print(json.dumps({"token_ids": out, "system_info": llama_cpp.llama_print_system_info().decode()}))
