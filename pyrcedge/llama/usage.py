"""What one completion did inside the KV budget: the `kv_cache` entry of its usage.

Silent truncation is what users of other local runtimes complain of (a long chat forgets its
start and nothing says so). A pyrcedge completion says what it cost the cache: its usage gains
`kv_cache` with the budget, what is cached at the end, and what this completion evicted and
recalled. Streamed completions have no usage object in llama-cpp-python; their figures are kept
by completion id (`UsageLog`) for whoever reads the stream to the end (`pyrcedge serve` sends
them in a last chunk, as OpenAI's `stream_options.include_usage` does).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..cache.engine import BudgetedKV

# BudgetedKV (and KVStats) counters that a completion's usage reports as its own share (after minus before)
COUNTERS = ("evictions", "evicted_tokens", "recalls", "recalled_spans", "recalled_tokens")
# completions whose usage a UsageLog keeps for their readers (a server's few in flight)
KEPT = 64


def counters(kv: BudgetedKV) -> dict[str, int]:
    """The cache's counters now (read off the engine: no statistics are read)."""
    return {k: int(getattr(kv, k)) for k in COUNTERS}


def kv_usage(before: dict[str, int], kv: BudgetedKV, history_tokens: int) -> dict[str, Any]:
    """The usage's `kv_cache` entry: the budget and the cache at the end of the completion, and
    the evictions and recalls it made (`before`: counters() when it started)."""
    now = counters(kv)
    return {"budget_cells": int(kv.budget), "cached_tokens": len(kv.cached),
            "history_tokens": int(history_tokens),
            **{k: now[k] - before[k] for k in COUNTERS}}


class UsageLog:
    """The kv_cache usage of the last KEPT completions, by completion id."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def remember(self, completion_id: str, usage: dict[str, Any]) -> None:
        self._by_id[completion_id] = usage
        self._by_id.move_to_end(completion_id)
        while len(self._by_id) > KEPT:
            self._by_id.popitem(last=False)

    def pop(self, completion_id: str) -> dict[str, Any] | None:
        """The usage of a completion (a chat completion's id is "chat" + its completion's),
        forgotten once read."""
        for key in (completion_id, completion_id.removeprefix("chat")):
            if key in self._by_id:
                return self._by_id.pop(key)
        return None
