"""No import cycles between the modules of tfopt, strategies and launch.

A static scan of each module's top-level imports (``if TYPE_CHECKING:`` blocks
included, since a type-only import is still a two-way dependency to a reader).
Imports inside functions are lazy on purpose and left out, and so is each
package's ``__init__``, which re-exports its modules.
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfopt", "strategies", "launch")


def _module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return name.removesuffix(".__init__")


def _top_level_imports(tree: ast.Module) -> set[str]:
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` and friends.
            nodes += node.body + node.orelse
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    imports = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(root, file)
                    with open(path, encoding="utf-8") as f:
                        imports[_module_name(path)] = _top_level_imports(ast.parse(f.read()))
    modules = set(imports) - set(PACKAGES)
    return {m: {i for i in imports[m] if i in modules and i != m} for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_scan_reads_the_real_imports():
    graph = import_graph()
    assert "strategies._errors" in graph["strategies._config"]
    assert "strategies._registry" in graph["strategies._config"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def _every_import(path: str) -> set[str]:
    """Every module a file imports, at any depth (lazy imports included)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return _top_level_imports(ast.Module(body=imports, type_ignores=[]))


def test_launch_imports_only_the_public_names_of_other_packages():
    private = []
    for root, _, files in os.walk(os.path.join(REPO, "launch")):
        for file in (f for f in files if f.endswith(".py")):
            path = os.path.join(root, file)
            for name in _every_import(path):
                parts = name.split(".")
                if parts[0] in ("tfopt", "strategies") and any(p.startswith("_") for p in parts[1:]):
                    private.append(f"{os.path.relpath(path, REPO)}: {name}")
    assert private == []
