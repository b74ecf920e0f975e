"""Capture a `pyrcedge chat` session as a person sees it (through a pseudo-terminal) into
docs/chat-screen.txt, for the README. Usage: .venv/bin/python scripts/capture_chat.py"""

from __future__ import annotations

import io
import re
import sys
import tempfile
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parent.parent
TURNS = ["Hi! Give me a tip for a rainy Sunday.", "And one for a sunny one?",
         "/save {tmp}/sunday.pyrcedge", "Which of the two would you pick?"]


def screen(raw: str) -> str:
    """What the terminal shows: each line as its last carriage return left it."""
    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return "\n".join(line.split("\r")[-1] if line.split("\r")[-1].strip() else line.replace("\r", "")
                     for line in raw.replace("\r\n", "\n").split("\n")).strip() + "\n"


def main() -> None:
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        c = pexpect.spawn(sys.executable, ["-m", "pyrcedge", "chat", "--budget", "160",
                                           "--temperature", "0", "--max-tokens", "48"],
                          encoding="utf-8", timeout=300, dimensions=(40, 100))
        c.logfile_read = log
        c.expect("you> ")
        for turn in TURNS:
            c.sendline(turn.format(tmp=tmp))
            c.expect("you> ")
        c.sendeof()
        c.expect(pexpect.EOF)
        text = screen(log.getvalue()).replace(tmp, "/tmp")
    out = REPO / "docs" / "chat-screen.txt"
    out.write_text("$ pyrcedge chat --budget 160 --temperature 0 --max-tokens 48\n" + text)
    print(out.read_text())


if __name__ == "__main__":
    main()
