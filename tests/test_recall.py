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
    # no probe: which of the fact's tokens a probe of the prose's tail keeps is beside the point
    llm = make(default_model, kv_budget=96, policy="window", recall=True, positions=positions,
               probe=None, on_recall=events.append)
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


def test_a_completion_says_what_it_evicted_and_recalled(default_model):
    """usage.kv_cache: this completion's evictions and recalls, and the cache at its end."""
    # no probe: whether a probe of the prose's tail keeps some of the fact is beside the point
    llm = make(default_model, kv_budget=96, policy="window", recall=True, probe=None)
    text = FACT + " " + PROSE * 8
    first = llm.create_completion(text, max_tokens=2, temperature=0.0)["usage"]["kv_cache"]
    assert first["evicted_tokens"] > 0 and first["recalls"] == 0
    assert first["budget_cells"] == 96 and 0 < first["cached_tokens"] <= 96
    chunks = list(llm.create_completion(text + ASK, max_tokens=2, temperature=0.0, stream=True))
    second = llm.kv_usage_log.pop(chunks[-1]["id"])
    assert second["recalls"] == 1 and second["recalled_tokens"] > 0
    assert llm.kv_stats().recalled_tokens == second["recalled_tokens"]
    assert second["history_tokens"] == llm.n_tokens and llm.kv_usage_log.pop(chunks[0]["id"]) is None


@pytest.mark.parametrize("positions", ["keep", "compact"])
def test_a_long_prompt_reads_back_what_its_own_reading_evicted_before_its_question(
        default_model, positions):
    events = []
    llm = make(default_model, kv_budget=96, policy="window", probe="tail", recall=True,
               positions=positions, on_recall=events.append)
    seen = watch_decodes(llm)
    fact = llm.tokenize(FACT.encode())
    body = fact + llm.tokenize((" " + PROSE * 8).encode(), add_bos=False)
    prompt = body + llm.tokenize(ASK.encode(), add_bos=False)
    # the document's reading evicts the fact first (the real probe may keep it, depending on
    # the CPU's arithmetic), so that recall has to read it back before the question
    llm._probe_scorer = lambda read: lambda view: np.where(
        llm.kv_cache.cached < len(fact), -1.0, 0.0)
    lasts = []
    orig = llm._batch.set_batch
    llm._batch.set_batch = lambda batch, n_past, logits_all: (
        lasts.append(list(batch)), orig(batch=batch, n_past=n_past, logits_all=logits_all))
    llm.eval(prompt)
    st = llm.kv_stats()
    assert st.probe_passes > 0 and st.recalls == 1 and len(events) == 1
    back = {i for a, b in events[0].spans for i in range(a, b)}
    assert back and max(back) < len(body)          # from the document, before the question
    assert set(range(8, len(fact))) <= set(st.positions.tolist())   # the password is there
    assert max(seen) <= 96 and positions_agree(llm)
    assert lasts[-1] == prompt[-len(lasts[-1]):]   # the question is read last: it starts the answer


def test_the_bound_holds_per_prompt_when_a_probed_read_recalls_twice(default_model):
    # a prompt that does not fit recalls before its document and again before its question:
    # both passes together read back at most max_tokens (each took the whole bound before),
    # and the prompt counts as one recall (evicted tokens alone: a whole sentence, read again
    # with its cached tokens, takes the whole bound in the first pass here)
    events = []
    bound = 32
    llm = make(default_model, kv_budget=192, policy="window", probe="tail",
               recall=recall.Recall(max_tokens=bound, sentence_max=12, relative=0.0,
                                    min_score=0.0, min_share=0.0, whole=False),
               on_recall=events.append)
    read_fact_then_prose(llm)
    before = llm.kv_stats()
    events.clear()
    llm.eval(llm.tokenize((" " + PROSE * 3 + ASK).encode(), add_bos=False))
    st = llm.kv_stats()
    assert st.probe_passes > before.probe_passes and len(events) == 2   # both passes recalled
    assert sum(e.tokens for e in events) == st.recalled_tokens - before.recalled_tokens <= bound
    assert st.recalls == before.recalls + 1 and positions_agree(llm)


# a pasted passage that shares one rare word ("vault") with the evicted fact, among many of its own
PASSAGE = (" Summarize this passage: The old bank moved its vault to the basement in 1921, when "
           "the river flooded the high street twice, and the clerks carried ledgers, coins and "
           "deeds down the stairs by lamplight.")


@pytest.mark.parametrize("share", [0.125, 0.5])
def test_the_bound_is_share_of_the_budget(default_model, share):
    # max_tokens does not bind here: a prompt reads back at most int(budget * share) tokens
    # (here 22 of 24 at 0.125, 96 of 96 at 0.5: more than the quarter that bound it before)
    events = []
    llm = make(default_model, kv_budget=192, policy="window", probe="tail",
               recall=recall.Recall(max_tokens=1000, share=share, sentence_max=12,
                                    relative=0.0, min_score=0.0), on_recall=events.append)
    read_fact_then_prose(llm)
    events.clear()
    llm.eval(llm.tokenize((" " + PROSE * 3 + ASK).encode(), add_bos=False))
    got = sum(e.tokens for e in events)
    assert 0 < got <= int(192 * share) and positions_agree(llm)
    assert share < 0.25 or got > 192 // 4


@pytest.mark.parametrize("min_share,recalls", [(None, 1), (0.25, 0)])
def test_a_pasted_passage_does_not_recall_what_shares_one_of_its_words(
        default_model, min_share, recalls):
    """min_share: the evicted fact shares "vault" with the passage, which is about its own
    many words (read back by default, min_share 0; not with 0.25); the question about the
    fact still reads it back."""
    events = []
    spec = recall.Recall() if min_share is None else recall.Recall(min_share=min_share)
    llm = make(default_model, kv_budget=96, policy="window", probe=None, recall=spec,
               on_recall=events.append)
    fact = read_fact_then_prose(llm)
    llm.eval(llm.tokenize(PASSAGE.encode(), add_bos=False))
    assert llm.kv_stats().recalls == recalls
    if recalls:
        return
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    assert llm.kv_stats().recalls == 1
    back = {i for a, b in events[0].spans for i in range(a, b)}
    assert {i for i in fact if i >= 8} <= back       # the password's words came back


def test_shares_weigh_the_words_no_candidate_holds_most():
    docs = [["vault", "password", "heron"], ["sea", "wind"]]
    assert recall.shares(docs, ["vault", "password"]).tolist() == [1.0, 0.0]
    held, new = recall.shares(docs, ["vault", "bank", "river", "ledgers"])
    assert 0 < held < 0.25 and new == 0
    # "born" is cached (its sentence lost its city): it weighs less in the prompt, but not in
    # the sentence holding it (at the covered weight throughout, 0.16 of the question's weight
    # left out the fact's sentence in a 1024-cell chat)
    docs = [["born", "cartagena"], ["helpful"]] + [[f"w{i}"] for i in range(150)]
    assert recall.shares(docs, ["city", "born"], {"born": 0.25})[0] > 0.4
    settings = recall.Recall(min_share=0.25)
    assert np.isneginf(recall.rank(docs, ["vault", "bank", "river", "ledgers"], set(),
                                   settings)).all()
    assert recall.choose([(0, 3), (3, 5)], np.array([-np.inf, -np.inf]), settings, 8,
                         lambda i: True) == []
    with pytest.raises(BudgetError, match="recall min_share must be in"):
        recall.Recall(min_share=2.0)


def test_covered_weighs_the_question_words_the_cache_holds():
    # the probe kept the question's words of the sentence that answers it and let its answer
    # go: at covered 1 that sentence outranks one sharing a single, evicted question word; at
    # the default 0.25 a word the cache holds weighs a quarter and it does not
    docs = [["capital", "france", "paris"], ["largest", "river", "loire"]] + \
        [[f"w{i}"] for i in range(20)]
    question = ["capital", "france", "largest"]
    in_cache = {"capital", "france"}
    scores = recall.rank(docs, question, in_cache, recall.Recall(covered=1.0))
    assert scores[0] > scores[1] > 0
    discounted = recall.rank(docs, question, in_cache, recall.Recall())
    assert recall.Recall().covered == 0.25 and discounted[0] < discounted[1]


def test_prompts_about_nothing_evicted_recall_nothing(default_model):
    llm = make(default_model, kv_budget=96, policy="window", recall=True)
    read_fact_then_prose(llm)
    llm.eval(llm.tokenize(b" Bread rises slowly in a cold kitchen.", add_bos=False))
    assert llm.kv_stats().recalls == 0


@pytest.mark.parametrize("kw,recalls", [({}, 1), ({"recall": None}, 0), ({"recall": False}, 0)])
def test_recall_is_on_unless_turned_off(default_model, kw, recalls):
    llm = make(default_model, kv_budget=96, policy="window", probe=None, **kw)
    read_fact_then_prose(llm)
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    assert llm.kv_stats().recalls == recalls


def test_a_session_saved_after_a_recall_continues_identically(default_model):
    kw = dict(kv_budget=96, policy="a2sf", recall=True, probe=None)
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
    for share in (0, -0.25, 1.5, True, "half", float("nan")):
        with pytest.raises(BudgetError, match="recall share must be"):
            recall.Recall(share=share)


def test_the_recall_option_of_every_command():
    import argparse

    from pyrcedge.apps.options import recall_argument
    assert [recall_argument(t) for t in ("on", "off", "64")] == [True, None, 64]
    with pytest.raises(argparse.ArgumentTypeError, match="--recall takes"):
        recall_argument("lots")


def test_sentences_cut_at_sentence_ends_and_length():
    ends = np.zeros(12, bool)
    ends[4] = True
    assert recall.sentences(ends, 3) == [(0, 3), (3, 5), (5, 8), (8, 11), (11, 12)]


def test_a_sentence_is_a_candidate_while_any_of_its_tokens_is_evicted():
    ends = np.zeros(12, bool)
    ends[[4, 8]] = True
    cached = np.array([0, 1, 2, 3, 4, 5, 7, 8], np.int64)   # token 6 of the second sentence gone
    assert recall.evicted_sentences(ends, cached, 40) == [(5, 9), (9, 12)]


def test_choose_returns_the_evicted_tokens_of_the_best_sentences_padded():
    gone = {2, 6, 9, 10, 11}
    settings = recall.Recall(pad=1)
    runs = recall.choose([(5, 9), (9, 12)], np.array([3.0, 0.5]), settings, 8,
                         lambda i: i in gone)
    assert runs == [(6, 7), (9, 10)]     # the best sentence's one evicted token, padded by 9
    assert recall.choose([(5, 9), (9, 12)], np.array([3.0, 2.0]), settings, 8,
                         lambda i: i in gone) == [(6, 7), (9, 12)]
    assert recall.choose([(5, 9)], np.array([0.9]), settings, 8, lambda i: i in gone) == []


def test_choose_with_relative_recalls_only_the_sentences_near_the_best():
    gone = set(range(20))
    spans, scores = [(0, 4), (4, 8), (8, 12)], np.array([6.0, 2.5, 3.5])
    assert recall.choose(spans, scores, recall.Recall(pad=0, relative=0.5), 20,
                         lambda i: i in gone) == [(0, 4), (8, 12)]
    assert recall.choose(spans, scores, recall.Recall(pad=0, relative=0.0), 20,
                         lambda i: i in gone) == [(0, 12)]
    assert recall.choose([], np.zeros(0), recall.Recall(relative=0.5), 20, lambda i: True) == []
    with pytest.raises(BudgetError, match="recall relative must be in"):
        recall.Recall(relative=1.5)


def test_bm25_prefers_the_rare_shared_word():
    docs = [["the", "heron", "password"], ["sea", "wind"], ["password", "wind"]]
    s = recall.bm25(docs, ["heron", "password"])
    assert s[0] > s[2] > s[1] == 0


def kept_but(keep: set[int], doomed: set[int]):
    """A policy function: evict the `doomed` history indices first, keep those in `keep`, and
    otherwise the newest first (what a2sf may do to a fact, made certain)."""
    def score(view):
        logical = view.logical
        s = -logical.astype(float)
        s[np.isin(logical, list(keep))] = 1e9
        s[np.isin(logical, list(doomed))] = -1e9
        return s
    return score


@pytest.mark.parametrize("positions", ["keep", "compact"])
@pytest.mark.parametrize("whole", [True, False])
def test_a_sentence_is_read_back_whole_with_its_cached_tokens(default_model, positions, whole):
    """Recall.whole: the fact lost one token; the question reads the fact's sentence back
    whole, its cached tokens again beside the lost one (a lone token read after the other
    recalled runs is encoded out of its words: "My dog is called Ruf" in a 1024-cell chat),
    and with whole=False the lost token alone."""
    events = []
    fact_ids = None

    def policy(view):
        return kept_but(set(range(len(fact_ids))) - {gone}, {gone})(view)

    llm = make(default_model, kv_budget=96, policy=policy, positions=positions, probe=None,
               recall=recall.Recall(whole=whole), on_recall=events.append)
    fact_ids = llm.tokenize(FACT.encode())
    gone = len(fact_ids) - 2          # " heron"'s last piece, before the full stop
    seen = watch_decodes(llm)
    fact = read_in_pieces(llm, [fact_ids] + [" " + PROSE] * 8)
    assert set(llm.kv_cache.cached.tolist()) & set(fact) == set(fact) - {gone}
    events.clear()      # the prose read back its own repeated sentences
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    assert len(events) == 1
    back = {i for a, b in events[0].spans for i in range(a, b)}
    sentence = set(range(4, len(fact)))      # after the sink (the first 4 tokens stay)
    if whole:
        assert sentence <= back
    else:
        assert gone in back and not (sentence - {gone}) & back
    assert set(fact) <= set(llm.kv_stats().positions.tolist())
    assert max(seen) <= 96 and positions_agree(llm)


def read_in_pieces(llm, pieces) -> list[int]:
    """Read token lists or texts one eval each (a prompt read whole would evict all that may
    go at once); returns the history indices of the first."""
    for i, piece in enumerate(pieces):
        llm.eval(piece if isinstance(piece, list) else
                 llm.tokenize(piece.encode(), add_bos=False))
        if i == 0:
            first = list(range(llm.n_tokens))
    return first


FACT2 = " Please remember this too: my locker number is 4817."
ASK2 = " What is my locker number?"


def first_fact_read_back(default_model, settings: recall.Recall):
    """(llm, evictions seen, recall events, the first fact's history indices read back): both
    facts read and evicted, then the first asked about and read back; evictions cleared."""
    evicted: list[set[int]] = []
    recalled: list = []
    doomed: set[int] = set()

    def policy(view):
        return kept_but(set(), doomed)(view)

    llm = make(default_model, kv_budget=96, policy=policy, probe=None, recall=settings,
               on_evict=lambda e: evicted.append(set(e.evicted.tolist())),
               on_recall=recalled.append)
    fact = llm.tokenize(FACT.encode())
    fact2 = llm.tokenize(FACT2.encode(), add_bos=False)
    doomed.update(range(4, len(fact)), range(len(fact) + 1, len(fact) + 1 + len(fact2)))
    read_in_pieces(llm, [fact, " The", fact2] + [" " + PROSE] * 6)
    assert not doomed & set(llm.kv_cache.cached.tolist())     # both facts evicted
    doomed.clear()                                            # from now on the newest first
    llm.eval(llm.tokenize(ASK.encode(), add_bos=False))
    first = {i for a, b in recalled[-1].spans for i in range(a, b)}
    assert set(range(8, len(fact))) <= first
    evicted.clear()
    return llm, evicted, recalled, first


@pytest.mark.parametrize("room,from_fact", [("recalled", True), ("policy", False)])
def test_recalls_room_comes_from_what_earlier_prompts_recalled(default_model, room, from_fact):
    """Recall.room "recalled": the second question's recall makes its room from the first
    question's recalled (now released) sentence, not from the history the policy would
    choose (here the newest prose)."""
    llm, evicted, recalled, first = first_fact_read_back(default_model, recall.Recall(room=room))
    llm.eval(llm.tokenize(ASK2.encode(), add_bos=False))
    assert len(recalled) == 2
    second = {i for a, b in recalled[-1].spans for i in range(a, b)}
    assert second and not second & first
    room_made = evicted[0]        # the eviction that made room for the second recall
    assert bool(room_made & first) == from_fact
    # the first sentence is shorter than the second: all of it went, and the newest prose
    assert (first <= room_made) == from_fact
    assert positions_agree(llm)


@pytest.mark.parametrize("hold", [True, False])
def test_what_an_earlier_prompt_read_back_stays_while_a_prompt_asks_for_it(default_model, hold):
    """Recall.room "recalled" makes room from what earlier prompts read back; with hold_asked
    not from what the prompt asks about: a question for both facts reads the second back and
    keeps the first, which the question before read back (the 1024-cell chats lost a locker
    number's digits so: docs/recall.md, "Room"). Without it the room takes the first."""
    llm, evicted, recalled, first = first_fact_read_back(default_model,
                                                         recall.Recall(hold_asked=hold))
    llm.eval(llm.tokenize(b" What are the vault password and my locker number?", add_bos=False))
    second = {i for a, b in recalled[-1].spans for i in range(a, b)}
    assert len(recalled) == 2 and second and not second & first
    assert bool(first & set().union(*evicted)) != hold      # the password stayed, or not
    assert (first <= set(llm.kv_cache.cached.tolist())) == hold and positions_agree(llm)


def test_read_back_sentences_are_the_whole_cached_ones_recall_touched():
    ends = np.zeros(12, bool)
    ends[[3, 7]] = True
    cached = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10], np.int64)
    assert recall.read_back_sentences(ends, cached, np.array([1, 5, 10]), 40) == [(0, 4), (4, 8)]
    asked = recall.asked_again([["sea", "wind"]], [["vault", "password"], ["gull", "wind"]],
                               ["vault", "password"], {"vault", "password", "gull"},
                               recall.Recall())
    assert asked.tolist() == [0]
