"""The package's import graph: no cycles, and the shared rules in a leaf module.

Every import statement counts, also those inside functions (a lazy import is still an edge
that a reader and an IDE follow).
"""

import ast
from pathlib import Path

import mlecore

ROOT = Path(mlecore.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mlecore modules that `name` imports (resolved; `from . import x` names a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mlecore"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mlecore":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out & known


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods) | {"mlecore._mlecore"}
    return {name: _imports(name, path, known) - {name} for name, path in mods.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_graph_sees_lazy_imports():
    # The check above would be empty if it missed imports inside functions.
    graph = _graph()
    assert "mlecore.torch" in graph["mlecore._losses"]
    assert "mlecore._spec" in graph["mlecore.torch._functional"]


def test_spec_is_a_leaf_that_imports_neither_front_end():
    source = (ROOT / "_spec.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." if node.level else node.module.split(".")[0])
    assert imported <= {"__future__", "math", "operator", "sys", "typing"}, imported


def test_no_front_end_imports_the_others_internals():
    graph = _graph()
    torch_side = {m for m in graph if m.startswith("mlecore.torch")}
    for m in torch_side:
        assert not graph[m] & {"mlecore._losses", "mlecore._special"}, m
