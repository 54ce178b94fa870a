"""The house rules a parser can check: no import cycle in mp_hub, and no private name imported across modules.

Every import statement counts, function-local ones included (a local import that hides a cycle is still one);
only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mp_hub"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking_block(child))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The mp_hub modules an import statement makes Python execute (a `from p import m` of a submodule: p.m)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]


def _graph(root: Path, files: list[Path]) -> dict[str, set[str]]:
    known = {_module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {t for node in _imports(tree) for t in _targets(module, path.name == "__init__.py", node, known)}
        # importing a.b.c first runs the packages a and a.b, unless they are the importer's own (already running)
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        targets |= {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 1)} - own
        graph[module] = {t for t in targets if t in known and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_mp_hub_has_no_import_cycle():
    graph = _graph(ROOT, sorted(PACKAGE.rglob("*.py")))
    assert len(graph) > 50  # the whole package was read
    cycles = _cycles(graph)
    detail = [
        " ↔ ".join(c) + ": " + "; ".join(f"{a} → {b}" for a in c for b in sorted(graph[a] & set(c))) for c in cycles
    ]
    assert not cycles, "import cycles in mp_hub:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_local_import_cycle(tmp_path):
    package = tmp_path / "mp_hub"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")  # hidden in a function: still a cycle
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    # a module that imports a submodule of a package whose __init__ imports that module back
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from .inner import y\n")
    (package / "sub" / "inner.py").write_text("from ..d import z\n")
    (package / "sub" / "table.py").write_text("")
    (package / "d.py").write_text("from .sub.table import t\n")
    graph = _graph(tmp_path, sorted(package.rglob("*.py")))
    assert sorted(_cycles(graph)) == [["mp_hub.a", "mp_hub.b"], ["mp_hub.d", "mp_hub.sub", "mp_hub.sub.inner"]]
    assert graph["mp_hub.c"] == set()  # a type-only import runs nothing
    assert graph["mp_hub.sub.inner"] == {"mp_hub.d"}  # not its own packages, which are already running


@pytest.mark.parametrize("folder", ["mp_hub", "recipes", "benchmarks"])
def test_no_private_name_is_imported_across_modules(folder):
    """`from module import _name` of an mp_hub module, and a private module (`_base`) imported from outside its
    own package, are both private names used across modules."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            inside = node.level > 0 or (node.module or "").startswith("mp_hub")
            if names and inside:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names} from {node.module}")
            parts = (node.module or "").split(".")
            private = any(p.startswith("_") and not p.startswith("__") for p in parts)
            # a sibling may use a private module (`from ._base import`, a script's `from _common import`)
            sibling = node.level <= 1 and len(parts) == 1
            if private and not sibling:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports the private module {node.module}")
    assert not found, "\n".join(found)
