"""A reader for R lazy-load databases (a package's data/Rdata.rdx + Rdata.rdb).

The index (.rdx) is one gzip-compressed R-serialized list whose `variables` element maps each data
set's name to (offset, length) in the .rdb; each .rdb record is the compressed serialization of
one object. A compressed blob is a 4-byte big-endian uncompressed length followed by a zlib
stream (R's type 1), or the length, one type byte ('Z' zlib, '2' bzip2, 'X' xz, '0' none) and
the payload (types 2 and 3). That framing is read here; the serializations themselves are parsed
by the `rdata` package (the eval extra), which yields the novels byte for byte as the hand-written
XDR reader it replaced did.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import warnings
import zlib
from typing import Any

from ..errors import PyrcedgeError


class RDataError(PyrcedgeError):
    """An R lazy-load database this reader cannot read."""


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


def unserialize(data: bytes) -> Any:
    """One R serialization ('X\\n' XDR) as Python: a named list is a dict, a vector a numpy array
    (character NA: None)."""
    try:
        import rdata
    except ImportError as e:
        raise RDataError("reading R data needs the rdata package: pip install 'pyrcedge[eval]'") from e
    if not data.startswith(b"X\n"):
        raise RDataError("not an R XDR serialization (expected 'X\\n')")
    try:
        with warnings.catch_warnings():  # a bare serialization: rdata says it assumes RDS, as it should
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(data))
    except Exception as e:  # rdata raises ValueError, NotImplementedError, struct.error, ...
        raise RDataError(f"cannot parse an R serialization: {e}") from e


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Every object of a lazy-load database, by name."""
    # R writes the index with saveRDS-style gzip compression (older versions: as a record)
    index = unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else decompress(rdx))
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RDataError("the .rdx index has no 'variables' list")
    out = {}
    for name, where in index["variables"].items():
        offset, length = (int(v) for v in where)
        if offset + length > len(rdb):
            raise RDataError(f"object {name!r} lies past the end of the .rdb")
        out[str(name)] = unserialize(decompress(rdb[offset:offset + length]))
    return out
