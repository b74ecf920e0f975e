"""Which probe score finds the answer: every candidate score computed from one read of each SQuAD
context with the whole context cached, then ranked (docs/bench/probe-scores.md).

    .venv/bin/python bench/probe_scores.py [--model qwen2.5-coder-0.5b] [--n 20] [--keep 0.25]

For each question the prompt (as `pyrcedge eval qa` builds it) is read with a full cache up to
its last `--tail` tokens; those are then decoded as the probe (pyrcedge.features.probe.
probe_stats: fresh statistics, then removed) and, separately, its last 5 tokens alone. Each
score ranks the context's cells (pooled 12 back, 2 forward, as the probe's default); "kept" is
the share of the answer's tokens among the top `--keep` of the cells, as a one-shot selection
at that budget would keep them (the streaming read keeps at most this well). Scores:
relmax/relmean (probe max or mean logit minus the document's mean logit, standardised per layer
and head), raw max logit, post-softmax attention; heads reduced by max or sum; all layers or the
middle half, the last half, the first half (early) or the first two thirds (early67).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402
from probe_retention import locate  # noqa: E402

from pyrcedge import Llama  # noqa: E402
from pyrcedge.assets.models import model_path  # noqa: E402
from pyrcedge.evaluation.qa import SYSTEM, hotpotqa_examples, squad_examples  # noqa: E402
from pyrcedge.features import probe  # noqa: E402
from pyrcedge.native import stats as ks  # noqa: E402


def z(x: np.ndarray) -> np.ndarray:
    return probe.standardised(x)


def variants(got: np.ndarray, doc: np.ndarray) -> dict[str, np.ndarray]:
    """[layer, cell, head] candidate scores."""
    cnt = doc[..., ks.COUNT].astype(np.float64)
    dmean = np.divide(doc[..., ks.SUM], cnt, out=np.zeros_like(cnt), where=cnt > 0)
    pmax = got[..., ks.MAX].astype(np.float64)
    pmax = np.where(np.isfinite(pmax), pmax, 0.0)
    pc = got[..., ks.COUNT].astype(np.float64)
    pmean = np.divide(got[..., ks.SUM], pc, out=np.zeros_like(pc), where=pc > 0)
    att = got[..., ks.A2SF].astype(np.float64)
    dsd = np.sqrt(np.maximum(np.divide(doc[..., ks.SUMSQ], cnt, out=np.zeros_like(cnt),
                                       where=cnt > 0) - dmean ** 2, 0)) + 1e-3
    return {"relmax": z(pmax - dmean), "relmean": z(pmean - dmean), "rawmax": z(pmax),
            "attn": att, "zattn": z(att), "relmax/sd": z((pmax - dmean) / dsd),
            "logatt": z(np.log(att + 1e-9))}


def reduce(x: np.ndarray, heads: str, layers: str) -> np.ndarray:
    n = x.shape[0]
    if layers == "mid":
        x = x[n // 4: 3 * n // 4]
    elif layers == "late":
        x = x[n // 2:]
    elif layers == "early":
        x = x[: n // 2]
    elif layers == "early67":
        x = x[: round(2 * n / 3)]
    per = x.max(axis=2) if heads == "max" else x.sum(axis=2)
    return per.sum(axis=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dataset", default="squad", choices=("squad", "hotpotqa"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--tail", type=int, default=24)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    exs = squad_examples(a.n, 3000) if a.dataset == "squad" else hotpotqa_examples(a.n)
    llm = Llama(str(model_path(a.model)), kv_budget=4096, policy="full", track_attention=True,
                n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True, verbose=False)
    table: dict[str, list[float]] = {}
    for ex in exs:
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Context:\n{ex.context}\n\nQuestion: {ex.question}"}]
        llm.create_chat_completion(messages=msgs, max_tokens=1, temperature=0.0)
        hist = [int(t) for t in llm.input_ids[: llm.n_tokens]][:-1]   # the prompt
        llm.reset()
        doc, tail = hist[: -a.tail], hist[-a.tail:]
        llm.eval(doc)
        kv = llm.kv_cache
        cells, logical = kv.cached_cells()
        text, offs = llm.token_offsets(hist)
        span = locate(text, ex.context, ex.answers)
        if span is None:
            continue
        ans = np.nonzero((offs[1:] > span[0]) & (offs[:-1] < span[1]))[0]
        ans = ans[ans < len(doc)]
        cands = {}
        for pname, ids in (("tail", tail), ("last5", tail[-5:])):
            got, docst = probe.probe_stats(llm.ctx, kv.mem, cells, ids, kv.next_pos(), llm._batch,
                                           llm._ctx.decode, 1.0, attention=True)
            for vname, x in variants(got, docst).items():
                for heads in ("max", "sum"):
                    for layers in ("all", "mid", "late", "early", "early67"):
                        cands[f"{pname} {vname} {heads} {layers}"] = reduce(x, heads, layers)
        ctx0 = text.find("Context:")
        first = int(np.searchsorted(offs, ctx0))
        body = (logical >= first)   # rank the context's cells only
        k = int(a.keep * body.sum())
        for name, s in cands.items():
            s = probe.pooled(s, logical, 12, 2)
            order = np.argsort(-np.where(body, s, -np.inf), kind="stable")[:k]
            kept = np.zeros(len(logical), bool)
            kept[order] = True
            table.setdefault(name, []).append(float(kept[ans].mean()) if len(ans) else 0.0)
        llm.reset()
    ranked = sorted(table.items(), key=lambda kv_: -statistics.mean(kv_[1]))
    for name, v in ranked:
        print(f"{statistics.mean(v):.3f} whole {statistics.mean(x == 1.0 for x in v):.2f}  {name}")
    if a.out:
        Path(a.out).write_text(json.dumps({"command": command(), "machine": machine(),
                                           "args": vars(a), "kept": table}, indent=1))


if __name__ == "__main__":
    main()
