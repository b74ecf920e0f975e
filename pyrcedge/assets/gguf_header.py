"""A GGUF file's metadata, read in Python without touching the tensors.

Only the header and the key-value section are read (for the default model: about 2 MB, most of
it the tokenizer's vocabulary, skipped without decoding). Every length is checked against the
file's size, so a crafted header fails here with ModelLoadError instead of allocating or
looping on what it claims.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)     # what llama.cpp reads (version 1 was refused long ago)

# GGUF value types: (struct format) for the fixed-size ones; STRING = 8, ARRAY = 9
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
FLOAT_TYPES = (6, 12)


@dataclass(frozen=True)
class Field:
    """One metadata value. Numeric arrays are read as tuples; string arrays only counted
    (value = their length), since no check reads a tokenizer's strings."""

    type: int                  # GGUF value type; for arrays, the element type
    value: Any
    offset: int                # where the value's bytes start in the file (scalars)
    is_array: bool = False


class _Reader:
    def __init__(self, f: BinaryIO, size: int, source: str) -> None:
        self.f, self.size, self.source = f, size, source

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise ModelLoadError(f"{self.source}: the GGUF header runs past the end of the file "
                                 "(truncated or damaged)")
        return self.f.read(n)

    def skip(self, n: int) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            self.take(n)        # raises
        self.f.seek(n, os.SEEK_CUR)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def value(self, kind: int) -> Field:
        at = self.f.tell()
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
                for _ in range(n):
                    self.skip(self.unpack("<Q"))
                return Field(item, n, at, True)
            raise ModelLoadError(f"{self.source}: GGUF array of unsupported type {item}")
        raise ModelLoadError(f"{self.source}: GGUF value of unknown type {kind}")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Field]:
    """The key-value metadata of a GGUF file; ModelLoadError when it is not readable as one."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            r = _Reader(f, size, source)
            if f.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")
            version = r.unpack("<I")
            if version not in GGUF_VERSIONS:
                raise ModelLoadError(f"{path}: GGUF version {version} is not supported")
            r.unpack("<Q")                  # tensor count: llama.cpp checks the tensors
            n_kv = r.unpack("<Q")
            fields: dict[str, Field] = {}
            for _ in range(n_kv):
                key = r.string().decode("utf-8", "replace")
                fields[key] = r.value(r.unpack("<I"))
            return fields
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror}") from e
