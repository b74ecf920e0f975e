"""Span-score and head-ranking variants on the statistics that attribution_variants_dump.py saves
(the first 30 HotpotQA questions): the comparison quoted in docs/rcstat.md.

    .venv/bin/python bench/attribution_variants_dump.py && .venv/bin/python bench/attribution_variants.py
"""
import pickle, numpy as np, sys
sys.path.insert(0, ".")
from pyrcedge import rcstat
data = pickle.load(open("/tmp/dump.pkl", "rb"))
def auroc(sc, rel):
    pos, neg = sc[rel], sc[~rel]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
def evaluate(fn):
    t1 = t2 = au = 0
    for d in data:
        sc = np.nan_to_num(fn(d), nan=-np.inf); rel = d["rel"]
        o = np.argsort(-sc, kind="stable"); t1 += rel[o[0]]; t2 += rel[o[:2]].any(); au += auroc(sc, rel)
    n = len(data); return f"top1 {t1/n:.3f} top2 {t2/n:.3f} auroc {au/n:.3f}"
def per_head(d):
    st = d["stats"].astype(np.float64).transpose(0, 2, 1, 3).reshape(-1, d["stats"].shape[1], 5)
    return st
def variant(kind, heads="topk", k=8):
    def fn(d):
        st = per_head(d); lg = d["logical"]; a0 = d["a0"]
        own = lg >= a0
        Y = rcstat.Moments(st[:, own, 1].sum(1), st[:, own, 2].sum(1), st[:, own, 3].sum(1), st[:, own, 4].max(1))
        muY = rcstat.mean(Y)
        ctx = lg < a0
        C = rcstat.Moments(st[:, ctx, 1].sum(1), st[:, ctx, 2].sum(1), st[:, ctx, 3].sum(1), st[:, ctx, 4].max(1))
        crc = rcstat.contextualization_upper(C) - muY
        cells = rcstat.Moments(st[..., 1], st[..., 2], st[..., 3], st[..., 4])
        tokU = rcstat.contextualization_upper(cells) - muY[:, None]   # [h, cell]
        tokmu = rcstat.mean(cells) - muY[:, None]
        out = []
        for s, e in d["ranges"]:
            m = (lg >= s) & (lg < e)
            S = rcstat.Moments(st[:, m, 1].sum(1), st[:, m, 2].sum(1), st[:, m, 3].sum(1), st[:, m, 4].max(1))
            if kind == "spanU": v = rcstat.contextualization_upper(S) - muY
            elif kind == "spanmu": v = rcstat.mean(S) - muY
            elif kind == "tokmaxU": v = tokU[:, m].max(1)
            elif kind == "tokmeanU": v = tokU[:, m].mean(1)
            elif kind == "tokmaxmu": v = tokmu[:, m].max(1)
            elif kind == "spanlse":  # log mean exp bound via per-token U: log mean_i exp(U_i)
                v = np.log(np.exp(tokU[:, m]).mean(1))
            out.append(v)
        V = np.stack(out, 1)
        if heads == "topk": hs = np.argsort(-crc)[:k]
        elif heads == "all": hs = np.arange(len(crc))
        elif heads == "bottomk": hs = np.argsort(crc)[:k]
        return V[hs].mean(0)
    return fn
def att(d):
    a = d["stats"][..., 0].astype(np.float64).sum(axis=(0, 2)); lg = d["logical"]
    return np.array([a[(lg >= s) & (lg < e)].sum() for s, e in d["ranges"]])
def attmean(d):
    a = d["stats"][..., 0].astype(np.float64).sum(axis=(0, 2)); lg = d["logical"]
    return np.array([a[(lg >= s) & (lg < e)].mean() for s, e in d["ranges"]])
def attmax(d):
    a = d["stats"][..., 0].astype(np.float64).sum(axis=(0, 2)); lg = d["logical"]
    return np.array([a[(lg >= s) & (lg < e)].max() for s, e in d["ranges"]])
print(len(data), "examples")
print("attention sum ", evaluate(att)); print("attention mean", evaluate(attmean)); print("attention max ", evaluate(attmax))
for kind in ["spanU", "spanmu", "tokmaxU", "tokmeanU", "tokmaxmu", "spanlse"]:
    for heads, k in [("topk", 4), ("topk", 8), ("topk", 16), ("all", 0), ("bottomk", 8)]:
        print(kind, heads, k, evaluate(variant(kind, heads, k)))
print("---- head ranking variants")
def variant2(kind, rank, k):
    def fn(d):
        st = per_head(d); lg = d["logical"]; a0 = d["a0"]
        own = lg >= a0
        Y = rcstat.Moments(st[:, own, 1].sum(1), st[:, own, 2].sum(1), st[:, own, 3].sum(1), st[:, own, 4].max(1))
        muY = rcstat.mean(Y)
        doc = np.zeros(len(lg), bool)
        for s, e in d["ranges"]: doc |= (lg >= s) & (lg < e)
        D = rcstat.Moments(st[:, doc, 1].sum(1), st[:, doc, 2].sum(1), st[:, doc, 3].sum(1), st[:, doc, 4].max(1))
        drc = rcstat.contextualization_upper(D) - muY
        out = []
        for s, e in d["ranges"]:
            m = (lg >= s) & (lg < e)
            S = rcstat.Moments(st[:, m, 1].sum(1), st[:, m, 2].sum(1), st[:, m, 3].sum(1), st[:, m, 4].max(1))
            out.append(rcstat.contextualization_upper(S) - muY if kind == "U" else rcstat.mean(S) - muY)
        V = np.stack(out, 1)
        if rank == "doc": key = drc
        elif rank == "spread": key = V.std(1)
        elif rank == "docmu": key = rcstat.mean(D) - muY
        hs = np.argsort(-key)[:k]
        return V[hs].mean(0)
    return fn
for kind in ["U", "mu"]:
    for rank in ["doc", "spread", "docmu"]:
        for k in [2, 4, 8, 16]:
            print(kind, rank, k, evaluate(variant2(kind, rank, k)))
