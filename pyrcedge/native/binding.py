"""cffi binding of pyrcedge's C API (native/include/llama-rcedge.h) in the libllama that
llama_cpp has loaded.

ABI mode: nothing is compiled at install time. The library is opened by the same path as
llama_cpp's ctypes handle, so the dynamic loader hands back the very same library: contexts
made through llama_cpp can be passed to these functions.
"""

from __future__ import annotations

import ctypes
import functools
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as lc
from cffi import FFI

from ..errors import NativeLibraryError

# The declarations of native/include/llama-rcedge.h, without the LLAMA_API macro.
# tests/test_native.py checks that the two lists agree.
CDEF = """
struct llama_context;
struct llama_model;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;
const char * llama_rcedge_version(void);
int32_t llama_rcedge_kv_cells_used(const struct llama_context * ctx);
int32_t llama_rcedge_kv_cells_total(const struct llama_context * ctx);
int32_t llama_rcedge_set_exact_n_ctx(int32_t exact);
int64_t llama_rcedge_kv_cell_bytes( const struct llama_model * model, int32_t type_k, int32_t type_v, int32_t flash_attn);
int64_t llama_rcedge_kv_bytes(const struct llama_context * ctx);
int32_t llama_rcedge_scoring_enable(struct llama_context * ctx, float alpha);
int32_t llama_rcedge_set_force_portable(int32_t force);
int32_t llama_rcedge_scoring_portable(const struct llama_context * ctx);
int32_t llama_rcedge_scoring_device_fused(const struct llama_context * ctx);
int32_t llama_rcedge_scoring_disable(struct llama_context * ctx);
int32_t llama_rcedge_scoring_enabled(const struct llama_context * ctx);
int32_t llama_rcedge_set_alpha(struct llama_context * ctx, float alpha);
int32_t llama_rcedge_set_query_window(struct llama_context * ctx, int32_t n_queries);
int32_t llama_rcedge_set_moments(struct llama_context * ctx, int32_t on);
int32_t llama_rcedge_set_decay_only(struct llama_context * ctx, int32_t on);
int32_t llama_rcedge_reset_stats(struct llama_context * ctx, uint32_t what);
int32_t llama_rcedge_n_layer(const struct llama_context * ctx);
int32_t llama_rcedge_n_head_kv(const struct llama_context * ctx, int32_t il);
int32_t llama_rcedge_get_cells( const struct llama_context * ctx, int32_t * cells, llama_pos * pos, llama_seq_id * seq, int32_t n_max);
int32_t llama_rcedge_get_scores( const struct llama_context * ctx, int32_t il, const int32_t * cells, int32_t n_cells, float * out, size_t n_out);
int32_t llama_rcedge_set_scores( struct llama_context * ctx, int32_t il, const int32_t * cells, int32_t n_cells, const float * in, size_t n_in);
int32_t llama_rcedge_probe_capture(struct llama_context * ctx, int32_t n_max);
int32_t llama_rcedge_probe_n_kept(const struct llama_context * ctx);
int32_t llama_rcedge_probe_max( const struct llama_context * ctx, const int32_t * cells, int32_t n_cells, int32_t shift, int32_t n_layer, float * out, size_t n_out);
int32_t llama_rcedge_set_stop_layer(struct llama_context * ctx, int32_t n_layer);
"""

ffi = FFI()
ffi.cdef(CDEF)

# what native/build.py writes beside the libraries: the build key, variant and patch series
BUILD_MARKER = "pyrcedge-build.json"


def libllama_path() -> str:
    """Path of the libllama that llama_cpp loaded."""
    return str(lc._lib._name)


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python's version: 0.3.36+rcedge.KEY for pyrcedge's build."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown (llama_cpp imported from outside an installed distribution)"


@functools.lru_cache(maxsize=1)
def lib() -> Any:
    """The cffi library object; raises NativeLibraryError for a libllama without our API
    (`import pyrcedge` calls it, so a stock libllama stops the import)."""
    handle = ffi.dlopen(libllama_path())
    try:
        _ = handle.llama_rcedge_version
    except AttributeError:
        raise NativeLibraryError(
            f"{libllama_path()} (llama-cpp-python {llama_cpp_python_version()}) is a stock "
            "libllama: it lacks pyrcedge's patches (no llama_rcedge_version). pyrcedge needs "
            "llama-cpp-python 0.3.36+rcedge.KEY, built by pyrcedge: in a pyrcedge clone run "
            "scripts/setup.sh, then in this environment `pip install --no-index --no-deps "
            "--force-reinstall --find-links CLONE/dist llama-cpp-python` (docs/build.md)"
        ) from None
    return handle


def build_info() -> dict[str, Any]:
    """What `pyrcedge info` tells about the loaded (patched) libllama: its path, the native API
    version, the llama-cpp-python version and the marker native/build.py left beside it."""
    path = libllama_path()
    try:
        build = json.loads((Path(path).parent / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        build = {}
    return {"libllama": path, "llama_cpp_python": llama_cpp_python_version(),
            "native_api": version(), "build": build}


def version() -> str:
    """Version of the native API compiled into libllama."""
    return ffi.string(lib().llama_rcedge_version()).decode()


def context_ptr(ctx: Any) -> Any:
    """A cffi pointer for a llama_context given as a ctypes pointer (Llama.ctx) or an int."""
    if ctx is None:
        raise ValueError("no llama_context (was the model closed?)")
    addr = ctx if isinstance(ctx, int) else ctypes.cast(ctx, ctypes.c_void_p).value
    if not addr:
        raise ValueError("null llama_context")
    return ffi.cast("struct llama_context *", addr)


def kv_cells_used(ctx: Any) -> int:
    """Cells of the context's KV cache holding a token."""
    n = lib().llama_rcedge_kv_cells_used(context_ptr(ctx))
    if n < 0:
        raise NativeLibraryError("this context's memory is not a plain KV cache")
    return int(n)


def kv_cells_total(ctx: Any) -> int:
    """Cells the context's KV cache was allocated with."""
    n = lib().llama_rcedge_kv_cells_total(context_ptr(ctx))
    if n < 0:
        raise NativeLibraryError("this context's memory is not a plain KV cache")
    return int(n)
