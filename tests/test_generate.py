"""The main job on the default model: greedy tokens equal stock llama-cpp-python's, and the
JSON record carries measured fields."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pyrcedge.apps.run import greedy

PROMPT = "The history of the printing press begins"
STOCK_SCRIPT = Path(__file__).resolve().parent / "stock_greedy.py"


def _stock_tokens(stock_python: Path, model: Path, flash: str, max_tokens: int = 32) -> dict:
    done = subprocess.run([str(stock_python), str(STOCK_SCRIPT), str(model), PROMPT,
                           str(max_tokens), "512", "2", flash],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flash", ["on", "off"])
def test_32_greedy_tokens_equal_stock(cli, stock_python, default_model, flash):
    stock = _stock_tokens(stock_python, default_model, flash)
    assert "RCEDGE" not in stock["system_info"], "the stock environment loaded a patched libllama"
    done = cli("run", "--model", str(default_model), "--prompt", PROMPT, "--max-tokens", "32",
               "--n-ctx", "512", "--threads", "2", "--flash-attn", flash, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(stock["token_ids"]) == 32
    assert ours["token_ids"] == stock["token_ids"]


def test_run_json_fields_are_measured(cli, default_model):
    done = cli("run", "--prompt", PROMPT, "--max-tokens", "20", "--n-ctx", "256", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("prompt_tokens", "generated_tokens", "decode_tok_s", "kv_cells_used_max",
                "kv_budget_cells", "evictions"):
        assert key in rec
    assert rec["model"] == str(default_model)
    assert rec["generated_tokens"] == 20 and rec["finish_reason"] == "length"
    # every generated token but the last was fed back through the cache
    assert rec["kv_cells_used_max"] == rec["prompt_tokens"] + rec["generated_tokens"] - 1
    assert rec["kv_budget_cells"] == rec["n_ctx"] == 256
    assert rec["evictions"] == 0
    assert rec["decode_tok_s"] > 0 and rec["prefill_tok_s"] > 0


def test_prompt_file(cli, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text(PROMPT, encoding="utf-8")
    done = cli("run", "--prompt-file", str(f), "--max-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["generated_tokens"] == 4


def test_generation_stops_when_the_context_is_full(llm):
    prompt = "one two three four five six seven eight nine ten " * 20
    n_prompt = len(llm.tokenize(prompt.encode()))
    result = greedy(llm, prompt, max_tokens=1000)
    assert result.finish_reason == "context_full"
    assert result.kv_cells_used_max == llm.n_ctx() == 256
    assert result.generated_tokens == 256 - n_prompt + 1
