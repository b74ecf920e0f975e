"""Streaming perplexity (pyrcedge ppl), the context-shift policy and the Austen data, on the
default model through the real native path."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import llama_cpp
import pytest

import pyrcedge
from pyrcedge.evaluation import austen
from pyrcedge.evaluation.cli import Tokenizer
from pyrcedge.evaluation.perplexity import EvaluationError, streaming_perplexity, text_tokens

N = 160   # tokens of Pride and Prejudice the tests read


@pytest.fixture(scope="module")
def austen_text() -> str:
    folder = austen.austen_dir()
    if not all((folder / f"{n}.txt").exists() for n in austen.NOVELS):
        pytest.fail(f"{folder} lacks the Austen novels: scripts/setup.sh runs "
                    "`pyrcedge data fetch austen`")
    return austen.novel_path("prideprejudice").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokens(default_model, austen_text) -> list[int]:
    return text_tokens(Tokenizer(str(default_model)), austen_text, N)


def make(model: Path, **kw) -> pyrcedge.Llama:
    return pyrcedge.Llama(str(model), n_threads=1, n_threads_batch=1, flash_attn=True, **kw)


def test_austen_novels_parsed_from_the_debian_package(austen_text):
    assert austen_text.startswith("PRIDE AND PREJUDICE\n")
    assert "It is a truth universally acknowledged" in austen_text[:400]
    assert austen_text.count("\n") == 13030      # one line per element of the R vector
    emma = austen.novel_path("emma").read_text(encoding="utf-8")
    assert emma.startswith("EMMA\n") and len(emma) > 800_000


def test_austen_fetch_refuses_a_package_with_the_wrong_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRCEDGE_DATA", str(tmp_path))

    def fake(dest: Path) -> Path:
        (dest / "x.deb").write_bytes(b"!<arch>\nnot the package")
        return dest / "x.deb"

    monkeypatch.setattr(austen, "download_deb", fake)
    with pytest.raises(austen.DataFetchError, match="sha256"):
        austen.fetch_austen()
    assert not (tmp_path / "austen").exists()
    with pytest.raises(austen.DataFetchError, match="unknown novel"):
        austen.novel_path("ulysses")


def test_full_budget_equals_stock_full_context_perplexity(default_model, austen_text, tokens,
                                                          stock_python):
    budgeted = streaming_perplexity(make(default_model, kv_budget=N, policy="full"), tokens)
    assert budgeted.evictions == 0 and budgeted.kv_cells_used_max == N
    assert budgeted.predicted == N - 1
    # the same chunks through llama_cpp.Llama: identical (the budgeted path adds nothing)
    plain = llama_cpp.Llama(str(default_model), n_ctx=N, n_threads=1, n_threads_batch=1,
                            flash_attn=True, verbose=False)
    assert streaming_perplexity(plain, tokens).ppl == pytest.approx(budgeted.ppl, rel=1e-9)
    # stock llama-cpp-python, one batch with logits for every token: equal within what batch
    # size changes in the quantized matmuls
    done = subprocess.run([str(stock_python), str(Path(__file__).parent / "stock_ppl.py")],
                          input=json.dumps({"model": str(default_model), "text": austen_text,
                                            "tokens": N, "threads": 1}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stock = json.loads(done.stdout)
    assert stock["tokens"] == N
    assert budgeted.ppl == pytest.approx(stock["ppl"], rel=0.01)
    assert 2 < budgeted.ppl < 100


@pytest.mark.parametrize("policy", ["context-shift", "window", "a2sf", "rcstat"])
def test_budget_is_respected_while_streaming(default_model, tokens, policy):
    r = streaming_perplexity(make(default_model, kv_budget=48, policy=policy), tokens)
    assert r.kv_cells_used_max <= 48 == r.budget_cells
    assert r.evictions > 0 and r.evicted_tokens >= N - 48
    assert math.isfinite(r.ppl) and r.ppl > 1


def test_context_shift_keeps_n_keep_and_discards_the_older_half(default_model, tokens):
    events = []
    llm = make(default_model, kv_budget=64, policy="context-shift", positions="compact",
               sink_tokens=4, on_evict=events.append)
    streaming_perplexity(llm, tokens, chunk=4)
    assert len(events) >= 3
    gone: set[int] = set()
    for ev in events:
        cached = [i for i in range(ev.history_tokens) if i not in gone]
        assert len(cached) == ev.cells_before
        n_discard = (ev.cells_before - 4) // 2          # llama.cpp: (n_past - n_keep) / 2
        assert ev.cells_after == ev.cells_before - n_discard
        # the first n_keep tokens stay; the oldest n_discard after them go
        assert sorted(ev.evicted.tolist()) == cached[4:4 + n_discard]
        gone |= set(ev.evicted.tolist())
    # positions are compacted: the survivors sit at 0..n-1
    cells = pyrcedge.scoring.used_cells(llm.ctx)
    assert sorted(cells.pos.tolist()) == list(range(len(cells)))


def test_ppl_cli_prints_the_json_fields(cli, austen_text):
    path = austen.novel_path("prideprejudice")
    done = cli("ppl", "--text-file", str(path), "--tokens", "96", "--budget", "50%",
               "--policy", "context-shift", "--threads", "1", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["tokens"] == 96 and r["budget_cells"] == 48 and r["policy"] == "context-shift"
    assert r["kv_cells_used_max"] <= 48 and r["evictions"] > 0 and r["ppl"] > 1


@pytest.mark.parametrize("args, message", [
    (["--text-file", "/nonexistent/text.txt"], "cannot read text file"),
    (["--tokens", "1"], "at least 2"),
    (["--tokens", "100000000"], "fewer than"),
    (["--budget", "0%"], "budget share"),
    (["--budget", "150%"], "budget share"),
    (["--budget", "40", "--policy", "full"], "exceed context window of 40"),
    (["--budget", "10", "--policy", "window"], "smaller than sink_tokens"),
])
def test_ppl_cli_bad_input(cli, austen_text, args, message):
    base = ["ppl", "--text-file", str(austen.novel_path("prideprejudice")), "--tokens", "64",
            "--threads", "1", "--quiet"]
    done = cli(*base, *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_streaming_perplexity_bad_input(default_model, tokens):
    llm = make(default_model, kv_budget=64, policy="window")
    with pytest.raises(EvaluationError, match="chunk"):
        streaming_perplexity(llm, tokens, chunk=0)
    with pytest.raises(EvaluationError, match="at least 2"):
        streaming_perplexity(llm, tokens[:1])
    with pytest.raises(EvaluationError, match="empty"):
        text_tokens(llm, "  \n")


# --- the R lazy-load reader, on a database built here byte by byte -------------------------

def _xdr(*ints: int) -> bytes:
    import struct

    return struct.pack(f">{len(ints)}i", *ints)


def _chars(s: str | None) -> bytes:
    if s is None:
        return _xdr(9, -1)                                   # NA_character_
    b = s.encode("utf-8")
    return _xdr(9 | (8 << 12), len(b)) + b                   # CHARSXP, UTF-8 level


def _strsxp(values: list, names: list[str] | None = None) -> bytes:
    head = _xdr(16 | (0x200 if names else 0), len(values)) + b"".join(map(_chars, values))
    return head + (_names(names) if names else b"")


def _names(names: list[str]) -> bytes:                     # pairlist(names = c(...))
    return _xdr(2 | 0x400) + _xdr(1) + _chars("names") + _strsxp(names) + _xdr(254)


def _serialize(body: bytes) -> bytes:
    return b"X\n" + _xdr(2, 0x40200, 0x20300) + body


def test_r_lazyload_reader_on_a_hand_built_database():
    import gzip
    import struct
    import zlib

    from pyrcedge.evaluation.rdata import RDataError, read_lazyload

    obj = _serialize(_strsxp(["It is a truth", None, "universally acknowledged é"]))
    record = struct.pack(">I", len(obj)) + zlib.compress(obj)
    rdb = b"padding!" + record
    # the index: list(variables = list(novel = c(8L, len))), with names attributes
    where = _xdr(13, 2, 8, len(record))                    # INTSXP c(8, len)
    variables = _xdr(19 | 0x200, 1) + where + _names(["novel"])
    index = _serialize(_xdr(19 | 0x200, 1) + variables + _names(["variables"]))
    out = read_lazyload(gzip.compress(index), rdb)
    assert list(out) == ["novel"]
    assert list(out["novel"]) == ["It is a truth", None, "universally acknowledged é"]
    with pytest.raises(RDataError, match="past the end"):
        read_lazyload(gzip.compress(index), rdb[:20])
    with pytest.raises(RDataError, match="XDR"):
        read_lazyload(gzip.compress(b"A\n" + index[2:]), rdb)
