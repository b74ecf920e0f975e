"""How the rcstat margins spread over heads on the default model (the figures in docs/rcstat.md).

    .venv/bin/python bench/rcstat_margins.py
"""
import numpy as np, pyrcedge
from pyrcedge import rcstat
from pyrcedge.policies import RCStatPolicy, COUNT, SUM, SUMSQ, MAX
PROSE = open("docs/rcstat.md").read()[:3000]
class Spy(RCStatPolicy):
    def select(self, view, n):
        st = view.layer_stats().astype(np.float64).transpose(0, 2, 1, 3).reshape(-1, len(view), 5)
        cells = rcstat.Moments(count=st[..., COUNT], sum=st[..., SUM], sumsq=st[..., SUMSQ], max=st[..., MAX])
        own = view.logical >= view.window_start
        self_ = rcstat.Moments(count=st[:, own, COUNT].sum(1), sum=st[:, own, SUM].sum(1), sumsq=st[:, own, SUMSQ].sum(1), max=st[:, own, MAX].max(1, initial=-np.inf))
        rel = rcstat.contextualization_upper(cells) - rcstat.contextualization_lower(self_)[:, None]
        print(len(view), own.sum(), "per-cell median over heads q:", np.round(np.quantile(np.median(rel, 0), [0, .1, .5, .9]), 2),
              "mean:", np.round(np.quantile(rel.mean(0), [0, .1, .5, .9]), 2), "max-rule margin at eps 0.5 (min):", np.round(rel.max(0).min() - np.log(0.5), 2), "frac heads < log.1:", np.round(np.quantile((rel < np.log(0.1)).mean(0), [0, .5, 1]), 2))
        return super().select(view, n)
llm = pyrcedge.Llama("models/files/SmolLM2-135M-Instruct.Q4_1.gguf", kv_budget=256, policy=Spy(0.5), flash_attn=True, n_threads=1)
llm(PROSE, max_tokens=64, temperature=0)
