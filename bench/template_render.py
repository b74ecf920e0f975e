"""What the bounds on a chat template cost (pyrcedge/llama/chat_template.py): the model file's
tokenizer.chat_template rendered for chats of 2, 20 and 200 messages in llama_cpp's own
environment and in pyrcedge's bounded one, alternately, ROUNDS rounds of REPS renders each;
median and range of the per-render times, and their ratio per round. Writes
docs/bench/<out>.md and .json.

    .venv/bin/python bench/template_render.py [--model smollm2-135m] [--rounds 15]
        [--out template-render]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import command, machine
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from pyrcedge.assets.gguf_header import read_metadata
from pyrcedge.assets.models import MODELS, model_path
from pyrcedge.llama.chat_template import BoundedEnvironment, BoundedTemplate

REPO = Path(__file__).resolve().parent.parent
REPS = 20


def chat(n: int) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": "system", "content": "You are a helpful assistant."},
            *({"role": roles[i % 2], "content": f"Message {i}: " + "some words of text " * 12}
              for i in range(n - 1))]


def compiled(source: str, cls: type) -> Any:
    env = cls(trim_blocks=True, lstrip_blocks=True)       # as llama_cpp's Jinja2ChatFormatter
    env.filters["tojson"] = Jinja2ChatFormatter.tojson
    template = env.from_string(source)
    return BoundedTemplate(template) if cls is BoundedEnvironment else template


def per_render(template: Any, given: dict[str, Any]) -> float:
    t = time.perf_counter()
    for _ in range(REPS):
        template.render(**given)
    return (time.perf_counter() - t) / REPS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="template-render")
    a = ap.parse_args()
    source = read_metadata(str(model_path(a.model)))["tokenizer.chat_template"].value
    stock, bounded = (compiled(source, c) for c in (ImmutableSandboxedEnvironment,
                                                     BoundedEnvironment))
    rows = []
    for n in (2, 20, 200):
        given = dict(messages=chat(n), bos_token="<s>", eos_token="</s>",
                     add_generation_prompt=True)
        assert stock.render(**given) == bounded.render(**given)
        times: dict[str, list[float]] = {"stock": [], "bounded": []}
        for r in range(a.rounds):
            order = [("stock", stock), ("bounded", bounded)][:: 1 if r % 2 else -1]
            for name, template in order:
                times[name].append(per_render(template, given))
        ratios = [b / s for s, b in zip(times["stock"], times["bounded"])]
        rows.append({"messages": n, "chars": len(stock.render(**given)),
                     **{k: [statistics.median(v), min(v), max(v)] for k, v in times.items()},
                     "ratio": [statistics.median(ratios), min(ratios), max(ratios)]})
    result = {"command": command(), "machine": machine(), "model": a.model,
              "rounds": a.rounds, "reps": REPS, "rows": rows}
    out = REPO / "docs" / "bench" / a.out
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# What the chat template's bounds cost: {a.model}'s template", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores.  ",
             f"{a.rounds} rounds, each rendering {REPS} times in llama_cpp's environment and "
             "in pyrcedge's bounded one (alternating which goes first); per-render time, "
             "median [min, max] over the rounds; the ratio is per round.", "",
             "| messages | prompt chars | llama_cpp, ms | bounded, ms | bounded / llama_cpp |",
             "|---|---|---|---|---|"]
    for row in rows:
        s, b, r = row["stock"], row["bounded"], row["ratio"]
        lines.append(f"| {row['messages']} | {row['chars']} | {s[0] * 1e3:.3f} "
                     f"[{s[1] * 1e3:.3f}, {s[2] * 1e3:.3f}] | {b[0] * 1e3:.3f} "
                     f"[{b[1] * 1e3:.3f}, {b[2] * 1e3:.3f}] | {r[0]:.1f} [{r[1]:.1f}, {r[2]:.1f}] |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
