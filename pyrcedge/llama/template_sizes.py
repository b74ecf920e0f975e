"""How large a value a chat template's operation would make, known before it runs.

A Jinja template in the sandbox can still ask for a value of any size in one operation, which
no step count sees: `'a' * 10**10`, `'x'.center(10**10)`, `'%10000000000d' % 1`, a string
replaced into itself, `9 ** (9 ** 9)`. Each estimate here is an upper bound on the size of what
the operation would return, computed from its operands in time linear in them, so that the
environment in chat_template.py can refuse the operation before Python allocates. Sizes are in
characters for strings and in items plus the items' sizes for containers (what the value
prints to); an integer counts its decimal digits.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

MAX_INT_BITS = 1 << 14      # about 4,900 decimal digits: Python itself refuses to print 4,300

_NUMBER = re.compile(r"\d+")
_CONTAINERS = (list, tuple, dict, set, frozenset)


def size_of(value: Any, limit: int) -> int:
    """The size of value as it would print (characters of strings, items of containers, digits
    of integers), nested containers included; counting stops once past limit."""
    if isinstance(value, str):
        return len(value)
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += 1 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += 1 + len(item)
            stack.extend(item)
        else:
            total += 1
    return total


def depth_of(value: Any, limit: int = 64) -> int:
    """How deeply containers nest in value (0 for a scalar), counted up to limit."""
    depth, level = 0, [value]
    while depth < limit:
        inner: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(item.values())
            elif isinstance(item, _CONTAINERS):
                inner.extend(item)
        if not inner and not any(isinstance(i, _CONTAINERS) for i in level):
            return depth
        depth, level = depth + 1, inner
    return depth


def _one_level(args: Iterable[Any]) -> Iterator[Any]:
    """args, and the items of the lists, tuples and dicts (values) among them."""
    for arg in args:
        if isinstance(arg, dict):
            yield from arg.values()
        elif isinstance(arg, (list, tuple)):
            yield from arg
        else:
            yield arg


def ints_in(args: Iterable[Any]) -> list[int]:
    """The integers among args and one level inside the containers among them."""
    return [i for i in _one_level(args) if isinstance(i, int) and not isinstance(i, bool)]


def strings_in(args: Iterable[Any]) -> int:
    """Characters of the strings among args and one level inside the containers among them."""
    return sum(len(i) for i in _one_level(args) if isinstance(i, str))


def format_size(template: str, args: tuple[Any, ...], limit: int) -> int:
    """Bound on `template % args` or `template.format(*args)`: the template, every number written
    in it taken as a field width, every integer argument taken as a width too (`%*d`, `{:{}}`),
    and the arguments themselves."""
    widths = 0
    for number in _NUMBER.findall(template):
        if len(number) > 12:
            return limit + 1
        widths += int(number)
    widths += sum(abs(i) for i in ints_in(args) if i.bit_length() < 40)
    if any(i.bit_length() >= 40 for i in ints_in(args)):
        return limit + 1
    return len(template) + widths + size_of(args, limit)


def replace_size(text: str, old: str, new: str, count: int = -1) -> int:
    """Exact length of text.replace(old, new, count)."""
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


def join_size(separator: str, items: list[Any], limit: int) -> int:
    """Bound on separator.join(items)."""
    return len(separator) * max(0, len(items) - 1) + size_of(items, limit)


def binop_size(operator: str, left: Any, right: Any, limit: int) -> int:
    """Bound on the size of `left operator right` for the operators that can outgrow their
    operands in one step (0 when the result cannot be large)."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        bits = (abs(left).bit_length()) * right
        return limit + 1 if bits > MAX_INT_BITS else bits // 3 + 1
    if operator == "*":
        if ints:
            bits = abs(left).bit_length() + abs(right).bit_length()
            return limit + 1 if bits > MAX_INT_BITS else bits // 3 + 1
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                return size_of(seq, limit) * max(0, times)
    if operator == "%" and isinstance(left, str):
        return format_size(left, right if isinstance(right, tuple) else (right,), limit)
    if operator == "+" and not ints:
        return size_of(left, limit) + size_of(right, limit)
    return 0


def method_size(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> int:
    """Bound on what a string's method returns, for the methods whose result can outgrow the
    string and their arguments together (0 for any other callable)."""
    text = getattr(method, "__self__", None)
    if not isinstance(text, str):
        return 0
    name = getattr(method, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill"):
        return max([len(text), *ints_in(args)])
    if name == "expandtabs":
        return len(text) + text.count("\t") * max([8, *ints_in(args), *ints_in((kwargs,))])
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) \
            and isinstance(args[1], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        return replace_size(text, args[0], args[1], count)
    if name == "join" and args and isinstance(args[0], (list, tuple)):
        return join_size(text, list(args[0]), limit)
    if name in ("format", "format_map"):
        return format_size(text, (*args, kwargs), limit)
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        return len(text) * max(1, longest)
    return 0


# the filters whose result can outgrow their value and arguments together
SIZED_FILTERS = frozenset({"replace", "join", "center", "format", "indent", "wordwrap", "tojson",
                           "pprint", "urlize", "batch", "slice"})


def filter_size(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> int:
    """Bound on what a Jinja filter returns, for the filters whose result can outgrow their
    value and arguments together (0 for the others); args[0] is the filtered value."""
    if not args or name not in SIZED_FILTERS:
        return 0
    value, rest = args[0], args[1:]
    every = (*rest, kwargs)
    if name in ("replace", "join", "center", "format"):
        text = value if isinstance(value, str) else str(value) if name != "join" else ""
        if name == "replace" and len(rest) >= 2:
            count = rest[2] if len(rest) > 2 and isinstance(rest[2], int) else -1
            return replace_size(text, str(rest[0]), str(rest[1]), count)
        if name == "join" and isinstance(value, (list, tuple)):
            separator = rest[0] if rest and isinstance(rest[0], str) else kwargs.get("d", "")
            return join_size(str(separator), list(value), limit)
        if name == "center":
            return max([len(text), 80, *ints_in(every)])
        if name == "format":
            return format_size(text, (*rest, kwargs), limit)
        return 0
    size = size_of(value, limit)
    if name == "indent":
        lines = (value.count("\n") + 1) if isinstance(value, str) else size
        return size + lines * (max([4, *ints_in(every)]) + strings_in(every))
    if name == "wordwrap":
        widths = [w for w in ints_in(every) if w > 0]
        return size + (size // min(widths, default=1) + 1) * (strings_in(every) + 1)
    if name in ("tojson", "pprint"):
        indent = max([0, *ints_in(every)]) + strings_in(every)
        return size * (8 + indent * (depth_of(value) + 1))
    if name == "urlize":
        return size * (64 + strings_in(every))
    if name in ("batch", "slice"):
        fill = size_of(every, limit)
        return size + max([0, *ints_in(every)]) * (fill + 1)
    return 0
