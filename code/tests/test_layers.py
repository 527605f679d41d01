"""The package's import graph: no module cycle, and the lower layers never import the upper ones.

Layers, lowest first: io / geometry / utils -> datasets / detail / model -> training -> evaluation
-> batch / bench / view / api / commands -> the package itself (``pbidr/__init__``: the API's facade). Every ``pbidr`` import counts, at the top of a module and inside functions
alike (a function-level import that dodges a cycle is still a cycle), read with ``ast`` from the
source, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "pbidr"

LOWER = ("pbidr.training", "pbidr.model", "pbidr.datasets", "pbidr.detail", "pbidr.geometry", "pbidr.io",
         "pbidr.utils")
UPPER = ("pbidr.evaluation", "pbidr.batch", "pbidr.commands", "pbidr.api", "pbidr.view")
UPPER_PREFIXES = ("pbidr.bench",)  # pbidr.bench, pbidr.bench_quality, pbidr.bench_texel, ...

KNOWN_CYCLES: list[set[str]] = []  # none: a cycle found is a failure


class Import(NamedTuple):
    importer: str  # the module holding the import statement
    name: str  # the dotted name imported: a module, or a module's attribute (pbidr.x.y.some_function)
    line: int


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (``__init__`` as the package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def pbidr_imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import of a ``pbidr`` name in ``source`` (the module ``module``), wherever it stands:
    module top level, functions, classes, ``if TYPE_CHECKING``, ``try`` blocks. Relative imports are
    resolved against ``module``'s package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [Import(module, f"{base}.{a.name}" if a.name != "*" else base, node.lineno) for a in node.names]
    return [i for i in found if i.name == "pbidr" or i.name.startswith("pbidr.")]


def nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in: itself when it is one, else its longest prefix that is."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> tuple[dict[str, set[str]], list[Import]]:
    """Module -> the package's modules it imports, and every pbidr import found."""
    modules = module_files()
    imports = []
    for name, path in modules.items():
        imports += pbidr_imports(path.read_text(), name, is_package=path.name == "__init__.py")
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        target = nearest_module(imp.name, modules)
        if target is not None and target != imp.importer:
            graph[imp.importer].add(target)
    return graph, imports


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The graph's strongly connected components with more than one module (Kosaraju, iterative)."""
    nodes = set(graph) | {m for targets in graph.values() for m in targets}
    order, seen = [], set()
    for start in sorted(nodes):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    reverse: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            reverse[b].add(a)
    components, assigned = [], set()
    for start in reversed(order):
        if start in assigned:
            continue
        component, todo = set(), [start]
        assigned.add(start)
        while todo:
            node = todo.pop()
            component.add(node)
            for prev in reverse[node] - assigned:
                assigned.add(prev)
                todo.append(prev)
        if len(component) > 1:
            components.append(component)
    return components


def in_package(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def is_upper(name: str) -> bool:
    return in_package(name, UPPER)


# ------------------------------------------------------------------------------------------------


def test_the_walk_sees_every_kind_of_import():
    source = (
        "from __future__ import annotations\n"
        "import numpy as np\n"
        "import pbidr.io.mesh\n"
        "from pbidr.errors import PbidrError\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pbidr.geometry.cameras import Camera\n"
        "def f():\n"
        "    from pbidr.evaluation import run_eval\n"
        "class C:\n"
        "    def g(self):\n"
        "        try:\n"
        "            from .checkpoints import load_run\n"
        "        except ImportError:\n"
        "            raise\n"
        "        from .. import __version__\n"
    )
    names = {i.name for i in pbidr_imports(source, "pbidr.training.trainer")}
    assert names == {"pbidr.io.mesh", "pbidr.errors.PbidrError", "pbidr.geometry.cameras.Camera",
                     "pbidr.evaluation.run_eval", "pbidr.training.checkpoints.load_run", "pbidr.__version__"}
    modules = dict.fromkeys(["pbidr", "pbidr.evaluation", "pbidr.evaluation.run_eval"], Path())
    assert nearest_module("pbidr.evaluation.run_eval", modules) == "pbidr.evaluation.run_eval"
    assert nearest_module("pbidr.evaluation.run_eval.load_run", modules) == "pbidr.evaluation.run_eval"
    assert nearest_module("pbidr.__version__", modules) == "pbidr"
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [{"a", "b", "c"}]


def test_the_graph_covers_the_package():
    graph, imports = import_graph()
    modules = module_files()
    assert "pbidr.training.trainer" in modules and "pbidr.commands.train" in modules
    # a top-level and a function-level import, so an empty walk cannot pass the tests below
    assert "pbidr.training.checkpoints" in graph["pbidr.training.trainer"]
    assert "pbidr.training.trainer" in graph["pbidr.commands.train"]


def test_no_import_cycle():
    graph, _ = import_graph()
    cycles = [c for c in strongly_connected(graph) if c not in KNOWN_CYCLES]
    described = ["; ".join(f"{a} -> {b}" for a in sorted(c) for b in sorted(graph[a] & c)) for c in cycles]
    assert not cycles, "import cycles: " + " | ".join(described)


def test_lower_layers_do_not_import_upper_ones():
    _, imports = import_graph()
    bad = [f"{i.importer} (line {i.line}) imports {i.name}" for i in imports
           if in_package(i.importer, LOWER) and is_upper(i.name)]
    assert not bad, "\n".join(bad)
