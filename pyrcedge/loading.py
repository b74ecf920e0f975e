"""Opening a GGUF model through llama_cpp with checks that turn bad input into clear errors.

llama.cpp validates the file itself and fails cleanly for most damage; the checks here catch
what it reports poorly (a missing path, a directory, a file of another format) before it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, PyrcedgeError
from .models import MODELS, model_path

GGUF_MAGIC = b"GGUF"


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model given as a path, as a registry name (see pyrcedge.models) or None (the default)."""
    if model is None or str(model) in MODELS:
        path = model_path() if model is None else model_path(str(model))
        if not path.exists():
            name = "" if model is None else f" {model}"
            raise ModelLoadError(f"model file {path} is missing: run `pyrcedge models fetch{name}`")
        return path
    return Path(model)


def check_gguf(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror}") from e
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")


def open_llama(model: str | os.PathLike[str] | None, **llama_kwargs: Any) -> Any:
    """pyrcedge.Llama for `model` when budget or policy options are given, else
    llama_cpp.Llama; ModelLoadError when it cannot be loaded."""
    import llama_cpp

    from .llama import Llama

    path = resolve_model(model)
    check_gguf(path)
    llama_kwargs.setdefault("verbose", False)
    budgeted = "policy" in llama_kwargs or "kv_budget" in llama_kwargs
    cls = Llama if budgeted else llama_cpp.Llama
    try:
        return cls(model_path=str(path), **llama_kwargs)
    except PyrcedgeError:
        raise
    except ValueError as e:
        raise ModelLoadError(f"llama.cpp could not load {path}: the file is damaged, truncated or "
                             f"of an unsupported architecture ({e})") from e
