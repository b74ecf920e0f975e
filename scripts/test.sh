#!/usr/bin/env bash
# README's second command: set everything up (the stock build too: tests compare against it),
# then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --stock
# the HTML heat-map test renders pages in Debian's chromium
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian's chromium for the HTML test" >&2
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "test: chromium is missing (sudo apt-get install chromium); the HTML test will fail" >&2
  fi
fi
# evaluation data the tests read, into data/files (sha256 checked; Austen via apt-get download)
fetch_data() { .venv/bin/pyrcedge data fetch austen squad essays chitchat hotpotqa >/dev/null; }
fetch_data || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null && fetch_data; }
# the code stays as docs/layers.md describes it: lint and types (pyproject.toml configures both)
.venv/bin/ruff check pyrcedge tests bench native scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
