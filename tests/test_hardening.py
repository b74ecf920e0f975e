"""Hostile input gets a clear Python exception (or a 4xx from the server), never a crash.

Where a regression would abort the process (a GGML_ASSERT in llama.cpp), the case runs in a
subprocess, so that the test sees the signal instead of dying with it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import serving

import pyrcedge
from pyrcedge import ModelLoadError, SessionError, session
from pyrcedge.assets.gguf import (
    check_gguf,
    check_head_sizes,
    check_layer_heads,
    check_tensor_types,
    check_tokenizer,
)
from pyrcedge.assets.gguf_header import _SCALAR, STRING, Field, read_header, read_metadata

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
    cut = tmp_path / "cut.gguf"
    with open(default_model, "rb") as f:
        cut.write_bytes(f.read(keep))
    with pytest.raises(ModelLoadError):
        check_gguf(cut)


def craft_tokenizer(source: Path, target: Path, change: str) -> Path:
    """A copy of `source` with its tokenizer damaged in place (same byte lengths): "none" names
    no tokenizer model; "duplicate" gives a token the text of another of the same length."""
    meta = read_metadata(source)
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        if change == "none":
            model = meta["tokenizer.ggml.model"]
            assert len(model.value) == 4            # "gpt2": the same length, written in place
            f.seek(model.offset + 8)
            f.write(b"none")
            return target
        tokens = meta["tokenizer.ggml.tokens"]
        f.seek(tokens.offset + 4 + 8)               # past the element type and the count
        at = []
        for t in tokens.strings[:1000]:
            at.append(f.tell() + 8)
            f.seek(8 + len(t), os.SEEK_CUR)
        i = next(i for i in range(1, 1000) if len(tokens.strings[i]) == len(tokens.strings[i - 1]))
        f.seek(at[i])
        f.write(tokens.strings[i - 1])
    return target


@pytest.mark.parametrize("change,message", [
    ("none", "tokenizer.ggml.model = 'none' has no tokenizer"),   # llama_tokenize asserted
    ("duplicate", "twice"),                                        # the vocabulary's load asserted
])
def test_a_crafted_tokenizer_is_refused_before_llama_cpp(tmp_path, default_model, change, message):
    bad = craft_tokenizer(default_model, tmp_path / "bad.gguf", change)
    done = run_python(LOAD, str(bad), timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert f"refused: {bad}: GGUF tokenizer" in done.stdout and message in done.stdout


def test_a_chat_template_that_does_not_compile_is_a_model_load_error(tmp_path, default_model):
    # llama_cpp compiles tokenizer.chat_template as it loads: jinja2.TemplateSyntaxError before
    bad = tmp_path / "bad.gguf"
    shutil.copyfile(default_model, bad)
    template = read_metadata(default_model)["tokenizer.chat_template"]
    assert template.value.startswith("{% for message in messages %}")
    with open(bad, "r+b") as f:
        f.seek(template.offset + 8)
        f.write(b"x")       # the loop's tag is text now, and its endfor has nothing to end
    with pytest.raises(ModelLoadError, match="chat template .* does not compile"):
        pyrcedge.Llama(str(bad), kv_budget=64, n_threads=1)


def _with_template(tmp_path: Path, default_model: str, source: str) -> str:
    """A copy of the default model whose tokenizer.chat_template is source (written in place,
    padded with spaces to the template's length)."""
    bad = tmp_path / "bad.gguf"
    shutil.copyfile(default_model, bad)
    template = read_metadata(default_model)["tokenizer.chat_template"]
    assert len(source) <= len(template.value.encode())
    with open(bad, "r+b") as f:
        f.seek(template.offset + 8)
        f.write(source.ljust(len(template.value.encode())).encode())
    return str(bad)


@pytest.mark.parametrize("source, message", [
    # Jinja's sandbox caps each range at 100,000, not two nested ones: 10^10 steps, hours
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
     "chat template ran more than"),
    # Jinja folds the constant as it compiles, so as llama_cpp loads the model: 10 GB
    ("{{ 'a' * 10**10 }}", "chat template asked for the result of \\*"),
])
def test_a_chat_template_that_would_run_for_hours_or_fill_memory_is_stopped(
        tmp_path, default_model, source, message):
    t = time.perf_counter()
    llm = pyrcedge.Llama(_with_template(tmp_path, default_model, source), kv_budget=64,
                         n_threads=1)
    with pytest.raises(pyrcedge.GenerationInputError, match=message):
        llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert time.perf_counter() - t < 30
    assert llm("Hello", max_tokens=2)["choices"]      # the model goes on working
    llm.close()


def _vocabulary(model: str, tokens: list[bytes], pre: str | None = None) -> dict[str, Field]:
    meta = {"tokenizer.ggml.model": Field(STRING, model, 0),
            "tokenizer.ggml.tokens": Field(STRING, len(tokens), 0, True, tuple(tokens))}
    if pre is not None:
        meta["tokenizer.ggml.pre"] = Field(STRING, pre, 0)
    return meta


BYTES = [f"<0x{b:02X}>".encode() for b in range(256)]


@pytest.mark.parametrize("model,tokens,message", [
    ("no_vocab", [b"a"], "has no tokenizer"),
    ("gpt2", [b"a", b"b", b"a"], "holds b'a' twice (ids 0 and 2"),
    ("gpt2", [b"a", b"", b"[EMPTY_1]"], "holds b'[EMPTY_1]' twice"),   # llama.cpp's name for ""
    ("llama", BYTES[:10] + BYTES[11:], "no token for byte 0x0A"),      # no newline to fall back on
    ("llama", BYTES[:10] + [b"\n"] + BYTES[11:], None),               # the byte itself will do
    ("gpt2", [b"a", b"b"], None),
    # llama.cpp reads a token's text up to its first NUL: GGML_ASSERT in the vocabulary's load
    ("gpt2", [b"Hel", b"a", b"Hel\0lo"], "holds b'Hel' twice (ids 0 and 2"),
    ("gpt2", [b"a", b"\0b"], None),                                   # "" is [EMPTY_1]
    # greedy RWKV: "\xc3\xb6" with no token "\xc3" alone restarted from 0 for ever (bad_alloc)
    ("rwkv", [b"a", b"\\xc3\\xb6", b"\\xc3\\xa9"], "begin with byte b'\\xc3' but no token"),
    ("rwkv", [b"a", b"\\xc3\\xb6", b"\\xc3"], None),
    ("rwkv", [b"a", b"\\tb"], "begin with byte b'\\t'"),              # RWKV's own escapes
    ("rwkv", [b"a", b"\\tb", b"\\t"], None),
])
def test_check_tokenizer(model, tokens, message):
    meta = _vocabulary(model, tokens)
    if message is None:
        check_tokenizer(meta, "m.gguf")
        return
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        check_tokenizer(meta, "m.gguf")


def test_the_whitespace_pre_tokenizer_only_goes_with_its_model():
    # it skips GPT-2's byte encoding, so BPE merges meet raw spaces: GGML_ASSERT in find_bpe_rank
    with pytest.raises(ModelLoadError, match="'whitespace' goes with the 'whitespace' model"):
        check_tokenizer(_vocabulary("gpt2", [b"a"], pre="whitespace"), "m.gguf")
    check_tokenizer(_vocabulary("whitespace", [b"a"], pre="whitespace"), "m.gguf")


def _respell(source: str, target: Path, strings: dict[str, str], scalars: dict[str, bytes]) -> Path:
    """A copy of source with metadata strings replaced (their lengths must add up to the same
    total, so that nothing after them moves) and scalars overwritten in place."""
    meta = read_metadata(source)
    data = bytearray(Path(source).read_bytes())
    assert sum(len(v) - len(meta[k].value) for k, v in strings.items()) == 0
    for key in sorted(strings, key=lambda k: meta[k].offset, reverse=True):
        at, old = meta[key].offset, meta[key].value.encode()
        data[at:at + 8 + len(old)] = struct.pack("<Q", len(strings[key])) + strings[key].encode()
    for key, value in scalars.items():
        data[meta[key].offset:meta[key].offset + len(value)] = value
    target.write_bytes(data)
    return target


def test_a_special_token_the_tokenizer_adds_but_lacks_is_refused(tmp_path, default_model):
    # T5's tokenizer (UGM) has no default BOS; an id outside the vocabulary falls back to it, and
    # with add_bos_token llm.tokenize(b"Hello") aborted: GGML_ASSERT(special_bos_id != -1)
    n_vocab = read_metadata(default_model)["tokenizer.ggml.tokens"].value
    bad = _respell(default_model, tmp_path / "bad.gguf",
                   {"tokenizer.ggml.model": "t5", "tokenizer.ggml.pre": "smollm__"},
                   {"tokenizer.ggml.add_bos_token": b"\1",
                    "tokenizer.ggml.bos_token_id": struct.pack("<I", n_vocab)})
    with pytest.raises(ModelLoadError, match="adds the special token BOS to every prompt"):
        pyrcedge.Llama(str(bad), kv_budget=64, n_threads=1)
    fine = _respell(default_model, tmp_path / "fine.gguf",    # its own BOS id: loads and runs
                    {"tokenizer.ggml.model": "t5", "tokenizer.ggml.pre": "smollm__"},
                    {"tokenizer.ggml.add_bos_token": b"\1"})
    llm = pyrcedge.Llama(str(fine), kv_budget=64, n_threads=1)
    assert llm("Hello", max_tokens=2)["choices"]
    llm.close()


def test_the_tensor_index_reads_in_python(default_model):
    shapes = read_header(default_model).shapes
    assert shapes["blk.0.attn_k.weight"] == (576, 192)         # 3 KV heads of 64
    assert len(shapes) == 272


def _layers(heads_kv: list[int]) -> tuple[dict[str, Field], dict[str, tuple[int, ...]]]:
    """Metadata of a 3-layer llama with per-layer KV heads, and weights of 3 KV heads of 64."""
    meta = {"general.architecture": Field(STRING, "llama", 0),
            "llama.embedding_length": Field(4, 576, 0),
            "llama.attention.head_count": Field(4, 9, 0),
            "llama.attention.head_count_kv": Field(4, tuple(heads_kv), 0, True)}
    shapes = {f"blk.{i}.attn_{kv}.weight": (576, 192) for i in range(3) for kv in "kv"}
    return meta, shapes


@pytest.mark.parametrize("heads_kv,message", [
    ([3, 3, 0], "head_count_kv[2] = 0 does not match blk.2.attn_k.weight"),  # aborted the first store
    ([3, 3, 1], "head_count_kv[2] = 1 does not match blk.2.attn_k.weight"),
    ([3, 3, 3], None),      # one count: llama.cpp checks the weights against it itself
])
def test_per_layer_kv_heads_must_match_the_weights(heads_kv, message):
    meta, shapes = _layers(heads_kv)
    if message is None:
        check_layer_heads(meta, shapes, "m.gguf")
    else:
        with pytest.raises(ModelLoadError, match=re.escape(message)):
            check_layer_heads(meta, shapes, "m.gguf")
    del shapes["blk.2.attn_k.weight"], shapes["blk.2.attn_v.weight"]    # a layer without its own K
    check_layer_heads(meta, shapes, "m.gguf")                           # and V: nothing to compare


def _with_u32_array(source: str, target: Path, key: str, values: list[int]) -> Path:
    """A copy of source whose scalar metadata `key` is a u32 array of values: the key-value
    section grows, so the tensor index moves and the data section is re-aligned (tensor offsets
    are relative to it)."""
    header, data = read_header(source), Path(source).read_bytes()
    at = header.fields[key].offset - 4           # the value's type, then the scalar
    array = struct.pack("<IIQ", 9, 4, len(values)) + struct.pack(f"<{len(values)}I", *values)
    head = data[:at] + array + data[at + 4 + 4:header.index_end]
    assert "general.alignment" not in header.fields        # GGUF's default, 32 bytes
    target.write_bytes(head + bytes(-len(head) % 32) + data[header.data_offset:])
    return target


PROBED_READ = """
import sys, pyrcedge
llm = pyrcedge.Llama(sys.argv[1], kv_budget=64, n_threads=1)
out = llm(" ".join(["word"] * 200) + " What is the word?", max_tokens=4)
print("read", out["usage"]["kv_cache"]["evictions"] > 0)
"""


def test_a_per_layer_head_count_the_graph_ignores_leaves_the_probe_decoding(tmp_path,
                                                                          default_model):
    # llama's graph uses layer 0's head count everywhere; the kept probe queries were sized by
    # each layer's own, and the first probed read aborted the process in pyrcedge's native code
    # (GGML_ASSERT in llama_rcedge_graph_keep_queries): now that layer keeps no queries and the
    # probe is decoded instead
    n_layer = read_metadata(default_model)["llama.block_count"].value
    heads = [9] * n_layer
    heads[3] = 7
    bad = _with_u32_array(default_model, tmp_path / "heads.gguf", "llama.attention.head_count",
                          heads)
    assert read_metadata(bad)["llama.attention.head_count"].value == tuple(heads)
    done = run_python(PROBED_READ, str(bad))
    assert done.returncode == 0 and "read True" in done.stdout, done.stderr[-1500:]


@pytest.mark.parametrize("extra, message", [
    # qwen2's graph asserted n_embd_head == n_rot as the context reserved it
    ({"rope.dimension_count": 128}, "rope.dimension_count = 128 does not fit a head of 64"),
    ({"rope.dimension_count": 63}, "rope.dimension_count = 63 does not fit"),
    ({"rope.dimension_count": 0}, "rope.dimension_count = 0 does not fit"),
    ({"rope.dimension_count": 32}, None),           # partial rotary (phi2, stablelm) is real
    ({"rope.dimension_count": 64}, None),
    # qwen2 sizes K by the value head: its graph asserted n_embd_head == n_embd_head_k
    ({"attention.key_length": 32}, "key_length = 32 does not match blk.0.attn_k.weight (192"),
    ({"attention.key_length": 64}, None),
    ({"attention.key_length": 32, "attention.key_length_swa": 32}, None),   # SWA layers differ
])
def test_head_sizes_must_fit_the_heads_and_the_weights(extra, message):
    meta, shapes = _layers([3, 3, 3])
    meta.update({f"llama.{key}": Field(4, value, 0) for key, value in extra.items()})
    if message is None:
        check_head_sizes(meta, shapes, "m.gguf")
    else:
        with pytest.raises(ModelLoadError, match=re.escape(message)):
            check_head_sizes(meta, shapes, "m.gguf")


def _retype(source: str, target: Path, tensor: str, ggml_type: int) -> Path:
    """A copy of source with one tensor's ggml type in the index changed in place."""
    shutil.copyfile(source, target)
    name = tensor.encode()
    with open(target, "r+b") as f:
        head = f.read(4 << 20)
        at = head.find(struct.pack("<Q", len(name)) + name) + 8 + len(name)
        n_dims = struct.unpack_from("<I", head, at)[0]
        f.seek(at + 4 + 8 * n_dims)
        f.write(struct.pack("<I", ggml_type))
    return target


def test_the_tensor_types_read_in_python(default_model):
    types = read_header(default_model).types
    assert types["blk.0.attn_q.weight"] == 3 and types["blk.0.attn_norm.weight"] == 0  # Q4_1, F32
    assert types["token_embd.weight"] == 8                                             # Q8_0


@pytest.mark.parametrize("tensor, ggml_type, message", [
    # the same size (4 bytes an element), one u32 of the index: SIGABRT at the first decode
    # (binary_op: unsupported types: dst: f32, src0: f32, src1: i32)
    ("blk.0.attn_norm.weight", 26, "tensor blk.0.attn_norm.weight has type I32"),
    # output_norm is the last tensor, so a smaller type still fits the file: the same abort
    ("output_norm.weight", 1, "tensor output_norm.weight is 1-D of ggml type 1, not F32"),
])
def test_a_tensor_type_llama_cpp_would_abort_on_is_refused(tmp_path, default_model, tensor,
                                                           ggml_type, message):
    bad = _retype(default_model, tmp_path / "bad.gguf", tensor, ggml_type)
    assert read_header(bad).types[tensor] == ggml_type
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        pyrcedge.Llama(str(bad), kv_budget=64, n_threads=1)


@pytest.mark.parametrize("shape, ggml_type, refused", [
    ((576, 576), 9, True), ((576, 576), 15, True), ((576, 49152), 26, True),  # Q8_1 Q8_K I32
    ((576, 576), 24, True), ((576, 576), 28, True),                           # I8 F64: null kernels
    ((576,), 1, True), ((576,), 30, True), ((576,), 8, True),                 # 1-D F16 BF16 Q8_0
    ((576,), 0, False), ((576, 576), 1, False), ((576, 576), 30, False),      # what converters write
    ((576, 576), 34, False), ((576, 576), 39, False), ((576, 576), 12, False),
])
def test_check_tensor_types(shape, ggml_type, refused):
    check = functools.partial(check_tensor_types, {"w": shape}, {"w": ggml_type}, "m.gguf")
    if refused:
        with pytest.raises(ModelLoadError, match="tensor w"):
            check()
    else:
        check()


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
    ({"kv_budget": 64, "n_threads": 100_000}, "n_threads must be an integer of at most 512"),
]

SETTINGS = """
import json, resource, sys, time
from pyrcedge import BudgetError, Llama
for kw in json.loads(sys.argv[2]):
    t = time.perf_counter()
    try:
        Llama(sys.argv[1], **{"n_threads": 1, **kw})
        print("loaded", flush=True)
    except BudgetError as e:
        print(f"{time.perf_counter() - t:.2f}", e, flush=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_budgets_and_cache_types_beyond_llama_cpp_are_budget_errors(default_model):
    done = run_python(SETTINGS, str(default_model), json.dumps([kw for kw, _ in BAD_SETTINGS]))
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    *lines, max_rss_mib = done.stdout.strip().splitlines()
    assert len(lines) == len(BAD_SETTINGS)
    for (kw, message), line in zip(BAD_SETTINGS, lines):
        seconds, _, text = line.partition(" ")
        assert message in text, (kw, line)
        assert float(seconds) < 2, (kw, line)      # refused before anything is allocated
    assert int(max_rss_mib) < 1024


def test_command_line_counts_beyond_int32_are_refused(cli):
    done = cli("run", "--prompt", "x", "--n-ctx", str(2**32 + 128), "--max-tokens", "1", timeout=60)
    assert done.returncode == 2 and "must be at most 2147483647" in done.stderr
    done = cli("run", "--prompt", "x", "--threads", "100000", "--max-tokens", "1", timeout=60)
    assert done.returncode == 2 and "must be at most 512" in done.stderr


def test_valid_cache_types_still_load(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=64, n_threads=1, type_k=8, type_v=8,
                         flash_attn=True, verbose=False)
    assert llm.create_completion("Hello", max_tokens=2)["choices"][0]["text"]
    llm.close()


def test_a_byte_budget_sizes_f32_caches_as_f32(default_model):
    # type_k=0 (f32) was sized as f16: the cache came out twice the budget and was refused
    llm = pyrcedge.Llama(str(default_model), kv_budget="4MiB", n_threads=1, type_k=0, type_v=0,
                         verbose=False)
    assert 0 < llm.kv_stats().allocated_bytes <= 4 * 2**20
    llm.close()


# --- 3. saved sessions: content checked, not only the checksum --------------------------------

SESSION_TEXT = b"The quick brown fox jumps over the lazy dog while the cat sleeps. " * 10


@pytest.fixture(scope="module")
def saved_session(default_model, tmp_path_factory):
    """A Llama that evicted (statistics on), the file of its session, and a second state the
    Llama holds when the crafted files are offered to it."""
    llm = pyrcedge.Llama(str(default_model), kv_budget=64, policy="a2sf", n_threads=1,
                         n_threads_batch=1, flash_attn=True, seed=0, verbose=False)
    llm.eval(llm.tokenize(SESSION_TEXT))
    assert llm.kv_stats().evictions > 0
    path = tmp_path_factory.mktemp("session") / "s.pyrcedge"
    llm.save_session(path)
    llm.eval(llm.tokenize(b" And then the dog woke up and barked.", add_bos=False))
    yield llm, path
    llm.close()


def _reversed(a):
    return a[::-1].copy()


CRAFTED = {
    "token id past the vocabulary": (lambda s: s.arrays["history"].__setitem__(5, 10**6),
                                     "token id 1000000, outside the vocabulary"),
    "negative token id": (lambda s: s.arrays["history"].__setitem__(0, -1), "token id -1"),
    "cached indices reversed": (lambda s: s.arrays.__setitem__("cached", _reversed(s.arrays["cached"])),
                                "not strictly increasing"),
    "a cached index duplicated": (lambda s: s.arrays["cached"].__setitem__(1, s.arrays["cached"][0]),
                                  "not strictly increasing"),
    "a cached index beyond the history": (lambda s: s.arrays["cached"].__setitem__(-1, 10**6),
                                          "must lie in"),
    "a cached index dropped": (lambda s: s.arrays.__setitem__("cached", s.arrays["cached"][1:]),
                               "cell_pos has shape"),
    "statistics all NaN": (lambda s: s.arrays["stats.3"].fill(np.nan), "layer 3 are not all finite"),
    "statistics missing": (lambda s: s.arrays.pop("stats.7"), "lacks the array 'stats.7'"),
    "history shorter than n_tokens": (lambda s: s.arrays.__setitem__("history", s.arrays["history"][:-1]),
                                      "history has shape"),
    "horizon beyond the history": (lambda s: s.header["bookkeeping"].__setitem__("horizon", 10**9),
                                   "horizon must be an integer"),
    "a pinned span backwards": (lambda s: s.header["bookkeeping"].__setitem__("pinned", [[9, 3]]),
                                "pinned must be an integer"),
    "float history": (lambda s: s.arrays.__setitem__("history", s.arrays["history"].astype(np.float32)),
                      "history has dtype float32"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_session_with_a_valid_checksum_is_refused_and_nothing_changes(saved_session, tmp_path, case):
    llm, path = saved_session
    state = session.read(path)
    change, message = CRAFTED[case]
    change(state)
    crafted = tmp_path / "crafted.pyrcedge"
    crafted.write_bytes(session.encode(state))      # a fresh, valid checksum
    before = session.capture(llm)
    with pytest.raises(SessionError, match="nothing was loaded") as refused:
        llm.load_session(crafted)
    assert message in str(refused.value)
    with pytest.raises(SessionError, match="nothing was loaded"):
        llm.load_state(state)
    after = session.capture(llm)
    assert before.header == after.header and before.kv == after.kv
    assert before.arrays.keys() == after.arrays.keys()
    assert all(np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)


def test_the_uncrafted_session_still_loads(saved_session):
    llm, path = saved_session
    state = session.read(path)
    llm.load_session(path)
    assert llm.n_tokens == state.n_tokens
    assert np.array_equal(llm.input_ids[: llm.n_tokens], state.arrays["history"])


KILLED_SAVE = """
import os, signal, sys
from pyrcedge.features import session
def killed(f, data, chunk=1 << 20):
    f.write(data[: len(data) // 2]); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
session._write_all = killed
session.write_atomic(sys.argv[1], b"new" * 100_000)
"""


def test_a_killed_save_leaves_no_temporary_file_for_ever(tmp_path):
    path = tmp_path / "s.pyrcedge"
    session.write_atomic(path, b"old")
    done = run_python(KILLED_SAVE, str(path), timeout=60)
    assert done.returncode == -9
    litter = [p for p in tmp_path.iterdir() if p != path]
    assert len(litter) == 1 and litter[0].stat().st_size > 0
    assert path.read_bytes() == b"old"
    session.remove_stale_temporaries(path)
    assert litter[0].exists()                 # too young: its writer may not have locked it
    old = time.time() - 2 * session.STALE_AFTER_S
    os.utime(litter[0], (old, old))
    session.write_atomic(path, b"newer")      # the next save cleans up
    assert sorted(tmp_path.iterdir()) == [path] and path.read_bytes() == b"newer"


def test_a_temporary_file_a_live_writer_holds_is_kept(tmp_path):
    path = tmp_path / "s.pyrcedge"
    tmp = tmp_path / ".s.pyrcedge.abc123.tmp"
    with open(tmp, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        old = time.time() - 2 * session.STALE_AFTER_S
        os.utime(tmp, (old, old))
        assert session.remove_stale_temporaries(path) == []
        with pytest.raises(SessionError):
            session.read(path)                # missing file; the live temporary stays
        assert tmp.exists()
    assert session.remove_stale_temporaries(path) == [tmp]




# --- 4. a policy that tampers with its view -------------------------------------------------

def _reflag_and_write(view):
    view.evictable.flags.writeable = True
    view.evictable[:] = True
    return -view.logical.astype(float)      # the newest (protected) tokens lowest


def _write(view):
    view.evictable[:] = True
    return np.zeros(len(view))


def _rebind(view):
    view.evictable = np.ones(len(view), bool)
    view.cells = view.cells[::-1].copy()
    return -view.logical.astype(float)


def _shuffle_cells(view):
    view.cells.flags.writeable = True
    view.cells[:] = view.cells[::-1]
    return np.zeros(len(view))


@pytest.mark.parametrize("tamper", [_reflag_and_write, _write, _rebind, _shuffle_cells],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_policy_that_tampers_with_its_view_leaves_the_llama_unchanged_and_usable(default_model, tamper):
    misbehave = {"now": False}

    def policy(view):
        return tamper(view) if misbehave["now"] else view.a2sf()

    llm = pyrcedge.Llama(str(default_model), kv_budget=48, policy=policy, n_threads=1,
                         flash_attn=True, probe=None, verbose=False)
    llm.eval(llm.tokenize(SESSION_TEXT[:300]))
    assert llm.kv_stats().evictions > 0
    before = session.capture(llm)
    misbehave["now"] = True
    with pytest.raises(pyrcedge.PolicyError, match="the cache is unchanged"):
        llm.eval(llm.tokenize(SESSION_TEXT[:200], add_bos=False))
    after = session.capture(llm)
    assert before.header == after.header and before.kv == after.kv
    assert all(np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)
    misbehave["now"] = False
    llm.eval(llm.tokenize(SESSION_TEXT[:200], add_bos=False))      # usable: it goes on
    assert llm.kv_stats().cells_used <= 48
    llm.close()


# --- 5. the server: hostile requests get a 4xx, and no request holds the queue for ever -------

CAP, PROMPT_CAP, BODY_CAP = 48, 600, 64 * 1024


@pytest.fixture(scope="module")
def server():
    with serving("--budget", "128", "--threads", "1", "--max-tokens", str(CAP),
                 "--max-prompt-tokens", str(PROMPT_CAP), "--max-body", str(BODY_CAP)) as running:
        yield running


def post(base: str, path: str, body: dict | bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw) if not raw.startswith(b"data:") else {"sse": raw}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HI = [{"role": "user", "content": "Hi"}]
BAD_GRAMMAR = 'root ::= ( "x" '
HOSTILE = {
    "a grammar that does not parse": ("/chat/completions", {"messages": HI, "grammar": BAD_GRAMMAR}, 400, "grammar"),
    "... streamed": ("/chat/completions", {"messages": HI, "grammar": BAD_GRAMMAR, "stream": True}, 400, "grammar"),
    "... on completions": ("/completions", {"prompt": "Hi", "grammar": 'root ::= undefined'}, 400, "grammar"),
    "a grammar nested 30000 deep": ("/completions", {"prompt": "Hi", "grammar": "root ::= " + "(" * 30000 + '"x"' + ")" * 30000}, 400, "grammar"),
    "logit_bias for token 10**9": ("/chat/completions", {"messages": HI, "logit_bias": {"1000000000": 5}}, 400, "logit_bias"),
    "logit_bias for token -3": ("/completions", {"prompt": "Hi", "logit_bias": {"-3": 5}}, 400, "logit_bias"),
    "a prompt of token 10**9": ("/completions", {"prompt": [1, 10**9]}, 400, "prompt"),
    "no messages": ("/chat/completions", {"max_tokens": 4}, 400, "messages"),
    "empty messages": ("/chat/completions", {"messages": []}, 400, "messages"),
    "max_tokens -5 on chat": ("/chat/completions", {"messages": HI, "max_tokens": -5}, 400, "max_tokens"),
    "n = 0": ("/chat/completions", {"messages": HI, "n": 0}, 400, "n"),
    "n = 2": ("/chat/completions", {"messages": HI, "n": 2}, 400, "n"),
    "best_of = 3": ("/completions", {"prompt": "Hi", "best_of": 3}, 400, "best_of"),
    "max_tokens past the cap": ("/chat/completions", {"messages": HI, "max_tokens": 10**9, "min_tokens": 10**9}, 400, "max_tokens"),
    "a prompt past the cap": ("/completions", {"prompt": "lorem ipsum dolor " * 400}, 400, "prompt"),
    "a body past the cap": ("/completions", {"prompt": "x" * (BODY_CAP + 1)}, 413, None),
    "a body 20 times the cap": ("/completions", {"prompt": "x" * (20 * BODY_CAP)}, 413, None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_request_gets_a_4xx_and_the_server_keeps_serving(server, case):
    path, body, status, param = HOSTILE[case]
    code, reply = post(server[0], path, body)
    assert code == status, reply
    assert reply["error"]["message"] and reply["error"]["param"] == param
    code, ok = post(server[0], "/chat/completions", {"messages": HI, "max_tokens": 2, "temperature": 0})
    assert code == 200 and ok["choices"][0]["finish_reason"] in ("stop", "length")
    assert server[1].poll() is None


def test_a_request_that_would_never_end_is_capped(server):
    # min_tokens bans the end of text; stock llama_cpp.server ends such a request when its context
    # fills, which inside a budget never happens
    t = time.time()
    code, r = post(server[0], "/chat/completions", {"messages": HI, "min_tokens": 10**9, "temperature": 0})
    assert code == 200, r
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == CAP
    code, r = post(server[0], "/completions", {"prompt": "Once upon a time", "max_tokens": 0,
                                               "min_tokens": 10**9, "temperature": 0})
    assert code == 200 and r["usage"]["completion_tokens"] == CAP
    code, r = post(server[0], "/completions", {"prompt": "Once upon a time", "min_tokens": 10**9})
    assert code == 200 and r["usage"]["completion_tokens"] == 16     # upstream's default, kept
    assert time.time() - t < 120


def test_a_request_ends_at_the_request_timeout():
    with serving("--budget", "128", "--threads", "1", "--max-tokens", "100000",
                 "--request-timeout", "5") as (base, proc):
        t = time.time()
        code, r = post(base, "/chat/completions", {"messages": HI, "min_tokens": 10**9})
        assert code == 200 and r["choices"][0]["finish_reason"] == "length"
        assert 0 < r["usage"]["completion_tokens"] < 100000 and time.time() - t < 30
        code, r = post(base, "/chat/completions", {"messages": HI, "max_tokens": 3, "min_tokens": 3,
                                                   "temperature": 0})
        assert code == 200 and r["usage"]["completion_tokens"] == 3    # a fresh limit per request


def test_limit_generation_ends_an_answer_as_max_tokens_would(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=64, n_threads=1, verbose=False)
    llm.limit_generation(0.0)
    r = llm.create_completion("Once upon a time", max_tokens=20, temperature=0)
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["finish_reason"] == "length"
    llm.limit_generation(None)
    r = llm.create_completion("Once upon a time", max_tokens=5, temperature=0)
    assert r["usage"]["completion_tokens"] == 5
    llm.close()


def test_valid_grammar_and_logit_bias_still_work(server):
    code, r = post(server[0], "/chat/completions", {"messages": HI, "max_tokens": 4, "temperature": 0,
                                                    "grammar": 'root ::= "yes" | "no"'})
    assert code == 200 and r["choices"][0]["message"]["content"] in ("yes", "no")
    code, r = post(server[0], "/completions", {"prompt": "The capital of France is", "max_tokens": 3,
                                               "temperature": 0, "logit_bias": {"42": -100.0}})
    assert code == 200 and r["choices"][0]["text"]
    code, r = post(server[0], "/completions", {"prompt": "word " * 200, "max_tokens": 2,
                                               "temperature": 0})
    assert code == 200        # longer than the budget, within the prompt cap: read through it


def test_the_generation_api_refuses_what_llama_cpp_would_crash_on(default_model):
    import llama_cpp

    llm = pyrcedge.Llama(str(default_model), kv_budget=64, n_threads=1, verbose=False)
    bad = llama_cpp.LlamaGrammar.from_string(BAD_GRAMMAR, verbose=False)
    for kw in (dict(grammar=bad), dict(logit_bias={10**9: 1.0}), dict(logit_bias={-1: 1.0})):
        with pytest.raises(pyrcedge.GenerationInputError):
            llm.create_completion("Hi", max_tokens=2, **kw)
        with pytest.raises(ValueError):
            llm.create_chat_completion(HI, max_tokens=2, **kw)
    with pytest.raises(pyrcedge.GenerationInputError, match="token id 1000000000"):
        llm.create_completion([1, 10**9], max_tokens=2)
    assert llm.create_completion("Hi", max_tokens=2)["choices"][0]["text"] is not None
    llm.close()


# --- fuzzing, bounded in count and time ------------------------------------------------------

FUZZ_SEED = int(os.environ.get("PYRCEDGE_FUZZ_SEED", "0"))

FUZZ_MODEL = """
import random, shutil, sys
import pyrcedge
from pyrcedge.assets.gguf_header import read_metadata
source, target, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shutil.copyfile(source, target)
data = open(source, "rb").read(1 << 22)
scalars = [f.offset for f in read_metadata(source).values() if not f.is_array]
rng = random.Random(seed)
for i in range(n):
    cut = rng.random() < 0.25
    at = rng.randrange(0, 2 << 20) if cut else rng.choice([rng.randrange(0, 2048), rng.choice(scalars) + rng.randrange(8)])
    new = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4])))
    with open(target, "r+b") as f:
        if cut:
            f.truncate(at)
        else:
            f.seek(at); f.write(new)
    print(f"case {i}: {'cut at' if cut else 'bytes at'} {at} {'' if cut else new.hex()}", flush=True)
    try:
        llm = pyrcedge.Llama(target, kv_budget=48, n_threads=1, verbose=False)
        llm.create_completion("Hi", max_tokens=1)
        llm.close()
        print("  loaded", flush=True)
    except ValueError as e:
        print("  refused", type(e).__name__, flush=True)
    if cut:
        shutil.copyfile(source, target)
    else:
        with open(target, "r+b") as f:
            f.seek(at); f.write(data[at : at + len(new)])
"""


def test_fuzzed_model_headers_never_crash(default_model, tmp_path):
    n = 20
    done = run_python(FUZZ_MODEL, str(default_model), str(tmp_path / "fuzz.gguf"),
                      str(FUZZ_SEED), str(n), timeout=240)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"exit {done.returncode} after {lines[-1:]}: {done.stderr[-1500:]}"
    outcomes = [line.split()[0] for line in lines if line.startswith("  ")]
    assert len(outcomes) == n and set(outcomes) <= {"loaded", "refused"}
    assert "refused" in outcomes


FUZZ_SESSION = """
import random, sys
import numpy as np
import pyrcedge
from pyrcedge import session
llm = pyrcedge.Llama(sys.argv[1], kv_budget=64, policy="a2sf", n_threads=1, flash_attn=True, seed=0,
                     verbose=False)
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog while the cat sleeps. " * 4))
saved = session.save_state(llm)
llm.eval(llm.tokenize(b" And more.", add_bos=False))
rng, n, counts = random.Random(int(sys.argv[2])), int(sys.argv[3]), {"loaded": 0, "refused": 0}
for i in range(n):
    state = session.decode(session.encode(saved))
    where = rng.choice(["kv", "array", "header"])
    if where == "kv":
        kv = bytearray(state.kv)
        for _ in range(rng.choice([1, 2, 8])):
            kv[rng.randrange(len(kv))] = rng.randrange(256)
        state.kv = bytes(kv[: rng.randrange(len(kv))] if rng.random() < 0.2 else kv)
    elif where == "array":
        flat = state.arrays[rng.choice(sorted(state.arrays))].reshape(-1)
        j = rng.randrange(len(flat))
        flat[j] = (rng.choice([-1, 0, 10**6, int(flat[j]) + 1, 2**31 - 1]) if flat.dtype.kind in "iu"
                   else rng.choice([np.nan, np.inf, -1.0, 1e30]))
    else:
        book = state.header["bookkeeping"]
        book[rng.choice(sorted(book))] = rng.choice([-1, 0, 10**12, "x", None, [], [[1, 2]], [[2, 1]]])
    before = session.capture(llm)
    try:
        llm.load_state(state)
        counts["loaded"] += 1
        llm.load_state(before)
    except pyrcedge.SessionError:
        counts["refused"] += 1
        after = session.capture(llm)
        same = before.header == after.header and before.kv == after.kv and all(
            np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)
        assert same, f"case {i} ({where}): a refused load changed the Llama"
print(counts["loaded"], counts["refused"])
"""


def test_fuzzed_sessions_never_crash_and_a_refusal_changes_nothing(default_model):
    n = 40
    done = run_python(FUZZ_SESSION, str(default_model), str(FUZZ_SEED), str(n), timeout=240)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-1500:]}"
    loaded, refused = map(int, done.stdout.split())
    assert loaded + refused == n and refused > 0


FUZZ_KEYS = ["messages", "prompt", "max_tokens", "min_tokens", "temperature", "top_p", "top_k",
             "min_p", "n", "stream", "grammar", "logit_bias", "logit_bias_type", "stop", "seed",
             "repeat_penalty", "presence_penalty", "frequency_penalty", "mirostat_mode",
             "logprobs", "top_logprobs", "response_format", "tools", "tool_choice", "suffix",
             "echo", "best_of", "model"]
FUZZ_VALUES = [-1, 0, 1, 2, 10**9, -(10**9), 2**63, 1e308, 0.5, "x", "", None, [], {}, [1, 2],
               {"a": 1}, True, math.nan, math.inf, HI, [{"role": "x"}], [{"content": 5}],
               {"type": "json_object"}, {"0": 1.0}, {"x": 1}, ["a", "b"], [0, 1, 10**6],
               [[1, 2], [3]], 'root ::= "a"', "root ::= (", {"type": "function"}]


def test_random_json_bodies_never_take_the_server_down(server):
    import random

    rng = random.Random(FUZZ_SEED)
    statuses, deadline = [], time.time() + 90
    for _ in range(60):
        if time.time() > deadline:
            break
        chat = rng.random() < 0.6
        body = {k: rng.choice(FUZZ_VALUES) for k in rng.sample(FUZZ_KEYS, rng.randrange(1, 6))}
        if rng.random() < 0.7:
            body.setdefault("messages" if chat else "prompt", HI if chat else "Hi")
        code, reply = post(server[0], "/chat/completions" if chat else "/completions", body)
        assert code < 500, (body, reply)
        statuses.append(code)
        assert server[1].poll() is None, body
    assert len(statuses) >= 20 and 200 in statuses and 400 in statuses


def test_an_empty_prompt_is_refused_but_continuing_the_history_is_not(default_model):
    llm = pyrcedge.Llama(str(default_model), kv_budget=64, n_threads=1, verbose=False)
    with pytest.raises(pyrcedge.GenerationInputError, match="no tokens"):
        llm.create_completion("", max_tokens=2)
    with pytest.raises(pyrcedge.GenerationInputError):
        next(llm.generate([], temp=0.0))
    llm.eval(llm.tokenize(b"Once upon a time"))
    assert next(llm.generate([], temp=0.0, reset=False)) >= 0      # continues the history
    llm.close()
