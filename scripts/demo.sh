#!/usr/bin/env bash
# README's first command: set everything up, then run the main job on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/pyrcedge run --max-tokens 256 --budget 128 --policy a2sf \
  --prompt "The three most useful things to know about caching are" "$@"
