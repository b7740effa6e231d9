"""pemu's modules import each other without cycles.

A static look at every ``import`` in ``pemu/`` (module level and inside
functions alike: an import inside a function that closes a cycle is still a
cycle, only one that fails later), with ``if TYPE_CHECKING:`` imports left
out since they never run.  ``from pkg import name`` counts as importing
``pkg.name`` when that is a module, else ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PEMU = Path(__file__).resolve().parents[2] / "pemu"


def module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in PEMU.rglob("*.py"):
        parts = list(path.relative_to(PEMU.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pemu modules ``name`` imports when some code path of it runs."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in (resolve(d) for d in found if d.startswith("pemu")) if m is not None and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_find_cycles_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    modules = {"pemu.x": tmp_path / "x.py", "pemu.y": tmp_path / "y.py"}
    modules["pemu.x"].write_text("from pemu.y import f\n")
    modules["pemu.y"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pemu.x\n"
                                 "def f():\n    from pemu.x import g\n")
    graph = {n: imported_modules(n, p, modules) for n, p in modules.items()}
    assert find_cycles(graph) == [["pemu.x", "pemu.y"]]


def test_type_checking_imports_are_not_edges(tmp_path: Path) -> None:
    modules = {"pemu.x": tmp_path / "x.py", "pemu.y": tmp_path / "y.py"}
    modules["pemu.x"].write_text("from pemu.y import f\n")
    modules["pemu.y"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pemu.x import g\n")
    graph = {n: imported_modules(n, p, modules) for n, p in modules.items()}
    assert find_cycles(graph) == []


def test_pemu_has_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []
