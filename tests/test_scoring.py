"""Fused attention statistics against an independent float64 reference (tests/attn_reference.py),
on the default model, through every kernel path."""

from __future__ import annotations

import math

import attn_reference as ar
import llama_cpp
import numpy as np
import pytest

from pyrcedge import ScoringError, ScoringInputError, scoring

F16, Q8_0 = 1, 8
N_HEAD_KV = 3  # SmolLM2-135M
TEXT = (b"It is a truth universally acknowledged, that a single man in possession of a good "
        b"fortune, must be in want of a wife. However little known the feelings or views of such "
        b"a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
        b"minds of the surrounding families, that he is considered the rightful property of some "
        b"one or other of their daughters. ") * 4

# path: (tokens, batch, prefill, flash) -- which kernel path each exercises
PATHS = {
    "softmax-prefill": (40, 512, None, False),
    "softmax-decode": (263, 512, 260, False),
    "fa-one_chunk": (40, 512, None, True),  # fewer than 64 queries
    "fa-tiled": (200, 128, None, True),  # 64+ queries, F16 K
    "fa-split_kv": (263, 512, 260, True),  # one query, n_kv >= 512, F16 K
}


_QUIET = llama_cpp.llama_log_callback(lambda level, text, user: None)


@pytest.fixture(scope="module", autouse=True)
def quiet_llama():
    llama_cpp.llama_log_set(_QUIET, None)  # contexts made here would log every graph


@pytest.fixture(scope="module")
def tokens(default_model) -> list[int]:
    vocab = llama_cpp.llama_model_get_vocab(ar.model(str(default_model)))
    buf = (llama_cpp.llama_token * 1024)()
    n = llama_cpp.llama_tokenize(vocab, TEXT, len(TEXT), buf, 1024, True, False)
    assert n > 263
    return list(buf[:n])


def assert_matches_reference(run: ar.Run, alpha: float, rtol: float = 1e-4, window: int = 0) -> None:
    ref = ar.reference_stats(run, alpha, N_HEAD_KV, window)
    got = run.scores.astype(np.float64)
    assert got.shape == ref.shape
    seen = ref[..., 1] > 0
    assert seen.any()
    np.testing.assert_array_equal(got[..., 1], ref[..., 1])  # counts are exact
    # scale of the logits in each cell: sums and maxima are compared against it
    rms = np.sqrt(ref[..., 3] / np.maximum(ref[..., 1], 1))
    for k, name, scale in ((0, "a2sf", np.abs(ref[..., 0])), (2, "sum", np.sqrt(ref[..., 3] * ref[..., 1])),
                           (3, "sumsq", ref[..., 3]), (4, "max", np.maximum(np.abs(ref[..., 4]), rms))):
        err = np.abs(got[..., k] - ref[..., k])[seen]
        tol = rtol * np.maximum(scale[seen], 1e-6)
        worst = np.argmax(err - tol)
        assert np.all(err <= tol), f"{name}: |diff| {err[worst]:.3g} > {tol[worst]:.3g}"
    np.testing.assert_array_equal(got[~seen][..., 4], -np.inf)


def _run(default_model, tokens, path, *, threads, type_k, alpha, moments=True):
    n, batch, prefill, flash = PATHS[path]
    return ar.run(str(default_model), tokens[:n], flash=flash, threads=threads, batch=batch,
                  prefill=prefill, type_k=type_k, alpha=alpha, capture=True, moments=moments)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_k", [F16, Q8_0], ids=["f16", "q8_0"])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_paths_threads_and_cache_types(default_model, tokens, path, type_k, threads):
    run = _run(default_model, tokens, path, threads=threads, type_k=type_k, alpha=0.9)
    assert_matches_reference(run, 0.9)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_alpha(default_model, tokens, path, alpha):
    run = _run(default_model, tokens, path, threads=2, type_k=F16, alpha=alpha)
    assert_matches_reference(run, alpha)


@pytest.mark.parametrize(("path", "window"), [("softmax-prefill", 16), ("fa-one_chunk", 16),
                                              ("fa-tiled", 20), ("fa-tiled", 70)])
@pytest.mark.parametrize("threads", [1, 2])
def test_query_window(default_model, tokens, monkeypatch, path, window, threads):
    # the fused kernels honour llama_rcedge_set_query_window (patch 0012): each ubatch's last
    # `window` queries give statistics, the decay counts them all (fa-tiled: ubatches of 128 and
    # 72 queries in tiles of 64, so windows of 20 and 70 skip whole tiles and split others);
    # the logits stay those of scoring off
    monkeypatch.setenv("LLAMA_RCEDGE_QUERY_WINDOW", str(window))
    run = _run(default_model, tokens, path, threads=threads, type_k=F16, alpha=0.9)
    assert_matches_reference(run, 0.9, window=window)
    monkeypatch.delenv("LLAMA_RCEDGE_QUERY_WINDOW")
    n, batch, prefill, flash = PATHS[path]
    off = ar.run(str(default_model), tokens[:n], flash=flash, threads=threads, batch=batch,
                 prefill=prefill, type_k=F16, alpha=None)
    np.testing.assert_array_equal(run.logits, off.logits)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_a2sf_alone(default_model, tokens, path, threads):
    # llama_rcedge_set_moments(ctx, 0): the kernels get a view of the a2sf row alone and update
    # nothing else. a2sf is what the run keeping all five computes (bit for bit on one thread; on
    # two, threads take rows in whichever order they come, so the slabs' sums differ in the
    # last bits from run to run either way) and matches the float64 reference; no cell is
    # counted (the moments are never written); the logits are unchanged.
    full = _run(default_model, tokens, path, threads=threads, type_k=F16, alpha=0.9)
    alone = _run(default_model, tokens, path, threads=threads, type_k=F16, alpha=0.9, moments=False)
    if threads == 1:
        np.testing.assert_array_equal(alone.scores[..., 0], full.scores[..., 0])
    else:
        np.testing.assert_allclose(alone.scores[..., 0], full.scores[..., 0], rtol=1e-5, atol=1e-7)
    assert (alone.scores[..., 1] == 0).all() and (full.scores[..., 1] > 0).any()
    np.testing.assert_array_equal(alone.scores[..., 4], -np.inf)
    np.testing.assert_array_equal(alone.logits, full.logits)
    ref = ar.reference_stats(alone, 0.9, N_HEAD_KV)
    seen = ref[..., 1] > 0
    err = np.abs(alone.scores[..., 0].astype(np.float64) - ref[..., 0])[seen]
    assert np.all(err <= 1e-4 * np.maximum(np.abs(ref[..., 0][seen]), 1e-6))


@pytest.mark.parametrize(("path", "batch", "calls"), [
    ("softmax-prefill", 16, 2), ("fa-one_chunk", 16, 2), ("fa-tiled", 64, 2), ("fa-split_kv", 512, 2)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("moments", [True, False])
def test_decay_only(default_model, tokens, path, batch, calls, threads, moments):
    # llama_rcedge_set_decay_only: the first `calls` decode calls give no statistics and only
    # decay a2sf (fa-split_kv: the 260-token prefill and the first decode step), the later ones
    # add theirs as usual: the float64 reference with those calls' queries left out; the logits
    # are those of scoring off
    n, _, prefill, flash = PATHS[path]
    run = ar.run(str(default_model), tokens[:n], flash=flash, threads=threads, batch=batch, prefill=prefill,
                 type_k=F16, alpha=0.9, capture=True, moments=moments, decay_only=calls)
    ref = ar.reference_stats(run, 0.9, N_HEAD_KV)
    seen = ref[..., 1] > 0
    err = np.abs(run.scores[..., 0].astype(np.float64) - ref[..., 0])[seen]
    assert seen.any() and np.all(err <= 1e-4 * np.maximum(np.abs(ref[..., 0][seen]), 1e-6))
    assert (run.scores[..., 1] > 0).sum() == (seen.sum() if moments else 0)
    off = ar.run(str(default_model), tokens[:n], flash=flash, threads=threads, batch=batch,
                 prefill=prefill, type_k=F16, alpha=None)
    np.testing.assert_array_equal(run.logits, off.logits)


def test_decay_only_returns_the_previous_setting(ctx):
    scoring.enable_scoring(ctx, 0.5)
    assert scoring.set_decay_only(ctx, True) is False
    assert scoring.set_decay_only(ctx, True) is True
    assert scoring.set_decay_only(ctx, False) is True


def test_set_moments_returns_the_previous_setting(ctx):
    scoring.enable_scoring(ctx, 0.5)
    assert scoring.set_moments(ctx, False) is True    # all five by default
    assert scoring.set_moments(ctx, False) is False
    assert scoring.set_moments(ctx, True) is False


@pytest.mark.parametrize("path", ["fa-one_chunk", "fa-split_kv"])
def test_quantised_v_cache(default_model, tokens, path):
    # a quantised V cache needs flash attention; with a Q8_0 K too, every step takes one_chunk
    n, batch, prefill, _ = PATHS[path]
    run = ar.run(str(default_model), tokens[:n], flash=True, threads=2, batch=batch, prefill=prefill,
                 type_k=Q8_0, type_v=Q8_0, alpha=0.9, capture=True)
    assert_matches_reference(run, 0.9)


def test_one_batch_equals_token_by_token(default_model, tokens):
    # flash attention computes a batch and single steps alike, so everything must agree
    whole = ar.run(str(default_model), tokens[:48], flash=True, batch=48, alpha=0.7)
    steps = ar.run(str(default_model), tokens[:48], flash=True, batch=48, prefill=0, alpha=0.7)
    np.testing.assert_array_equal(whole.logits, steps.logits)
    np.testing.assert_array_equal(whole.cells.index, steps.cells.index)
    a, b = whole.scores.astype(np.float64), steps.scores.astype(np.float64)
    np.testing.assert_array_equal(a[..., 1], b[..., 1])
    for k in (0, 2, 3, 4):
        np.testing.assert_allclose(a[..., k], b[..., k], rtol=1e-4, atol=1e-4 * np.abs(b[..., k]).max())


def test_one_batch_equals_token_by_token_without_flash(default_model, tokens):
    # Without flash attention stock llama.cpp itself computes a batch and single steps
    # differently (the final logits differ by about 3%), so from layer 1 on the inputs to the
    # scores differ. The batch recursion is checked where inputs agree, in layer 0, and each run
    # against the float64 reference of its own logits.
    whole = ar.run(str(default_model), tokens[:48], flash=False, batch=48, alpha=0.7, capture=True)
    steps = ar.run(str(default_model), tokens[:48], flash=False, batch=48, prefill=0, alpha=0.7, capture=True)
    np.testing.assert_allclose(whole.scores[0], steps.scores[0], rtol=1e-4, atol=1e-5)
    assert_matches_reference(whole, 0.7)
    assert_matches_reference(steps, 0.7)


# --- the API on a context -------------------------------------------------------------------


@pytest.fixture
def ctx(default_model):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 256
    params.n_threads = params.n_threads_batch = 2
    c = llama_cpp.llama_init_from_model(ar.model(str(default_model)), params)
    yield c
    llama_cpp.llama_free(c)


def _decode(ctx, toks):
    arr = (llama_cpp.llama_token * len(toks))(*toks)
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(toks))) == 0


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf, "0.5"])
def test_bad_alpha(ctx, alpha):
    with pytest.raises(ScoringInputError, match="alpha"):
        scoring.enable_scoring(ctx, alpha)
    assert not scoring.scoring_enabled(ctx)


def test_reading_while_off(ctx, tokens):
    _decode(ctx, tokens[:8])
    with pytest.raises(ScoringError, match="scoring is off"):
        scoring.read_scores(ctx, 0)
    with pytest.raises(ScoringError, match="scoring is off"):
        scoring.set_alpha(ctx, 0.5)
    with pytest.raises(ScoringError, match="scoring is off"):
        scoring.reset_stats(ctx)
    assert len(scoring.used_cells(ctx)) == 8  # cells can be listed without scoring


def test_layer_and_cell_out_of_range(ctx, tokens):
    scoring.enable_scoring(ctx, 1.0)
    _decode(ctx, tokens[:8])
    for layer in (-2, 30, 10_000):
        with pytest.raises(ScoringInputError, match="layer"):
            scoring.read_scores(ctx, layer)
    with pytest.raises(ScoringInputError, match="cell"):
        scoring.read_scores(ctx, 0, cells=[0, 256])
    with pytest.raises(ScoringInputError, match="layer"):
        scoring.n_head_kv(ctx, 99)


def test_enable_disable_reset_and_cell_reuse(ctx, tokens):
    scoring.enable_scoring(ctx, 1.0)
    assert scoring.scoring_enabled(ctx)
    _decode(ctx, tokens[:10])
    s = scoring.read_scores(ctx)  # all layers
    assert s.shape == (10, N_HEAD_KV, 5)
    # under the causal mask, cell i is seen by the 10 - i queries from position i on, 3 heads each, 30 layers
    np.testing.assert_array_equal(s[:, 0, 1], 30 * 3 * (10 - np.arange(10)))
    # alpha = 1 accumulates probabilities: over a layer, each query spreads 1 per query head
    per_layer = scoring.read_scores(ctx, 5)
    np.testing.assert_allclose(per_layer[:, :, 0].sum(), 10 * 9, rtol=1e-5)

    scoring.reset_stats(ctx, a2sf=False)
    s = scoring.read_scores(ctx, 0)
    assert np.all(s[..., 1] == 0) and np.all(s[..., 4] == -np.inf) and np.all(s[..., 0] > 0)

    # a cell freed and written again starts from nothing
    mem = llama_cpp.llama_get_memory(ctx)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 9, -1)
    scoring.reset_stats(ctx)
    _decode(ctx, tokens[9:10])
    cells = scoring.used_cells(ctx)
    np.testing.assert_array_equal(cells.pos, np.arange(10))
    s = scoring.read_scores(ctx, 0)
    assert np.all(s[:, :, 1] == 3)  # only the one new query has looked, with 3 heads per KV head

    scoring.disable_scoring(ctx)
    assert not scoring.scoring_enabled(ctx)
    with pytest.raises(ScoringError):
        scoring.read_scores(ctx, 0)


# --- scoring reads, never changes, what the model computes ----------------------------------


def _probe(python, model, flash, mode):
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent / "logits_probe.py"
    done = subprocess.run([str(python), str(script), str(model), flash, mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["sha256"]


@pytest.mark.parametrize("flash", ["on", "off"])
def test_logits_bit_identical_to_stock(stock_python, default_model, flash):
    import sys

    stock = _probe(stock_python, default_model, flash, "never")
    assert _probe(sys.executable, default_model, flash, "never") == stock  # scoring never enabled
    assert _probe(sys.executable, default_model, flash, "toggled") == stock  # enabled, then off
    assert _probe(sys.executable, default_model, flash, "on") == stock  # scoring only reads
