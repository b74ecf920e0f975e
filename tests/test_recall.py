"""Recall (pyrcedge.features.recall) on the default model: a prompt that asks about evicted
history reads it back at its own positions, inside the budget, holds it while the prompt is
answered, and a saved session continues identically; bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
from test_budgeted import PROSE, make
from test_probe import watch_decodes

from pyrcedge import BudgetError, scoring
from pyrcedge.features import recall

FACT = "Please remember this: the vault password is turquoise heron."
ASK = " What is the vault password?"


def read_fact_then_prose(llm) -> list[int]:
    fact = llm.tokenize(FACT.encode())
    llm.eval(fact + llm.tokenize((" " + PROSE * 8).encode(), add_bos=False))
    return list(range(len(fact)))


def positions_agree(llm) -> bool:
    """libllama's positions of the used cells are what the bookkeeping says."""
    pos = np.sort(scoring.used_cells(llm.ctx).pos)
    kv = llm.kv_cache
    want = np.arange(len(kv.cached)) if kv.compact else kv.cached
    return bool(np.array_equal(pos, want))


@pytest.mark.parametrize("positions", ["keep", "compact"])
def test_a_question_reads_the_evicted_fact_back(default_model, positions):
    events = []
    llm = make(default_model, kv_budget=96, policy="window", recall=True, positions=positions,
               on_recall=events.append)
    seen = watch_decodes(llm)
    fact = read_fact_then_prose(llm)
    assert not set(fact[6:]) & set(llm.kv_cache.cached.tolist())   # the window evicted it
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    st = llm.kv_stats()
    assert st.recalls == 1 and st.recalled_tokens > 0 and len(events) == 1
    back = {i for a, b in events[0].spans for i in range(a, b)}
    assert {i for i in fact if i >= 8} <= back       # the password's words came back
    assert back <= set(st.positions.tolist())
    assert max(seen) <= 96 and positions_agree(llm)
    # held while the question is answered, though the window evicts the oldest first
    for t in llm.generate([], temp=0.0, reset=False):
        if llm.n_tokens >= st.history_tokens + 40:
            break
    assert back <= set(llm.kv_stats().positions.tolist()) and positions_agree(llm)
    assert llm.kv_stats().evictions > st.evictions


def test_prompts_about_nothing_evicted_recall_nothing(default_model):
    llm = make(default_model, kv_budget=96, policy="window", recall=True)
    read_fact_then_prose(llm)
    llm.eval(llm.tokenize(b" Bread rises slowly in a cold kitchen.", add_bos=False))
    assert llm.kv_stats().recalls == 0


def test_recall_is_off_unless_asked(default_model):
    llm = make(default_model, kv_budget=96, policy="window")
    read_fact_then_prose(llm)
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    assert llm.kv_stats().recalls == 0


def test_a_session_saved_after_a_recall_continues_identically(default_model):
    kw = dict(kv_budget=96, policy="a2sf", recall=True)
    llm = make(default_model, **kw)
    read_fact_then_prose(llm)
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    assert llm.kv_stats().recalls == 1
    state = llm.save_state()
    other = make(default_model, **kw)
    other.load_state(state)
    assert other.kv_cache.protection.held == llm.kv_cache.protection.held

    def greedy(m, n=24):
        out = []
        for t in m.generate([], temp=0.0, reset=False):
            out.append(t)
            if len(out) == n:
                return out

    assert greedy(other) == greedy(llm)
    assert other.kv_stats().to_dict() == llm.kv_stats().to_dict()


@pytest.mark.parametrize("spec,match", [
    (-3, "recall max_tokens must be"),
    ("yes", "recall must be"),
    (recall.Recall, "recall must be"),
])
def test_bad_recall_settings_are_refused_before_loading(default_model, spec, match):
    with pytest.raises(BudgetError, match=match):
        make(default_model, kv_budget=96, recall=spec)
    with pytest.raises(BudgetError, match="recall pad must be"):
        recall.Recall(pad=-1)


def test_the_recall_option_of_every_command():
    import argparse

    from pyrcedge.apps.options import recall_argument
    assert [recall_argument(t) for t in ("on", "off", "64")] == [True, None, 64]
    with pytest.raises(argparse.ArgumentTypeError, match="--recall takes"):
        recall_argument("lots")


def test_evicted_sentences_cut_at_sentence_ends_and_length():
    cached = np.array([0, 1, 9], np.int64)
    ends = np.zeros(12, bool)
    ends[4] = True
    assert recall.evicted_sentences(12, cached, ends, 3) == [(2, 5), (5, 8), (8, 9), (10, 12)]


def test_bm25_prefers_the_rare_shared_word():
    docs = [["the", "heron", "password"], ["sea", "wind"], ["password", "wind"]]
    s = recall.bm25(docs, ["heron", "password"])
    assert s[0] > s[2] > s[1] == 0
