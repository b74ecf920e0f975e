"""Bad input gets a clear Python exception (and, from the CLI, exit code 2), never a crash."""

from __future__ import annotations

import pytest

from pyrcedge import ContextOverflowError, ModelLoadError
from pyrcedge.apps.options import open_llama
from pyrcedge.apps.run import greedy


def _assert_clean_failure(done, message: str) -> None:
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_model_path(cli, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_llama(missing)
    _assert_clean_failure(cli("run", "--model", str(missing), "--prompt", "x", "--max-tokens", "1"),
                          "does not exist")


def test_directory_as_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a file"):
        open_llama(tmp_path)


def test_not_a_gguf_file(cli, tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        open_llama(bogus)
    _assert_clean_failure(cli("run", "--model", str(bogus), "--prompt", "x", "--max-tokens", "1"),
                          "not a GGUF")


@pytest.mark.parametrize("keep", [6, 4096, 10_000_000])
def test_truncated_gguf(cli, tmp_path, default_model, keep):
    # cut in the header, in the tensor index and in the tensor data
    cut = tmp_path / "truncated.gguf"
    with open(default_model, "rb") as f:
        cut.write_bytes(f.read(keep))
    with pytest.raises(ModelLoadError):
        open_llama(cut)
    done = cli("run", "--model", str(cut), "--prompt", "x", "--max-tokens", "1")
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "pyrcedge: error:" in done.stderr


def test_prompt_longer_than_context(llm, cli):
    long_prompt = "word " * 400
    with pytest.raises(ContextOverflowError, match=r"Requested tokens \(\d+\) exceed context window of 256"):
        greedy(llm, long_prompt, max_tokens=8)
    # a ValueError too, as llama-cpp-python raises for the same case
    with pytest.raises(ValueError):
        greedy(llm, long_prompt, max_tokens=8)
    _assert_clean_failure(cli("run", "--prompt", long_prompt, "--n-ctx", "300", "--max-tokens", "1"),
                          "exceed context window of 300")


def test_nonpositive_max_tokens(llm, cli):
    with pytest.raises(ValueError, match="max_tokens"):
        greedy(llm, "hello", max_tokens=0)
    done = cli("run", "--prompt", "x", "--max-tokens", "0")
    assert done.returncode == 2 and "must be at least 1" in done.stderr


def test_unreadable_prompt_file(cli, tmp_path):
    _assert_clean_failure(cli("run", "--prompt-file", str(tmp_path / "none.txt"), "--max-tokens", "1"),
                          "cannot read prompt file")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    _assert_clean_failure(cli("run", "--prompt-file", str(binary), "--max-tokens", "1"),
                          "not UTF-8")
