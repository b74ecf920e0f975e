#!/usr/bin/env python3
"""Build the patched (or stock) llama.cpp libraries and install them into a virtual environment.

Standard library only: it runs before anything else is installed.

    python native/build.py --venv .venv            # patched build, for pyrcedge
    python native/build.py --venv .venv-stock --stock   # stock build, same flags, for comparisons

Steps, each cached under the cache folder (PYRCEDGE_CACHE, else $XDG_CACHE_HOME/pyrcedge, else
~/.cache/pyrcedge):

1. sdist/    the pinned llama-cpp-python sdist, fetched with pip, sha256 checked.
2. src/      its vendor/llama.cpp tree with native/patches applied (git apply: exact, no fuzz),
             plus our CMakeLists.txt and native sources. Only files whose content changed are
             rewritten, so the build below recompiles only what a patch touched.
3. build/    the CMake build folder, one per variant (patched/stock) and flag set.
4. lib/KEY/  the installed libraries, KEY = hash of sdist + patches + our sources + flags +
             compiler + CPU. When lib/KEY exists, steps 2-3 are skipped: a second setup takes
             seconds.
5. wheels/   llama-cpp-python's Python package, built with LLAMA_BUILD=OFF (no C++ compiled),
             and from it wheels/KEY/: the same package with lib/KEY in its llama_cpp/lib,
             version 0.3.36+rcedge.KEY (stock: +stock.KEY), so pip and a user can tell it from
             the stock llama-cpp-python.
6. wheels/pyrcedge/HASH/  pyrcedge's own wheel (with --dist), HASH covering its files and KEY.

Finally the KEY wheel is installed into the venv: its llama_cpp/lib is where llama_cpp loads
libllama from, so `import llama_cpp` uses our build with no environment variable. With --dist
both wheels are also copied there, for `pip install --find-links DIST pyrcedge` anywhere.
docs/build.md says why it is done this way.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDOR_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"

REPO = Path(__file__).resolve().parent.parent
NATIVE = REPO / "native"
# What of the repository goes into the build (copied beside the llama.cpp tree).
BUILD_INPUTS = ("CMakeLists.txt", "native/include", "native/src")
# What pyrcedge's own wheel is made of (native/backend.py builds it).
PYRCEDGE_WHEEL_INPUTS = ("pyrcedge", "pyproject.toml", "README.md", "LICENSE", "native/backend.py")
# Flags shared by the patched and the stock build.
BASE_CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release",)
MARKER = "pyrcedge-build.json"
KEEP_LIB_DIRS = 4
# What the wheel's llama_cpp/lib holds, one real file per name (a wheel has no symbolic links):
# the names llama_cpp opens by path (libllama.so in llama_cpp.py, libggml.so in _ggml.py) and
# the sonames the libraries ask the loader for (DT_NEEDED, found beside them through $ORIGIN).
# Every other name would be a second copy of a library already mapped: a process that opened it
# would hold two ggml-base instances. Open a library by its soname to get the one loaded.
WHEEL_LIBS = ("libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0")


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and what to do."""


def log(msg: str) -> None:
    print(f"[pyrcedge build] {msg}", flush=True)


def cache_root() -> Path:
    if os.environ.get("PYRCEDGE_CACHE"):
        return Path(os.environ["PYRCEDGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyrcedge"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], **kw) -> None:
    try:
        subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} not found: install it (README.md lists the prerequisites)") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"command failed with exit code {e.returncode}: {' '.join(cmd)}") from e


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache folder."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_sdist(cache: Path, python: str) -> Path:
    dest = cache / "sdist" / SDIST_NAME
    if dest.exists() and sha256_file(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {SDIST_NAME} from the package index")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
             "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"])
        got = Path(tmp) / SDIST_NAME
        if not got.exists():
            raise BuildError(f"pip download did not produce {SDIST_NAME}")
        digest = sha256_file(got)
        if digest != SDIST_SHA256:
            raise BuildError(f"{SDIST_NAME}: sha256 {digest} does not match the pinned {SDIST_SHA256}")
        os.replace(got, dest)
    return dest


def patch_series() -> list[Path]:
    return sorted((NATIVE / "patches").glob("*.patch"))


def build_input_files() -> list[Path]:
    files: list[Path] = []
    for rel in BUILD_INPUTS:
        p = REPO / rel
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return files


def machine_id() -> str:
    """What a native (-march=native) build depends on besides its sources."""
    cc = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    return json.dumps([platform.machine(), cc, flags])


def cmake_args(stock: bool) -> list[str]:
    extra = os.environ.get("PYRCEDGE_CMAKE_ARGS", "").split()
    return [*BASE_CMAKE_ARGS, *extra, f"-DPYRCEDGE_NATIVE={'OFF' if stock else 'ON'}"]


def build_key(stock: bool) -> tuple[str, str]:
    """(folder key: sdist + variant + flags + machine, library key: that + every input file)."""
    h = hashlib.sha256()
    h.update(json.dumps([SDIST_SHA256, stock, cmake_args(stock), machine_id()]).encode())
    folder = h.hexdigest()[:16]
    inputs = [REPO / "CMakeLists.txt"] if stock else [*patch_series(), *build_input_files()]
    for f in inputs:
        h.update(os.path.relpath(f, REPO).encode() + b"\0" + f.read_bytes() + b"\0")
    return folder, h.hexdigest()[:16]


def extract_llama_cpp(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(VENDOR_PREFIX) and (m.isfile() or m.isdir()):
                m.name = m.name[len(VENDOR_PREFIX):]
                if m.name.split("/")[0] == ".git":  # a submodule link to a repo that is not there
                    continue
                members.append(m)
        tar.extractall(dest, members=members)


def apply_patches(tree: Path) -> None:
    # git apply refuses fuzz and partial application. The ceiling keeps git from treating an
    # enclosing repository as the tree to patch.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.parent)}
    for patch in patch_series():
        check = subprocess.run(["git", "apply", "--check", "-p1", str(patch)], cwd=tree, env=env,
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise BuildError(f"patch {patch.name} does not apply to llama.cpp from {SDIST_NAME}:\n"
                             f"{check.stderr.strip()}\nrefresh it against that tree (docs/build.md)")
        run(["git", "apply", "-p1", str(patch)], cwd=tree, env=env)
        log(f"applied {patch.name}")


def sync_tree(src: Path, dst: Path) -> int:
    """Make dst hold exactly src's files, rewriting only those whose bytes differ (their mtime
    becomes now, so make rebuilds what depends on them and nothing else). Returns files written."""
    written = 0
    wanted = set()
    for f in src.rglob("*"):
        if f.is_dir():
            continue
        rel = f.relative_to(src)
        wanted.add(rel)
        out = dst / rel
        if out.exists() and out.stat().st_size == f.stat().st_size and out.read_bytes() == f.read_bytes():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
        shutil.copymode(f, out)
        written += 1
    if dst.exists():
        for f in dst.rglob("*"):
            if f.is_file() and f.relative_to(dst) not in wanted:
                f.unlink()
    return written


def prepare_source(cache: Path, sdist: Path, folder: str, stock: bool) -> Path:
    """Return the source folder (our CMakeLists.txt at its top, llama.cpp under llama.cpp/)."""
    src = cache / "src" / folder
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        staged = Path(tmp) / "tree"
        extract_llama_cpp(sdist, staged / "llama.cpp")
        if not stock:
            apply_patches(staged / "llama.cpp")
        for rel in BUILD_INPUTS:
            p = REPO / rel
            if p.is_dir():
                shutil.copytree(p, staged / rel)
            else:
                shutil.copyfile(p, staged / rel)
        written = sync_tree(staged, src)
    log(f"source tree {src}: {written} files changed")
    return src


def build_and_install(cache: Path, src: Path, folder: str, key: str, stock: bool) -> Path:
    build = cache / "build" / folder
    lib = cache / "lib" / key
    jobs = str(os.cpu_count() or 2)
    run(["cmake", "-S", str(src), "-B", str(build), "-Wno-dev", "--log-level=WARNING",
         f"-DPYRCEDGE_LLAMA_SOURCE_DIR={src / 'llama.cpp'}", *cmake_args(stock)])
    t0 = time.monotonic()
    run(["cmake", "--build", str(build), "--parallel", jobs])
    log(f"compiled in {time.monotonic() - t0:.0f} s")
    (cache / "lib").mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache / "lib", prefix=".staging-"))
    run(["cmake", "--install", str(build), "--prefix", str(staging)], stdout=subprocess.DEVNULL)
    (staging / MARKER).write_text(json.dumps(
        {"key": key, "variant": "stock" if stock else "patched", "sdist_sha256": SDIST_SHA256,
         "cmake_args": cmake_args(stock), "patches": [p.name for p in patch_series()] if not stock else []},
        indent=2))
    os.replace(staging, lib)
    return lib


def prune_libs(cache: Path, keep: Path) -> None:
    dirs = sorted((d for d in (cache / "lib").iterdir()
                   if d.is_dir() and d != keep and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[KEEP_LIB_DIRS - 1:]:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cache / "wheels" / d.name, ignore_errors=True)


def python_wheel(cache: Path, sdist: Path, python: str) -> Path:
    """llama-cpp-python's Python package alone: its CMake build told to compile nothing."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log("building llama-cpp-python's Python package (no C++)")
    env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp, str(sdist)], env=env)
        (whl,) = Path(tmp).glob("*.whl")
        os.replace(whl, wheels / whl.name)
        return wheels / whl.name


def local_version(lib: Path) -> str:
    """The version of the llama-cpp-python wheel carrying lib/KEY: a PEP 440 local label."""
    info = json.loads((lib / MARKER).read_text())
    label = "rcedge" if info["variant"] == "patched" else "stock"
    return f"{LLAMA_CPP_PYTHON_VERSION}+{label}.{info['key']}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def native_wheel(cache: Path, base: Path, lib: Path) -> Path:
    """llama-cpp-python's Python-only wheel with lib/KEY in its llama_cpp/lib, as version
    0.3.36+rcedge.KEY: the wheel itself (one file per name in WHEEL_LIBS), cached in wheels/KEY."""
    version = local_version(lib)
    out_dir = cache / "wheels" / lib.name
    old_info = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.dist-info/"
    new_info = f"llama_cpp_python-{version}.dist-info/"
    out = out_dir / (base.name.replace(f"-{LLAMA_CPP_PYTHON_VERSION}-", f"-{version}-"))
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(base) as z:
        for name in z.namelist():
            if name.startswith("llama_cpp/lib/") or name == old_info + "RECORD":
                continue
            data = z.read(name)
            if name == old_info + "METADATA":
                data = data.replace(f"\nVersion: {LLAMA_CPP_PYTHON_VERSION}\n".encode(),
                                    f"\nVersion: {version}\n".encode(), 1)
            files[name.replace(old_info, new_info, 1)] = data
    for name in WHEEL_LIBS:
        src = lib / "lib" / name
        if not src.exists():
            raise BuildError(f"{src} missing from build {lib.name}: remove {lib} and run again")
        files[f"llama_cpp/lib/{name}"] = src.read_bytes()  # follows the symbolic link
    files[f"llama_cpp/lib/{MARKER}"] = (lib / MARKER).read_bytes()
    record = [_record_line(n, d) for n, d in files.items()] + [f"{new_info}RECORD,,"]
    files[new_info + "RECORD"] = ("\n".join(record) + "\n").encode()
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".part", delete=False) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    os.replace(tmp.name, out)
    log(f"wheel {out.name}")
    return out


def installed_marker(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out) / "llama_cpp" / "lib" / MARKER


def install_into_venv(python: str, wheel: Path, lib: Path) -> None:
    """pip-install the KEY wheel, unless the environment already holds build KEY."""
    marker = installed_marker(python)
    if marker.exists() and marker.read_text() == (lib / MARKER).read_text():
        log(f"{marker.parent} already holds build {lib.name}")
        return
    # The version differs from any other build's and from stock, so pip replaces what is there.
    # Files it did not install (libraries copied in by hand, or by an older setup) go first: a
    # leftover symbolic link would have pip write the new library through it.
    if marker.parent.exists():
        shutil.rmtree(marker.parent)
    run([python, "-m", "pip", "install", "--quiet", str(wheel)])
    log(f"installed llama-cpp-python {local_version(lib)} into {marker.parent}")


def source_hash(key: str) -> str:
    """What pyrcedge's wheel is built from: its tracked-looking files and the native KEY it pins."""
    h = hashlib.sha256(key.encode())
    for rel in PYRCEDGE_WHEEL_INPUTS:
        p = REPO / rel
        paths = sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) \
            if p.is_dir() else [p]
        for f in paths:
            h.update(os.path.relpath(f, REPO).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def pyrcedge_wheel(cache: Path, python: str, key: str) -> Path:
    """pyrcedge's wheel, through the project's own build backend (native/backend.py), pinning
    llama-cpp-python to the KEY wheel's version; cached in wheels/pyrcedge/HASH."""
    out_dir = cache / "wheels" / "pyrcedge" / source_hash(key)
    found = sorted(out_dir.glob("pyrcedge-*.whl"))
    if found:
        return found[0]
    log("building pyrcedge's wheel")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp,
             "--config-settings", "llama-cpp-python=version", str(REPO)])
        (whl,) = Path(tmp).glob("pyrcedge-*.whl")
        out_dir.mkdir(exist_ok=True)
        os.replace(whl, out_dir / whl.name)
    older = sorted((d for d in out_dir.parent.iterdir() if d.is_dir() and d != out_dir),
                   key=lambda d: d.stat().st_mtime, reverse=True)
    for d in older[KEEP_LIB_DIRS - 1:]:
        shutil.rmtree(d, ignore_errors=True)
    return out_dir / whl.name


def copy_to_dist(dist: Path, wheels: list[Path]) -> None:
    """dist/ holds exactly these wheels of both projects (older builds' wheels removed)."""
    dist.mkdir(parents=True, exist_ok=True)
    for old in [*dist.glob("llama_cpp_python-*.whl"), *dist.glob("pyrcedge-*.whl")]:
        if old.name not in {w.name for w in wheels}:
            old.unlink()
    for w in wheels:
        if not (dist / w.name).exists() or sha256_file(dist / w.name) != sha256_file(w):
            shutil.copyfile(w, dist / w.name)
    log(f"wheels in {dist}: {', '.join(w.name for w in wheels)}")


def native_build(python: str, stock: bool = False) -> tuple[Path, Path]:
    """The cached build and its llama-cpp-python wheel: (lib/KEY, wheels/KEY/*.whl), building
    what is missing. The one build path: native/backend.py calls it too."""
    cache = cache_root()
    with locked(cache):
        sdist = fetch_sdist(cache, python)
        folder, key = build_key(stock)
        lib = cache / "lib" / key
        if (lib / MARKER).exists():
            log(f"cached build {key} ({'stock' if stock else 'patched'})")
        else:
            log(f"building {'stock' if stock else 'patched'} llama.cpp, key {key}")
            src = prepare_source(cache, sdist, folder, stock)
            lib = build_and_install(cache, src, folder, key, stock)
        os.utime(lib)
        prune_libs(cache, lib)
        return lib, native_wheel(cache, python_wheel(cache, sdist, python), lib)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", required=True, type=Path, help="virtual environment to install into")
    ap.add_argument("--stock", action="store_true", help="unpatched llama.cpp, same flags")
    ap.add_argument("--dist", type=Path,
                    help="also leave the llama-cpp-python and pyrcedge wheels in this folder")
    args = ap.parse_args(argv)
    if args.dist and args.stock:
        ap.error("--dist makes the patched wheels; it does not go with --stock")
    python = str(args.venv / "bin" / "python")
    if not Path(python).exists():
        raise BuildError(f"{python} not found: create the environment first (python3 -m venv {args.venv})")
    t0 = time.monotonic()
    lib, wheel = native_build(python, args.stock)
    install_into_venv(python, wheel, lib)
    if args.dist:
        # outside the lock: the backend pip runs for pyrcedge's wheel takes it (native_build)
        copy_to_dist(args.dist, [wheel, pyrcedge_wheel(cache_root(), python, lib.name)])
    log(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        print(f"[pyrcedge build] error: {e}", file=sys.stderr)
        sys.exit(1)
