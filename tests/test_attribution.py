"""RC attribution: span scoring from the statistics, the Llama API, the CLI and its HTML page."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import pyrcedge
from pyrcedge import rcstat
from pyrcedge.features.attribution import (
    AttributionError,
    char_to_token_spans,
    score_spans,
    sentence_spans,
)

CONTEXT = ("The museum opened in 1902 on the banks of the river. Its first director was Clara "
           "Hoffmann, a botanist from Basel. The west wing burned down in 1951 and was rebuilt in "
           "glass. Today the museum is best known for its collection of mechanical clocks.")
QUESTION = "Who was the first director of the museum?"


def _stats(logits: dict[tuple[int, int], list[float]], n_cells: int, heads: int) -> np.ndarray:
    """[1 layer, cell, head, 5] statistics of explicit logits per (cell, head)."""
    st = np.zeros((1, n_cells, heads, 5))
    st[..., 4] = -np.inf
    for (c, h), zs in logits.items():
        z = np.asarray(zs, float)
        st[0, c, h] = [0.0, len(z), z.sum(), (z * z).sum(), z.max()]
    return st


def test_span_scores_compose_and_rank_heads():
    rng = np.random.default_rng(0)
    # cells 0-3: prompt (spans [0,2) and [2,4)); cells 4-5: the answer. Head 1 looks at span A
    # strongly; head 0 looks at nothing in particular.
    logits = {}
    for c in range(6):
        for h in range(2):
            base = 3.0 if (h == 1 and c < 2) else 0.0
            logits[(c, h)] = list(base + rng.normal(0, 0.3, size=4))
    st = _stats(logits, 6, 2)
    logical = np.arange(6)
    spans = [(0, 2), (2, 4)]
    scores, heads = score_spans(st, logical, spans, 4, "rc", top_k=1, n_head_kv=2)
    assert heads == [(0, 1)] and scores[0] > scores[1]
    # the score is RC+ of the span's pooled logits against the answer's own, in that head
    pooled = rcstat.Moments.of(logits[(0, 1)] + logits[(1, 1)])
    own = rcstat.Moments.of(logits[(4, 1)] + logits[(5, 1)])
    assert scores[0] == pytest.approx(float(rcstat.rc_upper(pooled, own)), rel=1e-12)
    all_scores, all_heads = score_spans(st, logical, spans, 4, "rc-all", 8, 2)
    assert len(all_heads) == 2
    att, _ = score_spans(st, logical, spans, 4, "attention", 8, 2)
    assert att.shape == (2,)


def test_sentence_and_token_spans():
    assert [CONTEXT[s:e] for s, e in sentence_spans(CONTEXT)][1].startswith("Its first director")
    assert len(sentence_spans(CONTEXT)) == 4
    offsets = np.array([0, 3, 7, 12, 20])
    assert char_to_token_spans(offsets, [(4, 12), (0, 1)], base=10) == [(11, 13), (10, 11)]


@pytest.fixture(scope="module")
def explained(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=1024, policy="h2o", flash_attn=True,
                         n_threads=2, n_threads_batch=2)
    answer, result = llm.explain(CONTEXT, QUESTION, max_tokens=24)
    return llm, answer, result


def test_explain_scores_every_sentence(explained):
    llm, answer, result = explained
    assert answer.strip()
    assert [s.label for s in result.spans] == [CONTEXT[a:b] for a, b in sentence_spans(CONTEXT)]
    assert result.char_spans == sentence_spans(CONTEXT)
    assert all(np.isfinite(s.score) and s.cached == 1.0 for s in result.spans)
    assert len(result.heads) == 8 and not result.evicted
    # the same spans through attribute() after the completion, every method
    ranges = [(s.start, s.end) for s in result.spans]
    for method in ("rc", "rc-all", "attention"):
        again = llm.attribute(ranges, method=method)
        assert len(again.spans) == 4 and all(np.isfinite(s.score) for s in again.spans)
    tokens = llm.attribute("token")
    assert len(tokens.spans) == result.answer[0]


def test_attribution_covers_what_is_cached_and_names_what_was_evicted(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=64, policy="window", track_attention=True,
                         flash_attn=True, recent_tokens=16, eviction_batch=8)
    answer, result = llm.explain(CONTEXT * 2, QUESTION, max_tokens=8)
    assert result.evicted, "a context larger than the budget lost sentences"
    assert all(np.isnan(s.score) for s in result.evicted)
    assert any(np.isfinite(s.score) for s in result.spans)


@pytest.mark.parametrize("call,match", [
    (lambda llm: llm.attribute([(0, 10_000)]), "outside the prompt"),
    (lambda llm: llm.attribute([(5, 5)]), "outside the prompt"),
    (lambda llm: llm.attribute("paragraph"), "spans must be one of"),
    (lambda llm: llm.attribute(method="vibes"), "method must be"),
    (lambda llm: llm.explain("   ", QUESTION), "context is empty"),
    (lambda llm: llm.explain(CONTEXT, QUESTION, spans=[(0, 10_000)]), "outside the context"),
])
def test_bad_attribution_requests(explained, call, match):
    llm = explained[0]
    with pytest.raises(AttributionError, match=match):
        call(llm)


def test_attribution_needs_an_answer_and_statistics(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=256, policy="window")
    with pytest.raises(AttributionError, match="statistics"):
        llm.attribute()
    llm2 = pyrcedge.Llama(str(default_model), kv_budget=256)
    with pytest.raises(AttributionError, match="generate an answer first"):
        llm2.attribute()


def test_cli_explain_html_renders_the_top_span_highlighted(cli, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/test.sh installs it)"
    ctx = tmp_path / "ctx.txt"
    ctx.write_text(CONTEXT)
    page = tmp_path / "out.html"
    done = cli("explain", "--context-file", str(ctx), "--question", QUESTION, "--max-tokens", "16",
               "--threads", "2", "--html", str(page), "--json")
    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    best = max(range(len(rec["spans"])), key=lambda k: rec["spans"][k]["score"])
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    assert f'data-top-span="s{best}"' in dom.stdout
    # the script ran in the browser and found the top span drawn with its outline
    assert 'data-top-rendered="solid rgb(200, 30, 30)' in dom.stdout
    assert f'id="s{best}" class="span top"' in dom.stdout
