"""Which GGUF file a model argument names, and checks that turn a bad file into a clear error.

llama.cpp validates the file itself and fails cleanly for most damage; the checks here catch
what it reports poorly (a missing path, a directory, a file of another format) before it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelLoadError
from .models import MODELS, model_path

GGUF_MAGIC = b"GGUF"


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model given as a path, as a registry name (see pyrcedge.assets.models) or None (the
    default)."""
    if model is None or str(model) in MODELS:
        path = model_path() if model is None else model_path(str(model))
        if not path.exists():
            name = "" if model is None else f" {model}"
            raise ModelLoadError(f"model file {path} is missing: run `pyrcedge models fetch{name}`")
        return path
    return Path(model)


def check_gguf(path: str | os.PathLike[str]) -> None:
    path = Path(path)
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
