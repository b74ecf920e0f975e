"""pyrcedge's question-probed reading against kvpress's query-aware presses (SnapKVPress,
FinchPress with the question inside compression) on the same prompts, the same budget and the
same scorers, with each side's peak KV memory.

    nice -n 10 .venv/bin/python bench/kvpress_qa.py [--model qwen2.5-coder-0.5b] [--niah-n 20]
        [--niah-shares 25% 12.5%] [--qa-n 50] [--qa-share 25%]

The prompts are pyrcedge's own: `pyrcedge eval niah` (RULER needles in 1,024-token Paul Graham
haystacks, seed 0) and `pyrcedge eval qa --dataset squad` (seed 0, contexts of about 3,000
characters, through the chat template). pyrcedge runs them through its CLI (`--examples`), full
cache and `--budget SHARE` with the defaults (a2sf + probe tail + recall). The kvpress side gets
the very token ids llama.cpp evaluates (tokenized by the same vocabulary; the chat prompts
captured from pyrcedge.Llama.create_chat_completion through pyrcedge's own evaluation.qa.answer),
and each prompt's budget cells from pyrcedge's run, so both sides keep the same number of cells
and their answers are scored by pyrcedge's scorers (needle: the value in the answer; SQuAD: EM
and F1), after detokenizing through llama.cpp. How kvpress answers: bench/kvpress_qa_worker.py.

kvpress runs in its own environment, made as:

    python3 -m venv .venv-kvpress
    .venv-kvpress/bin/pip install torch==2.13.0     # the CPU build (no CUDA wheels)
    .venv-kvpress/bin/pip install torch==2.13.0 kvpress gguf   # kvpress 0.5.5, transformers 5.2.0, gguf 0.19.0

One process at a time, one thread each. Finished pieces are kept under bench/.cache/kvpress-qa/
(ignored), so an interrupted run resumes; --fresh starts over. Writes docs/bench/<out>.md and
.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import command, machine, run_cli_json  # noqa: E402

DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
NIAH_QUESTION = "\nWhat are all the special magic numbers for"
PRESSES = ["snapkv", "finch"]
LABELS = {"full": "full", "default": "default (a2sf + probe + recall)", "snapkv": "SnapKVPress",
          "finch": "FinchPress"}


class Captured(Exception):
    """Raised by the capturing create_completion once it holds the prompt's tokens."""


def open_llm(model: str, cells: int, **kw: Any) -> Any:
    import pyrcedge

    return pyrcedge.Llama(model, kv_budget=cells, n_threads=1, n_threads_batch=1, flash_attn=True,
                          verbose=False, **kw)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def chat_tokens(llm: Any, messages: list[dict] | None = None, call: Any = None) -> list[int]:
    """The token ids pyrcedge.Llama evaluates for a chat (llama_cpp's chat handler renders and
    tokenizes; create_completion is caught before it reads anything)."""
    got: list[list[int]] = []

    def capture(prompt: Any, *args: Any, **kwargs: Any) -> Any:
        got.append(list(prompt))
        raise Captured

    llm.create_completion = capture
    try:
        call() if call is not None else llm.create_chat_completion(messages=messages, max_tokens=1)
    except Captured:
        pass
    finally:
        del llm.create_completion
    return got[0]


def build_prompts(model: str, a: argparse.Namespace) -> dict[str, list[dict]]:
    """Per part, the prompts: id, token ids, where the question starts (split), what scores
    the answer."""
    from pyrcedge.evaluation import qa
    from pyrcedge.evaluation.cli import tokenizer
    from pyrcedge.evaluation.niah import make_needles

    tok = tokenizer(model)
    count = lambda t: len(tok.tokenize(t.encode("utf-8"), False, False))  # noqa: E731
    llm = open_llm(model, 4096, policy="full")
    parts: dict[str, list[dict]] = {"niah": [], "squad": []}
    for i, nd in enumerate(make_needles(a.niah_n, a.context_tokens, DEPTHS, count, 0)):
        tokens = llm.tokenize(nd.prompt.encode("utf-8"), add_bos=True, special=False)
        head = nd.prompt[:nd.prompt.rindex(NIAH_QUESTION)]
        split = common_prefix(tokens, llm.tokenize(head.encode("utf-8"), add_bos=True,
                                                   special=False))
        parts["niah"].append({"id": str(i), "tokens": tokens, "split": split, "value": nd.value,
                              "depth": nd.depth, "max_tokens": a.niah_max_tokens})
    for ex in qa.squad_examples(a.qa_n, a.context_chars, 0):
        tokens = chat_tokens(llm, call=lambda: qa.answer(llm, ex.context, ex.question,
                                                         a.qa_max_tokens))
        head = chat_tokens(llm, [{"role": "system", "content": qa.SYSTEM},
                                 {"role": "user", "content": f"Context:\n{ex.context}"}])
        parts["squad"].append({"id": ex.id, "tokens": tokens, "split": common_prefix(tokens, head),
                               "answers": list(ex.answers), "max_tokens": a.qa_max_tokens})
    llm.close()
    tok.close()
    return parts


def eog_ids(model: str) -> list[int]:
    import llama_cpp

    llm = open_llm(model, 64, policy="full")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    llm.close()
    return ids


def pyrcedge_runs(a: argparse.Namespace, cache: Path, part: str) -> dict[str, dict]:
    """pyrcedge eval niah or eval qa (part): the full cache and the default at each share."""
    niah = [sys.executable, "-m", "pyrcedge", "eval", "niah", "--model", a.model,
            "--context-tokens", str(a.context_tokens), "--n", str(a.niah_n), "--max-tokens",
            str(a.niah_max_tokens)]
    squad = [sys.executable, "-m", "pyrcedge", "eval", "qa", "--model", a.model, "--dataset",
             "squad", "--n", str(a.qa_n), "--context-chars", str(a.context_chars), "--max-tokens",
             str(a.qa_max_tokens)]
    tail = ["--threads", "1", "--json", "--quiet", "--examples"]
    if part == "niah":
        runs = {"niah/full": niah + tail}
        runs |= {f"niah/default@{s}": niah + ["--budget", s] + tail for s in a.niah_shares}
    else:
        runs = {"squad/full": squad + tail,
                f"squad/default@{a.qa_share}": squad + ["--budget", a.qa_share] + tail}
    out = {}
    for name, cmd in runs.items():
        n = a.niah_n if name.startswith("niah") else a.qa_n
        f = cache / (name.replace("/", "-").replace("%", "") + f"-n{n}.json")
        if not f.exists():
            r = run_cli_json(cmd, name)
            f.write_text(json.dumps(r))
        out[name] = json.loads(f.read_text())
        print(f"pyrcedge {name}: done", file=sys.stderr, flush=True)
    return out


def kvpress_tasks(a: argparse.Namespace, parts: dict[str, list[dict]],
                  ours: dict[str, dict]) -> list[dict]:
    """Every (run, prompt) of the kvpress side, each prompt keeping pyrcedge's cells."""
    tasks = []
    shares = {"niah": a.niah_shares, "squad": [a.qa_share]}
    for part, prompts in parts.items():
        task = lambda run, press, p, kept: {  # noqa: E731
            "run": run, "press": press, "id": f"{part}/{p['id']}", "tokens": p["tokens"],
            "split": p["split"], "kept": kept, "max_tokens": p["max_tokens"]}
        tasks += [task(f"{part}/full", "full", p, len(p["tokens"])) for p in prompts]
        for s in shares[part]:
            r = ours[f"{part}/default@{s}"]
            cells = [x["budget_cells"] for x in r["examples"]] if part == "squad" else \
                [r["budget_cells"]] * len(prompts)
            for press in PRESSES:
                tasks += [task(f"{part}/{press}@{s}", press, p, c) for p, c in zip(prompts, cells)]
    return tasks


def kvpress_runs(a: argparse.Namespace, model: str, tasks: list[dict], cache: Path) -> dict:
    f = cache / "kvpress.jsonl"
    done = {}
    if f.exists():
        done = {(r["run"], r["id"]): r for r in map(json.loads, f.read_text().splitlines())}
    todo = [t for t in tasks if (t["run"], t["id"]) not in done]
    if todo:
        job = {"gguf": model, "threads": 1, "eog": eog_ids(model), "tasks": todo}
        proc = subprocess.Popen([a.kvpress_python, str(REPO / "bench" / "kvpress_qa_worker.py")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        with f.open("a") as sink:
            for line in proc.stdout:
                r = json.loads(line)
                done[(r["run"], r["id"])] = r
                sink.write(line)
                sink.flush()
        if proc.wait() != 0:
            raise RuntimeError("the kvpress worker failed (see stderr)")
    return done


def cell_bytes(model: str, cells: int) -> dict[str, int]:
    """pyrcedge's KV bytes at a budget of `cells` (kv_stats) and its scoring statistics."""
    llm = open_llm(model, cells)
    st = llm.kv_stats()
    llm.close()
    return {"budget_cells": st.budget_cells, "budget_bytes": st.budget_bytes,
            "statistics_bytes": st.statistics_bytes}


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--niah-n", type=int, default=20)
    ap.add_argument("--niah-shares", nargs="+", default=["25%"])
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--niah-max-tokens", type=int, default=24)
    ap.add_argument("--qa-n", type=int, default=50, help="SQuAD questions (0: needles only)")
    ap.add_argument("--qa-share", default="25%")
    ap.add_argument("--context-chars", type=int, default=3000)
    ap.add_argument("--qa-max-tokens", type=int, default=32)
    ap.add_argument("--kvpress-python", default=str(REPO / ".venv-kvpress" / "bin" / "python"))
    ap.add_argument("--out", default="kvpress-qa")
    ap.add_argument("--fresh", action="store_true", help="forget the finished pieces")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite docs/bench/<out>.md from its json")
    a = ap.parse_args()
    out = REPO / "docs" / "bench" / a.out
    if a.report_only:
        out.with_suffix(".md").write_text("\n".join(report(json.loads(
            out.with_suffix(".json").read_text()))))
        return
    from pyrcedge.assets.gguf import resolve_model
    from pyrcedge.evaluation.qa import exact_match, f1_score

    model = str(resolve_model(a.model))
    cache = REPO / "bench" / ".cache" / a.out
    if a.fresh and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    parts = build_prompts(model, a)
    # one part after the other (needles first), pyrcedge then kvpress on its prompts
    ours: dict[str, dict] = {}
    theirs: dict = {}
    for part in [p for p in ("niah", "squad") if parts[p]]:
        ours |= pyrcedge_runs(a, cache, part)
        key = "value" if part == "niah" else "id"
        for p, x in zip(parts[part], ours[f"{part}/full"]["examples"]):
            # the prompts are the ones pyrcedge read: same lengths, same needles, same questions
            assert p[key] == x[key] and (part == "squad" or len(p["tokens"]) == x["prompt_tokens"])
        theirs |= kvpress_runs(a, model, kvpress_tasks(a, {part: parts[part]}, ours), cache)

    import llama_cpp  # noqa: F401  (pyrcedge's patched build, for detokenizing)

    det = open_llm(model, 64, policy="full")
    rows: dict[str, dict] = {}
    for part, prompts in [(k, v) for k, v in parts.items() if v]:
        shares = a.niah_shares if part == "niah" else [a.qa_share]
        names = [f"{part}/full"] + [f"{part}/{k}@{s}" for s in shares for k in PRESSES]
        for name in names:
            per = []
            for p in prompts:
                r = theirs[(name, f"{part}/{p['id']}")]
                text = det.detokenize(r["output_ids"]).decode("utf-8", errors="replace")
                x = {"id": p["id"], "output": text, **{k: r[k] for k in (
                    "prompt_tokens", "kept_cells", "cells_at_answer", "peak_layer_tokens",
                    "peak_kv_bytes", "prompt_kv_bytes", "cell_bytes", "window", "prefill_s")}}
                if part == "niah":
                    x |= {"depth": p["depth"], "value": p["value"], "hit": p["value"] in text}
                else:
                    pred = text.strip()
                    x |= {"prediction": pred, "answers": p["answers"],
                          "em": exact_match(pred, p["answers"]), "f1": f1_score(pred, p["answers"])}
                per.append(x)
            rows[f"kvpress/{name}"] = {"examples": per}
    det.close()
    budgets = sorted({ours[f"niah/default@{s}"]["budget_cells"] for s in a.niah_shares}
                     | {max(x["budget_cells"] for x in ours[f"squad/default@{a.qa_share}"]["examples"])
                        for _ in parts["squad"][:1]})
    per_cell = {c: cell_bytes(model, c) for c in budgets}
    record = {"command": command(), "machine": machine(), "model": a.model, "niah_n": a.niah_n,
              "niah_shares": a.niah_shares, "context_tokens": a.context_tokens, "qa_n": a.qa_n,
              "qa_share": a.qa_share, "pyrcedge_cell_bytes": per_cell, "pyrcedge": ours,
              "kvpress": rows}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = report(record)
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def report(rec: dict) -> list[str]:
    theirs, pc = rec["kvpress"], rec["pyrcedge_cell_bytes"]
    bpc = next(iter(pc.values()))
    bpc = bpc["budget_bytes"] / bpc["budget_cells"]
    kv0 = theirs["kvpress/niah/full"]["examples"][0]
    m = rec["machine"]
    lines = [f"# Query-aware compression at the same budget: pyrcedge against kvpress, {rec['model']}",
             "", f"Command: `{rec['command']}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs); one process at a "
             "time, 1 thread.  ",
             "Both sides answer the same prompts (the token ids llama.cpp evaluates) and are scored "
             "by pyrcedge's scorers. pyrcedge: `pyrcedge eval niah|qa`, llama.cpp kernels on the "
             "Q4_K_M weights, f16 cache, the default budgeted read (a2sf + question probe + "
             "recall). kvpress 0.5.5: transformers 5.2 on the same GGUF dequantized to float32; "
             "the prompt but its last token is prefilled with the press on (the question inside "
             "compression: SnapKVPress's window is the question's tokens, FinchPress gets its "
             "delimiter between context and question), each layer keeps the budget's cells less "
             "one, then the last prompt token and the greedy answer are decoded on the compressed "
             "cache (bench/kvpress_qa_worker.py). Each side's ratio is to its own full cache.", "",
             "Peak KV, pyrcedge: its budget cells x "
             f"{bpc:.0f} bytes per cell (f16 K and V of every layer, kv_stats), never exceeded "
             "(the probe and recall read inside the budget); the scoring statistics beside it "
             "are listed apart. kvpress: the whole prompt's K and V before compression "
             f"(prompt tokens x {kv0['cell_bytes']} bytes per cell in float32, "
             f"{kv0['cell_bytes'] // 2} at f16), and what it holds at most at once as measured "
             "(kvpress compresses a layer right after its attention: the layers before it "
             "compressed, that layer whole).", ""]
    for s in rec["niah_shares"]:
        lines += niah_table(rec, s, bpc)
    if rec["qa_n"]:
        lines += squad_table(rec, bpc)
    lines += ["", "Per-prompt answers, cells and bytes are in the json; pyrcedge's commands in "
              "`pyrcedge.<run>.command`.", ""]
    return lines


def peak_kv(ex: list[dict]) -> tuple[float, float, float]:
    """(whole prompt's KV bytes at f32, the same at f16, measured peak at f32), largest prompt."""
    whole = max(x["prompt_kv_bytes"] for x in ex)
    return whole, whole / 2, max(x["peak_kv_bytes"] for x in ex)


def niah_table(rec: dict, share: str, bpc: float) -> list[str]:
    ours, theirs = rec["pyrcedge"], rec["kvpress"]
    o_full, o_def = ours["niah/full"], ours[f"niah/default@{share}"]
    cells = o_def["budget_cells"]
    stats = rec["pyrcedge_cell_bytes"][str(cells)] if str(cells) in rec["pyrcedge_cell_bytes"] \
        else rec["pyrcedge_cell_bytes"][cells]
    k_full = theirs["kvpress/niah/full"]["examples"]
    depths = [str(d) for d in DEPTHS]

    def hit(ex: list[dict]) -> float:
        return sum(x["hit"] for x in ex) / len(ex)

    def by_depth(ex: list[dict]) -> str:
        at = [[x["hit"] for x in ex if str(x["depth"]) == d] for d in depths]
        return " | ".join(f"{sum(h) / len(h):.2f}" if h else "-" for h in at)

    lines = [f"## Needle, {rec['niah_n']} prompts, {rec['context_tokens']}-token haystacks, "
             f"budget {share} = {cells} cells", "",
             "| side | cache | hit rate | / own full | " + " | ".join(f"depth {d}" for d in depths)
             + " | cells at the answer | peak KV MiB |", "|---|---|---|---|" + "---|" * len(depths)
             + "---|---|"]
    of = hit(o_full["examples"])
    pf = max(x["prompt_tokens"] for x in o_full["examples"])
    lines.append(f"| pyrcedge | full | {of:.2f} | 1.00 | {by_depth(o_full['examples'])} | {pf} | "
                 f"{mib(pf * bpc)} |")
    od = hit(o_def["examples"])
    lines.append(f"| pyrcedge | {LABELS['default']} | {od:.2f} | {od / of if of else float('nan'):.2f} | "
                 f"{by_depth(o_def['examples'])} | {cells} | **{mib(stats['budget_bytes'])}** "
                 f"(+{mib(stats['statistics_bytes'])} statistics) |")
    kf = hit(k_full)
    whole, whole16, _ = peak_kv(k_full)
    lines.append(f"| kvpress | full | {kf:.2f} | 1.00 | {by_depth(k_full)} | "
                 f"{max(x['prompt_tokens'] for x in k_full)} | {mib(whole)} ({mib(whole16)} at f16) |")
    for press in PRESSES:
        ex = theirs[f"kvpress/niah/{press}@{share}"]["examples"]
        h = hit(ex)
        whole, whole16, measured = peak_kv(ex)
        lines.append(f"| kvpress | {LABELS[press]} | {h:.2f} | {h / kf if kf else float('nan'):.2f} | "
                     f"{by_depth(ex)} | {max(x['cells_at_answer'] for x in ex)} | whole prompt "
                     f"{mib(whole)} ({mib(whole16)} at f16); held at once {mib(measured)} "
                     f"({mib(measured / 2)} at f16) |")
    return lines + [""]


def squad_table(rec: dict, bpc: float) -> list[str]:
    ours, theirs, share = rec["pyrcedge"], rec["kvpress"], rec["qa_share"]
    o_full, o_def = ours["squad/full"], ours[f"squad/default@{share}"]
    k_full = theirs["kvpress/squad/full"]["examples"]
    cells = [x["budget_cells"] for x in o_def["examples"]]

    def mean(ex: list[dict], k: str) -> float:
        return sum(x[k] for x in ex) / len(ex)

    lines = [f"## SQuAD, {rec['qa_n']} questions, budget {share} of each context "
             f"({sum(cells) / len(cells):.0f} cells on average, {max(cells)} at most)", "",
             "| side | cache | EM | F1 | F1 / own full | cells at the answer, mean (max) | "
             "peak KV MiB, largest prompt |", "|---|---|---|---|---|---|---|"]
    of = o_full["f1"]
    pt = [x["history_tokens"] for x in o_full["examples"]]
    lines.append(f"| pyrcedge | full | {o_full['em']:.3f} | {of:.3f} | 1.000 | - | "
                 f"{mib(max(pt) * bpc)} (history incl. answer) |")
    lines.append(f"| pyrcedge | {LABELS['default']} | {o_def['em']:.3f} | {o_def['f1']:.3f} | "
                 f"{o_def['f1'] / of:.3f} | {sum(cells) / len(cells):.0f} ({max(cells)}) | "
                 f"**{mib(max(cells) * bpc)}** |")
    kf = mean(k_full, "f1")
    whole, whole16, _ = peak_kv(k_full)
    lines.append(f"| kvpress | full | {mean(k_full, 'em'):.3f} | {kf:.3f} | 1.000 | - | "
                 f"{mib(whole)} ({mib(whole16)} at f16) |")
    for press in PRESSES:
        ex = theirs[f"kvpress/squad/{press}@{share}"]["examples"]
        whole, whole16, measured = peak_kv(ex)
        lines.append(f"| kvpress | {LABELS[press]} | {mean(ex, 'em'):.3f} | {mean(ex, 'f1'):.3f} | "
                     f"{mean(ex, 'f1') / kf:.3f} | {mean(ex, 'cells_at_answer'):.0f} "
                     f"({max(x['cells_at_answer'] for x in ex)}) | whole prompt {mib(whole)} "
                     f"({mib(whole16)} at f16); held at once {mib(measured)} "
                     f"({mib(measured / 2)} at f16) |")
    d = [x["f1"] for x in o_def["examples"]]
    for press in PRESSES:
        ex = theirs[f"kvpress/squad/{press}@{share}"]["examples"]
        better = sum(a > b["f1"] + 1e-9 for a, b in zip(d, ex))
        worse = sum(a < b["f1"] - 1e-9 for a, b in zip(d, ex))
        lines.append(f"\npyrcedge default against {LABELS[press]}, question by question: "
                     f"{better} better, {worse} worse, {len(d) - better - worse} equal.")
    return lines + [""]


if __name__ == "__main__":
    main()
