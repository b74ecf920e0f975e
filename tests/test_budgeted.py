"""pyrcedge.Llama on the default model: invariants, equality with stock, policies, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pyrcedge
from pyrcedge import POLICIES, BudgetError, CacheView, Policy, PolicyError, scoring
from pyrcedge.cache.policies import prefill_window
from pyrcedge.native import binding as _native

REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURNS = [f"Tell me one short fact about the number {i + 1}." for i in range(20)]
PROSE = ("The lighthouse keeper wrote in his log every evening, noting the wind, the ships that "
         "passed and the colour of the sea. ")


def make(model: Path, **kw) -> pyrcedge.Llama:
    kw.setdefault("n_threads", 2)
    kw.setdefault("n_threads_batch", 2)
    kw.setdefault("flash_attn", True)
    kw.setdefault("seed", 0)
    return pyrcedge.Llama(str(model), **kw)


def chat(llm: pyrcedge.Llama, turns: list[str], max_tokens: int = 32, **kw) -> list[str]:
    messages = [SYSTEM]
    replies = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        r = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, **kw)
        messages.append(r["choices"][0]["message"])
        replies.append(r["choices"][0]["message"]["content"])
    return replies


def stock_chat(stock_python: Path, model: Path, n_ctx: int, turns: list[str], max_tokens: int,
               logprobs: bool = False) -> dict:
    job = {"model": str(model), "n_ctx": n_ctx, "turns": turns, "max_tokens": max_tokens,
           "logprobs": logprobs}
    done = subprocess.run([str(stock_python), str(REPO / "tests" / "stock_chat.py")],
                          input=json.dumps(job), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- budgets ------------------------------------------------------------------------------

def test_token_budget_allocates_exactly_that_many_cells(default_model):
    llm = make(default_model, kv_budget=300)
    st = llm.kv_stats()
    assert llm.n_ctx() == 300 == _native.kv_cells_total(llm.ctx) == st.budget_cells
    assert st.allocated_bytes == st.budget_bytes  # 300 cells, not 512 (llama.cpp pads to 256)


@pytest.mark.parametrize("budget,types", [("8MiB", {}), ("3MB", {"type_k": 8, "type_v": 8})])
def test_byte_budget_bounds_the_allocation(default_model, budget, types):
    llm = make(default_model, kv_budget=budget, **types)
    st = llm.kv_stats()
    limit = pyrcedge.budget.parse_bytes(budget)
    assert st.allocated_bytes <= limit
    # the largest number of cells that fits, up to ggml's tensor alignment allowance
    assert (st.budget_cells + 2) * (st.allocated_bytes // st.budget_cells) > limit - 2 * 30 * 256


def test_auto_budget_takes_a_quarter_of_available_memory_at_most(default_model):
    llm = make(default_model, kv_budget="auto")
    st = llm.kv_stats()
    assert 0 < st.allocated_bytes <= pyrcedge.budget.available_bytes() * 0.25 * 1.05
    assert st.budget_cells <= 8192  # the model's trained context caps it


# --- invariants ---------------------------------------------------------------------------

def test_cells_never_exceed_the_budget_and_prefill_is_chunked(default_model):
    events = []
    llm = make(default_model, kv_budget=64, on_evict=events.append)
    prompt = llm.tokenize((PROSE * 6).encode())
    assert len(prompt) > 2 * 64
    seen = []
    orig = llm._ctx.decode

    def decode(batch):
        orig(batch)
        seen.append(_native.kv_cells_used(llm.ctx))

    llm._ctx.decode = decode
    for i, _ in enumerate(llm.generate(prompt, temp=0.0)):
        if i == 100:
            break
    assert max(seen) <= 64 and len(seen) > 100
    st = llm.kv_stats()
    assert st.evictions == len(events) and st.evicted_tokens == sum(len(e.evicted) for e in events)
    assert st.history_tokens == len(prompt) + 100
    # prefill evicted between its chunks, before any token was generated
    assert events[0].history_tokens < len(prompt)


def test_an_evicted_token_is_never_attended_again(default_model):
    events = []
    llm = make(default_model, kv_budget=64, policy="h2o", sink_tokens=4, recent_tokens=8,
               eviction_batch=16, on_evict=events.append)
    tokens = llm.tokenize((PROSE * 3).encode())[:64]
    llm.eval(tokens)                       # fills the cache
    scoring.set_moments(llm.ctx, True)     # h2o reads a2sf alone: count the queries here
    scoring.reset_stats(llm.ctx, a2sf=False, moments=True)
    llm.eval(llm.tokenize(b" Then"))       # evicts 16 cells, takes one, attends once
    assert len(events) == 1 and len(events[0].evicted) == 16
    cells = scoring.used_cells(llm.ctx)
    assert len(cells) == 49
    assert not set(events[0].evicted.tolist()) & set(cells.pos.tolist())  # keep mode: pos = index
    free = np.setdiff1d(np.arange(64), cells.index)
    count = scoring.read_scores(llm.ctx, None, np.arange(64))[:, :, scoring.STATS.index("count")]
    # since the reset only the one new query ran
    assert (count[free] == 0).all(), "an evicted cell was attended"
    assert (count[cells.index] > 0).all()


def test_with_room_for_the_whole_chat_outputs_equal_stock(default_model, stock_python):
    turns = TURNS[:3]
    stock = stock_chat(stock_python, default_model, 1024, turns, 32, logprobs=True)
    llm = make(default_model, kv_budget=1024, logits_all=True)
    messages, replies, logprobs = [SYSTEM], [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        r = llm.create_chat_completion(messages=messages, max_tokens=32, temperature=0.0,
                                       logprobs=True, top_logprobs=1)
        messages.append(r["choices"][0]["message"])
        replies.append(r["choices"][0]["message"]["content"])
        logprobs.append([c["logprob"] for c in r["choices"][0]["logprobs"]["content"]])
    assert replies == stock["replies"]
    for ours, theirs in zip(logprobs, stock["logprobs"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert llm.kv_stats().evictions == 0


def test_eviction_is_deterministic(default_model):
    runs = []
    for _ in range(2):
        events = []
        llm = make(default_model, kv_budget=64, policy="a2sf", on_evict=events.append)
        text = llm((PROSE * 2), max_tokens=80, temperature=0.0)["choices"][0]["text"]
        runs.append((text, [e.evicted.tolist() for e in events]))
        llm.close()
    assert runs[0] == runs[1] and runs[0][1]


def test_twenty_turn_chat_in_256_tokens(default_model, stock_python):
    stock = stock_chat(stock_python, default_model, 256, TURNS, 48)
    assert stock["error"] and "exceed context window" in stock["error"]  # stock gives up early
    llm = make(default_model, kv_budget=256)
    replies = chat(llm, TURNS, max_tokens=48)
    assert len(replies) == 20 and all(r.strip() for r in replies)
    st = llm.kv_stats()
    assert st.cells_used <= 256 < st.history_tokens and st.evictions > 0


def test_full_policy_raises_the_stock_error(default_model):
    llm = make(default_model, kv_budget=256, policy="full")
    with pytest.raises(ValueError, match="exceed context window"):
        chat(llm, TURNS, max_tokens=48)


# --- policies -----------------------------------------------------------------------------

class KeepOddPositions(Policy):
    name = "odd"
    uses_statistics = False

    def score(self, view: CacheView):
        return (view.logical % 2).astype(float)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "full"] + ["class", "function"])
def test_every_policy_streams_past_the_budget(default_model, policy):
    spec = {"class": KeepOddPositions(), "function": lambda v: v.a2sf()}.get(policy, policy)
    events = []
    llm = make(default_model, kv_budget=48, policy=spec, recent_tokens=8, eviction_batch=8,
               on_evict=events.append)
    out = llm(PROSE, max_tokens=64, temperature=0.0)
    st = llm.kv_stats()
    assert out["usage"]["completion_tokens"] == 64 or out["choices"][0]["finish_reason"] == "stop"
    assert st.cells_used <= 48 and st.evictions > 0
    if policy == "class":  # the user's policy decided: even history indices went first
        assert (events[0].evicted % 2 == 0).all()


def test_window_keeps_sink_and_recent(default_model):
    llm = make(default_model, kv_budget=40, policy="window", sink_tokens=4, recent_tokens=8,
               eviction_batch=8)
    llm.eval(llm.tokenize((PROSE * 2).encode()))
    kept = llm.kv_stats().positions
    n = llm.n_tokens
    assert kept[:4].tolist() == [0, 1, 2, 3]
    assert kept[4:].tolist() == list(range(n - len(kept) + 4, n))  # a contiguous recent window


def test_pinned_span_survives(default_model):
    llm = make(default_model, kv_budget=48, policy="tova", pinned=[(10, 20)], eviction_batch=8)
    llm.eval(llm.tokenize((PROSE * 3).encode()))
    assert set(range(10, 20)) <= set(llm.kv_stats().positions.tolist())


def test_rcstat_evicts_adaptively(default_model):
    llm = make(default_model, kv_budget=512, policy="rcstat", rc_epsilon=0.5, eviction_batch=16)
    llm(PROSE * 2, max_tokens=96, temperature=0.0)
    st = llm.kv_stats()
    # well under budget, yet it evicted: the threshold, not the budget, decided
    assert st.evictions > 0 and st.cells_used < st.history_tokens < 512


def test_compact_positions_stay_below_the_budget(default_model):
    llm = make(default_model, kv_budget=48, positions="compact", recent_tokens=8, eviction_batch=8)
    llm(PROSE, max_tokens=100, temperature=0.0)
    cells = scoring.used_cells(llm.ctx)
    assert sorted(cells.pos.tolist()) == list(range(len(cells)))
    assert llm.kv_stats().history_tokens > 100


def test_streaming_and_prefix_reuse(default_model):
    llm = make(default_model, kv_budget=64)
    chunks = list(llm(PROSE, max_tokens=40, temperature=0.0, stream=True))
    assert len(chunks) > 1
    before = llm.kv_stats().evictions
    n = llm.n_tokens
    prompt = llm.detokenize(llm.input_ids[:n].tolist()).decode() + " And"
    llm(prompt, max_tokens=4, temperature=0.0)
    assert llm.kv_stats().history_tokens >= n  # the history was extended, not re-read
    assert llm.kv_stats().evictions >= before


def test_a_prompt_diverging_before_the_last_eviction_is_reread(default_model):
    a = make(default_model, kv_budget=48, eviction_batch=8, recent_tokens=8)
    a(PROSE * 2, max_tokens=8, temperature=0.0)
    other = "A different start. " + PROSE
    got = a(other, max_tokens=16, temperature=0.0)["choices"][0]["text"]
    fresh = make(default_model, kv_budget=48, eviction_batch=8, recent_tokens=8)
    want = fresh(other, max_tokens=16, temperature=0.0)["choices"][0]["text"]
    assert got == want


@pytest.mark.parametrize(("kw", "window", "moments"), [
    ({"policy": "a2sf"}, 6, False),      # A2SF at its default alpha 0.3 reads a2sf alone, from
                                         # each ubatch's last 6 queries (Policy.prefill_window)
    ({"policy": "h2o"}, 0, False),       # alpha 1 weighs every query alike
    ({"policy": "rcstat"}, 0, True),     # reads the logit moments of every query
    ({"policy": "a2sf", "track_attention": True}, 0, True),   # attribution reads them too
])
def test_the_kernels_keep_what_the_policy_reads(default_model, kw, window, moments):
    llm = make(default_model, kv_budget=128, **kw)
    try:
        assert scoring.set_query_window(llm.ctx, window) == window
        assert scoring.set_moments(llm.ctx, moments) is moments
        with llm._every_query():    # a probed read and attribution: every statistic, every query
            assert scoring.set_query_window(llm.ctx, 0) == 0
            assert scoring.set_moments(llm.ctx, True) is True
        assert scoring.set_moments(llm.ctx, moments) is moments    # restored
    finally:
        llm.close()


@pytest.mark.parametrize("alpha,flash", [(0.3, True), (0.9, True), (0.9, False)])
def test_a_prompt_that_fits_gives_statistics_from_its_end_only(default_model, monkeypatch, alpha,
                                                               flash):
    # an A2SF cache on the portable path (flash attention, or the graph ops' soft_max, which is
    # what Metal runs) reads a prompt that fits in chunks
    # of n_batch; the chunks with at least the prefill window (n: 64 at alpha 0.9, 6 at 0.3) still
    # to read after them only decay the scores (llama_rcedge_set_decay_only), which then differ
    # from those of a read giving every chunk's window statistics by at most what the window
    # leaves out: n_rep * alpha^n / (1 - alpha)
    from pyrcedge.llama import drop_in

    monkeypatch.setenv("LLAMA_RCEDGE_PORTABLE", "1")

    def read(decay_only: bool) -> tuple[list[bool], np.ndarray]:
        calls: list[bool] = []
        real = drop_in.kernel_stats.set_decay_only
        with monkeypatch.context() as m:
            m.setattr(drop_in.kernel_stats, "set_decay_only", lambda ctx, on: calls.append(on) or real(ctx, on))
            if not decay_only:
                m.setattr(drop_in.Llama, "_unread_chunk", lambda *a: False)
            llm = make(default_model, kv_budget=512, n_batch=64, policy="a2sf", alpha=alpha,
                       flash_attn=flash)
            try:
                assert scoring.scoring_portable(llm.ctx) and not scoring.scoring_device_fused(llm.ctx)
                tokens = llm.tokenize((PROSE * 16).encode())[:400]
                llm.eval(tokens)
                scores = np.stack([scoring.read_scores(llm.ctx, il)[..., 0] for il in range(scoring.n_layer(llm.ctx))])
            finally:
                llm.close()
        return calls, scores

    calls, got = read(True)
    assert calls == [True, False]      # on from the first chunk, off for the last two (16 and 0 after)
    calls, want = read(False)
    assert calls == []
    # (and float32 rounding: two threads add in whichever order rows come)
    window = prefill_window(alpha)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=3 * alpha ** window / (1 - alpha) + 1e-7)
    assert np.abs(want).max() > 0.1


@pytest.mark.parametrize(("n", "flash", "portable", "used"), [
    (250, True, True, False), (400, True, True, True), (400, False, True, True), (400, True, False, False)])
def test_reads_without_statistics_only_where_that_pays(default_model, monkeypatch, n, flash, portable, used):
    # decay only is used where it was measured to pay: the portable path (GPUs) with at least 4
    # chunks left out (n_batch 64, A2SF's default window of 6: 250 tokens leave out 3, 400 leave
    # out 6), with flash attention, or in soft_max contexts with the graph ops (here: the portable
    # path on the CPU; not ggml-cuda's fused kernels, which no test here has); not with the CPU
    # kernels
    from pyrcedge.llama import drop_in

    if portable:
        monkeypatch.setenv("LLAMA_RCEDGE_PORTABLE", "1")
    calls: list[bool] = []
    real = drop_in.kernel_stats.set_decay_only
    monkeypatch.setattr(drop_in.kernel_stats, "set_decay_only", lambda ctx, on: calls.append(on) or real(ctx, on))
    llm = make(default_model, kv_budget=512, n_batch=64, policy="a2sf", flash_attn=flash)
    try:
        assert scoring.scoring_portable(llm.ctx) is portable
        llm.eval(llm.tokenize((PROSE * 16).encode())[:n])
    finally:
        llm.close()
    assert (calls == [True, False]) if used else (calls == [])


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"kv_budget": 20}, "smaller than sink_tokens"),
    ({"kv_budget": 0}, "at least 1"),
    ({"kv_budget": "12 parsecs"}, "not a size"),
    ({"kv_budget": 1.5}, "kv_budget must be"),
    ({"kv_budget": "1KiB"}, "holds no KV cell"),
    ({"policy": "lru"}, "unknown policy"),
    ({"policy": "a2sf", "alpha": 1.5}, "alpha must be in"),
    ({"policy": "a2sf", "alpha": float("nan")}, "alpha must be in"),
    ({"policy": "window", "alpha": 0.5}, "takes no alpha"),
    ({"policy": "rcstat", "rc_epsilon": 2.0}, "rc_epsilon"),
    ({"recent_tokens": 0}, "recent_tokens"),
    ({"positions": "shifted"}, "positions must be"),
    ({"pinned": [(5, 2)]}, "pinned span"),
    ({"kv_budget": 64, "n_ctx": 64}, "not both"),
])
def test_bad_settings_are_refused(default_model, kw, match):
    with pytest.raises(BudgetError, match=match):
        make(default_model, **kw)


class Bad(Policy):
    name = "bad"
    uses_statistics = False

    def __init__(self, choose):
        self.choose = choose

    def select(self, view, n):
        return self.choose(view, n)


def _raise(view, n):
    raise KeyError("boom")


@pytest.mark.parametrize("choose,match", [
    (lambda v, n: np.array([10_000] * n), "holds no cached token"),
    (lambda v, n: v.cells[:n], "protected token"),                        # the sink
    (lambda v, n: np.repeat(v.cells[v.evictable][:1], n), "twice"),
    (lambda v, n: v.cells[v.evictable][: v.n_required - 1], "must go"),
    (lambda v, n: "cells", "one-dimensional array"),
    (_raise, "raised KeyError"),
])
def test_a_bad_user_policy_leaves_the_cache_as_it_was(default_model, choose, match):
    llm = make(default_model, kv_budget=40, policy=Bad(choose), recent_tokens=8, eviction_batch=8)
    tokens = llm.tokenize((PROSE * 2).encode())
    llm.eval(tokens[:40])
    before = (llm.n_tokens, llm.kv_stats().positions.copy(), _native.kv_cells_used(llm.ctx))
    with pytest.raises(PolicyError, match=match):
        llm.eval(tokens[40:44])
    assert (llm.n_tokens, _native.kv_cells_used(llm.ctx)) == (before[0], before[2])
    assert np.array_equal(llm.kv_stats().positions, before[1])
    llm.kv_cache.policy = POLICIES["window"]()   # the cache still works afterwards
    llm.eval(tokens[40:44])
    assert llm.n_tokens == 44


def test_pins_that_leave_nothing_to_evict_are_refused_cleanly(default_model):
    llm = make(default_model, kv_budget=40, pinned=[(0, 40)], recent_tokens=8, eviction_batch=8)
    tokens = llm.tokenize((PROSE * 2).encode())
    llm.eval(tokens[:40])
    with pytest.raises(BudgetError, match="may be evicted"):
        llm.eval(tokens[40:41])
    assert llm.n_tokens == 40 and _native.kv_cells_used(llm.ctx) == 40


# --- the command line ---------------------------------------------------------------------

def test_run_with_a_budget_reports_evictions(cli):
    done = cli("run", "--prompt", PROSE, "--max-tokens", "80", "--budget", "48", "--policy",
               "window", "--recent", "8", "--eviction-batch", "8", "--threads", "2", "--json")
    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    assert rec["policy"] == "window" and rec["kv_budget_cells"] == 48
    assert rec["generated_tokens"] == 80 and rec["kv_cells_used_max"] <= 48
    assert rec["evictions"] > 0 and rec["evicted_tokens"] >= rec["evictions"]
    assert rec["finish_reason"] == "length"


@pytest.mark.parametrize("args,match", [(("--budget", "10"), "smaller than sink_tokens"),
                                        (("--budget", "9 parsecs"), "not a size"),
                                        (("--budget", "64", "--pin", "x"), "START:END")])
def test_run_refuses_bad_budget_options(cli, args, match):
    done = cli("run", "--prompt", "Hi", "--max-tokens", "4", *args)
    assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr


def test_logprobs_while_evicting(default_model):
    llm = make(default_model, kv_budget=48, logits_all=True, recent_tokens=8, eviction_batch=8)
    r = llm(PROSE, max_tokens=60, temperature=0.0, logprobs=1)
    lp = r["choices"][0]["logprobs"]["token_logprobs"]
    assert len(lp) == r["usage"]["completion_tokens"] > 48 - 8
    assert all(np.isfinite(x) and x <= 0 for x in lp)
    assert llm.kv_stats().evictions > 0


def test_a_history_spelled_with_other_tokens_is_continued_not_reread(default_model):
    """A chat template re-tokenizes the last reply; where it differs from the sampled tokens
    before the last eviction, the history (as sampled) is kept and only the new text is read."""
    llm = make(default_model, kv_budget=64, policy="a2sf")
    try:
        head = b"The quick brown fox jumps over the lazy dog. " * 4
        odd = b" Hello world"
        tail = b" and then many more words arrive, so that the cache must evict again." * 2
        llm.eval(llm.tokenize(head))
        llm.eval([t for c in odd for t in llm.tokenize(bytes([c]), add_bos=False)])  # one per byte
        llm.eval(llm.tokenize(tail, add_bos=False))
        n, evictions = llm.n_tokens, llm.kv_stats().evictions
        history = llm.input_ids[:n].copy()
        prompt = llm.tokenize(head + odd + tail + b" Next")
        assert prompt[:n] != history.tolist()                 # the tokens differ, the text not
        assert llm.kv_cache.horizon > len(llm.tokenize(head))      # evicted after the divergence
        fed = []
        eval_ = llm.eval
        llm.eval = lambda tokens: (fed.append(list(tokens)), eval_(tokens))[1]
        out = llm.create_completion(prompt, max_tokens=2, temperature=0)
        assert fed[0] == llm.tokenize(b" Next", add_bos=False)
        assert (llm.input_ids[:n] == history).all() and llm.n_tokens > n   # kept as sampled
        assert out["usage"]["prompt_tokens"] == len(prompt)
        assert llm.kv_stats().evictions >= evictions
    finally:
        llm.close()
