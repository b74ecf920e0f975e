"""The portable scoring path (standard ggml ops in the graph, what GPU backends run; docs/gpu.md),
forced on the CPU, against the fused CPU kernels and the float64 reference, on the default model."""

from __future__ import annotations

import os
import subprocess
import sys

import attn_reference as ar
import llama_cpp
import numpy as np
import pytest
from test_scoring import TEXT, assert_matches_reference

from pyrcedge import scoring

_QUIET = llama_cpp.llama_log_callback(lambda level, text, user: None)

# name: (tokens, batch, prefill) -- prefill in ubatches of `batch`, the rest decoded one at a time
CASES = {
    "prefill": (40, 512, None),
    "prefill-ubatches": (200, 64, None),  # four ubatches: the decay and the in-graph cell clearing across them
    "prefill+decode": (263, 512, 256),  # decode steps past 256 cells (n_kv 512 with padding)
}


@pytest.fixture(scope="module", autouse=True)
def quiet_llama():
    llama_cpp.llama_log_set(_QUIET, None)


@pytest.fixture(scope="module")
def tokens(default_model) -> list[int]:
    vocab = llama_cpp.llama_model_get_vocab(ar.model(str(default_model)))
    buf = (llama_cpp.llama_token * 1024)()
    n = llama_cpp.llama_tokenize(vocab, TEXT, len(TEXT), buf, 1024, True, False)
    return list(buf[:n])


def assert_same_stats(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """got against want ([layer, cell, kv head, stat]), to rtol of each statistic's scale."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    assert got.shape == want.shape
    seen = want[..., 1] > 0
    assert seen.any()
    np.testing.assert_array_equal(got[..., 1], want[..., 1])  # counts are exact
    rms = np.sqrt(want[..., 3] / np.maximum(want[..., 1], 1))
    for k, name, scale in ((0, "a2sf", np.abs(want[..., 0])), (2, "sum", np.sqrt(want[..., 3] * want[..., 1])),
                           (3, "sumsq", want[..., 3]), (4, "max", np.maximum(np.abs(want[..., 4]), rms))):
        err = np.abs(got[..., k] - want[..., k])[seen]
        tol = rtol * np.maximum(scale[seen], 1e-6)
        worst = np.argmax(err - tol)
        assert np.all(err <= tol), f"{name}: |diff| {err[worst]:.3g} > {tol[worst]:.3g}"
    # no query saw the cell: max is -inf on both paths (the portable one keeps a finite sentinel inside)
    np.testing.assert_array_equal(got[~seen][..., 4], -np.inf)
    np.testing.assert_array_equal(want[~seen][..., 4], -np.inf)


def _run(model, tokens, case, *, portable, alpha, flash=False, **kw):
    n, batch, prefill = CASES[case]
    return ar.run(str(model), tokens[:n], flash=flash, threads=2, batch=batch, prefill=prefill,
                  alpha=alpha, portable=portable, **kw)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_portable_matches_fused(default_model, tokens, case, alpha):
    fused = _run(default_model, tokens, case, portable=False, alpha=alpha)
    portable = _run(default_model, tokens, case, portable=True, alpha=alpha)
    np.testing.assert_array_equal(portable.cells.index, fused.cells.index)
    np.testing.assert_array_equal(portable.logits, fused.logits)  # the same soft_max attention
    assert_same_stats(portable.scores, fused.scores)


# flash-attention runs in ubatches below 64 queries: from 64 on, the CPU's tiled flash kernel
# multiplies Q in F32, while q.k by mul_mat (the soft_max path's, and the portable path's beside
# flash attention) rounds Q to F16 first; the two differ by that rounding (docs/gpu.md)
FLASH_CASES = {"prefill": (40, 512, None), "prefill-ubatches+decode": (110, 48, 96)}


def _run_flash(model, tokens, case, **kw):
    n, batch, prefill = FLASH_CASES[case]
    return ar.run(str(model), tokens[:n], flash=True, threads=2, batch=batch, prefill=prefill, **kw)


@pytest.mark.parametrize("case", FLASH_CASES)
def test_portable_with_flash_attention(default_model, tokens, case):
    # a flash-attention context (F16 mask, V stored by rows) keeps flash attention for the output
    # and computes the statistics from a q.k and soft_max of their own: the logits are flash
    # attention's, the statistics the fused flash-attention kernels'
    fused = _run_flash(default_model, tokens, case, portable=False, alpha=0.9)
    portable = _run_flash(default_model, tokens, case, portable=True, alpha=0.9)
    np.testing.assert_array_equal(portable.logits, fused.logits)
    assert_same_stats(portable.scores, fused.scores)


@pytest.mark.parametrize("flash", [False, True])
def test_query_window(default_model, tokens, flash, monkeypatch):
    # statistics from the last queries of each ubatch only (llama_rcedge_set_query_window): a
    # window as long as the ubatch is exact; with alpha 0 only the last query carries A2SF weight,
    # so a window of one query keeps a2sf exact and counts each cell once per ubatch that sees it
    def go(portable):
        return ar.run(str(default_model), tokens[:200], flash=flash, threads=2, batch=50, alpha=0.0, portable=portable)

    fused = go(False)
    monkeypatch.setenv("LLAMA_RCEDGE_QUERY_WINDOW", "50")
    assert_same_stats(go(True).scores, fused.scores)
    monkeypatch.setenv("LLAMA_RCEDGE_QUERY_WINDOW", "1")
    last = go(True)
    np.testing.assert_array_equal(last.logits, fused.logits)
    got, want = last.scores.astype(np.float64), fused.scores.astype(np.float64)
    seen = want[..., 1] > 0
    np.testing.assert_allclose(got[..., 0][seen], want[..., 0][seen], rtol=1e-4, atol=1e-6)
    n_rep = 3  # 9 query heads over 3 KV heads
    cells = np.arange(got.shape[1])
    ubatch_ends = np.array([49, 99, 149, 199])  # each ubatch's last query sees every cell up to it
    expected = n_rep * (ubatch_ends[None, :] >= cells[:, None]).sum(axis=1)
    np.testing.assert_array_equal(got[..., 1], np.broadcast_to(expected[None, :, None], got.shape[:3]))


@pytest.mark.parametrize("flash", [False, True])
@pytest.mark.parametrize("prefill", [None, 150])
def test_decay_only(default_model, tokens, flash, prefill):
    # llama_rcedge_set_decay_only on the portable path: the graph multiplies a2sf by alpha^n and
    # computes nothing else, as the fused kernels skip every row; the first two calls (two
    # ubatches of 50, or of a prefill then a decode step) that way, the rest as usual
    def go(portable):
        return ar.run(str(default_model), tokens[:200 if prefill is None else 153], flash=flash, threads=2,
                      batch=50 if prefill is None else 512, prefill=prefill, alpha=0.9, portable=portable,
                      decay_only=2)

    fused, portable = go(False), go(True)
    assert_same_stats(portable.scores, fused.scores)
    np.testing.assert_array_equal(portable.logits, fused.logits)
    # counted: the queries of the calls after the first two (n_rep = 3 query heads per KV head)
    counted = np.arange(100, 200) if prefill is None else np.array([151, 152])
    cells = np.arange(fused.scores.shape[1])
    expected = 3 * (counted[None, :] >= cells[:, None]).sum(axis=1)
    np.testing.assert_array_equal(fused.scores[..., 1], np.broadcast_to(expected[None, :, None], fused.scores.shape[:3]))


@pytest.mark.parametrize("case", ["prefill-ubatches", "prefill+decode"])
def test_portable_matches_reference(default_model, tokens, case):
    n, batch, prefill = CASES[case]
    run = ar.run(str(default_model), tokens[:n], flash=False, threads=2, batch=batch, prefill=prefill,
                 alpha=0.7, portable=True, capture=True)
    assert_matches_reference(run, 0.7)


def test_cells_reused_after_eviction(default_model, tokens):
    # tokens written into freed cells start from cleared statistics: on the portable path the
    # graph clears them (set_rows), on the fused path the host does
    kw = dict(evict=(10, 30, tokens[100:108]))
    fused = _run(default_model, tokens, "prefill-ubatches", portable=False, alpha=0.5, **kw)
    portable = _run(default_model, tokens, "prefill-ubatches", portable=True, alpha=0.5, **kw)
    np.testing.assert_array_equal(portable.cells.index, fused.cells.index)
    assert set(range(10, 30)) & set(fused.cells.index.tolist())  # freed cells were reused
    assert_same_stats(portable.scores, fused.scores)


def test_backend_chooses_the_path(default_model):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 256
    ctx = llama_cpp.llama_init_from_model(ar.model(str(default_model)), params)
    try:
        scoring.enable_scoring(ctx, 0.5)
        assert scoring.scoring_portable(ctx) is False  # host KV cache: fused CPU kernels
        scoring.disable_scoring(ctx)
        scoring.enable_scoring(ctx, 0.5, portable=True)
        assert scoring.scoring_portable(ctx) is True
        assert scoring.set_query_window(ctx, 64) == 0  # every query by default
        assert scoring.set_query_window(ctx, -1) == 64  # a negative window counts as 0
        assert scoring.set_query_window(ctx, 0) == 0
        scoring.disable_scoring(ctx)
        with pytest.raises(scoring.ScoringError):
            scoring.scoring_portable(ctx)
    finally:
        llama_cpp.llama_free(ctx)


def test_environment_variable_forces_portable(default_model):
    code = (
        "import llama_cpp; from pyrcedge import scoring; import sys\n"
        f"m = llama_cpp.llama_model_load_from_file({str(default_model)!r}.encode(), llama_cpp.llama_model_default_params())\n"
        "p = llama_cpp.llama_context_default_params(); p.n_ctx = 256\n"
        "c = llama_cpp.llama_init_from_model(m, p); scoring.enable_scoring(c, 1.0)\n"
        "print(scoring.scoring_portable(c))\n"
    )
    env = {**os.environ, "LLAMA_RCEDGE_PORTABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
