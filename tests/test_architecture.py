"""The package's shape: no import cycle, dependencies pointing one way, small modules.

Imports are read from the source (``ast``), module level and inside functions alike; imports under
``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sglkit"
MAX_MODULE_LINES = 400

# Layer -> packages it must never import (server -> runtime -> (layers, models, cache) -> core).
FORBIDDEN = {
    "sglkit.core": ("sglkit",),  # anything but sglkit.core itself (skipped below)
    "sglkit.cache": ("sglkit.runtime", "sglkit.server", "sglkit.models", "sglkit.layers", "sglkit.launch"),
    "sglkit.layers": ("sglkit.runtime", "sglkit.server", "sglkit.models", "sglkit.launch"),
    "sglkit.models": ("sglkit.runtime", "sglkit.server", "sglkit.launch"),
    "sglkit.runtime": ("sglkit.server", "sglkit.widgets"),
    "sglkit.launch": ("sglkit.runtime", "sglkit.server", "sglkit.models", "sglkit.layers", "sglkit.widgets"),
    "sglkit.parallel": (
        "sglkit.runtime",
        "sglkit.server",
        "sglkit.models",
        "sglkit.layers",
        "sglkit.cache",
        "sglkit.launch",
        "sglkit.widgets",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> set[str]:
    """sglkit modules imported by ``path`` (absolute and relative; TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "sglkit" or m.startswith("sglkit.")}


def build_graph() -> dict[str, set[str]]:
    """module -> the sglkit modules it imports (names that are attributes, not modules, are dropped)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in imported_modules(path) if m in files and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


# Parent packages' __init__ run on import of a submodule; an ``__init__`` importing its own submodules is the
# usual re-export, not a cycle between layers. Cycles are checked between modules as written.
GRAPH = build_graph()


def test_graph_sees_the_package():
    assert len(GRAPH) > 50
    assert "sglkit.core.forward_batch" in GRAPH["sglkit.layers.attention.base"] or any(
        m.startswith("sglkit.core") for m in GRAPH["sglkit.layers.attention.torch_native"]
    )


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH))}"


def test_find_cycle_detects_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_dependencies_point_one_way(layer):
    bad = []
    for module, imports in GRAPH.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        for imported in imports:
            if layer == "sglkit.core" and (imported == "sglkit.core" or imported.startswith("sglkit.core.")):
                continue
            if any(imported == p or imported.startswith(p + ".") for p in FORBIDDEN[layer]):
                bad.append(f"{module} imports {imported}")
    assert not bad, "\n".join(bad)


def test_modules_are_small():
    big = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
