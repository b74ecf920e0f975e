"""Shared fixtures: the real default model on the real (patched) native path."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from pyrcedge.assets.models import model_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_model() -> Path:
    path = model_path()
    if not path.exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh fetches it")
    return path


@pytest.fixture(scope="session")
def llm(default_model: Path):
    """One small context on the default model, shared by tests that only read from it."""
    from pyrcedge.apps.options import open_llama

    model = open_llama(default_model, n_ctx=256, n_threads=2, n_threads_batch=2, flash_attn=True)
    yield model
    model.close()


@pytest.fixture(scope="session")
def stock_python() -> Path:
    """The Python of the stock environment (scripts/setup.sh --stock)."""
    path = Path(os.environ.get("PYRCEDGE_STOCK_PYTHON", REPO / ".venv-stock" / "bin" / "python"))
    if not path.exists():
        pytest.fail(f"{path} is missing: scripts/setup.sh --stock sets up the stock environment")
    return path


@pytest.fixture
def cli():
    """Runs `pyrcedge ARGS` in a subprocess: a crash shows as a signal, not a dead test session."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyrcedge", *args], capture_output=True,
                              text=True, timeout=timeout)

    return run


@contextlib.contextmanager
def serving(*args: str, python: str | Path = sys.executable,
            cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`pyrcedge serve ARGS` (by `python`, default this one) on a free loopback port:
    (base URL, process), once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(python), "-m", "pyrcedge", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/models", timeout=5).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the server did not start:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.3)
    try:
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
