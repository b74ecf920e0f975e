"""The six Austen novels (public domain), from Debian's r-cran-janeaustenr package.

`apt-get download` fetches the pinned .deb into a temporary folder (no root needed, nothing is
installed), its sha256 is checked, and the package's R lazy-load database is read
(pyrcedge.evaluation.rdata, with the rdata package). Each novel is written as UTF-8 text, one line of the
original per line, to data/files/austen/<name>.txt; nothing is committed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..assets.datasets import data_dir
from ..errors import DataFetchError
from .rdata import read_lazyload

PACKAGE = "r-cran-janeaustenr"
VERSION = "1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DATA = "./usr/lib/R/site-library/janeaustenr/data/"
NOVELS = ("prideprejudice", "sensesensibility", "emma", "mansfieldpark", "northangerabbey",
          "persuasion")


def austen_dir() -> Path:
    return data_dir() / "austen"


def novel_path(name: str) -> Path:
    if name not in NOVELS:
        raise DataFetchError(f"unknown novel {name!r}; choose from {', '.join(NOVELS)}")
    return austen_dir() / f"{name}.txt"


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a Unix ar archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise DataFetchError("not a Debian package (no ar header)")
    at, out = 8, {}
    while at + 60 <= len(data):
        head = data[at:at + 60]
        name = head[:16].decode("ascii").strip().rstrip("/")
        size = int(head[48:58].decode("ascii").strip())
        out[name] = data[at + 60:at + 60 + size]
        at += 60 + size + (size & 1)
    return out


def novels_from_deb(deb: bytes) -> dict[str, str]:
    """Each novel's text from the bytes of the r-cran-janeaustenr .deb."""
    members = ar_members(deb)
    payload = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if payload is None:
        raise DataFetchError("the package holds no data.tar member")
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(DATA + name)
            if f is None:
                raise DataFetchError(f"the package holds no {name}")
            return f.read()

        objects = read_lazyload(read("Rdata.rdx"), read("Rdata.rdb"))
    out = {}
    for name in NOVELS:
        lines = objects.get(name)
        if lines is None or not all(line is None or isinstance(line, str) for line in lines):
            raise DataFetchError(f"the package's data has no character vector {name!r}")
        out[name] = "\n".join(line or "" for line in lines) + "\n"
    return out


def download_deb(dest: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DataFetchError("apt-get is missing: the Austen texts come from Debian's "
                             f"{PACKAGE} package (fetch it on a Debian or Ubuntu machine)")
    done = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=dest,
                          capture_output=True, text=True)
    debs = list(dest.glob("*.deb"))
    if done.returncode != 0 or len(debs) != 1:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise DataFetchError(f"apt-get download {PACKAGE}={VERSION} failed (run apt-get update "
                             f"first?):\n{tail}")
    return debs[0]


def fetch_austen(*, quiet: bool = True) -> Path:
    """Write the six novels under data/files/austen unless they are there; return the folder."""
    folder = austen_dir()
    if all((folder / f"{n}.txt").exists() for n in NOVELS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetch-") as tmp:
        if not quiet:
            print(f"fetching {PACKAGE}={VERSION} with apt-get download", flush=True,
                  file=sys.stderr)
        deb = download_deb(Path(tmp)).read_bytes()
        digest = hashlib.sha256(deb).hexdigest()
        if digest != DEB_SHA256:
            raise DataFetchError(f"{PACKAGE}={VERSION}: sha256 {digest} does not match the "
                                 f"pinned {DEB_SHA256}; nothing was written")
        staging = Path(tmp) / "austen"
        staging.mkdir()
        for name, text in novels_from_deb(deb).items():
            (staging / f"{name}.txt").write_text(text, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder


def novel(name: str = "prideprejudice") -> str:
    fetch_austen()
    return novel_path(name).read_text(encoding="utf-8")
