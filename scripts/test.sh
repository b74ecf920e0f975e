#!/usr/bin/env bash
# README's second command: set everything up (the stock build too: tests compare against it),
# then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --stock
exec .venv/bin/python -m pytest "$@"
