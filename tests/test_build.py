"""native/build.py: exact patch application and incremental source sync."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("native_build", REPO / "native" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def test_patch_series_is_not_empty_and_numbered():
    names = [p.name for p in build.patch_series()]
    assert names and names == sorted(names)
    assert all(n[:4].isdigit() and n[4] == "-" for n in names)


def test_a_patch_that_does_not_apply_stops_the_build(tmp_path, monkeypatch):
    tree = tmp_path / "llama.cpp"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "llama.cpp").write_text("int main() { return 0; }\n")
    monkeypatch.setattr(build, "patch_series", lambda: sorted((REPO / "native" / "patches").glob("*.patch")))
    with pytest.raises(build.BuildError, match=r"(?s)0001-.*does not apply.*patch failed: src/llama.cpp.*refresh it"):
        build.apply_patches(tree)
    assert (tree / "src" / "llama.cpp").read_text() == "int main() { return 0; }\n"


def test_sync_rewrites_only_changed_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in (src, dst):
        (d / "a").mkdir(parents=True)
    (src / "a" / "same.c").write_text("same")
    (src / "a" / "changed.c").write_text("new")
    (dst / "a" / "same.c").write_text("same")
    (dst / "a" / "changed.c").write_text("old")
    (dst / "a" / "gone.c").write_text("stale")
    old = 1_000_000_000
    os.utime(dst / "a" / "same.c", (old, old))
    assert build.sync_tree(src, dst) == 1
    assert (dst / "a" / "same.c").stat().st_mtime == old
    assert (dst / "a" / "changed.c").read_text() == "new"
    assert not (dst / "a" / "gone.c").exists()


def test_key_changes_with_any_input(monkeypatch, tmp_path):
    folder, key = build.build_key(stock=False)
    assert build.build_key(stock=False) == (folder, key)
    extra = tmp_path / "9999-extra.patch"
    extra.write_text("x")
    monkeypatch.setattr(build, "patch_series", lambda: [*sorted((REPO / "native" / "patches").glob("*.patch")), extra])
    folder2, key2 = build.build_key(stock=False)
    assert folder2 == folder and key2 != key
    assert build.build_key(stock=True)[0] != folder
