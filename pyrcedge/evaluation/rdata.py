"""A reader for R lazy-load databases (a package's data/Rdata.rdx + Rdata.rdb), in plain Python.

The index (.rdx) is one gzip-compressed R-serialized list whose `variables` element maps each data
set's name to (offset, length) in the .rdb; each .rdb record is the compressed serialization of
one object. A compressed blob is a 4-byte big-endian uncompressed length followed by a zlib
stream (R's type 1), or the length, one type byte ('Z' zlib, '2' bzip2, 'X' xz, '0' none) and
the payload (types 2 and 3). The serialization is R's XDR format ('X\\n'), of which this module
reads the subset data packages use: NULL, symbols, pairlists, character, logical, integer,
double and list vectors, with attributes (names).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import PyrcedgeError

NILVALUE, REFSXP, GLOBALENV, EMPTYENV, BASEENV, MISSINGARG = 254, 255, 253, 242, 241, 251
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19
NA_INTEGER = -(2**31)


class RDataError(PyrcedgeError):
    """An R lazy-load database this reader cannot read."""


@dataclass
class RVector:
    """An R vector with its attributes (names, class, ...)."""

    values: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str] | None:
        names = self.attributes.get("names")
        return names.values if isinstance(names, RVector) else None


def decompress(blob: bytes) -> bytes:
    """A compressed blob of an R lazy-load database, decompressed."""
    if len(blob) < 5:
        raise RDataError(f"compressed record of {len(blob)} bytes is too short")
    (n,) = struct.unpack(">I", blob[:4])
    kind = blob[4:5]
    try:
        if kind == b"Z":
            out = zlib.decompress(blob[5:])
        elif kind == b"2":
            out = bz2.decompress(blob[5:])
        elif kind == b"X":
            out = lzma.decompress(blob[5:])
        elif kind == b"0":
            out = blob[5:]
        else:
            out = zlib.decompress(blob[4:])
    except (zlib.error, OSError, lzma.LZMAError) as e:
        raise RDataError(f"cannot decompress a record ({e})") from e
    if len(out) != n:
        raise RDataError(f"record decompressed to {len(out)} bytes, its header says {n}")
    return out


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0
        self.refs: list[Any] = []

    def ints(self, n: int) -> tuple[int, ...]:
        end = self.at + 4 * n
        if end > len(self.data):
            raise RDataError("serialized object ends early")
        out = struct.unpack(f">{n}i", self.data[self.at:end])
        self.at = end
        return out

    def read_int(self) -> int:
        return self.ints(1)[0]

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RDataError("serialized object ends early")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def header(self) -> None:
        if self.raw(2) != b"X\n":
            raise RDataError("not an R XDR serialization (expected 'X\\n')")
        version = self.read_int()
        self.ints(2)
        if version == 3:
            self.raw(self.read_int())
        elif version != 2:
            raise RDataError(f"R serialization version {version} is not supported")

    def item(self) -> Any:
        flags = self.read_int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & 0x200), bool(flags & 0x400)
        if kind == NILVALUE or kind in (GLOBALENV, EMPTYENV, BASEENV, MISSINGARG):
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.read_int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            n = self.read_int()
            return None if n == -1 else self.raw(n).decode("utf-8", errors="replace")
        if kind in (LGLSXP, INTSXP):
            values: list[Any] = [None if v == NA_INTEGER else v for v in self.ints(self.read_int())]
        elif kind == REALSXP:
            n = self.read_int()
            values = list(struct.unpack(f">{n}d", self.raw(8 * n)))
        elif kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.read_int())]
        else:
            raise RDataError(f"R object type {kind} is not supported by this reader")
        attrs = self.item() if has_attr else {}
        return RVector(values, attrs if isinstance(attrs, dict) else {})

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out[str(tag) if tag is not None else str(len(out))] = self.item()
            flags = self.read_int()
            if flags & 0xFF == NILVALUE:
                return out
            if flags & 0xFF != LISTSXP:
                raise RDataError(f"a pairlist continues with type {flags & 0xFF}")
            has_attr, has_tag = bool(flags & 0x200), bool(flags & 0x400)


def unserialize(data: bytes) -> Any:
    r = _Reader(data)
    r.header()
    return r.item()


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Every object of a lazy-load database, by name."""
    # R writes the index with saveRDS-style gzip compression (older versions: as a record)
    index = unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else decompress(rdx))
    names = index.names if isinstance(index, RVector) else None
    if not isinstance(index, RVector) or names is None or "variables" not in names:
        raise RDataError("the .rdx index has no 'variables' element")
    variables = index.values[names.index("variables")]
    out = {}
    for name, where in zip(variables.names or [], variables.values):
        offset, length = where.values
        if offset + length > len(rdb):
            raise RDataError(f"object {name!r} lies past the end of the .rdb")
        out[name] = unserialize(decompress(rdb[offset:offset + length]))
    return out
