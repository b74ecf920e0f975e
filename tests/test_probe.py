"""Question-probed reading (pyrcedge.features.probe) on the default model: the budget holds at
every decode (the probe's own cells included), the probe leaves no cell and no statistic
behind, user policies see its scores, bad settings are refused before anything loads."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest
from test_budgeted import PROSE, make

import pyrcedge
from pyrcedge import BudgetError, Policy, scoring
from pyrcedge.features import probe
from pyrcedge.native import binding as _native

QUESTION = " Question: what did the keeper note every evening? Answer:"


def watch_decodes(llm: pyrcedge.Llama) -> list[int]:
    """Cells in use after every decode the Llama makes, the probe's included."""
    seen: list[int] = []
    orig = llm._ctx.decode

    def decode(batch):
        orig(batch)
        seen.append(_native.kv_cells_used(llm.ctx))

    llm._ctx.decode = decode
    return seen


@pytest.mark.parametrize("positions", ["keep", "compact"])
def test_a_probed_read_never_exceeds_the_budget(default_model, positions):
    llm = make(default_model, kv_budget=96, probe=32, positions=positions)
    seen = watch_decodes(llm)
    prompt = llm.tokenize((PROSE * 12 + QUESTION).encode())
    assert len(prompt) > 3 * 96
    llm.eval(prompt)
    st = llm.kv_stats()
    assert max(seen) <= 96
    # some passes decode the probe, the others score against its kept queries
    assert st.probe_passes > 0 and st.probe_tokens % 32 == 0
    assert 0 < st.probe_tokens < 32 * st.probe_passes
    # the probe's cells are gone: the cache holds exactly the tokens the engine tracks
    assert _native.kv_cells_used(llm.ctx) == st.cells_used == len(st.positions)
    # the question (the prompt's tail) was read for real and is cached
    assert set(range(len(prompt) - 16, len(prompt))) <= set(st.positions.tolist())
    assert st.history_tokens == len(prompt)
    llm.eval(llm.tokenize(b" The wind.", add_bos=False))   # decoding goes on from there


def test_the_probe_restores_the_statistics_and_removes_its_cells(default_model):
    llm = make(default_model, kv_budget=128, policy="a2sf", alpha=0.9)
    llm.eval(llm.tokenize((PROSE * 2).encode()))
    cells, _ = llm.kv_cache.cached_cells()
    before = scoring.read_layers(llm.ctx, cells)
    used = _native.kv_cells_used(llm.ctx)
    question = llm.tokenize(QUESTION.encode(), add_bos=False)
    got, document = probe.probe_stats(llm.ctx, llm.kv_cache.mem, cells, question,
                                      llm.kv_cache.next_pos(), llm._batch, llm._ctx.decode, 0.9)
    np.testing.assert_array_equal(document, before)
    assert _native.kv_cells_used(llm.ctx) == used
    np.testing.assert_array_equal(scoring.read_layers(llm.ctx, cells), before)
    # the probe's statistics are its own: every probe query saw every cached cell once per
    # query head of the group
    group = llama_cpp.llama_model_n_head(llm.model) // scoring.n_head_kv(llm.ctx, 0)
    assert np.all(got[..., scoring.COUNT] == len(question) * group)
    scores = got[..., scoring.A2SF].astype(np.float64).sum(axis=(0, 2))
    assert scores.shape == (len(cells),) and np.all(scores >= 0) and scores.sum() > 0
    # per query head and layer each probe query's attention sums to 1 over what it sees (the
    # cached cells and the probe's own): the cached cells get at most that much
    bound = len(question) * scoring.n_layer(llm.ctx) * llama_cpp.llama_model_n_head(llm.model)
    assert scores.sum() <= bound * 1.001


def kept_and_decoded(llm, question, extra=b""):
    """(the kept queries' max logits moved to where the probe is decoded again, that decode's
    max statistic, the kept queries' max logits where they were kept) over the cells cached
    before the probe was kept; `extra` is read between keeping and decoding again."""
    cells, _ = llm.kv_cache.cached_cells()
    kv = llm.kv_cache
    first = kv.next_pos()
    probe.probe_stats(llm.ctx, kv.mem, cells, question, first, llm._batch, llm._ctx.decode, 0.9,
                      attention=False, keep=True)
    assert scoring.probe_n_kept(llm.ctx) == len(question)
    if extra:
        llm.eval(llm.tokenize(extra, add_bos=False))
    again = kv.next_pos()
    decoded, _ = probe.probe_stats(llm.ctx, kv.mem, cells, question, again, llm._batch,
                                   llm._ctx.decode, 0.9, attention=False)
    kept = scoring.probe_max(llm.ctx, cells, again - first)
    return kept, decoded[..., scoring.MAX], scoring.probe_max(llm.ctx, cells, 0)


def test_kept_probe_queries_give_what_decoding_the_probe_gives(default_model):
    llm = make(default_model, kv_budget=256, policy="a2sf", alpha=0.9)
    llm.eval(llm.tokenize((PROSE * 2).encode()))
    question = llm.tokenize(QUESTION.encode(), add_bos=False)
    kept, decoded, _ = kept_and_decoded(llm, question)
    # the same queries at the same positions: the logits the fused kernels took (F16 K)
    np.testing.assert_allclose(kept, decoded, atol=0.02 * np.abs(decoded).max())
    # queries moved by RoPE: the first layer's queries depend on their tokens and positions
    # only, so after more text is read they are exactly the decoded probe's, 23 positions on
    kept, decoded, unmoved = kept_and_decoded(llm, question,
                                              extra=b" The gulls were loud that night.")
    np.testing.assert_allclose(kept[0], decoded[0], atol=0.02 * np.abs(decoded[0]).max())
    assert np.abs(unmoved[0] - decoded[0]).max() > 10 * np.abs(kept[0] - decoded[0]).max()
    scoring.probe_capture(llm.ctx, -1)
    with pytest.raises(pyrcedge.ScoringError, match="no question probe's queries"):
        scoring.probe_max(llm.ctx, [0], 0)


def test_a_probed_read_reusing_kept_queries_decodes_the_probe_less(default_model):
    prompt = (PROSE * 12 + QUESTION).encode()
    every = make(default_model, kv_budget=96, probe=probe.Probe(tokens=32, reuse=0))
    reuse = make(default_model, kv_budget=96, probe=probe.Probe(tokens=32, reuse=3))
    seen = watch_decodes(reuse)
    for llm in (every, reuse):
        llm.eval(llm.tokenize(prompt))
    kept_room = make(default_model, kv_budget=96,
                     probe=probe.Probe(tokens=32, reuse=3, lend_room=False))
    seen_kept = watch_decodes(kept_room)
    kept_room.eval(kept_room.tokenize(prompt))
    a, b, c = every.kv_stats(), reuse.kv_stats(), kept_room.kv_stats()
    # a pass on kept queries needs no room for the probe: the chunk after it reads into that
    # room, so there are fewer passes (lend_room=False keeps the room and reads as decoding does)
    assert a.probe_passes == c.probe_passes > b.probe_passes > 4
    assert c.probe_tokens == 32 * -(-c.probe_passes // 4) and max(seen_kept) <= 96
    assert a.probe_tokens == 32 * a.probe_passes
    # one pass in four decodes the probe; the others score against its kept queries
    assert b.probe_tokens == 32 * -(-b.probe_passes // 4)
    assert max(seen) <= 96 and b.history_tokens == a.history_tokens
    assert scoring.scoring_enabled(reuse.ctx)        # a2sf keeps its statistics ...
    with pytest.raises(pyrcedge.ScoringError, match="no question probe's queries"):
        scoring.probe_max(reuse.ctx, [0], 0)         # ... but the read freed the queries


def test_a_quantised_k_cache_decodes_the_probe_every_pass_within_the_budget(default_model):
    # kept queries cannot be scored from a quantised K cache: known before the read, so every
    # pass keeps the probe's room and decodes it
    prompt = (PROSE * 12 + QUESTION).encode()
    llm = make(default_model, kv_budget=96, type_k=8, type_v=8, flash_attn=True,
               probe=probe.Probe(tokens=32, reuse=3))
    seen = watch_decodes(llm)
    llm.eval(llm.tokenize(prompt))
    st = llm.kv_stats()
    assert st.probe_passes > 4 and st.probe_tokens == 32 * st.probe_passes
    assert max(seen) <= 96


def test_a_probe_decode_stopped_early_gives_the_first_layers_exactly(default_model):
    # one thread: with two, the statistics of two whole decodes of a probe differ in the last
    # bits (the order in which threads add them up)
    llm = make(default_model, kv_budget=256, policy="a2sf", alpha=0.9, n_threads=1,
               n_threads_batch=1)
    llm.eval(llm.tokenize((PROSE * 2).encode()))
    cells, _ = llm.kv_cache.cached_cells()
    kv, question = llm.kv_cache, llm.tokenize(QUESTION.encode(), add_bos=False)
    n_layer, k = scoring.n_layer(llm.ctx), scoring.n_layer(llm.ctx) // 2

    def read(layers):
        got, _ = probe.probe_stats(llm.ctx, kv.mem, cells, question, kv.next_pos(), llm._batch,
                                   llm._ctx.decode, 0.9, attention=False, keep=True, layers=layers)
        return got, scoring.probe_max(llm.ctx, cells, 0, layers)

    full, full_max = read(0)
    used, before = _native.kv_cells_used(llm.ctx), scoring.read_layers(llm.ctx, cells)
    part, part_max = read(k)
    # the first k layers are the whole decode's, bit for bit; the later ones were not computed
    np.testing.assert_array_equal(part[:k], full[:k])
    np.testing.assert_array_equal(part_max[:k], full_max[:k])
    assert np.all(part[k:][..., scoring.COUNT] == 0) and np.all(full[k:][..., scoring.COUNT] > 0)
    assert np.all(part_max[k:] == -np.inf) and part_max.shape[0] == n_layer
    # and it left nothing behind: cells, statistics, and the decodes after run the whole model
    assert _native.kv_cells_used(llm.ctx) == used
    np.testing.assert_array_equal(scoring.read_layers(llm.ctx, cells), before)
    assert scoring.set_stop_layer(llm.ctx, 0) == 0
    again, _ = read(0)
    np.testing.assert_array_equal(again, full)


def test_decodes_stop_early_only_where_they_can(default_model):
    llm = make(default_model, kv_budget=128, policy="a2sf")
    assert scoring.set_stop_layer(llm.ctx, 3) == 0
    assert scoring.set_stop_layer(llm.ctx, 10_000) == 3     # the whole model again
    assert scoring.set_stop_layer(llm.ctx, 0) == 0
    portable = make(default_model, kv_budget=128, policy="window")
    scoring.enable_scoring(portable.ctx, 0.9, portable=True)
    with pytest.raises(pyrcedge.ScoringError, match="cannot stop early"):
        scoring.set_stop_layer(portable.ctx, 3)


def test_a_probe_scoring_the_first_layers_reads_as_if_it_decoded_them_all(default_model,
                                                                          monkeypatch):
    prompt = (PROSE * 12 + QUESTION).encode()
    settings = probe.Probe(tokens=32, layers=(0.25, 0.5), score="relmax_sd")
    one = {"n_threads": 1, "n_threads_batch": 1}    # the same sums, bit for bit
    stopped = make(default_model, kv_budget=96, probe=settings, **one)
    stopped.eval(stopped.tokenize(prompt))
    # the same read with every probe decode running the whole model (as on the portable path)
    monkeypatch.setattr(scoring, "set_stop_layer", lambda ctx, n: 0 if n == 0 else
                        (_ for _ in ()).throw(pyrcedge.ScoringError("no")))
    whole = make(default_model, kv_budget=96, probe=settings, **one)
    whole.eval(whole.tokenize(prompt))
    a, b = stopped.kv_stats(), whole.kv_stats()
    assert a.probe_passes == b.probe_passes > 4 and a.probe_tokens == b.probe_tokens
    np.testing.assert_array_equal(a.positions, b.positions)


def test_a_probe_turns_the_statistics_on_for_the_read_only(default_model):
    llm = make(default_model, kv_budget=96, policy="window", probe=32)
    assert not scoring.scoring_enabled(llm.ctx)
    llm.eval(llm.tokenize((PROSE * 10 + QUESTION).encode()))
    assert llm.kv_stats().probe_passes > 0 and llm.kv_stats().statistics_bytes == 0
    assert not scoring.scoring_enabled(llm.ctx)     # decoding runs without them


def test_probe_and_no_probe_agree_when_the_prompt_fits(default_model):
    a = make(default_model, kv_budget=256, probe="tail")
    b = make(default_model, kv_budget=256, probe=None)
    prompt = PROSE * 2 + QUESTION
    want = b(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert a(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"] == want
    assert a.kv_stats().probe_passes == 0


def test_full_policy_makes_the_probe_a_no_op(default_model):
    llm = make(default_model, kv_budget=64, policy="full", probe="tail")
    with pytest.raises(ValueError, match="exceed context window"):
        llm.eval(llm.tokenize((PROSE * 6).encode()))
    assert llm.kv_stats().probe_passes == 0


class SeesTheProbe(Policy):
    """A user policy: keeps what the probe attends to least (the opposite of the default), so
    the test can tell that its choice, not the engine's, was applied."""

    name = "contrary"
    uses_statistics = False

    def __init__(self) -> None:
        self.probes: list[np.ndarray] = []

    def score(self, view):
        if view.probe is None:
            return view.logical.astype(float)
        self.probes.append(view.probe.copy())
        return -view.probe


def test_a_user_policy_decides_with_the_probe_scores_in_its_view(default_model):
    policy = SeesTheProbe()
    events = []
    llm = make(default_model, kv_budget=96, policy=policy, probe=32, on_evict=events.append)
    llm.eval(llm.tokenize((PROSE * 10 + QUESTION).encode()))
    assert policy.probes and len(policy.probes) == llm.kv_stats().probe_passes
    assert all(p.shape[0] > 0 for p in policy.probes)


def test_a_catalyst_probe_reads_a_document_with_no_question(default_model):
    llm = make(default_model, kv_budget=96, probe="catalyst")
    llm.eval(llm.tokenize((PROSE * 10).encode()))
    st = llm.kv_stats()
    n = len(llm.tokenize(probe.CATALYST.encode(), add_bos=False, special=True))
    assert st.probe_passes > 0 and st.probe_tokens % n == 0
    assert 0 < st.probe_tokens < n * st.probe_passes
    assert st.history_tokens == len(llm.tokenize((PROSE * 10).encode()))


@pytest.mark.parametrize("spec,match", [
    (0, "probe tokens must be"),
    (True, "probe must be"),
    ("", "probe text is empty"),
    ("   ", "probe text is empty"),
    (3.5, "probe must be"),
    (90, "leaves no room to read"),
    ("lighthouse " * 200, "leaves no room to read"),
])
def test_bad_probes_are_refused_before_the_model_loads(default_model, spec, match):
    with pytest.raises(BudgetError, match=match):
        make(default_model, kv_budget=96, probe=spec)


@pytest.mark.parametrize("kw,match", [
    ({"pool_before": -1}, "pool_before"), ({"heads": "mean"}, "heads"),
    ({"refill": 1.0}, "refill"), ({"tokens": 0}, "tokens"), ({"score": "max"}, "score"),
    ({"reuse": -1}, "reuse"), ({"lend_room": 1}, "lend_room"),
    ({"layers": (0.5, 0.5)}, "layers"), ({"layers": 0.5}, "layers"),
    ({"layers": (-0.1, 1.0)}, "layers"), ({"layers": ("a", 1)}, "layers"),
])
def test_bad_probe_settings(kw, match):
    with pytest.raises(BudgetError, match=match):
        probe.Probe(**kw)


def test_the_cli_reads_with_a_probe_and_reports_it(cli):
    done = cli("run", "--prompt", PROSE * 10 + QUESTION, "--max-tokens", "8", "--budget", "96",
               "--probe", "32", "--threads", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["probe_passes"] > 0 and record["probe_tokens"] % 32 == 0
    assert 0 < record["probe_tokens"] < 32 * record["probe_passes"]
    off = cli("run", "--prompt", PROSE * 10 + QUESTION, "--max-tokens", "8", "--budget", "96",
              "--probe", "off", "--threads", "2", "--json")
    assert off.returncode == 0, off.stderr[-2000:]
    assert json.loads(off.stdout.strip().splitlines()[-1])["probe_passes"] == 0


def test_a_probe_sums_the_layers_it_is_set_to():
    rng = np.random.default_rng(1)
    got, doc = rng.normal(size=(2, 8, 5, 2, 5)).astype(np.float32)
    doc[..., scoring.COUNT] = 4.0
    doc[..., scoring.SUMSQ] = doc[..., scoring.SUM] ** 2 + 1.0   # a spread over the queries
    every = probe.Probe(score="relmax", layers=(0.0, 1.0))
    whole = probe.cell_scores(got, doc, every)
    per = [probe.cell_scores(got[i:i + 1], doc[i:i + 1], every) for i in range(8)]
    np.testing.assert_allclose(whole, np.sum(per, axis=0))
    mid = probe.cell_scores(got, doc, probe.Probe(score="relmax", layers=[0.25, 0.75]))
    np.testing.assert_allclose(mid, np.sum(per[2:6], axis=0))
    assert probe.scored_layers(24, (0.25, 0.75)) == (6, 18)
    assert probe.scored_layers(3, (0.9, 1.0)) == (2, 3)             # never empty
    # relmax_sd: where the document's logits spread wider, the same excess counts for less
    mean, var = doc[..., scoring.SUM] / 4.0, np.full(doc.shape[:3], 4.0, np.float32)
    var[:, 0] = 400.0
    doc[..., scoring.SUMSQ] = 4.0 * (mean ** 2 + var)
    got[..., scoring.MAX] = mean + 1.0                               # 1 above the mean logit
    sd = probe.cell_scores(got, doc, probe.Probe(score="relmax_sd"))
    assert np.argmin(sd) == 0 and np.ptp(sd[1:]) < 1e-6


def test_pooling_leans_back_over_history_indices():
    history = np.array([0, 1, 2, 10, 11, 30])
    scores = np.array([0.0, 5.0, 0.0, 0.0, 1.0, 0.0])
    # a token takes the best score from 3 indices before it to 1 after it
    got = probe.pooled(scores, history, before=3, after=1)
    np.testing.assert_array_equal(got, [5.0, 5.0, 5.0, 1.0, 1.0, 0.0])


def test_relmax_singles_out_what_the_probe_attends_to_more_than_the_document():
    rng = np.random.default_rng(0)
    doc = np.zeros((2, 6, 2, 5), np.float32)
    doc[..., scoring.COUNT] = 10
    doc[..., scoring.SUM] = 10 * rng.normal(size=(2, 6, 2))
    got = np.zeros_like(doc)
    got[..., scoring.MAX] = doc[..., scoring.SUM] / 10           # the probe = the document...
    got[1, 4, 0, scoring.MAX] += 5.0                             # ...but for cell 4, in one head
    s = probe.cell_scores(got, doc, probe.Probe(score="relmax"))
    assert int(np.argmax(s)) == 4


def test_a_long_message_into_a_full_cache_makes_room_for_the_probe_first(default_model):
    llm = make(default_model, kv_budget=96, probe=32)
    seen = watch_decodes(llm)
    llm.eval(llm.tokenize((PROSE * 10).encode()))                    # fills the cache
    assert llm.kv_stats().cells_used == 96 or llm.kv_budget_cells - llm.kv_stats().cells_used < 32
    llm.eval(llm.tokenize((PROSE * 10 + QUESTION).encode(), add_bos=False))   # the next turn
    assert max(seen) <= 96 and llm.kv_stats().probe_passes > 0


def test_pinned_tokens_that_leave_no_room_for_the_probe_read_without_it(default_model):
    llm = make(default_model, kv_budget=48, policy="tova", pinned=[(10, 20)], eviction_batch=8)
    llm.eval(llm.tokenize((PROSE * 3).encode()))
    assert set(range(10, 20)) <= set(llm.kv_stats().positions.tolist())
