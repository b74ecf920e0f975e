"""`pyrcedge chat`: a terminal chat on the budgeted cache.

The conversation is a list of messages formatted by the model's own chat template
(llama_cpp's create_chat_completion); pyrcedge.Llama reuses the cached prefix of the history,
so each turn reads only the new message. Replies stream as they are sampled; a status line
after each shows the KV cache against its budget, evictions and speed. A long message (a
pasted document, /file) shows a progress bar while it is read.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, TextIO

from tqdm import tqdm

from ..errors import PyrcedgeError, SessionError
from ..features import session
from ..llama import Llama
from . import options

HELP = """commands:
  /save FILE     save the session (cache, statistics, history, messages) to FILE
  /load FILE     restore a session saved by /save (same model, budget and cache type)
  /file FILE     send the contents of a text file as your message
  /reset         start a new conversation
  /stats         show the KV cache state
  /help          this list
  /quit          leave (Ctrl-D too; Ctrl-C stops a reply)"""

MIB = 1024 * 1024


@dataclass
class TurnStats:
    """Speed of the last reply."""

    prompt_tokens: int = 0        # tokens read for this turn (what the cache did not hold)
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class Conversation:
    """The messages of one chat on one Llama, and how to send the next."""

    llm: Llama
    system: str | None = None
    max_tokens: int | None = 512
    sampling: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    last: TurnStats = field(default_factory=TurnStats)

    def __post_init__(self) -> None:
        if not self.messages and self.system:
            self.messages.append({"role": "system", "content": self.system})

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message and stream the reply's text; the reply joins the messages when
        the stream ends (an interrupted reply is kept as far as it got)."""
        self.messages.append({"role": "user", "content": text})
        start_tokens = self.llm.n_tokens
        t0 = time.perf_counter()
        t_first = None
        after_prefill = 0
        parts: list[str] = []
        try:
            stream: Any = self.llm.create_chat_completion(
                messages=self.messages, stream=True, max_tokens=self.max_tokens,  # type: ignore[arg-type]
                **self.sampling)
            for chunk in stream:
                delta = chunk["choices"][0]["delta"].get("content")
                if t_first is None:
                    t_first = time.perf_counter()
                    after_prefill = self.llm.n_tokens
                if delta:
                    parts.append(delta)
                    yield delta
        finally:
            t_end = time.perf_counter()
            self.messages.append({"role": "assistant", "content": "".join(parts)})
            first = t_first if t_first is not None else t_end
            self.last = TurnStats(
                prompt_tokens=max(0, after_prefill - min(start_tokens, after_prefill)),
                generated_tokens=max(0, self.llm.n_tokens - after_prefill) + (1 if parts else 0),
                prefill_s=first - t0, decode_s=t_end - first)

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.llm.reset()

    def save(self, path: str) -> None:
        self.llm.save_session(path, metadata={"messages": self.messages, "system": self.system})

    def load(self, path: str) -> None:
        """Continue the chat saved in `path`; on any error the current chat is kept."""
        state = session.read(path)
        meta = state.header.get("metadata") or {}
        messages = meta.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SessionError(f"{path} is a pyrcedge session without a chat's messages")
        session.check_compatible(state.header, session.identity(self.llm), f"session file {path}")
        self.llm.load_state(state)
        self.messages = messages
        self.system = meta.get("system")

    def status(self) -> str:
        kv = self.llm.kv_stats()
        used = kv.cells_used * kv.budget_bytes / max(1, kv.budget_cells)
        return (f"[KV {kv.cells_used}/{kv.budget_cells} cells, {used / MIB:.1f}/"
                f"{kv.budget_bytes / MIB:.1f} MiB | {kv.evictions} evictions "
                f"({kv.evicted_tokens} tokens) | "
                + (f"{kv.recalls} recalls ({kv.recalled_tokens} tokens) | " if kv.recalls else "")
                + f"{kv.history_tokens} tokens in history | {self.last.decode_tok_s:.1f} tok/s]")


class PrefillBar:
    """A progress bar on stderr while a long message is read (tqdm), shown from `min_tokens`."""

    def __init__(self, out: TextIO, min_tokens: int = 256) -> None:
        self.out = out
        self.min_tokens = min_tokens
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_tokens:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="tok", desc="reading", file=self.out, leave=False,
                            dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(conv: Conversation, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
    """The read-reply loop until /quit or end of input."""
    bar = PrefillBar(err)
    conv.llm.on_progress = bar
    if stdin.isatty():
        import readline  # noqa: F401, PLC0415  (line editing for input(), on a terminal only)
    print(f"pyrcedge chat: {conv.status()}\nType /help for commands.", file=err)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=err)
            return 0
        except KeyboardInterrupt:
            print("^C", file=err)
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            arg = arg.strip()
            if cmd in ("/quit", "/exit"):
                return 0
            try:
                message = _command(conv, cmd, arg)
            except PyrcedgeError as e:
                print(f"error: {e}", file=err)
                continue
            if message is None:
                continue
            text = message
        started = False
        try:
            with _StopOnInterrupt() as stop:
                for piece in conv.send(text):
                    if not started:     # after the progress bar of a long message
                        print("bot> ", end="", file=out)
                        started = True
                    print(piece, end="", file=out, flush=True)
                    if stop.requested:
                        print(" [interrupted]", end="", file=out)
                        break
        except PyrcedgeError as e:
            print(f"\nerror: {e}", file=err)
        finally:
            bar.close()
        if not started:
            print("bot> ", end="", file=out)
        print(file=out)
        print(conv.status(), file=err, flush=True)


class _StopOnInterrupt:
    """Ctrl-C during a reply asks it to stop at the next token, instead of raising
    KeyboardInterrupt wherever Python happens to be (possibly between a decode and the cache's
    bookkeeping). A second Ctrl-C raises as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _command(conv: Conversation, cmd: str, arg: str) -> str | None:
    """Run a /command; returns a message to send (for /file) or None."""
    if cmd == "/help":
        print(HELP, file=sys.stderr)
    elif cmd in ("/save", "/load", "/file") and not arg:
        raise PyrcedgeError(f"{cmd} needs a file name")
    elif cmd == "/save":
        conv.save(arg)
        print(f"saved session to {arg}", file=sys.stderr)
    elif cmd == "/load":
        conv.load(arg)
        print(f"loaded session from {arg}: {len(conv.messages)} messages, {conv.status()}",
              file=sys.stderr)
    elif cmd == "/file":
        return options.read_text(arg)
    elif cmd == "/reset":
        conv.reset()
        print("new conversation", file=sys.stderr)
    elif cmd == "/stats":
        print(conv.status(), file=sys.stderr)
    else:
        raise PyrcedgeError(f"unknown command {cmd}; /help lists them")
    return None


def cmd_chat(args: argparse.Namespace) -> int:
    llm = options.open_from_args(args, seed=args.seed)
    try:
        conv = Conversation(llm, system=args.system, max_tokens=args.max_tokens,
                            sampling={"temperature": args.temperature, "top_p": args.top_p,
                                      "seed": args.seed})
        if args.session:
            conv.load(args.session)
        return run(conv)
    finally:
        llm.close()


def register(sub: Any) -> None:
    chat = sub.add_parser("chat", help="chat with a model in the terminal, inside a KV budget",
                          parents=[options.model_options(), options.max_tokens_option(512, "longest reply"),
                                   options.budget_options()])
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--session", help="start from a session file saved with /save")
    chat.add_argument("--temperature", type=float, default=0.2)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--n-ctx", type=options.positive_int, default=2048, help=argparse.SUPPRESS)
    chat.set_defaults(func=cmd_chat, budget="64MiB")
