"""The package's layers (docs/layers.md): every import inside pyrcedge, at module level or in a
function, points to the same layer or one below, and no import cycle exists."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pyrcedge"

# lowest first; a module may import its own layer and those before it
LAYERS = [
    ["pyrcedge.errors"],
    ["pyrcedge.assets", "pyrcedge.native"],
    ["pyrcedge.cache"],
    ["pyrcedge.features"],
    ["pyrcedge.llama"],
    ["pyrcedge.apps"],
    ["pyrcedge.evaluation"],
    ["pyrcedge.cli", "pyrcedge.__main__", "pyrcedge"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/layers.md"
    return best[0]


def imports_of(module: str) -> set[str]:
    """pyrcedge modules that `module` imports anywhere in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else (node.module or "")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = sorted(t for t in GRAPH[module] if layer_of(t) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports from above: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_function_level_imports_are_optional_dependencies_only():
    """A function-level import only for an optional dependency (the server and eval extras, a
    terminal's readline) or in a worker that runs in another environment."""
    allowed = {"fastapi", "starlette", "uvicorn", "llama_cpp.server", "matplotlib", "rdata", "readline",
               "pyrcedge", "llama_cpp"}
    workers = {"pyrcedge.evaluation.speed_worker"}
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    name = node.names[0].name if isinstance(node, ast.Import) else (node.module or "")
                    top = name.split(".")[0]
                    if getattr(node, "level", 0) or not (name.startswith(tuple(allowed - {"pyrcedge", "llama_cpp"}))
                                          or (module in workers and top in allowed)):
                        found.append(f"{module}: {name or '.'}")
    assert not found, f"function-level imports of non-optional modules: {found}"
