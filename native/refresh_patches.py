#!/usr/bin/env python3
"""Regenerate native/patches from a llama.cpp work tree (development aid).

    python native/refresh_patches.py TREE BASE

TREE is a git work tree of the vendored llama.cpp (from the pinned sdist) where BASE is the
commit with patch 0001 applied and the work tree holds the whole series. Each patch >= 0002 owns
the files listed in OWNERS; its diff is rewritten from BASE to the work tree for those files,
and its header (everything before the first `diff --git`) is kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PATCHES = Path(__file__).resolve().parent / "patches"
OWNERS = {
    "0002-ggml-attention-scores-api.patch": ["ggml/include/ggml.h", "ggml/src/ggml.c"],
    "0003-ggml-cpu-fused-attention-scores.patch": ["ggml/src/ggml-cpu/"],
    "0004-llama-kv-cache-attention-scores.patch": ["src/llama-graph.h", "src/llama-graph.cpp",
                                                  "src/llama-kv-cache.h", "src/llama-kv-cache.cpp"],
    "0005-llama-context-exact-n-ctx.patch": ["src/llama-context.cpp"],
}


def main() -> None:
    tree, base = sys.argv[1], sys.argv[2]
    for name, paths in OWNERS.items():
        patch = PATCHES / name
        header = patch.read_text().split("diff --git", 1)[0].rstrip() + "\n\n"
        diff = subprocess.run(["git", "diff", base, "--", *paths], cwd=tree, check=True,
                              capture_output=True, text=True).stdout
        patch.write_text(header + diff)
        print(f"{name}: {diff.count('diff --git')} files")


if __name__ == "__main__":
    main()
