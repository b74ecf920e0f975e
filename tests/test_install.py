"""The wheels scripts/setup.sh leaves in dist/ install pyrcedge into any environment: a fresh
venv outside the repository, `pip install --find-links dist pyrcedge[server]`, binary only (no
compiler runs), not editable. Then the commands work from there on the default model."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import venv
from pathlib import Path

import pytest
from conftest import REPO, serving

DIST = REPO / "dist"


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _wheel(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one {pattern} in {DIST}, found {[w.name for w in found]}: "
                    "scripts/setup.sh leaves the wheels there")
    return found[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's python, a working folder outside the repository)."""
    _wheel("llama_cpp_python-*.whl"), _wheel("pyrcedge-*.whl")
    root = tmp_path_factory.mktemp("install")
    assert REPO not in root.parents
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # --only-binary :all: makes a compile impossible: an sdist (llama-cpp-python's from the
    # index, for one) is refused instead of built
    done = _run(python, "-m", "pip", "install", "--quiet", "--only-binary", ":all:",
                "--find-links", DIST, "pyrcedge[server]", cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr
    work = root / "work"
    work.mkdir()
    return python, work


def test_both_wheels_install_binary_only_and_not_editable(installed):
    # --only-binary :all: in the fixture is what proves nothing compiles. How long it takes is
    # measured in docs/build.md, not asserted: on a machine busy with benchmarks a niced pip
    # install of the server extra took 166 s of wall time for 13 s of CPU.
    python, work = installed
    where = _run(python, "-c", "import pyrcedge, llama_cpp; print(pyrcedge.__file__); "
                 "print(llama_cpp.__file__)", cwd=work)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(python.parent.parent), line
    version = _run(python, "-m", "pip", "show", "llama-cpp-python", cwd=work)
    key = _wheel("llama_cpp_python-*.whl").name.split("+rcedge.")[1].split("-")[0]
    assert f"Version: 0.3.36+rcedge.{key}" in version.stdout


def test_version_and_info_name_the_build(installed):
    python, work = installed
    pyrcedge = python.parent / "pyrcedge"
    out = _run(pyrcedge, "--version", cwd=work)
    assert out.returncode == 0 and out.stdout.startswith("pyrcedge 0."), out
    info = _run(pyrcedge, "info", cwd=work)
    assert info.returncode == 0, info.stderr
    key = _wheel("llama_cpp_python-*.whl").name.split("+rcedge.")[1].split("-")[0]
    assert "patched: yes" in info.stdout
    assert f"native build key: {key} (patched" in info.stdout
    assert str(python.parent.parent) in info.stdout     # the venv's own libllama


def test_run_on_the_default_model(installed, default_model):
    python, work = installed
    out = _run(python.parent / "pyrcedge", "run", "--model", default_model, "--prompt",
               "Once upon a time", "--max-tokens", "8", "--budget", "64", "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["generated_tokens"] == 8 and result["kv_cells_used_max"] <= 64


def test_one_serve_request(installed, default_model):
    python, work = installed
    with serving("--model", str(default_model), "--budget", "128", "--threads", "2",
                 python=python, cwd=work) as (base, _proc):
        body = json.dumps({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8})
        req = urllib.request.Request(base + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] > 0


def test_evaluation_imports(installed):
    python, work = installed
    out = _run(python, "-c", "import pyrcedge.evaluation, pyrcedge.evaluation.cli", cwd=work)
    assert out.returncode == 0, out.stderr


def test_a_stock_libllama_is_refused_on_import(installed, stock_python):
    python, work = installed
    stock_lib = _run(stock_python, "-c", "import llama_cpp.llama_cpp as lc, os; "
                     "print(os.path.dirname(lc._lib._name))", cwd=work).stdout.strip()
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": stock_lib}
    out = _run(python, "-c", "import pyrcedge", cwd=work, env=env)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("pyrcedge.errors.NativeLibraryError:"), out.stderr
    assert "stock libllama" in last and "--find-links" in last and "scripts/setup.sh" in last
