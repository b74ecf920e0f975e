"""Hostile input gets a clear Python exception (or a 4xx from the server), never a crash.

Where a regression would abort the process (a GGML_ASSERT in llama.cpp), the case runs in a
subprocess, so that the test sees the signal instead of dying with it.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyrcedge.assets.gguf_header import _SCALAR, read_metadata

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter: a crash shows as a negative return code."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def craft_gguf(source: Path, target: Path, key: str, value: float) -> Path:
    """A copy of `source` whose scalar metadata `key` holds `value` (same GGUF type)."""
    field = read_metadata(source)[key]
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        f.seek(field.offset)
        f.write(struct.pack(_SCALAR[field.type], value))
    return target


# --- 1. GGUF metadata that llama.cpp's loader aborts on -------------------------------------

BAD_METADATA = [
    ("llama.block_count", 0),
    ("llama.block_count", 100_000),
    ("llama.attention.layer_norm_rms_epsilon", math.nan),
    ("llama.attention.layer_norm_rms_epsilon", -1.0),   # hangs llama.cpp's threads
    ("llama.rope.freq_base", math.inf),
    ("llama.context_length", 2**32 - 1),                # n_ctx_train is an int32
]

LOAD = """
import sys
from pyrcedge import Llama, ModelLoadError
try:
    Llama(sys.argv[1], kv_budget=64, n_threads=1)
except ModelLoadError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("key,value", BAD_METADATA, ids=[f"{k}={v}" for k, v in BAD_METADATA])
def test_crafted_gguf_metadata_is_refused_before_llama_cpp(tmp_path, default_model, key, value):
    bad = craft_gguf(default_model, tmp_path / "bad.gguf", key, value)
    done = run_python(LOAD, str(bad), timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert f"refused: {bad}: GGUF metadata {key} = " in done.stdout


@pytest.mark.parametrize("key,value", BAD_METADATA[::2])
def test_crafted_gguf_metadata_through_the_cli(cli, tmp_path, default_model, key, value):
    bad = craft_gguf(default_model, tmp_path / "bad.gguf", key, value)
    done = cli("run", "--model", str(bad), "--prompt", "x", "--max-tokens", "1", timeout=60)
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert f"GGUF metadata {key}" in done.stderr and "Traceback" not in done.stderr


def test_default_model_metadata_reads_in_python(default_model):
    meta = read_metadata(default_model)
    assert meta["general.architecture"].value == "llama"
    assert meta["llama.block_count"].value == 30
    assert meta["tokenizer.ggml.tokens"].value == 49152     # counted, not decoded


@pytest.mark.parametrize("keep", [3, 30, 200, 1_000_000])
def test_truncated_gguf_header_is_a_model_load_error(tmp_path, default_model, keep):
    from pyrcedge import ModelLoadError
    from pyrcedge.assets.gguf import check_gguf

    cut = tmp_path / "cut.gguf"
    with open(default_model, "rb") as f:
        cut.write_bytes(f.read(keep))
    with pytest.raises(ModelLoadError):
        check_gguf(cut)
