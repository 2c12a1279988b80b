"""The shape of the package (issue 18, "the house"): the import graph has no cycle, no function
is longer than a screen and a half, and each model-loading option is declared in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "blendedit"
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its
    ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, at any depth of its code (an import inside
    a function is an edge too): ``from a.b import c`` names ``a.b.c`` when that is a module, else
    ``a.b``."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package ``level - 1`` above this one's
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    out.add(full)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    """No two modules import each other, directly or through others, counting a package's
    ``__init__`` as a module: so every import goes down to a lower floor, never up (importing
    the package root from inside it, for instance, would close a cycle)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_function_is_longer_than_a_screen_and_a_half():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert long == []


@pytest.mark.parametrize(
    "flag", ["--model", "--device", "--dtype", "--offline", "--clip-model", "--model-config"]
)
def test_each_model_option_is_declared_once(flag):
    """``--model``, ``--device``, ... are written once under src/ (``blendedit.options``), and
    every command takes them from there."""
    places = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == flag
    ]
    assert len(places) == 1, places


def test_every_command_takes_the_shared_model_options():
    from blendedit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("edit", "compare-backgrounds", "serve", "replay", "batch", "eval", "bench"):
        flags = {f for a in commands[name]._actions for f in a.option_strings}
        assert {"--device", "--dtype"} <= flags, name
        if name != "bench":
            assert "--model" in flags, name


# The floors of docs/architecture.md, lowest first: a module imports only its own floor and those
# below; on the floors of several rooms, no room imports another.
FLOORS = [
    ("ground", ["_version", "errors", "io", "models", "config", "engine", "figures"]),
    ("frame", ["frame"]),
    ("selection", ["segment"]),
    ("methods", ["latent", "pixel"]),
    ("registry", ["methods", ""]),
    ("options", ["options"]),
    ("front ends", ["cli", "web", "batch", "eval", "bench", "api"]),
]
APART = {"methods", "front ends"}  # floors whose rooms never import each other


def _room(module: str) -> tuple[int, str]:
    """(floor index, room) of a module: its first name under ``blendedit`` ("" = the root)."""
    room = module.split(".")[1] if "." in module else ""
    for i, (_, rooms) in enumerate(FLOORS):
        if room in rooms:
            return i, room
    raise AssertionError(f"{module} is on no floor: add its room to FLOORS and the docs")


def test_every_import_goes_down_a_floor_or_stays_in_its_room():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        floor, room = _room(name)
        for target in _imports(name, path, modules):
            t_floor, t_room = _room(target)
            if t_floor > floor or (
                t_floor == floor and t_room != room and FLOORS[floor][0] in APART
            ):
                wrong.append(f"{name} -> {target}")
    assert wrong == []
