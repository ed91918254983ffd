"""The house rules, checked on the source (ARCHITECTURE.md): packages import only what lies below
them, and no module touches another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "herdrt"

#: Each package (or top-level module) and the layer it sits on; a module may import its own
#: layer's modules and anything lower, never higher.
LAYERS = {
    "errors": 0,
    "config": 0,
    "ratelog": 0,
    "core": 1,
    "runtime": 2,
    "herd": 3,
    "bridge": 4,
    "apps": 5,
    "observe": 5,
    "processes": 6,
    "serve": 6,
    "cli": 6,
    "__init__": 6,
}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        yield rel, ast.parse(path.read_text(), str(path))


def _unit(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(rel: Path, tree: ast.AST):
    """Top-level herdrt units a module imports (relative or absolute), with the line."""
    package = list(rel.parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:  # "from . import x" at the top: each name is a unit
                    for alias in node.names:
                        yield alias.name, node.lineno
                    continue
                yield parts[0], node.lineno
            elif node.module and node.module.split(".")[0] == "herdrt":
                parts = node.module.split(".")[1:]
                yield (parts[0] if parts else "__init__"), node.lineno


@pytest.mark.parametrize("rel, tree", list(modules()), ids=lambda x: str(x) if isinstance(x, Path) else "")
def test_lower_layers_never_import_higher_ones(rel, tree):
    unit = _unit(rel)
    own = LAYERS[unit]
    for target, line in _imported(rel, tree):
        if target in LAYERS and target != unit:
            assert LAYERS[target] <= own, f"{rel}:{line} imports {target} (layer {LAYERS[target]}) from layer {own}"


def _own_private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # __slots__ entries
            names.add(node.value)
    return {n for n in names if n.startswith("_")}


@pytest.mark.parametrize("rel, tree", list(modules()), ids=lambda x: str(x) if isinstance(x, Path) else "")
def test_no_module_touches_another_modules_private_names(rel, tree):
    own = _own_private_names(tree)
    reach_ins = [
        f"{rel}:{node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        and node.attr not in own
    ]
    assert not reach_ins, "private names of other modules used:\n" + "\n".join(reach_ins)
