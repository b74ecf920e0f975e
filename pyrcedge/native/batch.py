"""Filling llama_cpp's batch for a decode, with the logits only where something reads them."""

from __future__ import annotations

from typing import Any, Literal, Sequence

Logits = Literal["all", "last", "none"]


def fill_batch(batch: Any, tokens: Sequence[int], pos: int, logits: Logits = "last") -> None:
    """Put `tokens` at positions pos.. in a llama_cpp LlamaBatch, asking for the logits of all
    of them, of the last (what llama_cpp.Llama asks for each batch) or of none: tokens read only
    for their K and V (a prompt's chunks before its last token, a recalled span, a question
    probe) compute none, since the vocabulary's projection reads the whole output matrix each
    time and is a large part of a token's cost in small models."""
    batch.set_batch(batch=list(tokens), n_past=pos, logits_all=logits == "all")
    if logits == "none":
        batch.batch.logits[len(tokens) - 1] = False
