"""pyrcedge against kvpress on the same model file and tokens: streaming perplexity.

    .venv/bin/python bench/kvpress_compare.py [--tokens 1024] [--budgets 12.5 25]

kvpress (NVIDIA, PyTorch) runs in .venv-kvpress (pip install kvpress gguf; torch from PyPI) via
bench/kvpress_worker.py: transformers loads the same GGUF (dequantized to float32), the tokens
go one at a time with their own positions, and each press runs inside kvpress's DecodingPress
(compress to budget - 16 cells every 16 steps). pyrcedge reads the same tokens one at a time
(chunk 1) with eviction batch 16, sink 4, recent 16. Each side is compared with its own full
cache (the float32 PyTorch model and the Q4_1 llama.cpp kernels differ slightly). Results go to
docs/bench/<out>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine  # noqa: E402

OURS = {"window": {"policy": "window"}, "streamingllm": {"policy": "window", "positions": "compact"},
        "tova": {"policy": "tova"}, "h2o": {"policy": "h2o"}, "a2sf": {"policy": "a2sf"},
        "rcstat": {"policy": "rcstat"}}
THEIRS = [("streamingllm", "streamingllm", False), ("streamingllm-sorted", "streamingllm", True),
          ("tova", "tova", False), ("observed-attention", "observed-attention", False),
          ("snapkv", "snapkv", False), ("knorm", "knorm", False)]
# rows of the side-by-side table: (policy, pyrcedge variant, kvpress run)
PAIRS = [("StreamingLLM", "window", "streamingllm"), ("StreamingLLM (kvpress order fixed)", "window",
          "streamingllm-sorted"), ("TOVA", "tova", "tova"), ("H2O / observed attention", "h2o",
          "observed-attention"), ("SnapKV", None, "snapkv"), ("key norm", None, "knorm"),
         ("A2SF alpha 0.3", "a2sf", None), ("rcstat", "rcstat", None),
         ("StreamingLLM, compact positions", "streamingllm", None)]


def ours(model: str, tokens: list[int], budget: int | None, kw: dict) -> dict:
    import pyrcedge
    from pyrcedge.evaluation.perplexity import streaming_perplexity

    if budget is None:
        llm = pyrcedge.Llama(model, kv_budget=len(tokens), policy="full", n_threads=1,
                             n_threads_batch=1, flash_attn=True)
    else:
        llm = pyrcedge.Llama(model, kv_budget=budget, n_threads=1, n_threads_batch=1,
                             flash_attn=True, **kw)
    r = streaming_perplexity(llm, tokens, chunk=1)
    llm.close()
    return {"ppl": r.ppl, "kv_cells_used_max": r.kv_cells_used_max, "seconds": r.seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--budgets", type=float, nargs="+", default=[12.5, 25.0])
    ap.add_argument("--kvpress-python", default=str(REPO / ".venv-kvpress" / "bin" / "python"))
    ap.add_argument("--out", default="kvpress")
    a = ap.parse_args()
    from pyrcedge.evaluation import austen
    from pyrcedge.evaluation.cli import tokenizer
    from pyrcedge.evaluation.perplexity import text_tokens
    from pyrcedge.assets.models import model_path

    model = str(model_path())
    tokens = text_tokens(tokenizer(None), austen.novel("prideprejudice"), a.tokens)
    budgets = {b: math.ceil(b / 100 * a.tokens) for b in a.budgets}
    runs = [{"name": "full", "press": "full", "budget": 0}]
    runs += [{"name": f"{n}@{s}", "press": p, "budget": c, "sorted": srt}
             for s, c in budgets.items() for n, p, srt in THEIRS]
    job = {"gguf": model, "tokens": tokens, "interval": 16, "threads": 1, "runs": runs}

    def theirs() -> dict:
        done = subprocess.run([a.kvpress_python, str(REPO / "bench" / "kvpress_worker.py")],
                              input=json.dumps(job), stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError("the kvpress worker failed (see stderr)")
        return {r["name"]: r for r in map(json.loads, done.stdout.strip().splitlines())}

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(theirs)
        mine = {"full": ours(model, tokens, None, {})}
        print(f"pyrcedge full: {mine['full']['ppl']:.4f}", file=sys.stderr, flush=True)
        for s, c in budgets.items():
            for name, kw in OURS.items():
                mine[f"{name}@{s}"] = ours(model, tokens, c, kw)
                print(f"pyrcedge {name}@{s}: {mine[f'{name}@{s}']['ppl']:.4f}", file=sys.stderr,
                      flush=True)
        kv = fut.result()
    out = REPO / "docs" / "bench" / a.out
    result = {"command": command(), "machine": machine(), "tokens": a.tokens, "budgets": budgets,
              "pyrcedge": mine, "kvpress": kv}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    fo, fk = mine["full"]["ppl"], kv["full"]["ppl"]
    lines = ["# pyrcedge against kvpress: streaming perplexity on the same GGUF and tokens", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (shared); "
             "1 thread each.  ",
             f"The first {a.tokens} tokens of Pride and Prejudice, fed one token per step; "
             "SmolLM2-135M-Instruct Q4_1. pyrcedge: llama.cpp kernels on the Q4_1 weights, "
             "eviction batch 16, sink 4, recent 16. kvpress 0.5.5: transformers on the same GGUF "
             "dequantized to float32, eager attention, each press inside DecodingPress "
             "(compression every 16 steps to budget - 16). Each side is compared with its own "
             f"full cache: pyrcedge {fo:.4f}, kvpress {fk:.4f}.", "",
             "| policy | " + " | ".join(f"pyrcedge {s:g}% | kvpress {s:g}%" for s in budgets) + " |",
             "|---|" + "---|---|" * len(budgets)]
    for label, o, k in PAIRS:
        cells = []
        for s in budgets:
            ro = mine.get(f"{o}@{s}") if o else None
            rk = kv.get(f"{k}@{s}") if k else None
            cells.append(f"{ro['ppl']:.3f} ({ro['ppl'] / fo:.3f})" if ro else "-")
            cells.append(f"{rk['ppl']:.3f} ({rk['ppl'] / fk:.3f})" if rk else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Perplexity (ratio to the same side's full cache); budgets "
              + ", ".join(f"{s:g}% = {c} cells" for s, c in budgets.items()) + ".", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
