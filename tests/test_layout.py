"""The package's floor plan stays readable: no import cycles between edgetune's modules, no
module importing another's private names, click and rich only in the CLI layer, and modules of
a size one can read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgetune

PACKAGE = Path(edgetune.__file__).parent
MAX_LINES = 420  # "~400": a module past it is probably two things


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every edgetune import, at any depth of the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "edgetune":
                found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "edgetune"]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            targets = {f"{module}.{n}" if f"{module}.{n}" in modules else module for n in names} \
                or {module}
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles():
    """Function-level imports count too: a cycle hidden in a function is still a tangle."""
    graph, cycles = _graph(), []
    # A package's __init__ importing its own submodules is how a package exposes its door.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_imports_of_private_names():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {n} from {module}"
           for name, path in _modules().items()
           for module, names, line in _imports(name, path)
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "make these public in their own module:\n" + "\n".join(bad)


def test_click_and_rich_only_in_the_cli():
    bad = []
    for name, path in _modules().items():
        if name.startswith("edgetune.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{name} imports {r}" for r in roots if r.split(".")[0] in ("click", "rich")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by what it does"
