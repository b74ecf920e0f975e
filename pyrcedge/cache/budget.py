"""KV memory budgets: what a user writes (tokens, "256MiB", "25%", "auto") parsed once into a
`Budget`, and turned into KV cells.

A cell holds one token's K and V in every layer. Its size in bytes comes from libllama
(llama_rcedge_kv_cell_bytes), computed exactly as llama_kv_cache allocates it for the chosen
cache types, so a byte budget bounds the real allocation. The statistics that scoring keeps
beside the cache (5 floats per layer, KV head and cell) are reported apart: they are not K or V.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Callable, Literal, Union

import llama_cpp
import psutil

from ..errors import BudgetError
from ..native import binding as _native

# "auto" takes this fraction of the memory available when the model is opened: the rest is
# left for the model weights, the compute buffers, Python and the other programs running.
AUTO_FRACTION = 0.25
# ggml aligns every tensor in a buffer; the allowance covers the K and V tensors of all layers.
_ALIGN_SLACK_PER_TENSOR = 256

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

GGML_TYPE_F16 = 1
# the KV cache types llama.cpp accepts (common/arg.cpp, kv_cache_types): another ggml type id
# aborts or crashes it when the cache is created or first written
KV_CACHE_TYPES = {0: "f32", 1: "f16", 30: "bf16", 8: "q8_0", 2: "q4_0", 3: "q4_1", 20: "iq4_nl",
                  6: "q5_0", 7: "q5_1"}
FLOAT_KV_CACHE_TYPES = (0, 1, 30)     # f32, f16, bf16: the others are quantised
# llama.cpp holds n_ctx in a uint32 and positions in an int32: no cache can use more cells
MAX_CELLS = 2**31 - 1
# budgets of more cells are checked against the memory available before anything is allocated
# (the check loads the model's hyper-parameters: about 0.1 s, nothing beside a cache this big)
MEMORY_CHECKED_ABOVE = 1 << 16


def check_cache_type(value: object, name: str) -> int:
    """A KV cache type id (type_k, type_v) that llama.cpp supports; F16 for None."""
    if value is None:
        return GGML_TYPE_F16
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in KV_CACHE_TYPES:
        kinds = ", ".join(f"{n} ({t})" for t, n in sorted(KV_CACHE_TYPES.items()))
        raise BudgetError(f"{name}={value!r} is not a KV cache type llama.cpp supports: give "
                          f"the ggml type id of one of {kinds}")
    return int(value)


def check_cells(cells: int, what: str) -> int:
    """`cells` when a KV cache of that many cells can exist in llama.cpp (its C types)."""
    if cells > MAX_CELLS:
        raise BudgetError(f"{what} of {cells} cells is more than llama.cpp can address "
                          f"({MAX_CELLS}: n_ctx is a uint32, positions an int32)")
    return cells


def parse_bytes(text: str) -> int:
    """'256MiB' -> 268435456, '1.5GB' -> 1500000000 (SI and binary units; case-insensitive)."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise BudgetError(f"kv_budget {text!r} is not a size: write tokens as an int, bytes as "
                          "'256MiB' or '1.5GB', a share as '25%', or 'auto'")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Budget:
    """A KV budget as a user writes it, parsed once: tokens (512), bytes ("64MiB", "1.5GB"), a
    share of a text's tokens ("25%", for the evaluation commands) or "auto" (a quarter of the
    memory available when the model is opened). Budget.parse is argparse's type= as well."""

    kind: Literal["tokens", "bytes", "share", "auto"]
    value: float = 0.0          # tokens, bytes, or the share in (0, 1]

    @classmethod
    def parse(cls, spec: BudgetLike) -> Budget:
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool) or not isinstance(spec, (int, str)):
            raise BudgetError(f"kv_budget must be tokens (int), a size ('256MiB') or 'auto', "
                              f"got {spec!r}")
        if isinstance(spec, int):
            if spec < 1:
                raise BudgetError(f"kv_budget must be at least 1 token, got {spec}")
            return cls("tokens", check_cells(spec, "kv_budget"))
        text = spec.strip()
        if text.isdigit():
            return cls.parse(int(text))
        if text.lower() == "auto":
            return cls("auto")
        if text.endswith("%"):
            try:
                share = float(text[:-1]) / 100
            except ValueError:
                raise BudgetError(f"kv_budget {spec!r} is not a percentage") from None
            if not 0 < share <= 1:
                raise BudgetError(f"a budget share must be in (0%, 100%], got {spec}")
            return cls("share", share)
        return cls("bytes", parse_bytes(text))

    @classmethod
    def argument(cls, text: str) -> Budget:
        """argparse type=: a Budget, or argparse's own error for a bad value."""
        try:
            return cls.parse(text)
        except BudgetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def of(self, n_tokens: int, floor: int = 1) -> Budget:
        """A share turned into tokens of a text of n_tokens (rounded up, at least `floor`: the
        smallest budget that can evict); other budgets unchanged."""
        if self.kind != "share":
            return self
        return Budget("tokens", max(floor, math.ceil(self.value * n_tokens)))

    def to_json(self) -> int | str:
        """Tokens as an int, other budgets as they are written ("64MiB" as bytes, "25%")."""
        return int(self.value) if self.kind == "tokens" else str(self)

    def __str__(self) -> str:
        if self.kind == "auto":
            return "auto"
        if self.kind == "share":
            return f"{self.value * 100:g}%"
        return f"{int(self.value)}" + ("" if self.kind == "tokens" else "B")


BudgetLike = Union[int, str, Budget, None]


@dataclass(frozen=True)
class ModelShape:
    """What sizing a KV cache needs to know of a model."""

    cell_bytes: int        # K + V of one cell over all layers, at the chosen cache types
    n_layer: int
    n_ctx_train: int


def model_shape(model_path: str | os.PathLike[str], type_k: int, type_v: int,
                flash_attn: bool) -> ModelShape:
    """Read the model's hyper-parameters and size one cell. llama.cpp skips the
    hyper-parameters in a vocab_only load, so this is a full load, memory-mapped: the weights'
    pages are read on use, and the page cache serves them to the real load that follows."""
    params = llama_cpp.llama_model_default_params()
    params.use_mmap = True
    params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(os.fsencode(model_path), params)
    if not model:
        raise BudgetError(f"cannot read the hyper-parameters of {model_path}")
    try:
        ptr = _native.ffi.cast("struct llama_model *", ctypes.cast(model, ctypes.c_void_p).value)
        cell = int(_native.lib().llama_rcedge_kv_cell_bytes(ptr, int(type_k), int(type_v),
                                                              1 if flash_attn else 0))
        n_layer = int(llama_cpp.llama_model_n_layer(model))
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
    finally:
        llama_cpp.llama_model_free(model)
    if cell <= 0:
        raise BudgetError(f"invalid KV cache types type_k={type_k}, type_v={type_v}")
    return ModelShape(cell_bytes=cell, n_layer=n_layer, n_ctx_train=n_ctx_train)


def available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def cells_for(spec: BudgetLike, shape_of: Callable[[], ModelShape],
              default_cells: int) -> tuple[int, int | None]:
    """(cells, byte limit or None) for a budget. shape_of() is called for byte budgets and for
    caches large enough that they may not fit in memory."""
    cells, limit = _cells_and_limit(spec, shape_of, default_cells)
    what = "kv_budget" if spec is not None else "n_ctx"
    check_cells(cells, what)
    if cells > MEMORY_CHECKED_ABOVE:
        need, free = cells * shape_of().cell_bytes, available_bytes()
        if need > free:
            raise BudgetError(f"{what} of {cells} cells takes {need / 2**30:.1f} GiB of KV cache, "
                              f"more than the {free / 2**30:.1f} GiB of memory available: give a "
                              "smaller budget, a size ('256MiB') or 'auto'")
    return cells, limit


def _cells_and_limit(spec: BudgetLike, shape_of: Callable[[], ModelShape],
                     default_cells: int) -> tuple[int, int | None]:
    if spec is None:
        return default_cells, None
    budget = Budget.parse(spec)
    if budget.kind == "tokens":
        return int(budget.value), None
    if budget.kind == "share":
        raise BudgetError(f"kv_budget {budget} is a share of a text's tokens: only the "
                          "evaluation commands take one; give tokens, a size or 'auto'")
    shape = shape_of()
    if budget.kind == "auto":
        limit = int(available_bytes() * AUTO_FRACTION)
        cap = shape.n_ctx_train  # more cells than trained positions buys nothing
    else:
        limit = int(budget.value)
        cap = None
    slack = 2 * shape.n_layer * _ALIGN_SLACK_PER_TENSOR
    cells = max(0, (limit - slack) // shape.cell_bytes)
    if cap:
        cells = min(cells, cap)
    if cells < 1:
        raise BudgetError(f"kv_budget {str(spec)!r} ({limit} bytes) holds no KV cell: one cell takes "
                          f"{shape.cell_bytes} bytes with these cache types")
    return int(cells), limit
