"""The layering of docs/architecture.md, checked on every import (type-only ones too).

    server -> protocol, core -> hwmodel;  clients -> protocol;  nothing back.

Run alone: ``.venv/bin/python -m pytest -q tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Layer of a module (longest prefix wins) -> the layers it may import.
ALLOWED: dict[str, frozenset[str]] = {
    "hwmodel": frozenset({"hwmodel"}),
    "iopfd.core": frozenset({"iopfd.core", "hwmodel"}),
    "iopfd.protocol": frozenset({"iopfd.protocol"}),
    "iopfd.server": frozenset(
        {"iopfd.server", "iopfd.protocol", "iopfd.core", "hwmodel", "iopfd.version"}
    ),
    "clients": frozenset({"clients", "iopfd.protocol"}),
    "iopfd.cli": frozenset({"iopfd.cli", "clients", "iopfd.protocol"}),
    "iopfd.demo": frozenset({"clients", "iopfd.protocol"}),
    "iopfd.version": frozenset(),
}
PACKAGES = ("hwmodel", "iopfd", "clients")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    if module == "iopfd":
        return "iopfd.version"  # the package root holds only __version__
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [str(p) for p in _sources() if _layer(_module_name(p)) is None]
    assert unplaced == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    layer = _layer(_module_name(path))
    assert layer is not None
    wrong = []
    for line, target in _imports(path):
        top = target.split(".")[0]
        if top not in PACKAGES:
            continue  # the standard library and third-party packages
        target_layer = _layer(target)
        if target_layer != layer and target_layer not in ALLOWED[layer]:
            wrong.append(f"line {line}: {layer} imports {target}")
    assert wrong == []
