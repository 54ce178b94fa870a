"""Every torch.load in the repository passes weights_only=True: a pickle that is not weights-only can run code."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"build", "dist", "venv", "node_modules", "__pycache__"}


def _python_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if not any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            yield path


def _is_weights_only(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords
    )


def unsafe_torch_loads(root: Path) -> list[str]:
    """`file:line` of each torch.load call (or load imported from torch) without weights_only=True."""
    found = []
    for path in _python_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
            imports_load = isinstance(node, ast.ImportFrom) and node.module == "torch"
            if imports_load and any(a.name == "load" for a in node.names):
                found.append(f"{where} (imports load from torch: call torch.load(..., weights_only=True))")
            is_torch_load = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            )
            if is_torch_load and not _is_weights_only(node):
                found.append(where)
    return found


def test_every_torch_load_passes_weights_only_true():
    assert unsafe_torch_loads(ROOT) == []


def test_the_check_finds_a_call_without_weights_only(tmp_path):
    source = "import torch\nx = torch.load(\n    'a.pt',\n)\ny = torch.load('b.pt', weights_only=True)\n"
    (tmp_path / "bad.py").write_text(source)
    assert unsafe_torch_loads(tmp_path) == ["bad.py:2"]
