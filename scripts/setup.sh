#!/usr/bin/env bash
# Sets pyrcedge up from a fresh clone, idempotently:
#   .venv        llama-cpp-python 0.3.36 on the patched llama.cpp, pyrcedge (editable), pytest
#   dist/        the wheels for any other environment: llama-cpp-python 0.3.36+rcedge.KEY (the
#                one .venv holds) and pyrcedge; pip install --find-links dist pyrcedge
#   models/files the default model, SmolLM2-135M-Instruct Q4_1 (sha256 checked)
# With --stock, also .venv-stock: llama-cpp-python on stock llama.cpp from the same sdist and
# flags, for side-by-side comparisons and tests.
# Builds are cached outside the repo (native/build.py says where); a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

stock=0
for arg in "$@"; do
  case "$arg" in
    --stock) stock=1 ;;
    *) echo "usage: scripts/setup.sh [--stock]" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
for tool in "$PYTHON" cc c++ cmake make git; do
  command -v "$tool" >/dev/null || { echo "setup: $tool not found (README.md lists the prerequisites)" >&2; exit 1; }
done

make_venv() {
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
}

make_venv .venv
.venv/bin/python native/build.py --venv .venv --dist dist

# pyrcedge itself, depending on the llama-cpp-python wheel just installed; skipped when neither
# pyproject.toml nor that wheel (the native build key) changed since the last install
stamp=.venv/.pyrcedge-installed
want=$(cat pyproject.toml native/requirements.txt <(ls dist) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --config-settings llama-cpp-python=version -e '.[server,eval,test]'
  echo "$want" > "$stamp"
fi

.venv/bin/pyrcedge models fetch

if [ "$stock" = 1 ]; then
  make_venv .venv-stock
  .venv-stock/bin/python native/build.py --venv .venv-stock --stock
fi
