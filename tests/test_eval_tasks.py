"""pyrcedge eval qa / eval niah and bench speed: scoring functions, data, and small real runs on
the default model (contexts longer than the budget)."""

from __future__ import annotations

import json

import pytest

from pyrcedge.evaluation.qa import (
    exact_match,
    f1_score,
    hotpotqa_examples,
    normalize_answer,
    squad_examples,
)


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the cat", ["A cat", "dog"]) == 1.0
    assert exact_match("cat sat", ["cat"]) == 0.0
    assert f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)  # P 1, R 2/3
    assert f1_score("dog", ["cat", "dog house"]) == pytest.approx(2 / 3)
    assert f1_score("", ["cat"]) == 0.0


def test_qa_examples_hold_their_answers_in_long_contexts():
    for ex in squad_examples(5, 2000, seed=1):
        assert any(a in ex.context for a in ex.answers)
        assert len(ex.context) >= 2000 or ex.context.count("\n\n") > 0
    hp = hotpotqa_examples(3, seed=1)
    assert len(hp) == 3 and all(ex.context.count("\n\n") >= 1 and ex.answers[0] for ex in hp)


def test_eval_qa_reads_contexts_longer_than_the_budget(cli):
    done = cli("eval", "qa", "--n", "1", "--context-chars", "1200", "--budget", "25%",
               "--policy", "a2sf", "--max-tokens", "8", "--threads", "1", "--json", "--quiet",
               "--examples", "--question-first")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["n"] == 1 and 0 <= r["em"] <= r["f1"] <= 1 and r["question_first"] is True
    ex = r["examples"][0]
    assert ex["budget_cells"] == ex["kv_cells_allocated"] < ex["context_tokens"]
    assert ex["kv_cells_used_end"] <= ex["budget_cells"] and ex["evicted_tokens"] > 0


def test_eval_niah_finds_the_needle_with_the_full_cache_and_not_once_it_is_evicted(cli):
    base = ["eval", "niah", "--n", "1", "--context-tokens", "300", "--depths", "0.1",
            "--max-tokens", "12", "--threads", "1", "--json", "--quiet"]
    full = cli(*base)
    assert full.returncode == 0, full.stderr
    f = json.loads(full.stdout.strip().splitlines()[-1])
    assert f["policy"] == "full" and f["hit_rate"] == 1.0
    # a 64-cell window keeps the sink and the last tokens: the needle near the start is gone
    window = cli(*base, "--budget", "64", "--policy", "window")
    assert window.returncode == 0, window.stderr
    w = json.loads(window.stdout.strip().splitlines()[-1])
    assert w["budget_cells"] == 64 and w["kv_cells_used_max"] <= 64 and w["hit_rate"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["eval", "qa", "--n", "0"], "--n must be at least 1"),
    (["eval", "qa", "--budget", "0%"], "budget share"),
    (["eval", "niah", "--context-tokens", "10"], "context_tokens must be at least 64"),
    (["eval", "niah", "--depths", "1.5"], "depths must lie in [0, 1]"),
    (["bench", "speed", "--tokens", "1000", "--budget", "1024"], "at least twice the budget"),
    (["bench", "speed", "--stock-python", "/nonexistent/python"], "stock llama-cpp-python"),
])
def test_eval_commands_bad_input(cli, args, message):
    done = cli(*args, "--quiet")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bench_speed_runs_both_sides(cli, stock_python):
    done = cli("bench", "speed", "--tokens", "300", "--budget", "128", "--decode", "4",
               "--recall", "on", "--stock-python", str(stock_python), "--json", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    s, p = r["stock"], r["pyrcedge"]
    assert s["history_tokens"] >= 300 and p["history_tokens"] >= 300
    assert p["n_ctx"] == 128 and s["n_ctx"] > s["history_tokens"]
    assert s["decode_tokens"] == p["decode_tokens"] > 0        # same turns, same reply lengths
    # KV bytes from llama.cpp's log on both sides: proportional to the cells each allocated
    assert r["ratios"]["kv_bytes_less"] == pytest.approx(s["n_ctx"] / 128, rel=0.02)
    assert p["kv_mib_llama_log"] == pytest.approx(p["kv_bytes"] / 2**20, abs=0.01)
    assert p["decode_tok_s"] > 0 and s["decode_tok_s"] > 0 and p["peak_rss_bytes"] > 50e6
    # pyrcedge's side ran with recall on, and says what it recalled
    assert r["recall"] is True and r["pyrcedge_recalls"] >= 0
    assert r["pyrcedge_recalled_tokens"] >= r["pyrcedge_recalls"]
