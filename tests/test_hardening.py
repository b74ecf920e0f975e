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


# --- 2. integers that cross into llama.cpp's C types ------------------------------------------

BAD_SETTINGS = [
    ({"kv_budget": 2**32 + 128}, "more than llama.cpp can address"),   # n_ctx would wrap to 128
    ({"kv_budget": 2**32}, "more than llama.cpp can address"),         # ... to 0
    ({"kv_budget": 2**31}, "more than llama.cpp can address"),
    ({"kv_budget": 10**12}, "more than llama.cpp can address"),
    ({"kv_budget": 2**30}, "more than the"),                          # 24 TiB of KV cache
    ({"kv_budget": "10000GB"}, "more than the"),
    ({"n_ctx": 2**32 + 128}, "n_ctx of 4294967424 cells"),
    ({"n_ctx": -1}, "n_ctx must be an integer >= 0"),
    ({"kv_budget": 64, "type_k": 999}, "type_k=999 is not a KV cache type"),
    ({"kv_budget": 64, "type_v": 4}, "type_v=4 is not a KV cache type"),   # a removed ggml type
    ({"kv_budget": 64, "type_k": 26}, "type_k=26 is not a KV cache type"), # GGML_TYPE_I32
    ({"kv_budget": 64, "type_k": "f16"}, "type_k='f16' is not a KV cache type"),
]

SETTINGS = """
import json, resource, sys, time
from pyrcedge import BudgetError, Llama
for kw in json.loads(sys.argv[2]):
    t = time.perf_counter()
    try:
        Llama(sys.argv[1], n_threads=1, **kw)
        print("loaded", flush=True)
    except BudgetError as e:
        print(f"{time.perf_counter() - t:.2f}", e, flush=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_budgets_and_cache_types_beyond_llama_cpp_are_budget_errors(default_model):
    import json

    done = run_python(SETTINGS, str(default_model), json.dumps([kw for kw, _ in BAD_SETTINGS]))
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    *lines, max_rss_mib = done.stdout.strip().splitlines()
    assert len(lines) == len(BAD_SETTINGS)
    for (kw, message), line in zip(BAD_SETTINGS, lines):
        seconds, _, text = line.partition(" ")
        assert message in text, (kw, line)
        assert float(seconds) < 2, (kw, line)      # refused before anything is allocated
    assert int(max_rss_mib) < 1024


def test_valid_cache_types_still_load(default_model):
    from pyrcedge import Llama

    llm = Llama(str(default_model), kv_budget=64, n_threads=1, type_k=8, type_v=8,
                flash_attn=True, verbose=False)
    assert llm.create_completion("Hello", max_tokens=2)["choices"][0]["text"]
    llm.close()


def test_a_byte_budget_sizes_f32_caches_as_f32(default_model):
    # type_k=0 (f32) was sized as f16: the cache came out twice the budget and was refused
    from pyrcedge import Llama

    llm = Llama(str(default_model), kv_budget="4MiB", n_threads=1, type_k=0, type_v=0,
                verbose=False)
    assert 0 < llm.kv_stats().allocated_bytes <= 4 * 2**20
    llm.close()
