"""Run by tests/test_session.py in fresh processes: read a text through a small budget (so that
it evicts), optionally save or load a session, then continue and record every step's logits.

usage: session_probe.py save|load|plain SESSION OUT.npy POLICY FLASH(0|1) POSITIONS
"""

from __future__ import annotations

import sys

import numpy as np

import pyrcedge
from pyrcedge.assets.models import model_path

TEXT = b"The quick brown fox jumps over the lazy dog while the cat sleeps. " * 10
CONTINUATION = b" Once upon a time there was a princess who lived in a castle by the sea." * 3


def main() -> None:
    mode, path, out, policy, flash, positions = sys.argv[1:7]
    llm = pyrcedge.Llama(str(model_path()), kv_budget=64, policy=policy, positions=positions,
                         n_threads=2, n_threads_batch=2, flash_attn=flash == "1", seed=0)
    if mode == "load":
        llm.load_session(path)
    else:
        llm.eval(llm.tokenize(TEXT))
        if mode == "save":
            llm.save_session(path)
    logits = []
    for t in llm.tokenize(CONTINUATION, add_bos=False):
        llm.eval([t])
        logits.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
    np.save(out, np.stack(logits))
    kv = llm.kv_stats()
    print(kv.evictions, kv.history_tokens, kv.cells_used)
    llm.close()


if __name__ == "__main__":
    main()
