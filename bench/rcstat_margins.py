"""How the rcstat margins spread over heads on the default model (the figures in docs/rcstat.md).

    .venv/bin/python bench/rcstat_margins.py
"""
import numpy as np

import pyrcedge
from pyrcedge import rcstat
from pyrcedge.cache.policies import RCStat

PROSE = open("docs/rcstat.md").read()[:3000]


class Spy(RCStat):
    def select(self, view, n):
        st = view.layer_stats().transpose(0, 2, 1, 3).reshape(-1, len(view), 5)
        own = view.logical >= view.window_start
        cells = rcstat.Moments.from_stats(st)
        self_ = rcstat.Moments.from_stats(st, axis=1, where=own)
        rel = rcstat.contextualization_upper(cells) - rcstat.contextualization_lower(self_)[:, None]
        q = [0, .1, .5, .9]
        print(len(view), own.sum(),
              "per-cell median over heads q:", np.round(np.quantile(np.median(rel, 0), q), 2),
              "mean:", np.round(np.quantile(rel.mean(0), q), 2),
              "max-rule margin at eps 0.5 (min):", np.round(rel.max(0).min() - np.log(0.5), 2),
              "frac heads < log.1:", np.round(np.quantile((rel < np.log(0.1)).mean(0), [0, .5, 1]), 2))
        return super().select(view, n)


llm = pyrcedge.Llama("models/files/SmolLM2-135M-Instruct.Q4_1.gguf", kv_budget=256,
                     policy=Spy(0.5), flash_attn=True, n_threads=1)
llm(PROSE, max_tokens=64, temperature=0)
