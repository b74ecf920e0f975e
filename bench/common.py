"""What every benchmark writes beside its numbers: the command and the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from pyrcedge.evaluation.speed_report import machine

__all__ = ["command", "machine", "run_cli_json"]


def command() -> str:
    return " ".join([".venv/bin/python"] + sys.argv)


def run_cli_json(cmd: list[str], name: str) -> dict[str, Any]:
    """Run `python -m pyrcedge ...` (cmd), return the JSON object on its last line with the
    command (as `pyrcedge ...`) added; RuntimeError with the end of stderr if it failed."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["command"] = " ".join(["pyrcedge"] + cmd[3:])
    return r
