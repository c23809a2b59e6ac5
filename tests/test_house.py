"""The house rules of docs/architecture.md, checked on the source: arrows go one way, rooms stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tomolive

PACKAGE = Path(tomolive.__file__).parent
LIMITS = {"module": 600, "class": 250, "function": 100}


def _modules(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Absolute names of the tomolive modules ``path`` imports at run time (relative imports resolved)."""
    module = ".".join(("tomolive", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("tomolive")}


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("engine", ("tomolive.techniques", "tomolive.callbacks", "tomolive.ml", "tomolive.recon")),
        ("stages", ("tomolive.engine", "tomolive.techniques", "tomolive.callbacks", "tomolive.store")),
        ("store", ("tomolive.engine", "tomolive.techniques", "tomolive.stages", "tomolive.callbacks")),
    ],
)
def test_arrows_go_one_way(room, forbidden):
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(room)
        for name in _imported(path)
        if name.startswith(forbidden)
    }
    assert not wrong, sorted(wrong)


def test_rooms_are_small():
    too_big = []
    for path in _modules():
        source = path.read_text()
        if len(source.splitlines()) > LIMITS["module"]:
            too_big.append(f"{path.relative_to(PACKAGE)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            first = node.body[0]
            documented = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            start = first.end_lineno + 1 if documented and len(node.body) > 1 else first.lineno
            length = node.end_lineno - start + 1
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            if length > LIMITS[kind]:
                too_big.append(f"{path.relative_to(PACKAGE)}: {kind} {node.name} {length} lines")
    assert not too_big, too_big
