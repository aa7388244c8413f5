"""No import cycles between the modules of tfopt, strategies and launch.

A static scan of each module's top-level imports (``if TYPE_CHECKING:`` blocks
included, since a type-only import is still a two-way dependency to a reader).
Imports inside functions are lazy on purpose and left out, and so is each
package's ``__init__``, which re-exports its modules.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfopt", "strategies", "launch")


def _module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return name.removesuffix(".__init__")


def _imported_names(nodes) -> set[str]:
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _top_level_imports(tree: ast.Module) -> set[str]:
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` and friends.
            nodes += node.body + node.orelse
    return _imported_names(nodes)


def _parsed_modules():
    """(module name, syntax tree) of every module of PACKAGES."""
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(root, file)
                    with open(path, encoding="utf-8") as f:
                        yield _module_name(path), ast.parse(f.read())


def import_graph() -> dict[str, set[str]]:
    imports = {name: _top_level_imports(tree) for name, tree in _parsed_modules()}
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
    assert "strategies.building._errors" in graph["strategies.building._config"]
    assert "strategies.building._registry" in graph["strategies.building._config"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def _all_imports() -> dict[str, set[str]]:
    """Every import of every module, lazy ones (inside functions) included."""
    return {name: _imported_names(ast.walk(tree)) for name, tree in _parsed_modules()}


def _reaching(prefix: str, imports: dict[str, set[str]], target: str) -> list[tuple[str, str]]:
    return sorted((m, i) for m, names in imports.items() if m.startswith(prefix)
                  for i in names if i == target or i.startswith(target + "."))


def test_building_never_imports_training():
    # The two halves of strategies meet only at the tf.distribute.Strategy object.
    imports = _all_imports()
    assert _reaching("strategies.building", imports, "strategies.training") == []
    assert _reaching("strategies.cluster", imports, "strategies.training") == []
    assert _reaching("strategies.flags", imports, "strategies.training") == []
    assert _reaching("strategies.compat", imports, "strategies.training") == []
    assert _reaching("strategies.compat", imports, "strategies.building") == []
    # The scan can see such an import: training does import the compat layer.
    assert _reaching("strategies.training", imports, "strategies.compat")


def test_keras_and_tf_internals_only_in_the_compat_layer():
    imports = _all_imports()
    for internal in ("keras.src", "tensorflow.python"):
        outside = [(m, i) for m, i in _reaching("strategies", imports, internal)
                   if not m.startswith("strategies.compat")]
        assert outside == [], internal
    assert _reaching("strategies.compat", imports, "keras.src")  # The scan sees them.


def test_launch_imports_only_the_public_names_of_other_packages():
    imports = _all_imports()
    private = [(m, i) for package in ("tfopt", "strategies") for m, i in _reaching("launch", imports, package)
               if any(part.startswith("_") for part in i.split(".")[1:])]
    assert private == []
    assert _reaching("launch", imports, "strategies")  # The scan sees launch's imports.


def test_importing_strategies_cluster_loads_no_tensorflow():
    # Launchers that only start processes (launch.local_cluster) import it.
    code = ("import sys, strategies.cluster, strategies; "
            "assert strategies.cluster.free_ports; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
    # And the same check sees TensorFlow when something does load it.
    code = "import sys, strategies; strategies.build; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "True"


def test_fit_is_short():
    # Its code (signature and body, the docstring left out) delegates to the trainer and
    # the run directory; the whole function reads on one screen.
    from strategies.training import _fit

    source = inspect.getsource(_fit.fit)
    function = ast.parse(source).body[0]
    docstring = function.body[0]
    lines = source.splitlines()
    code = lines[: docstring.lineno - 1] + lines[docstring.end_lineno:]
    assert len(code) < 60, len(code)
