"""A GGUF file's metadata, read in Python without touching the tensors.

Only the header and the key-value section are read (for the default model: about 2 MB, most of
it the tokenizer's vocabulary: its tokens are read as bytes, for the checks llama.cpp would abort
on; every other string array is skipped without reading), then the tensor index (names,
shapes and types), never the tensors. Every length is checked against the
file's size, so a crafted header fails here with ModelLoadError instead of allocating or
looping on what it claims.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)     # what llama.cpp reads (version 1 was refused long ago)
GGUF_DEFAULT_ALIGNMENT = 32   # of the tensor data, unless general.alignment says otherwise

# GGUF value types: (struct format) for the fixed-size ones; STRING = 8, ARRAY = 9
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
_U64 = struct.Struct("<Q")
FLOAT_TYPES = (6, 12)


@dataclass(frozen=True)
class Field:
    """One metadata value. Numeric arrays are read as tuples; string arrays are counted (value =
    their length), and those in READ_STRING_ARRAYS also read (strings, undecoded bytes)."""

    type: int                  # GGUF value type; for arrays, the element type
    value: Any
    offset: int                # where the value's bytes start in the file (scalars)
    is_array: bool = False
    strings: tuple[bytes, ...] = ()


# the string arrays whose contents a check reads (pyrcedge.assets.gguf.check_tokenizer)
READ_STRING_ARRAYS = frozenset({"tokenizer.ggml.tokens"})


class _Reader:
    """Reads the header out of a memory map of the file: only the pages it touches are read."""

    def __init__(self, buf: Any, source: str) -> None:
        self.buf, self.pos, self.size, self.source = buf, 0, len(buf), source

    def past_end(self) -> ModelLoadError:
        return ModelLoadError(f"{self.source}: the GGUF header runs past the end of the file "
                              "(truncated or damaged)")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.past_end()
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def strings(self, n: int) -> tuple[bytes, ...]:
        return tuple(self.string() for _ in range(n))

    def skip_strings(self, n: int) -> None:
        pos, buf, size, u64 = self.pos, self.buf, self.size, _U64.unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise self.past_end()
            pos += 8 + u64(buf, pos)[0]
        if pos > size:
            raise self.past_end()
        self.pos = pos

    def value(self, kind: int, read_strings: bool = False) -> Field:
        at = self.pos
        if kind in _SCALAR:
            return Field(kind, self.unpack(_SCALAR[kind]), at)
        if kind == STRING:
            return Field(kind, self.string().decode("utf-8", "replace"), at)
        if kind == ARRAY:
            item, n = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALAR:
                width = struct.calcsize(_SCALAR[item])
                raw = self.take(n * width)
                return Field(item, struct.unpack(f"<{n}{_SCALAR[item][1]}", raw), at, True)
            if item == STRING:
                if read_strings:
                    if n > self.size // 8:      # each string has at least its 8-byte length
                        raise self.past_end()
                    return Field(item, n, at, True, self.strings(n))
                self.skip_strings(n)
                return Field(item, n, at, True)
            raise ModelLoadError(f"{self.source}: GGUF array of unsupported type {item}")
        raise ModelLoadError(f"{self.source}: GGUF value of unknown type {kind}")


@dataclass(frozen=True)
class Header:
    """A GGUF file's metadata and its tensors' shapes (name -> dims, innermost first) and ggml
    types (name -> GGML_TYPE_* number)."""

    fields: dict[str, Field]
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, int]
    index_end: int                # where the tensor index ends
    data_offset: int              # where the tensor data starts (index_end, aligned)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Field]:
    """The key-value metadata of a GGUF file; ModelLoadError when it is not readable as one."""
    return read_header(path).fields


def read_header(path: str | os.PathLike[str]) -> Header:
    """The metadata and the tensor index of a GGUF file; ModelLoadError when it is not readable
    as one."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _read_header(_Reader(buf, source), source)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror}") from e


# a tensor's entry in the index: name (at least its length), n_dims, a dim, type, offset
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8
_MAX_DIMS = 4   # GGML_MAX_DIMS


def _read_header(r: _Reader, source: str) -> Header:
    r.take(4)                       # the magic, checked
    version = r.unpack("<I")
    if version not in GGUF_VERSIONS:
        raise ModelLoadError(f"{source}: GGUF version {version} is not supported")
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    fields: dict[str, Field] = {}
    for _ in range(n_kv):
        key = r.string().decode("utf-8", "replace")
        fields[key] = r.value(r.unpack("<I"), key in READ_STRING_ARRAYS)
    if n_tensors > (r.size - r.pos) // _MIN_TENSOR_INFO:
        raise r.past_end()
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for _ in range(n_tensors):
        name = r.string().decode("utf-8", "replace")
        n_dims = r.unpack("<I")
        if n_dims > _MAX_DIMS:
            raise ModelLoadError(f"{source}: GGUF tensor {name} has {n_dims} dimensions (at most "
                                 f"{_MAX_DIMS})")
        shapes[name] = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims))
        types[name] = r.unpack("<I")
        r.take(8)                   # the offset: llama.cpp checks it
    alignment = fields.get("general.alignment")
    align = alignment.value if alignment is not None and isinstance(alignment.value, int) \
        and alignment.value > 0 else GGUF_DEFAULT_ALIGNMENT
    return Header(fields, shapes, types, r.pos, -(-r.pos // align) * align)
