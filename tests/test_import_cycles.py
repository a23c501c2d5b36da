"""diffice's Python modules import one another one way: no circle, function-local imports counted (issue 15).

A function-local import hides a circle from the interpreter (it runs after both modules are loaded) but not from
the reader, who can no longer read the package bottom-up. The graph is read from the sources with ast, so every
``import`` statement counts, wherever it is. A package's ``__init__`` is a node of its own; the implicit import of
a module's parent package (Python runs ``diffice/models/__init__.py`` before ``diffice/models/unet.py``) is not an
edge, since every module would otherwise be in a circle with a package that re-exports it.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffice"


def module_files() -> dict[str, Path]:
    """{dotted name: source file} of every module and package of diffice."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_module(name: str, modules: dict[str, Path]) -> bool:
    """A .py module, or a compiled one (diffice._C) that the interpreter finds."""
    if name in modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The diffice modules `name` imports anywhere in its source (module level, functions, classes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from package import name`: the submodule when there is one, else an attribute of the package
            targets = [
                f"{source}.{alias.name}" if _is_module(f"{source}.{alias.name}", modules) else source
                for alias in node.names
            ]
        for target in targets:
            if target != "diffice" and not target.startswith("diffice."):
                continue
            if target not in modules and _is_module(target, modules):
                continue  # a compiled module (diffice._C): imports nothing of diffice
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle_among_diffice_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        "import cycle (function-local imports count): "
        + " -> ".join(cycle or [])
        + "; move what both sides need into a module below them"
    )


def test_the_detector_sees_function_local_and_relative_imports(tmp_path):
    """The checker itself: a circle made only of a function-local relative import is found."""
    graph = {"diffice.a": {"diffice.b"}, "diffice.b": set()}
    assert find_cycle(graph) is None
    source = tmp_path / "b.py"
    source.write_text("def f():\n    from .a import g\n    return g\n")
    modules = {"diffice.a": tmp_path / "a.py", "diffice.b": source}
    graph["diffice.b"] = imports_of("diffice.b", source, modules)
    assert graph["diffice.b"] == {"diffice.a"}
    assert find_cycle(graph) == ["diffice.a", "diffice.b", "diffice.a"]


def test_the_orchestration_flows_one_way():
    """The layering issue 15 names: cluster does not reach run or the demo command, run does not reach sweep."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert not {"diffice.explain.run", "diffice.explain.demo_run"} & reaches("diffice.explain.cluster")
    assert not {m for m in reaches("diffice.explain.run") if m.startswith("diffice.explain.sweep")}
    assert not {
        m
        for m in reaches("diffice.models.network")
        if m != "diffice.models.description" and m.startswith("diffice.models.")
    }
