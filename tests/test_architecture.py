"""The import contract: every module of ``pb_adapters`` imports only its own layer or those below.

Each module gets the rank of the longest entry of :data:`LAYERS` that is a dotted prefix of its
name, so a new submodule (``pb_adapters.model.saving``, ``pb_adapters.training.data.folders``)
takes its package's place without editing this file; a module no entry covers fails the test.
Every ``import`` statement counts, function-local ones included, except those under
``if TYPE_CHECKING:`` (they never run). Imports by name at run time (the registries load their
built-in entries with :func:`importlib.import_module`) are not edges: that is how a lower layer
names a higher one without depending on it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "pb_adapters"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Layers from the bottom up. A module may import modules of its own layer (without a cycle) or of
#: a lower one, never of a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pb_adapters.errors", "pb_adapters._version"),
    ("pb_adapters.utils",),
    ("pb_adapters.registry", "pb_adapters.base_registry", "pb_adapters.config"),
    (
        "pb_adapters.methods.base",
        "pb_adapters.targeting",
        "pb_adapters.heads",
    ),
    ("pb_adapters.methods",),  # each method's folder, and the package's re-exports
    ("pb_adapters.serving", "pb_adapters.batching"),  # many tasks on one base, over any method
    ("pb_adapters.mask_coding", "pb_adapters.serialization"),
    ("pb_adapters.card",),
    ("pb_adapters.hub_errors",),  # Hub failures in words
    ("pb_adapters.hub",),
    ("pb_adapters.bases", "pb_adapters.demo_base", "pb_adapters.provenance"),
    ("pb_adapters.model",),
    ("pb_adapters",),  # the package itself (its __init__: the public names); exact match only
    ("pb_adapters.integrations",),  # other libraries' tools on the wrapper (transformers.Trainer)
    ("pb_adapters.training",),
    ("pb_adapters.cli",),
)

_RANKS = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def rank(module: str) -> int | None:
    """The layer of ``module``: its longest dotted prefix in :data:`LAYERS` (None if none)."""
    if module == PACKAGE:
        return _RANKS[PACKAGE]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):  # never the bare package name: exact match only
        found = _RANKS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _owning_module(dotted: str) -> str | None:
    """The package module ``dotted`` lives in (``pb_adapters.x.Name`` -> ``pb_adapters.x``)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


class _ImportCollector(ast.NodeVisitor):
    """``(target module, line)`` of every import of the package that can run."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.is_package = is_package
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            here = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            source = ".".join(here + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            # ``from pkg import sub`` imports the submodule; ``from pkg import Name`` the package.
            full = f"{source}.{alias.name}"
            self._add(full if full in MODULES else source, node.lineno)

    def _add(self, dotted: str, line: int) -> None:
        if dotted == PACKAGE or dotted.startswith(PACKAGE + "."):
            target = _owning_module(dotted)
            if target is not None and target != self.module:
                self.found.append((target, line))


def import_edges() -> dict[tuple[str, str], int]:
    """``(importer, imported) -> line`` of the first such import, over the whole package."""
    edges: dict[tuple[str, str], int] = {}
    for module, path in MODULES.items():
        collector = _ImportCollector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for target, line in collector.found:
            edges.setdefault((module, target), line)
    return edges


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def _where(edge: tuple[str, str], edges: dict[tuple[str, str], int]) -> str:
    path = MODULES[edge[0]].relative_to(SRC.parent.parent)
    return f"{edge[0]} -> {edge[1]} ({path}:{edges[edge]})"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if rank(m) is None)
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_no_module_imports_a_higher_layer() -> None:
    edges = import_edges()
    upward = [
        f"{_where(edge, edges)}: layer {rank(edge[0])} imports layer {rank(edge[1])}"
        for edge in sorted(edges)
        if (rank(edge[0]) or 0) < (rank(edge[1]) or 0)
    ]
    assert not upward, "upward imports (move the code down, or pass what it needs in):\n" + (
        "\n".join(upward)
    )


def test_the_core_never_imports_training() -> None:
    edges = import_edges()
    outside = ("pb_adapters.training", "pb_adapters.cli")
    found = [
        _where(edge, edges)
        for edge in sorted(edges)
        if not edge[0].startswith(outside) and edge[1].startswith("pb_adapters.training")
    ]
    assert not found, "the core imports the training package:\n" + "\n".join(found)


def test_no_import_cycles() -> None:
    edges = import_edges()
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, target in edges:
        graph[source].add(target)
    cycles = list(_cycles(graph))
    report = []
    for members in cycles:
        inside = [e for e in sorted(edges) if e[0] in members and e[1] in members]
        report.append(
            " <-> ".join(members) + "\n  " + "\n  ".join(_where(e, edges) for e in inside)
        )
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(report)


def test_the_checker_sees_local_relative_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..errors import ConfigError\n"
        "from . import base\n"
        "if TYPE_CHECKING:\n"
        "    from ..model import PiggybackModel\n"
        "else:\n"
        "    import pb_adapters.card\n"
        "def f():\n"
        "    from pb_adapters.training.trainer import PiggybackTrainer\n"
    )
    collector = _ImportCollector("pb_adapters.methods.example", is_package=False)
    collector.visit(ast.parse(source))
    assert [target for target, _ in collector.found] == [
        "pb_adapters.errors",
        "pb_adapters.methods.base",
        "pb_adapters.card",
        "pb_adapters.training.trainer",
    ]
    assert rank("pb_adapters.training.data.folders") == rank("pb_adapters.training")
    assert rank("pb_adapters.model.saving") == rank("pb_adapters.model")
    assert rank("pb_adapters.methods.base") < rank("pb_adapters.methods.piggyback.layer")
    assert rank("pb_adapters.newmodule") is None
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(_cycles(graph)) == [["a", "b", "c"]]
