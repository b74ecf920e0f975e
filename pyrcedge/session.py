"""Saved sessions: a budgeted Llama's evicted KV cache, attention statistics, positions and token
history, in memory (`SessionState`) or in a file that another process restores.

What a session holds
    the llama.cpp state of the KV cache (llama_state_get_data: every cached token's K and V and
    position), the statistics of every cached cell and layer (pyrcedge's, not in llama.cpp's
    state), the whole token history with the history index of each cached token, the eviction
    bookkeeping, pinned spans and the policy's own state (a random policy's generator).

Why saving re-lays the cache out
    llama.cpp restores a whole-cache state into cells 0..n-1, while a cache that has evicted
    has holes, and the order of the cells changes the order of floating-point sums in attention.
    llama.cpp's state also holds no logits, so the last token is decoded again after a restore.
    Saving therefore applies the same restore to the saving Llama: the process that saved and
    any process that restores continue from the same cells, statistics and logits, bit for bit.

File layout (little-endian)
    MAGIC (16 bytes) | u32 format version | u64 header length | header (JSON, UTF-8) |
    blobs, in the header's order | sha256 of everything before it (32 bytes)
A file is refused whole, before anything is loaded, when the magic, version, lengths or checksum
are wrong, or when it was saved for another model, budget or cache type. Files are written to a
temporary file beside the target, flushed to disk and renamed over it: a crash mid-save leaves
the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import SessionError

MAGIC = b"PYRCEDGE-SESSION"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<16sIQ")
_DIGEST = 32
# header keys that must equal the loading Llama's: what makes the bytes mean the same thing
MUST_MATCH = {
    "model": "another model",
    "budget_cells": "another KV budget",
    "cache_types": "another KV cache type (type_k, type_v or flash attention)",
    "positions": "another positions mode",
    "statistics": "another statistics setting (a policy that keeps attention statistics or not)",
}


@dataclass
class SessionState:
    """A budgeted Llama's session in memory (Llama.save_state / Llama.load_state)."""

    header: dict[str, Any]                       # identity, configuration and bookkeeping
    kv: bytes = b""                              # llama_state_get_data
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.header["n_tokens"])

    # what llama_cpp's prompt caches (LlamaRAMCache, LlamaDiskCache) read of a state
    @property
    def input_ids(self) -> npt.NDArray[np.intc]:
        """The token history the state continues."""
        return np.asarray(self.arrays.get("history", np.zeros(0, np.intc)), np.intc)

    @property
    def llama_state_size(self) -> int:
        """Bytes the state holds (a prompt cache's capacity is counted in these)."""
        return len(self.kv) + sum(a.nbytes for a in self.arrays.values())


def encode(state: SessionState) -> bytes:
    blobs = [("kv", "uint8", [len(state.kv)], state.kv)]
    for name, a in state.arrays.items():
        a = np.ascontiguousarray(a)
        blobs.append((name, a.dtype.str, list(a.shape), a.tobytes()))
    header = dict(state.header, blobs=[{"name": n, "dtype": d, "shape": s, "nbytes": len(b)}
                                       for n, d, s, b in blobs])
    head = json.dumps(header, sort_keys=True).encode()
    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)), head] + [b for *_, b in blobs])
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, source: str = "session") -> SessionState:
    """The state in `data`; SessionError if it is not a whole, intact session of this format."""
    if len(data) < _PREFIX.size + _DIGEST:
        raise SessionError(f"{source} is not a pyrcedge session (too short: {len(data)} bytes)")
    magic, version, n_head = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SessionError(f"{source} is not a pyrcedge session file")
    if version != FORMAT_VERSION:
        raise SessionError(f"{source} has session format {version}; this pyrcedge reads format "
                           f"{FORMAT_VERSION}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SessionError(f"{source} is truncated or corrupted (checksum mismatch)")
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + n_head])
        at = _PREFIX.size + n_head
        kv, arrays = b"", {}
        for b in header.pop("blobs"):
            raw = body[at : at + int(b["nbytes"])]
            at += int(b["nbytes"])
            if b["name"] == "kv":
                kv = bytes(raw)
            else:
                arrays[b["name"]] = np.frombuffer(raw, dtype=np.dtype(b["dtype"])).reshape(b["shape"]).copy()
        if at != len(body):
            raise ValueError(f"{len(body) - at} bytes left over")
        state = SessionState(header=header, kv=kv, arrays=arrays)
        state.n_tokens  # noqa: B018  (checks the key)
    except (KeyError, TypeError, ValueError) as e:
        raise SessionError(f"{source} is malformed: {e}") from e
    return state


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write data to path so that a reader sees the old file or the new one, never a part."""
    target = Path(path)
    if target.is_dir():
        raise SessionError(f"cannot save a session to {target}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise SessionError(f"cannot save a session in {target.parent}: {e.strerror}") from e
    try:
        # mkstemp makes the file private; keep the old file's mode, or the usual 0644
        os.fchmod(fd, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SessionError(f"cannot save a session to {target}: {e.strerror}") from e
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)          # the rename itself survives a power loss
    finally:
        os.close(dir_fd)


def _write_all(f: Any, data: bytes, chunk: int = 1 << 20) -> None:
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])


def read(path: str | os.PathLike[str]) -> SessionState:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SessionError(f"cannot read session {path}: {e.strerror}") from e
    return decode(data, source=f"session file {path}")


def check_compatible(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise SessionError when `saved` (a header) was made for another setup than `current`."""
    for key, what in MUST_MATCH.items():
        if saved.get(key) != current.get(key):
            raise SessionError(f"{source} was saved for {what}: saved {saved.get(key)!r}, "
                               f"this Llama has {current.get(key)!r}; nothing was loaded")


def model_fingerprint(model_path: str, desc: str, n_params: int, size: int, n_vocab: int) -> dict[str, Any]:
    """What identifies a model's weights cheaply: llama.cpp's description and sizes, and the
    sha256 of the GGUF file's first MiB (header, metadata and tokenizer)."""
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        h.update(f.read(1 << 20))
    return {"desc": desc, "n_params": int(n_params), "size": int(size), "n_vocab": int(n_vocab),
            "gguf_head_sha256": h.hexdigest()}
