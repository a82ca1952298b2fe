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


def _violations(path: Path, rel: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _defined_private_names(tree)
    rel = rel or str(path.relative_to(PACKAGE.parent))
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
    bad = tmp_path / "probe.py"
    bad.write_text("def f(graph):\n    return graph._vars\n")
    assert _violations(bad, "archgrow/probe.py") == ["archgrow/probe.py:2: reaches into 'graph._vars'"]


# Packages from the bottom up: a module may import from its own layer or below, never above.
LAYERS = [
    {"errors", "version"},
    {"ir", "spec", "data", "metrics"},
    {"ops"},
    {"passes", "models"},
    {"graph"},
    {"surgery"},
    {"growth"},
    {"triggers", "initializers"},
    {"binder"},
    {"grower", "checkpoint", "distributed"},
    {"runner", "viz"},
    {"cli", "__init__", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _part(module: str) -> str:
    """``archgrow.graph.widthgraph`` -> ``graph``; ``archgrow.grower`` -> ``grower``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported archgrow module, line, at module level?)"""
    tree = ast.parse(path.read_text())
    found = []
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archgrow"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            modules = [n for n in names if _is_module(n)]
            if len(modules) < len(names):  # names defined in node.module itself
                found.append((node.module, node.lineno, id(node) in top))
            found.extend((n, node.lineno, id(node) in top) for n in modules)
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("archgrow"))
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def test_every_package_has_a_layer() -> None:
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LEVEL), f"packages with no layer in this test: {sorted(parts - set(LEVEL))}"


def _upward(path: Path, module: str | None = None) -> list[str]:
    me = _part(module or _module_name(path))
    where = module or path.relative_to(PACKAGE.parent)
    return [
        f"{where}:{line}: {me} (layer {LEVEL[me]}) imports {target} (layer {LEVEL[other]})"
        for target, line, at_top in _imports(path)
        if (other := _part(target)) in LEVEL and LEVEL[other] > LEVEL[me] and at_top
    ]


def test_no_module_reaches_upward() -> None:
    problems = [p for path in sorted(PACKAGE.rglob("*.py")) for p in _upward(path)]
    assert not problems, "imports reaching upward:\n" + "\n".join(problems)


def find_cycles(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t in edges and state.get(t) is None:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if state.get(m) is None:
            visit(m)
    return cycles


def test_no_import_cycles() -> None:
    """Module-level imports between archgrow's modules form no cycle."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        if me.endswith("__init__"):
            continue  # a package's __init__ importing its submodules is how packages export
        edges[me] = {t for t, _, at_top in _imports(path) if at_top and _is_module(t) and t != me}
    packages = {m.rsplit(".", 1)[0] for m in edges}
    edges = {m: {t for t in ts if t not in packages} for m, ts in edges.items()}
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def test_the_layer_and_cycle_checks_can_fail(tmp_path: Path) -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    bad = tmp_path / "probe.py"
    bad.write_text("from archgrow.grower import wrap\n")
    assert _upward(bad, "archgrow.ir.probe") == ["archgrow.ir.probe:1: ir (layer 1) imports archgrow.grower (layer 9)"]
