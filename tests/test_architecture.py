"""Checks of the code's shape that review would otherwise have to catch by eye.

No module reads or writes another module's private fields: a class's ``_name`` attributes are its
own business, and what other modules need is a method (e.g. ``WidthGroup.bindings()``,
``WidthGraph.commit_growth``).  PyTorch's own private module tables are not archgrow's to
encapsulate and are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "archgrow"
# torch.nn.Module internals that have no public spelling for what surgery does with them.
TORCH_PRIVATE = {"_buffers", "_parameters", "_modules", "_conv_forward", "_forward_hooks", "_forward_pre_hooks"}


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a file defines: attributes it assigns, class-body names, functions."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.startswith("_"):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("_"))
    return names


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _defined_private_names(tree)
    rel = path.relative_to(PACKAGE.parent)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("archgrow"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{rel}:{node.lineno}: imports private '{alias.name}' from {node.module}")
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in TORCH_PRIVATE:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if ast.unparse(node.value).split(".")[0] in ("nn", "torch", "F"):
            continue  # torch's own private classes (nn.modules.conv._ConvNd) are not archgrow's fields
        if attr in own:
            continue  # the file's own class, used by a helper of the same module
        found.append(f"{rel}:{node.lineno}: reaches into '{ast.unparse(node)}'")
    return found


def test_no_module_reaches_into_another_modules_private_fields() -> None:
    problems = [v for path in sorted(PACKAGE.rglob("*.py")) for v in _violations(path)]
    assert not problems, "private fields used across modules:\n" + "\n".join(problems)


def test_the_check_catches_a_private_access(tmp_path: Path) -> None:
    bad = PACKAGE / "__probe_for_architecture_test.py"
    try:
        bad.write_text("def f(graph):\n    return graph._vars\n")
        assert _violations(bad) == ["archgrow/__probe_for_architecture_test.py:2: reaches into 'graph._vars'"]
    finally:
        bad.unlink()
