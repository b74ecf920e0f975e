"""Probe settings side by side on the same needle prompts, in one process (the sweep behind the
defaults of pyrcedge.features.probe.Probe; docs/bench/probe-sweep.md).

    .venv/bin/python bench/probe_sweep.py MODEL N BUDGET VARIANT...

VARIANT: off (no probe), tail (the default), or a JSON object of Probe fields
('{"tokens":24,"refill":0.5}'). Prints one line per variant: hits, per prompt, probe passes,
median reading time, wall time. Needles: pyrcedge eval niah's (1,024-token haystack, depths
0.1-0.9, seed 0).
"""
import json
import sys
import time

from pyrcedge import Llama
from pyrcedge.apps.run import greedy
from pyrcedge.assets.models import model_path
from pyrcedge.evaluation.cli import tokenizer
from pyrcedge.evaluation.niah import make_needles
from pyrcedge.features.probe import Probe

name, n, budget, variants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tok = tokenizer(name)
needles = make_needles(n, 1024, [0.1, 0.3, 0.5, 0.7, 0.9],
                       lambda t: len(tok.tokenize(t.encode(), False, False)), 0)
for v in variants:
    probe = None if v == "off" else (Probe(**json.loads(v)) if v.startswith("{") else v)
    llm = Llama(str(model_path(name)), kv_budget=budget, probe=probe, flash_attn=True,
                n_threads=2, seed=0)
    hits, reading, t = [], [], time.time()
    for nd in needles:
        r = greedy(llm, nd.prompt, 24)
        hits.append(int(nd.value in r.text))
        reading.append(r.prefill_s)
    st = llm.kv_stats()
    print(v, "hits", sum(hits), "/", len(needles), hits, "passes", st.probe_passes,
          "prefill med", sorted(reading)[len(reading) // 2], f"{time.time() - t:.0f}s", flush=True)
    llm.close()
