"""pyrcedge's PEP 517 build backend: setuptools, after native/build.py's cached build.

pyproject.toml names it (build-backend = "backend", backend-path = ["native"]), so `pip install .`,
`pip wheel .` and `pip install -e .` all take the one build path of scripts/setup.sh: the patched
llama.cpp is built (or found by its key in the cache) and turned into the llama-cpp-python wheel
0.3.36+rcedge.KEY, and pyrcedge's dependency names that wheel. pip therefore never resolves
llama-cpp-python to the sdist on the package index, which would compile a stock llama.cpp.

How the dependency names it (`--config-settings llama-cpp-python=...`):
  url      (default) llama-cpp-python @ file:///.../wheels/KEY/llama_cpp_python-...whl: the
           cached wheel itself, so `pip install .` needs nothing else; `pip wheel .` collects it.
  version  llama-cpp-python==0.3.36+rcedge.KEY: the wheel that scripts/setup.sh leaves in dist/,
           found with `pip install --find-links dist pyrcedge` in any environment.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import build_meta as _setuptools

HERE = Path(__file__).resolve().parent
# the generated part of [tool.setuptools.dynamic] dependencies (build/ is ignored by git)
REQUIREMENT_FILE = HERE.parent / "build" / "llama-cpp-python.txt"
MODES = ("url", "version")


@functools.lru_cache(maxsize=1)
def _build_module() -> ModuleType:
    # native/build.py by path: a plain `import build` could find the PyPI project of that name
    spec = importlib.util.spec_from_file_location("pyrcedge_native_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mode(config_settings: dict[str, Any] | None) -> str:
    mode = (config_settings or {}).get("llama-cpp-python", "url")
    if mode not in MODES:
        raise ValueError(f"--config-settings llama-cpp-python={mode!r}: choose one of {', '.join(MODES)}")
    return str(mode)


@functools.cache
def _requirement(mode: str) -> str:
    build = _build_module()
    try:
        lib, wheel = build.native_build(sys.executable)
    except build.BuildError as e:
        raise RuntimeError(f"pyrcedge: building the patched llama.cpp failed: {e}") from e
    if mode == "version":
        return f"llama-cpp-python=={build.local_version(lib)}"
    return f"llama-cpp-python @ {wheel.as_uri()}"


def _prepare(config_settings: dict[str, Any] | None) -> None:
    line = _requirement(_mode(config_settings)) + "\n"
    REQUIREMENT_FILE.parent.mkdir(exist_ok=True)
    if not REQUIREMENT_FILE.exists() or REQUIREMENT_FILE.read_text() != line:
        REQUIREMENT_FILE.write_text(line)


def get_requires_for_build_wheel(config_settings=None):
    _prepare(config_settings)
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _prepare(config_settings)
    return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _prepare(config_settings)
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _prepare(config_settings)
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare(config_settings)
    # setuptools packs build/lib as it finds it: a module deleted from pyrcedge/ since the last
    # build would still be in the wheel
    shutil.rmtree(REQUIREMENT_FILE.parent / "lib", ignore_errors=True)
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare(config_settings)
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    raise RuntimeError(
        "pyrcedge has no sdist: its wheel pins the llama.cpp build of this checkout. Build the "
        "wheel from the source tree (pip wheel . ; python -m build --wheel), or run scripts/setup.sh, "
        "which leaves both wheels in dist/")
