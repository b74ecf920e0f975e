"""`pyrcedge explain`: answer a question about a context and show which parts of the context
the answer drew on (text, JSON, or a heat-map page: explain_html)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..features.attribution import GRANULARITIES, METHODS
from . import options
from .explain_html import render_html


def cmd_explain(args: argparse.Namespace) -> int:
    context = args.context if args.context is not None else options.read_text(args.context_file,
                                                                       "context file")
    llm = options.open_from_args(args, track_attention=True)
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


def register(sub: Any) -> None:
    ex = sub.add_parser("explain", help="answer a question about a context and show which "
                                        "parts of the context the answer drew on",
                        parents=[options.model_options(), options.max_tokens_option(64), options.budget_options()])
    csrc = ex.add_mutually_exclusive_group(required=True)
    csrc.add_argument("--context-file", help="file holding the context (UTF-8)")
    csrc.add_argument("--context", help="context text")
    ex.add_argument("--question", required=True)
    ex.add_argument("--granularity", choices=GRANULARITIES, default="sentence")
    ex.add_argument("--method", choices=METHODS, default="rc")
    ex.add_argument("--top-k", type=options.positive_int, default=8, help="heads ranked by expected RC")
    ex.add_argument("--top", type=options.positive_int, default=5, help="spans to print")
    ex.add_argument("--n-ctx", type=options.positive_int, default=4096, help="KV cache size in tokens")
    ex.add_argument("--html", help="write a self-contained heat-map page here")
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    ex.set_defaults(func=cmd_explain)
