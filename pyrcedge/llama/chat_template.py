"""A bound on the work a model's chat template may do.

llama_cpp renders tokenizer.chat_template (the model file's Jinja template) in Jinja's sandbox,
which caps each `range` at 100,000 items but not loops inside loops: a template of two nested
ranges runs for hours, and create_chat_completion (a server request) with it. pyrcedge.Llama
renders the model's templates under a step limit: a trace function that counts the lines the
template's own compiled code runs (Jinja compiles a template from a string to code named
"<template>"; every other frame is left untraced) and raises GenerationInputError past
MAX_TEMPLATE_STEPS, far more than a real template runs for a chat.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from types import FrameType
from typing import Any, Callable, Iterator

from ..errors import GenerationInputError

MAX_TEMPLATE_STEPS = 2_000_000     # room for 20,000 messages of a 100-line template
TEMPLATE_FILENAME = "<template>"   # what Jinja names the code of a template compiled from a string

Tracer = Callable[[FrameType, str, Any], Any]


@contextlib.contextmanager
def step_limit(max_steps: int) -> Iterator[None]:
    """Raise GenerationInputError once template code has run more than max_steps lines in this
    thread. No bound while another trace function (a debugger, coverage) is set: it is kept."""
    if sys.gettrace() is not None:
        yield
        return
    steps = 0

    def local(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > max_steps:
                raise GenerationInputError(
                    f"the model's chat template ran more than {max_steps} steps (loops inside "
                    "loops?); the model file's tokenizer.chat_template cannot format a chat")
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        return local if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(None)


class BoundedTemplate:
    """A compiled jinja2 Template whose render runs under step_limit."""

    def __init__(self, template: Any, max_steps: int = MAX_TEMPLATE_STEPS) -> None:
        self.template, self.max_steps = template, max_steps

    def render(self, *args: Any, **kwargs: Any) -> str:
        with step_limit(self.max_steps):
            return str(self.template.render(*args, **kwargs))


def bound_chat_templates(handlers: dict[str, Any], max_steps: int = MAX_TEMPLATE_STEPS) -> int:
    """Render the Jinja chat formatters behind llama_cpp.Llama._chat_handlers (the model file's
    templates) under step_limit. Returns how many were bound."""
    bound = 0
    for handler in handlers.values():
        formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
        template = getattr(formatter, "_environment", None)
        if template is not None and not isinstance(template, BoundedTemplate):
            formatter._environment = BoundedTemplate(template, max_steps)  # type: ignore[union-attr]
            bound += 1
    return bound
