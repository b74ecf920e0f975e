"""What the `pyrcedge` commands share: their common options (argparse parents), the budget and
eviction options, and opening the model they name."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import llama_cpp

from ..assets.gguf import check_gguf, resolve_model
from ..assets.models import DEFAULT_MODEL, MODELS
from ..cache.budget import MAX_CELLS, Budget, parse_bytes
from ..cache.policies import POLICIES
from ..errors import ModelLoadError, PyrcedgeError
from ..llama import Llama
from ..llama.settings import DEFAULT_PROBE, DEFAULT_RECALL, MAX_THREADS


def positive_int(text: str) -> int:
    """A count for the command line: 1 to 2**31 - 1 (what crosses into llama.cpp's int32 and
    uint32 parameters, threads and n_ctx among them, without wrapping)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_CELLS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CELLS}, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds are a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def threads(text: str) -> int:
    """--threads: 1 to ggml's limit."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS} (ggml's limit), got {value}")
    return value


def size(text: str) -> int:
    """A byte size: 1048576, 256MiB, 1GB."""
    if text.strip().isdigit():
        return int(text)
    try:
        return parse_bytes(text)
    except PyrcedgeError:
        raise argparse.ArgumentTypeError(f"a size is bytes (1048576) or 256MiB / 1GB, got {text!r}") from None


def span(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pinned span is START:END in token indices, got {text!r}") from None


def read_text(path: str, what: str = "text file") -> str:
    """A UTF-8 file's text, or a PyrcedgeError saying why not."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PyrcedgeError(f"cannot read {what} {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise PyrcedgeError(f"{what} {path} is not UTF-8 text ({e.reason})") from e


def model_options(threads_default: int | None = None) -> argparse.ArgumentParser:
    """--model and --threads (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", help=f"GGUF path or model name ({', '.join(MODELS)}); "
                                   f"default {DEFAULT_MODEL}")
    p.add_argument("--threads", type=threads,
                   default=threads_default or min(os.cpu_count() or 1, MAX_THREADS))
    return p


def max_tokens_option(default: int | None, help: str | None = None) -> argparse.ArgumentParser:
    """--max-tokens (a parent parser); required when default is None."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--max-tokens", type=positive_int, default=default, required=default is None,
                   help=help)
    return p


def budget_options() -> argparse.ArgumentParser:
    """The KV budget and eviction options of the commands that read or generate (a parent
    parser; budget_kwargs turns them into pyrcedge.Llama keywords)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("KV budget and eviction")
    g.add_argument("--budget", type=Budget.argument, help="KV budget: tokens (512), bytes "
                   "(64MiB, 1.5GB) or auto; the evaluation commands also take a share of the "
                   "text (25%%); default: --n-ctx tokens")
    g.add_argument("--policy", choices=sorted(POLICIES), help="eviction policy (default: a2sf "
                                                             "with --budget, else full)")
    g.add_argument("--alpha", type=float, help="A2SF forgetting factor (policy a2sf)")
    g.add_argument("--rc-epsilon", type=float, help="RC threshold (policy rcstat)")
    g.add_argument("--sink", type=int, default=4, help="first tokens never evicted")
    g.add_argument("--recent", type=int, default=16, help="newest tokens never evicted")
    g.add_argument("--eviction-batch", type=int, default=16, help="cells evicted at once")
    g.add_argument("--pin", type=span, action="append", default=[], metavar="START:END",
                   help="token span never evicted (repeatable)")
    g.add_argument("--positions", choices=("keep", "compact"), default="keep",
                   help="keep token positions, or compact them after each eviction")
    g.add_argument("--probe", type=probe_argument, default=DEFAULT_PROBE, metavar="PROBE",
                   help="how a prompt longer than the budget is read: tail (its question "
                        "guides eviction; default), N (a tail of N tokens), catalyst (a generic "
                        "summary question), off, or a question of your own")
    g.add_argument("--recall", type=recall_argument, default=DEFAULT_RECALL, metavar="RECALL",
                   help="read evicted history back when a new prompt asks about it: on, off, "
                        "or N (at most N tokens per prompt)")
    return p


def recall_argument(text: str) -> int | bool | None:
    """--recall: on, off or a bound of tokens per prompt."""
    t = text.strip().lower()
    if t in ("off", "none", "no", "0"):
        return None
    if t in ("on", "yes"):
        return True
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"--recall takes on, off or a number of tokens, got {text!r}")


def probe_argument(text: str) -> int | str | None:
    """--probe: off, a number of tail tokens, or what pyrcedge.Llama(probe=...) takes."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    if text.strip().isdigit():
        return int(text)
    return text


def budget_kwargs(args: argparse.Namespace, budget: Budget | None = None) -> dict[str, Any]:
    """pyrcedge.Llama keyword arguments from budget_options' flags. `budget` overrides
    --budget (a share already turned into tokens, say)."""
    budget = budget if budget is not None else args.budget
    policy = args.policy or ("a2sf" if budget is not None else "full")
    opts: dict[str, Any] = {
        "policy": policy, "alpha": args.alpha, "rc_epsilon": args.rc_epsilon,
        "sink_tokens": args.sink, "recent_tokens": args.recent,
        "eviction_batch": args.eviction_batch, "pinned": args.pin, "positions": args.positions,
        "probe": args.probe, "recall": args.recall}
    if budget is not None:
        opts["kv_budget"] = budget
    else:
        opts["n_ctx"] = args.n_ctx
    return opts


def open_llama(model: str | os.PathLike[str] | None, **llama_kwargs: Any) -> Any:
    """pyrcedge.Llama for `model` when budget or policy options are given, else
    llama_cpp.Llama; ModelLoadError when it cannot be loaded."""
    path = resolve_model(model)
    check_gguf(path)
    llama_kwargs.setdefault("verbose", False)
    budgeted = "policy" in llama_kwargs or "kv_budget" in llama_kwargs
    cls = Llama if budgeted else llama_cpp.Llama
    try:
        return cls(model_path=str(path), **llama_kwargs)
    except PyrcedgeError:
        raise
    except ValueError as e:
        raise ModelLoadError(f"llama.cpp could not load {path}: the file is damaged, truncated or "
                             f"of an unsupported architecture ({e})") from e


def open_from_args(args: argparse.Namespace, *, flash_attn: bool = True, seed: int = 0,
                   budget: Budget | None = None, **extra: Any) -> Any:
    """The model a command's arguments name, with their budget, threads and `extra` keywords."""
    return open_llama(args.model, **budget_kwargs(args, budget), n_threads=args.threads,
                      n_threads_batch=args.threads, flash_attn=flash_attn, seed=seed, **extra)
