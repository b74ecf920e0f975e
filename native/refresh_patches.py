#!/usr/bin/env python3
"""Regenerate native/patches from a llama.cpp work tree (development aid).

    python native/refresh_patches.py TREE BASE

TREE is a git work tree of the vendored llama.cpp (from the pinned sdist) where BASE is the
commit with patch 0001 applied, followed by one commit per patch >= 0002 in name order (the last
patch may also be left uncommitted, or have uncommitted edits on top of its commit). Each patch
owns the files listed in OWNERS; its diff is rewritten from the commit before it to its own
commit (the last one: to the work tree) for those files, so two patches may change one file.
Its header (everything before the first `diff --git`) is kept.
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
    "0006-llama-portable-attention-scores.patch": ["src/llama-graph.cpp", "src/llama-context.cpp"],
    "0007-ggml-attention-scores-rows.patch": ["ggml/include/ggml.h", "ggml/src/ggml.c"],
    "0008-ggml-cuda-fused-attention-scores.patch": ["ggml/src/ggml-cuda/"],
    "0009-llama-keep-probe-queries.patch": ["src/llama-graph.cpp"],
    "0010-ggml-cuda-fused-ffn-inputs-alive.patch": ["ggml/src/ggml-cuda/ggml-cuda.cu"],
    "0012-cpu-attention-scores-query-window.patch": ["ggml/include/ggml.h", "ggml/src/ggml-cpu/ops.cpp",
                                                    "ggml/src/ggml.c", "src/llama-graph.cpp"],
    "0013-llama-context-reserve-after-graph-change.patch": ["src/llama-context.h"],
    "0014-llama-context-eval-callback-after-creation.patch": ["src/llama-context.h"],
}


def git(tree: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, check=True, capture_output=True, text=True).stdout


def main() -> None:
    tree, base = sys.argv[1], sys.argv[2]
    names = sorted(OWNERS)
    commits = [base, *git(tree, "rev-list", "--reverse", f"{base}..HEAD").split()]
    if len(commits) - 1 not in (len(names), len(names) - 1):
        sys.exit(f"{tree}: expected one commit per patch after {base} ({len(names)}), found {len(commits) - 1}")
    for i, name in enumerate(names):
        patch = PATCHES / name
        header = patch.read_text().split("diff --git", 1)[0].rstrip() + "\n\n"
        span = [commits[i]] if i + 1 == len(names) else [commits[i], commits[i + 1]]
        diff = git(tree, "diff", *span, "--", *OWNERS[name])
        patch.write_text(header + diff)
        print(f"{name}: {diff.count('diff --git')} files")


if __name__ == "__main__":
    main()
