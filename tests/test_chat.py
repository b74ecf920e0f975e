"""`pyrcedge chat` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import re
import sys

import pexpect

# the recalls part shows once the chat has recalled (recall is on by default)
STATUS = re.compile(r"\[KV (\d+)/(\d+) cells, [\d.]+/[\d.]+ MiB \| (\d+) evictions \((\d+) tokens\) "
                    r"\| (?:\d+ recalls \(\d+ tokens\) \| )?(\d+) tokens in history \| [\d.]+ tok/s\]")
TURNS = ["Hello! Who are you?", "Tell me about the sea.", "And about mountains?"]


def spawn(*args: str) -> pexpect.spawn:
    c = pexpect.spawn(sys.executable, ["-m", "pyrcedge", "chat", "--budget", "128",
                                       "--temperature", "0", "--max-tokens", "24", "--threads", "2",
                                       *args], encoding="utf-8", timeout=180, dimensions=(40, 120))
    c.expect("you> ")
    return c


def say(c: pexpect.spawn, text: str) -> tuple[str, tuple[int, ...]]:
    """Send a message; the reply's text and the status line's numbers."""
    c.sendline(text)
    c.expect(r"bot> (.*?)\r\n")
    reply = c.match.group(1)
    c.expect(STATUS)
    status = tuple(int(x) for x in c.match.groups())
    c.expect("you> ")
    return reply, status


def quit_(c: pexpect.spawn) -> None:
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def test_chat_streams_replies_inside_the_budget(tmp_path):
    c = spawn()
    seen = []
    for text in TURNS + ["What did I ask first?"]:
        reply, (used, budget, evictions, evicted, history) = say(c, text)
        assert reply.strip()
        assert budget == 128 and used <= 128
        seen.append((history, evictions))
    assert seen[-1][0] > 128 and seen[-1][1] >= 1          # past the budget, by evicting
    c.sendline("/stats")
    c.expect(STATUS)
    c.expect("you> ")
    c.sendline("/frobnicate")
    c.expect("error: unknown command /frobnicate")
    c.expect("you> ")
    c.sendline(f"/load {tmp_path / 'missing'}")
    c.expect("error: cannot read session")
    c.expect("you> ")
    reply, _ = say(c, "Still there?")                        # errors lose nothing
    assert reply.strip()
    quit_(c)


def test_a_saved_chat_continues_identically_in_a_new_process(tmp_path):
    path = tmp_path / "chat.pyrcedge"
    a = spawn()
    for text in TURNS:
        say(a, text)
    a.sendline(f"/save {path}")
    a.expect("saved session")
    a.expect("you> ")
    expected, status_a = say(a, "Which of those do you like best?")
    quit_(a)

    b = spawn("--session", str(path))
    got, status_b = say(b, "Which of those do you like best?")
    assert got == expected
    assert status_b == status_a
    b.sendline("/reset")
    b.expect("new conversation")
    b.expect("you> ")
    quit_(b)


def test_a_long_message_shows_progress_while_it_is_read(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("".join(f"Sentence number {i} is about the weather in a small town.\n"
                           for i in range(60)))
    c = spawn()
    c.sendline(f"/file {doc}")
    c.expect(r"reading:\s+\d+%")
    c.expect(STATUS)
    used, budget, evictions, _, history = (int(x) for x in c.match.groups())
    assert history > 600 and evictions > 0 and used <= budget
    c.expect("you> ")
    c.sendline(f"/file {tmp_path / 'absent.txt'}")
    c.expect("error: cannot read")
    c.expect("you> ")
    quit_(c)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on():
    c = spawn("--max-tokens", "400")
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect("bot> ")
    c.expect(r"\w+ \w+ \w+")                                  # a few words streamed
    c.sendintr()
    c.expect(r"\[interrupted\]")
    c.expect(STATUS)
    used, budget, *_ = (int(x) for x in c.match.groups())
    assert used <= budget
    reply, (used, budget, *_rest) = say(c, "Now say hello.")     # the cache is consistent
    assert reply.strip() and used <= budget
    quit_(c)
