"""What every benchmark writes beside its numbers: the command and the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from pyrcedge.evaluation.speed_report import machine

__all__ = ["command", "config_args", "machine", "run_cli_json", "split_share"]

# the caches the QA and needle benches compare, by name
POLICY_ARGS = {"a2sf": ["--policy", "a2sf"], "tova": ["--policy", "tova"],
               "h2o": ["--policy", "h2o"], "rcstat": ["--policy", "rcstat"],
               "window": ["--policy", "window"],
               "streamingllm": ["--policy", "window", "--positions", "compact"],
               "context-shift": ["--policy", "context-shift", "--positions", "compact"]}


def split_share(name: str, default: str) -> tuple[str, str]:
    """(cache, budget share) of a cache named CACHE or CACHE@SHARE ("a2sf+probe@12.5%")."""
    cache, _, share = name.partition("@")
    return cache, share or default


def config_args(name: str) -> list[str]:
    """pyrcedge options for a cache named POLICY, POLICY+probe (the tail probe) or
    POLICY+probe=SPEC (any --probe value), each optionally followed by +recall; without
    +probe the probe is off, without +recall recall is."""
    base, recall = (name[:-len("+recall")], "on") if name.endswith("+recall") else (name, "off")
    policy, _, probe = base.partition("+probe")
    if policy not in POLICY_ARGS:
        raise SystemExit(f"unknown cache {name!r}: a policy of {sorted(POLICY_ARGS)}, "
                         "optionally +probe or +probe=SPEC, then optionally +recall")
    spec = (probe.lstrip("=") or "tail") if _ else "off"
    return POLICY_ARGS[policy] + ["--probe", spec, "--recall", recall]


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
