"""What every benchmark writes beside its numbers: the command and the machine."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from typing import Any

import numpy as np

from pyrcedge import Probe, Recall
from pyrcedge.evaluation.speed_report import machine

__all__ = ["cache_options", "command", "config_args", "machine", "quartiles", "run_cli_json",
           "split_share"]

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


# the same caches as pyrcedge.Llama keywords, for the benches that open Llamas themselves
POLICY_KW: dict[str, dict[str, Any]] = {
    "full": {"policy": "full"}, "a2sf": {"policy": "a2sf"}, "tova": {"policy": "tova"},
    "h2o": {"policy": "h2o"}, "rcstat": {"policy": "rcstat"}, "window": {"policy": "window"},
    "streamingllm": {"policy": "window", "positions": "compact"},
    "context-shift": {"policy": "context-shift", "positions": "compact"}}


def cache_options(name: str) -> dict[str, Any]:
    """pyrcedge.Llama keywords of a cache named POLICY followed by any of +probe (the tail
    probe), +probe=SPEC (a --probe value), +probe{JSON} (pyrcedge.Probe fields, fitted to the
    budget as the tail probe is), +recall, +recall=TOKENS, +recall{JSON} (pyrcedge.Recall
    fields) and +structure; the probe and recall are off unless named. "default" is
    pyrcedge.Llama's defaults (policy, probe and recall), which the parts after it change."""
    policy, *parts = name.split("+")
    if policy not in POLICY_KW and policy != "default":
        raise SystemExit(f"unknown cache {name!r}: default or a policy of {sorted(POLICY_KW)}")
    options: dict[str, Any] = ({} if policy == "default" else
                               {**POLICY_KW[policy], "probe": None, "recall": None})
    for part in parts:
        cut = min((k for k in (part.find("{"), part.find("=")) if k >= 0), default=len(part))
        kind, spec = part[:cut], part[cut:]
        fields = json.loads(spec) if spec.startswith("{") else None
        if kind == "probe":
            options["probe"] = (Probe(**{"fit": True, **fields}) if fields is not None
                                else spec.lstrip("=") or "tail")
        elif kind == "recall":
            options["recall"] = (Recall(**fields) if fields is not None
                                 else int(spec.lstrip("=")) if spec else True)
        elif kind == "structure":
            options["chat_structure"] = True
        else:
            raise SystemExit(f"unknown part {part!r} of cache {name!r}")
    return options


def quartiles(x: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile) of x."""
    q = np.percentile(np.asarray(x, dtype=float), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def command() -> str:
    """This bench's command line as a shell would take it back (arguments quoted where needed)."""
    return shlex.join([".venv/bin/python"] + sys.argv)


class JsonWorker:
    """A benchmark worker process (bench/*_worker.py): one JSON command per stdin line, one JSON
    reply per stdout line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def padded_env(rng: random.Random) -> dict[str, str]:
    """This environment plus a variable of random length (0-4095 bytes): the environment sits at
    the top of the stack, so its size moves the stack's alignment, and with it a process's speed
    by a few per cent whatever the code (Mytkowicz et al., "Producing wrong data without doing
    anything obviously wrong", ASPLOS 2009). Workers started with different paddings turn that
    fixed bias of one process into spread between processes."""
    return {**os.environ, "RCEDGE_BENCH_PAD": "x" * rng.randrange(4096)}


def run_cli_json(cmd: list[str], name: str) -> dict[str, Any]:
    """Run `python -m pyrcedge ...` (cmd), return the JSON object on its last line with the
    command (as `pyrcedge ...`) added; RuntimeError with the end of stderr if it failed."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["command"] = " ".join(["pyrcedge"] + cmd[3:])
    return r
