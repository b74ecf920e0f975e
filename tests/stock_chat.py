"""A multi-turn greedy chat with stock llama-cpp-python only (no pyrcedge), run by the stock
environment's Python: the independent side of the budgeted-vs-stock comparisons.

usage: python stock_chat.py < {"model", "n_ctx", "turns": [user messages], "max_tokens",
                               "logprobs"}
prints one JSON object: replies (text per turn), logprobs (per turn, if asked), error (the
exception of the turn that failed, or null)
"""

import json
import sys

import llama_cpp

job = json.load(sys.stdin)
llm = llama_cpp.Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_threads=2, n_threads_batch=2,
                      flash_attn=True, seed=0, verbose=False, logits_all=bool(job.get("logprobs")))
messages = [{"role": "system", "content": "You are a helpful assistant."}]
replies, logprobs, error = [], [], None
for turn in job["turns"]:
    messages.append({"role": "user", "content": turn})
    try:
        r = llm.create_chat_completion(messages=messages, max_tokens=job["max_tokens"],
                                       temperature=0.0, logprobs=bool(job.get("logprobs")),
                                       top_logprobs=1 if job.get("logprobs") else None)
    except ValueError as e:
        error = str(e)
        break
    msg = r["choices"][0]["message"]
    replies.append(msg["content"])
    if job.get("logprobs"):
        logprobs.append([float(c["logprob"]) for c in r["choices"][0]["logprobs"]["content"]])
    messages.append(msg)
print(json.dumps({"replies": replies, "logprobs": logprobs, "error": error}))
