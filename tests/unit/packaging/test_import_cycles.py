"""The import packages form no import cycle (``TYPE_CHECKING`` imports excluded)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("rag_plugins", "servers", "integrations")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module, module: str, is_package: bool, deep: bool = False) -> set[str]:
    """Project modules imported when ``module`` is imported (TYPE_CHECKING skipped; function bodies too
    unless ``deep``, which also counts the lazy imports a function runs when called)."""
    found: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if deep and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With)):
            body[:0] = node.body
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            body[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            body[:0] = node.body + node.orelse + node.finalbody + [h for x in node.handlers for h in x.body]
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(deep: bool = False) -> dict[str, set[str]]:
    """Module -> project modules it imports at import time (a module also imports its parent packages)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        imports = _top_level_imports(ast.parse(path.read_text()), module, path.name == "__init__.py", deep)
        edges = set()
        for name in imports:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                prefix = ".".join(parts[:i])
                if prefix in files and prefix != module:
                    edges.add(prefix)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            # A package importing its own submodule is no cycle unless the submodule imports it back.
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _without_parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a module to its own ancestors' ``__init__`` that Python runs first anyway."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_detector_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    for deep in (False, True):  # at import time, and counting the lazy imports functions run
        cycles = find_cycles(_without_parent_edges(import_graph(deep=deep)))
        assert cycles == [], f"import cycles (deep={deep}): {cycles}"


def test_store_and_nodes_do_not_import_each_other() -> None:
    """Lazy imports inside functions count here: the store may convert nodes, nodes may not need the store."""
    graph = import_graph(deep=True)
    assert "rag_plugins.milvus.store" not in graph["rag_plugins.milvus.nodes"]
