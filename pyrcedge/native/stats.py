"""The attention statistics the patched kernels keep per layer, KV head and KV cell of a llama.cpp
context (native/include/llama-rcedge.h; their use: docs/rcstat.md): turning scoring on and off,
reading and writing them. (Imported as `pyrcedge.scoring` too.)

Every function takes the context as llama_cpp gives it (`Llama.ctx`). Arrays returned are
copies owned by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import NativeLibraryError, ScoringError, ScoringInputError
from . import binding as _native

STATS = ("a2sf", "count", "sum", "sumsq", "max")
N_STATS = len(STATS)
# the index of each statistic in the last axis of what read_scores returns
A2SF, COUNT, SUM, SUMSQ, MAX = range(N_STATS)

RESET_A2SF = 1
RESET_MOMENTS = 2


_ERRORS: dict[int, tuple[type[Exception], str]] = {
    -1: (ScoringInputError, "a required pointer is NULL"),
    -2: (NativeLibraryError, "this context's memory is not a plain KV cache (sliding-window or recurrent models are not supported)"),
    -3: (NativeLibraryError, "the KV cache is not in host memory (scoring runs on the CPU)"),
    -4: (ScoringError, "scoring is off on this context: call enable_scoring first"),
    -5: (ScoringInputError, "alpha must be a number in [0, 1]"),
    -6: (ScoringInputError, "layer index out of range"),
    -7: (ScoringInputError, "cell index out of range"),
    -8: (ScoringInputError, "output buffer too small"),
    -9: (ScoringError, "could not allocate the statistics"),
    -10: (ScoringError, "layers differ in KV heads: read them one layer at a time"),
    -11: (NativeLibraryError, "the portable scoring path cannot serve this KV cache (several streams, or a quantised V cache)"),
    -12: (ScoringError, "no question probe's queries are kept: call probe_capture and decode first"),
    -13: (ScoringError, "kept probe queries are not scored against a quantised K cache"),
    -14: (ScoringError, "decodes cannot stop early on this context (the portable scoring path, or an eval callback of its own)"),
}


def _check(code: int, what: str) -> int:
    if code >= 0:
        return code
    kind, message = _ERRORS.get(code, (ScoringError, f"error code {code}"))
    raise kind(f"{what}: {message}")


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise ScoringInputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def enable_scoring(ctx: Any, alpha: float = 1.0, *, portable: bool | None = None) -> None:
    """Allocate the statistics beside the KV cache and start accumulating them.

    portable=True forces the portable path (standard ggml ops in the graph, as on GPU backends)
    even for a KV cache in host memory; None lets the backend decide (fused CPU kernels for a
    host cache, portable otherwise)."""
    lib = _native.lib()
    alpha = _check_alpha(alpha)
    prev = lib.llama_rcedge_set_force_portable(1 if portable else 0)
    try:
        _check(lib.llama_rcedge_scoring_enable(_native.context_ptr(ctx), alpha), "enable_scoring")
    finally:
        lib.llama_rcedge_set_force_portable(prev)


def scoring_portable(ctx: Any) -> bool:
    """True when the context's statistics come from the portable graph ops, False from the fused
    CPU kernels (scoring must be on)."""
    return bool(_check(_native.lib().llama_rcedge_scoring_portable(_native.context_ptr(ctx)),
                       "scoring_portable"))


def scoring_device_fused(ctx: Any) -> bool:
    """True when the portable path's statistics come from the GPU backend's own kernels
    (ggml-cuda), False from standard graph ops (Metal and every other backend) or the fused CPU
    kernels (scoring must be on)."""
    return bool(_check(_native.lib().llama_rcedge_scoring_device_fused(_native.context_ptr(ctx)),
                       "scoring_device_fused"))


def disable_scoring(ctx: Any) -> None:
    """Stop scoring and free the statistics; the graph is then exactly the stock one."""
    _check(_native.lib().llama_rcedge_scoring_disable(_native.context_ptr(ctx)), "disable_scoring")


def scoring_enabled(ctx: Any) -> bool:
    return bool(_check(_native.lib().llama_rcedge_scoring_enabled(_native.context_ptr(ctx)),
                       "scoring_enabled"))


def set_alpha(ctx: Any, alpha: float) -> None:
    _check(_native.lib().llama_rcedge_set_alpha(_native.context_ptr(ctx), _check_alpha(alpha)),
           "set_alpha")


def set_query_window(ctx: Any, n_queries: int) -> int:
    """Take each ubatch's statistics from its last n_queries queries (0: all, the default), on
    the portable path and in the fused CPU kernels (patch 0012). Prefill then costs a fraction of
    the statistics work; a2sf loses at most the decayed weight of the queries left out, and the
    moments describe the window's queries only (docs/scoring.md, "Query window"). pyrcedge.Llama
    sets its policy's Policy.prefill_window(). Returns the previous window."""
    return _check(_native.lib().llama_rcedge_set_query_window(_native.context_ptr(ctx), int(n_queries)),
                  "set_query_window")


def set_moments(ctx: Any, on: bool) -> bool:
    """Whether the fused CPU kernels keep the logit moments (count, sum, sumsq, max) beside
    a2sf (True, the default) or a2sf alone, reading and writing one statistic per KV head and
    cell each step instead of five. While off the moments keep what they held, and a cell
    written since reads count 0 (max -inf). The portable path keeps all five either way.
    pyrcedge.Llama turns them off when nothing it runs reads them (Policy.reads_moments).
    Returns the previous setting."""
    return bool(_check(_native.lib().llama_rcedge_set_moments(_native.context_ptr(ctx), int(bool(on))),
                       "set_moments"))


def set_decay_only(ctx: Any, on: bool) -> bool:
    """While on, the next decodes' queries give no statistics: the A2SF scores only decay, by
    alpha per query, and the moments stay as they were (every path: fused CPU kernels, portable
    graph ops, ggml-cuda). For the chunks of a long prompt whose statistics nothing reads before
    the next chunk (docs/scoring.md, "Decay only"): pyrcedge.Llama sets it for them when its
    policy takes a prefill window, where that was measured to pay (the portable path, long
    reads: Llama._decay_only_pays). Returns the previous setting."""
    return bool(_check(_native.lib().llama_rcedge_set_decay_only(_native.context_ptr(ctx), int(bool(on))),
                       "set_decay_only"))


def reset_stats(ctx: Any, *, a2sf: bool = True, moments: bool = True) -> None:
    """Clear the A2SF scores and/or the logit moments of every cell (a new window)."""
    what = (RESET_A2SF if a2sf else 0) | (RESET_MOMENTS if moments else 0)
    _check(_native.lib().llama_rcedge_reset_stats(_native.context_ptr(ctx), what), "reset_stats")


def n_layer(ctx: Any) -> int:
    return _check(_native.lib().llama_rcedge_n_layer(_native.context_ptr(ctx)), "n_layer")


def n_head_kv(ctx: Any, layer: int) -> int:
    return _check(_native.lib().llama_rcedge_n_head_kv(_native.context_ptr(ctx), int(layer)),
                  f"n_head_kv(layer={layer})")


@dataclass(frozen=True)
class Cells:
    """The used cells of the cache, in cell order."""

    index: npt.NDArray[np.int32]
    pos: npt.NDArray[np.int32]
    seq: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.index)


def used_cells(ctx: Any) -> Cells:
    lib, ptr = _native.lib(), _native.context_ptr(ctx)
    n = _check(lib.llama_rcedge_get_cells(ptr, _native.ffi.NULL, _native.ffi.NULL, _native.ffi.NULL, 0),
               "used_cells")
    index, pos, seq = (np.empty(n, np.int32) for _ in range(3))
    if n:
        got = lib.llama_rcedge_get_cells(ptr, _native.ffi.from_buffer("int32_t[]", index),
                                         _native.ffi.from_buffer("int32_t[]", pos),
                                         _native.ffi.from_buffer("int32_t[]", seq), n)
        _check(got, "used_cells")
    return Cells(index=index, pos=pos, seq=seq)


def read_scores(ctx: Any, layer: int | None = None,
                cells: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
    """Statistics as an array [cell, KV head, stat] (stat order: STATS) for one layer, or reduced
    over all layers when layer is None. cells: cell indices (default: the used cells)."""
    ptr = _native.context_ptr(ctx)
    idx = used_cells(ctx).index if cells is None else np.ascontiguousarray(cells, dtype=np.int32)
    if idx.ndim != 1:
        raise ScoringInputError("cells must be a one-dimensional list of cell indices")
    il = -1 if layer is None else int(layer)
    if layer is not None and not 0 <= il < n_layer(ctx):
        raise ScoringInputError(f"read_scores: layer {layer} out of range [0, {n_layer(ctx)})")
    heads = n_head_kv(ctx, 0 if il < 0 else il)
    out = np.empty((len(idx), heads, N_STATS), np.float32)
    code = _native.lib().llama_rcedge_get_scores(
        ptr, il, _native.ffi.from_buffer("int32_t[]", idx) if len(idx) else _native.ffi.NULL,
        len(idx), _native.ffi.from_buffer("float[]", out) if len(idx) else _native.ffi.NULL, out.size)
    _check(code, f"read_scores(layer={layer})")
    return out


def write_scores(ctx: Any, layer: int, cells: npt.ArrayLike, values: npt.ArrayLike) -> None:
    """Overwrite layer `layer`'s statistics of `cells` with values [cell, KV head, stat] (as
    read_scores returns them); used to restore saved sessions."""
    idx = np.ascontiguousarray(cells, dtype=np.int32)
    heads = n_head_kv(ctx, layer)
    vals = np.ascontiguousarray(values, dtype=np.float32)
    if idx.ndim != 1 or vals.shape != (len(idx), heads, N_STATS):
        raise ScoringInputError(f"write_scores: values must have shape ({len(idx)}, {heads}, "
                                f"{N_STATS}), got {vals.shape}")
    if not len(idx):
        return
    code = _native.lib().llama_rcedge_set_scores(
        _native.context_ptr(ctx), int(layer), _native.ffi.from_buffer("int32_t[]", idx), len(idx),
        _native.ffi.from_buffer("float[]", vals), vals.size)
    _check(code, f"write_scores(layer={layer})")


def read_layers(ctx: Any, cells: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Every layer's statistics of `cells`: [layer, cell, KV head, stat]."""
    return np.stack([read_scores(ctx, il, cells) for il in range(n_layer(ctx))])


def write_layers(ctx: Any, cells: npt.ArrayLike, values: npt.ArrayLike) -> None:
    """Overwrite every layer's statistics of `cells` with values [layer, cell, KV head, stat]."""
    vals = np.asarray(values)
    if vals.ndim != 4 or len(vals) != n_layer(ctx):
        raise ScoringInputError(f"write_layers: values must be [layer, cell, KV head, stat] for "
                                f"{n_layer(ctx)} layers, got shape {vals.shape}")
    for il in range(len(vals)):
        write_scores(ctx, il, cells, vals[il])


def probe_capture(ctx: Any, n_max: int) -> None:
    """Keep each layer's queries of the last n_max tokens of every following decode (n_max > 0,
    replacing those kept), stop keeping but hold on to them (0), or free them (< 0)."""
    _check(_native.lib().llama_rcedge_probe_capture(_native.context_ptr(ctx), int(n_max)),
           "probe_capture")


def probe_n_kept(ctx: Any) -> int:
    """How many queries the last decode kept (0 before one)."""
    return _check(_native.lib().llama_rcedge_probe_n_kept(_native.context_ptr(ctx)), "probe_n_kept")


def probe_max(ctx: Any, cells: npt.ArrayLike, shift: int = 0,
              layers: int = 0) -> npt.NDArray[np.float32]:
    """[layer, cell, KV head]: the largest logit a kept query gives each cell (what the max
    statistic would hold after decoding the probe again `shift` positions later, its queries
    unchanged; native/include/llama-rcedge.h), for the first `layers` layers (0: all; the
    others -inf)."""
    idx = np.ascontiguousarray(cells, dtype=np.int32)
    if idx.ndim != 1:
        raise ScoringInputError("cells must be a one-dimensional list of cell indices")
    out = np.empty((n_layer(ctx), len(idx), n_head_kv(ctx, 0)), np.float32)
    code = _native.lib().llama_rcedge_probe_max(
        _native.context_ptr(ctx), _native.ffi.from_buffer("int32_t[]", idx) if len(idx) else _native.ffi.NULL,
        len(idx), int(shift), int(layers),
        _native.ffi.from_buffer("float[]", out) if len(idx) else _native.ffi.NULL, out.size)
    _check(code, "probe_max")
    return out


def set_stop_layer(ctx: Any, layers: int) -> int:
    """Make the next decodes stop after the attention of their first `layers` layers (0: decode
    the whole model); returns the previous setting. For a probe decoded only for its statistics
    and kept queries: its cells hold the first layers' K and V alone and must be removed before
    anything else is decoded. ScoringError where decodes cannot stop early (the portable path)."""
    return _check(_native.lib().llama_rcedge_set_stop_layer(_native.context_ptr(ctx), int(layers)),
                  "set_stop_layer")
