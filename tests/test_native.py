"""The patched libllama is the one llama_cpp loads, and our C API answers through cffi."""

from __future__ import annotations

import json
import re
from pathlib import Path

import llama_cpp

from pyrcedge.native import binding as _native

HEADER = Path(__file__).resolve().parent.parent / "native" / "include" / "llama-rcedge.h"


def _functions(text: str) -> set[str]:
    """Function declarations in C text, normalised: comments and LLAMA_API dropped, one space."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"^\s*#[^\n]*|extern\s+\"C\"\s*\{|\}", "", text, flags=re.M)
    decls = (" ".join(d.replace("LLAMA_API", "").split()) for d in text.split(";"))
    return {d for d in decls if d.endswith(")") and "(" in d and not d.startswith("extern")}


def test_version_through_cffi():
    assert re.fullmatch(r"\d+\.\d+\.\d+", _native.version())


def test_llama_cpp_loads_the_patched_library():
    # patch 0001 adds this to the system info: llama_cpp's own ctypes handle sees our build
    info = llama_cpp.llama_print_system_info().decode()
    assert f"RCEDGE = {_native.version()} |" in info


def test_build_marker_names_the_patch_series():
    marker = json.loads((Path(_native.libllama_path()).parent / "pyrcedge-build.json").read_text())
    assert marker["variant"] == "patched"
    shipped = sorted(p.name for p in (HEADER.parent.parent / "patches").glob("*.patch"))
    assert marker["patches"] == shipped


def test_cdef_matches_header():
    header = _functions(HEADER.read_text())
    assert header and header == _functions(_native.CDEF)


def test_kv_cells_follow_the_cache(llm):
    total = _native.kv_cells_total(llm.ctx)
    assert total == llm.n_ctx() == 256
    llm.reset()
    llm._ctx.kv_cache_clear()
    assert _native.kv_cells_used(llm.ctx) == 0
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog.")
    llm.eval(tokens)
    assert _native.kv_cells_used(llm.ctx) == len(tokens)
    llm.eval(tokens[:3])
    assert _native.kv_cells_used(llm.ctx) == len(tokens) + 3
    # removing positions frees their cells
    mem = llama_cpp.llama_get_memory(llm.ctx)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 2, 5)
    assert _native.kv_cells_used(llm.ctx) == len(tokens)


def test_null_context_is_refused():
    import pytest

    with pytest.raises(ValueError, match="llama_context"):
        _native.kv_cells_used(None)
    assert _native.lib().llama_rcedge_kv_cells_used(_native.ffi.NULL) == -1
