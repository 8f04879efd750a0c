"""No import cycles between the modules of ``peftrec/``: a lower floor never imports a higher one.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``, at module
level, under ``if TYPE_CHECKING`` or inside a function alike (a lazy import that closes a circle
is still a circle, taken later). An import names the deepest module of ``peftrec`` it reaches
(``from peftrec.data.tables import RecDataset`` -> ``peftrec.data.tables``;
``from peftrec.data import DataError`` -> the package ``peftrec.data``).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "peftrec"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The modules of the package that ``path`` imports anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # the importer's own packages run first anyway; they are not an edge of the graph
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(f): f for f in PACKAGE.rglob("*.py") if "__pycache__" not in f.parts}
    return {name: imported(f, set(files)) for name, f in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Shortest cycles, as ``[a, b, ..., a]``: one through each module that no cycle found before
    passes through."""
    found, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        # breadth-first from start: the first path that comes back to it is a shortest cycle
        parent: dict[str, str] = {}
        queue = deque(sorted(graph[start]))
        for first in queue:
            parent[first] = start
        while queue:
            node = queue.popleft()
            if node == start:
                path = [start]
                node = parent[start]
                while node != start:
                    path.append(node)
                    node = parent[node]
                cycle = [start, *reversed(path[1:]), start]
                found.append(cycle)
                done.update(cycle)
                break
            for nxt in sorted(graph[node]):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
    return found


def test_graph_sees_the_package():
    graph = import_graph()
    assert "peftrec.app.recommender" in graph and "peftrec.data.tables" in graph
    assert "peftrec.data.tables" in graph["peftrec.data"]  # from ... import through a package


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in peftrec/:\n" + "\n".join(" -> ".join(c) for c in found)
