"""Bounds on the time and memory a model's chat template may take.

llama_cpp compiles tokenizer.chat_template (the model file's Jinja template) as the model loads
and renders it for every chat, in Jinja's sandbox. The sandbox caps each `range` at 100,000 items
and blocks private attributes, but a hostile template still
- runs for hours with loops inside loops (two nested ranges: 10^10 steps);
- allocates without bound in one operation: `'a' * 10**10` (which Jinja even computes while it
  compiles, so as the model loads), `'x'.center(10**10)`, `'%10000000000d' % 1`, a string
  replaced or joined into itself, `9 ** (9 ** 9)` (minutes of one multiplication), a string that
  doubles on each of 40 loop steps; on a laptop that is the process killed, or the machine
  swapping.

pyrcedge.Llama loads the model's templates in BoundedEnvironment and renders them under a
RenderBudget:
- steps: the lines the template's own compiled code runs (a trace function on frames of code
  named "<template>", what Jinja names a template compiled from a string), plus one step per 64
  characters each checked operation makes; past the budget, GenerationInputError;
- time: a filter runs over up to 100,000 items in one step, so the clock is read every 256
  steps too, and a render past MAX_TEMPLATE_SECONDS is stopped the same way;
- size: every operation that can outgrow its operands (the intercepted operators `* ** % +` and
  `~`, every call and filter) is sized before it runs (template_sizes) and refused past the size
  limit, as is an output past it. The limits grow with the input: a template may make
  MAX_TEMPLATE_CHARS plus 4 times the size of the messages it is given, and run
  MAX_TEMPLATE_STEPS plus one step per 16 characters of them, MAX_TEMPLATE_SECONDS plus one
  second per 100,000 characters.
Real templates (tests/test_chat_template.py renders the default models' own) stay far inside.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, Iterable

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import llama_chat_format

from ..errors import GenerationInputError
from . import template_sizes

MAX_TEMPLATE_STEPS = 2_000_000     # room for 20,000 messages of a 100-line template
MAX_TEMPLATE_CHARS = 1 << 20       # 1M characters for one value or the output, beyond 4x the input
MAX_TEMPLATE_SECONDS = 10.0        # and one second per 100,000 characters of the input
CHARS_PER_STEP = 64                # what one step of the budget pays for in a sized operation
TEMPLATE_FILENAME = "<template>"   # what Jinja names the code of a template compiled from a string

Tracer = Callable[[FrameType, str, Any], Any]


class RenderBudget:
    """What one render may still spend: steps, seconds and the size of any one value."""

    def __init__(self, max_steps: int = MAX_TEMPLATE_STEPS, max_chars: int = MAX_TEMPLATE_CHARS,
                 max_seconds: float = MAX_TEMPLATE_SECONDS) -> None:
        self.steps_left, self.max_steps, self.max_chars = max_steps, max_steps, max_chars
        self.max_seconds, self.deadline = max_seconds, time.monotonic() + max_seconds
        self.ticks = 0

    @classmethod
    def for_input(cls, given: Any, max_steps: int = MAX_TEMPLATE_STEPS,
                  max_seconds: float = MAX_TEMPLATE_SECONDS) -> RenderBudget:
        """The budget of a render given these variables (the messages and the rest)."""
        size = template_sizes.size_of(given, 1 << 40)
        return cls(max_steps + size // 16, MAX_TEMPLATE_CHARS + 4 * size,
                   max_seconds + size / 100_000)

    def step(self, steps: int = 1) -> None:
        """Charge steps (a line: 1), looking at the clock every 256 lines."""
        self.steps_left -= steps
        if self.steps_left < 0:
            raise GenerationInputError(
                f"the model's chat template ran more than {self.max_steps} steps (loops inside "
                "loops?); the model file's tokenizer.chat_template cannot format a chat")
        self.ticks += 1
        if self.ticks & 255 == 0:
            self.check_clock()

    def check_clock(self) -> None:
        """After every sized operation too: a filter can run over 100,000 items in one step
        (`range(99999)|select('odd')|list` in a loop took hours)."""
        if time.monotonic() > self.deadline:
            raise GenerationInputError(
                f"the model's chat template ran for more than {self.max_seconds:.0f} s; the model "
                "file's tokenizer.chat_template cannot format a chat")

    def allow(self, size: int, what: str) -> None:
        """Refuse an operation that would make a value of more than max_chars."""
        if size > self.max_chars:
            raise GenerationInputError(
                f"the model's chat template asked for {what} of more than {self.max_chars} "
                "characters; the model file's tokenizer.chat_template cannot format a chat")

    def charge(self, size: int, what: str) -> None:
        """A checked operation that made `what` of `size` characters: refused past the size
        limit, else charged its steps, and the clock read."""
        self.allow(size, what)
        self.step(size // CHARS_PER_STEP)
        self.check_clock()

    def spend(self, value: Any) -> Any:
        """Charge a checked operation's result to the budget and pass it on."""
        self.charge(template_sizes.size_of(value, self.max_chars), "a value")
        return value


_render = threading.local()     # .budget: the RenderBudget of the render under way in this thread


def current_budget() -> RenderBudget:
    """The budget of this thread's render; outside a render (Jinja folding constants while it
    compiles), the fixed limits."""
    budget = getattr(_render, "budget", None)
    return budget if budget is not None else RenderBudget()


@contextlib.contextmanager
def render_budget(budget: RenderBudget) -> Iterator[RenderBudget]:
    """Charge every line template code runs in this thread, and its sized operations, to budget.
    No line count while another trace function (a debugger, coverage) is set: it is kept."""
    outer = getattr(_render, "budget", None)
    _render.budget = budget
    tracing = sys.gettrace() is None

    def local(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        if event == "line":
            budget.step()
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Tracer | None:
        return local if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    if tracing:
        sys.settrace(calls)
    try:
        yield budget
    finally:
        if tracing:
            sys.settrace(None)
        _render.budget = outer


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` (string concatenation, which the sandbox cannot
    intercept) routed through BoundedEnvironment.bounded_join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:     # as CodeGenerator.visit_Concat chooses the join
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.bounded_join({join}, (")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")


def _sized_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """function (a Jinja filter) refusing a result past the size limit before it is made."""
    skip = 1 if hasattr(function, "jinja_pass_arg") else 0   # context or environment first

    @functools.wraps(function)
    def sized(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        args = _materialized(args, skip)
        _check_counts(budget, args[skip + 1:], kwargs)
        budget.allow(template_sizes.filter_size(name, args[skip:], kwargs, budget.max_chars),
                     f"the filter {name} to make a value")
        return budget.spend(function(*args, **kwargs))

    sized.__dict__["pyrcedge_sized"] = True
    return sized


def _materialized(args: tuple[Any, ...], at: int) -> tuple[Any, ...]:
    """args with the one at `at`, when an iterator (a generator from map or select), made a
    list: an iterator's size is unknown until it has run, and the call would consume it anyway."""
    if len(args) > at and isinstance(args[at], Iterator):
        return (*args[:at], list(args[at]), *args[at + 1:])
    return args


def _check_counts(budget: RenderBudget, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """An integer argument to a call or filter is a count or a width: none may pass the limit."""
    for count in template_sizes.ints_in((*args, kwargs)):
        budget.allow(abs(count), f"a count ({count})")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with every operation that can outgrow its operands sized first
    (against the render's budget) and its result charged to the budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = BoundedCodeGenerator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Jinja's lorem-ipsum generator, which no chat template uses, runs Python per word
        # (lipsum(1000) in a loop: seconds per thousand characters of budget)
        self.globals.pop("lipsum", None)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        if operator == "+" and type(left) is str and type(right) is str:  # most of a chat's
            budget.charge(len(left) + len(right), "the result of +")
            return left + right
        budget.allow(template_sizes.binop_size(operator, left, right, budget.max_chars),
                     f"the result of {operator}")
        return budget.spend(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = current_budget()
        args = _materialized(args, 0)
        _check_counts(budget, args, kwargs)
        method = getattr(__obj, "__wrapped__", __obj)     # the sandbox wraps str.format
        budget.allow(template_sizes.method_size(method, args, kwargs, budget.max_chars),
                     f"{getattr(method, '__name__', 'a call')} to make a value")
        return budget.spend(super().call(__context, __obj, *args, **kwargs))

    def bounded_join(self, joined: Callable[[Any], str], parts: tuple[Any, ...]) -> str:
        """`~`: the parts' sizes are summed before they are joined."""
        budget = current_budget()
        budget.allow(template_sizes.size_of(parts, budget.max_chars), "a string joined with ~")
        return str(budget.spend(joined(parts)))

    def concat(self, parts: Iterable[str]) -> str:
        """A render's output (Environment.concat joins what the template yields), bounded."""
        budget, kept, size = current_budget(), [], 0
        for part in parts:
            size += len(part)
            budget.allow(size, "an output")
            kept.append(part)
        return "".join(kept)

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        # the filters as compiled in: llama_cpp adds its own tojson after the environment is made
        for name, function in list(self.filters.items()):
            if not getattr(function, "pyrcedge_sized", False):
                self.filters[name] = _sized_filter(name, function)
        return super().compile(*args, **kwargs)


class BoundedTemplate:
    """A compiled jinja2 Template whose render runs under a RenderBudget sized by its input."""

    def __init__(self, template: Any, max_steps: int = MAX_TEMPLATE_STEPS,
                 max_seconds: float = MAX_TEMPLATE_SECONDS) -> None:
        self.template, self.max_steps, self.max_seconds = template, max_steps, max_seconds

    def render(self, *args: Any, **kwargs: Any) -> str:
        budget = RenderBudget.for_input((args, kwargs), self.max_steps, self.max_seconds)
        with render_budget(budget):
            return str(self.template.render(*args, **kwargs))


_patch_lock = threading.Lock()
_patch_depth = 0                      # loads under way in bounded_environments
_LLAMA_CPP_ENVIRONMENT = llama_chat_format.ImmutableSandboxedEnvironment   # what it had


@contextlib.contextmanager
def bounded_environments() -> Iterator[None]:
    """While a pyrcedge.Llama loads, llama_cpp's chat formatters compile the model's templates in
    BoundedEnvironment (llama_cpp names the environment class in its module; compiling folds
    constant expressions, so the bound must be there as the model loads)."""
    global _patch_depth
    with _patch_lock:
        if _patch_depth == 0:
            llama_chat_format.ImmutableSandboxedEnvironment = BoundedEnvironment  # type: ignore
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                llama_chat_format.ImmutableSandboxedEnvironment = _LLAMA_CPP_ENVIRONMENT  # type: ignore


def bound_chat_templates(handlers: dict[str, Any], max_steps: int = MAX_TEMPLATE_STEPS) -> int:
    """Render the Jinja chat formatters behind llama_cpp.Llama._chat_handlers (the model file's
    templates) under a RenderBudget. Returns how many were bound."""
    bound = 0
    for handler in handlers.values():
        formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
        template = getattr(formatter, "_environment", None)
        if formatter is not None and template is not None \
                and not isinstance(template, BoundedTemplate):
            formatter._environment = BoundedTemplate(template, max_steps)
            bound += 1
    return bound

