"""The import graph of ``neco/`` is a DAG, counting function-level imports too (issue: layout).

Every ``import neco.x`` / ``from neco.x import y`` anywhere in a module (top level, inside
functions, under ``TYPE_CHECKING``) is an edge; importing ``neco.a.b`` also imports the package
``neco.a`` (its ``__init__``). A cycle fails with the modules on it, in order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "neco"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (``neco.a.b.Symbol`` -> ``neco.a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over ``neco/``, function-level imports included."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
            for target in targets:
                if not target.startswith("neco"):
                    continue
                dep = _resolve(target, modules)
                if dep is None or dep == mod:
                    continue
                graph[mod].add(dep)
                # importing neco.a.b runs neco/__init__ and neco/a/__init__ first
                parts = dep.split(".")
                for i in range(1, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent != mod and parent in modules and not mod.startswith(parent + "."):
                        graph[mod].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_neco_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in neco/: " + " -> ".join(cycle or [])


def test_cycle_detector_sees_function_level_imports(tmp_path: Path) -> None:
    graph = {"neco.a": {"neco.b"}, "neco.b": {"neco.a"}, "neco.c": set()}
    assert find_cycle(graph) == ["neco.a", "neco.b", "neco.a"]
    assert find_cycle({"neco.a": {"neco.b"}, "neco.b": set()}) is None


def test_graph_counts_deferred_imports() -> None:
    """A deferred import inside a function is an edge (the cycles this test guards hid there)."""
    graph = import_graph()
    assert graph, "no modules found under neco/"
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neco."):
                    dep = _resolve(node.module or "", _modules())
                    if dep and dep != mod:
                        assert dep in graph[mod]


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PKG.glob("*/__init__.py")))
def test_every_package_has_a_docstring(package: str) -> None:
    doc = ast.get_docstring(ast.parse((PKG / package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 20, f"neco/{package}/__init__.py needs a docstring paragraph"
