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
are wrong, when it was saved for another model, budget or cache type, or when its content is
inconsistent (features/session_content.py: token ids, cached indices, statistics, bookkeeping).
Files are written to a locked temporary file beside the target, flushed to disk and renamed
over it: a crash mid-save leaves the previous file intact, and the next save or load removes
the temporary file a killed save left.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..errors import SessionError
from ..native import stats as kernel_stats
from .seam import BudgetedModel
from .session_content import check_content

try:
    import fcntl
except ImportError:     # Windows: no locks, the age of a temporary file alone says it is stale
    fcntl = None  # type: ignore[assignment]

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
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise SessionError(f"{source} is malformed: {e}") from e
    return state


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write data to path so that a reader sees the old file or the new one, never a part.
    The temporary file is locked while it is written; one left by a writer that was killed
    (its lock went with it) is removed by the next save or load of the same path."""
    target = Path(path)
    if target.is_dir():
        raise SessionError(f"cannot save a session to {target}: it is a directory")
    remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=_TEMP_SUFFIX,
                                   dir=target.parent)
    except OSError as e:
        raise SessionError(f"cannot save a session in {target.parent}: {e.strerror}") from e
    try:
        _lock(fd)
        # mkstemp makes the file private; keep the old file's mode, or the usual 0644
        os.fchmod(fd, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, target)     # while locked: a cleaner never takes a live file
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


_TEMP_SUFFIX = ".tmp"
# a temporary file younger than this is never removed: its writer may not have locked it yet
STALE_AFTER_S = 60.0


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _lock(fd: int, blocking: bool = True) -> bool:
    """An exclusive lock on fd (released when the process dies); False if another holds it.
    Without fcntl (Windows) every lock is taken, and the age alone decides what is stale."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary files that saves of `target` left when they were killed: those
    no live writer holds locked and older than STALE_AFTER_S. Returns what was removed."""
    removed: list[Path] = []
    try:
        candidates = list(target.parent.glob(f"{glob.escape(_temp_prefix(target))}*{_TEMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue            # gone already, or not ours to read
        try:
            if time.time() - os.fstat(fd).st_mtime > STALE_AFTER_S and _lock(fd, blocking=False):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _write_all(f: Any, data: bytes, chunk: int = 1 << 20) -> None:
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])


def read(path: str | os.PathLike[str]) -> SessionState:
    remove_stale_temporaries(Path(path))
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


# --- a Llama's session: capture and restore ------------------------------------------------

def identity(llm: BudgetedModel) -> dict[str, Any]:
    """What a session must have been saved for to load into llm (MUST_MATCH's keys)."""
    fingerprint = getattr(llm, "_session_fingerprint", None)
    if fingerprint is None:
        m = llm._model
        fingerprint = model_fingerprint(llm.model_path, m.desc(), m.n_params(), m.size(),
                                        llm._n_vocab)
        llm._session_fingerprint = fingerprint  # type: ignore[attr-defined]
    p = llm.context_params
    return {"model": fingerprint, "budget_cells": llm.kv_cache.budget,
            "cache_types": [int(p.type_k), int(p.type_v), int(p.flash_attn_type)],
            "positions": "compact" if llm.kv_cache.compact else "keep",
            "statistics": llm.statistics}


def capture(llm: BudgetedModel) -> SessionState:
    """llm's session as it is: llama.cpp's state of the cache, the statistics of every cached
    cell by position, the history, the engine's bookkeeping and the policy's state."""
    kv = llm.kv_cache
    header = {**identity(llm), "n_tokens": int(llm.n_tokens), "seed": int(llm._seed),
              "answer_start": llm.answer_start, "bookkeeping": kv.bookkeeping(),
              "policy": kv.policy.describe(), "policy_state": kv.policy.state_dict()}
    arrays: dict[str, npt.NDArray[Any]] = {
        "history": llm.input_ids[: llm.n_tokens].astype(np.int32),
        "cached": kv.cached.astype(np.int64)}
    data = b""
    if llm.n_tokens:
        size = llama_cpp.llama_state_get_size(llm.ctx)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_get_data(llm.ctx, buf, size)
        data = bytes(memoryview(buf)[:n])
        cells = kernel_stats.used_cells(llm.ctx)
        arrays["cell_pos"] = cells.pos.astype(np.int32)
        if llm.statistics:
            for il, layer in enumerate(kernel_stats.read_layers(llm.ctx, cells.index)):
                arrays[f"stats.{il}"] = layer
        if llm._logits_all:
            arrays["scores"] = llm.scores[: llm.n_tokens].copy()
    return SessionState(header=header, kv=data, arrays=arrays)


def restore(llm: BudgetedModel, state: SessionState) -> None:
    """Make llm's cache, statistics and history those of `state` (checked compatible)."""
    kv = llm.kv_cache
    h, a = state.header, state.arrays
    n = state.n_tokens
    history = a["history"]
    llm.reset()
    kv.restore_bookkeeping(h["bookkeeping"], a["cached"])
    if n:
        buf = (ctypes.c_uint8 * len(state.kv)).from_buffer_copy(state.kv)
        if llama_cpp.llama_state_set_data(llm.ctx, buf, len(state.kv)) != len(state.kv):
            raise SessionError("llama.cpp refused the session's KV cache state")
        held = np.sort(kernel_stats.used_cells(llm.ctx).pos)
        if not np.array_equal(held, np.sort(a["cell_pos"])):
            raise SessionError("the session's KV cache state holds other positions than its "
                               "bookkeeping lists (a damaged or crafted state)")
        # llama.cpp's state holds no logits: decode the last token again to have them
        llm.decode_last(int(history[-1]), int(kv.position_of(len(kv.cached) - 1)))
        if llm.statistics:
            _restore_statistics(llm.ctx, a)
    ids = np.zeros(max(n, 1), np.intc)
    ids[:n] = history
    llm.input_ids = ids
    if llm._logits_all and "scores" in a:
        if len(llm.scores) < n:
            llm.scores = np.zeros((n, llm.scores.shape[1]), np.single)
        llm.scores[:n] = a["scores"]
    llm.n_tokens = n
    llm._requires_eval = False
    llm._seed = int(h["seed"])
    llm.answer_start = h["answer_start"]
    kv.policy.load_state_dict(h["policy_state"])


def _restore_statistics(ctx: Any, a: dict[str, npt.NDArray[Any]]) -> None:
    """Write the saved statistics into the cells that now hold the saved positions."""
    cells = kernel_stats.used_cells(ctx)
    where = {int(p): int(c) for p, c in zip(cells.pos, cells.index)}
    try:
        target = np.asarray([where[int(p)] for p in a["cell_pos"]], np.int32)
    except KeyError:
        raise SessionError("the restored cache lacks a position the session lists") from None
    kernel_stats.reset_stats(ctx)
    kernel_stats.write_layers(ctx, target, np.stack([a[f"stats.{il}"] for il in
                                                     range(kernel_stats.n_layer(ctx))]))


def save_state(llm: BudgetedModel) -> SessionState:
    """The session in memory. The cache is re-laid out as a restore lays it out (this module's
    docstring says why), so that llm and a Llama that loads the state continue with identical
    logits."""
    state = capture(llm)
    restore(llm, state)
    return state


def load_state(llm: BudgetedModel, state: SessionState) -> None:
    """Continue from a state save_state returned (in this process or, through a file, another).
    Refused with SessionError, llm unchanged, when it was made for another model, budget or
    cache type; a restore that fails half-way is rolled back."""
    if not isinstance(state, SessionState):
        raise SessionError("pyrcedge.Llama.load_state takes what pyrcedge.Llama.save_state "
                           f"returns, not {type(state).__name__}")
    _load(llm, state, "the session")


def _load(llm: BudgetedModel, state: SessionState, source: str) -> None:
    check_compatible(state.header, identity(llm), source)
    check_content(llm, state.header, state.arrays, state.kv, source)
    backup = capture(llm)
    try:
        restore(llm, state)
    except BaseException:
        restore(llm, backup)
        raise


def save_session(llm: BudgetedModel, path: str | os.PathLike[str],
                 metadata: dict[str, Any] | None = None) -> None:
    """Save llm's session to a file, atomically (a crash mid-save keeps the previous file).
    metadata: JSON-serialisable data of the caller's that travels with it (a chat's messages,
    say); load_session returns it."""
    state = save_state(llm)
    if metadata is not None:
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise SessionError(f"session metadata must be JSON-serialisable: {e}") from e
        state.header["metadata"] = metadata
    write_atomic(path, encode(state))


def load_session(llm: BudgetedModel, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore a session file written by save_session, in this or another process; returns the
    metadata saved with it ({} if none). Refused with SessionError, llm unchanged, if the file
    is corrupt, truncated, or was saved for another model, budget or cache type."""
    state = read(path)
    _load(llm, state, f"session file {path}")
    return dict(state.header.get("metadata") or {})
