"""Small modules with one job each: no module over 500 lines, no class over 300.

A module that outgrows this is split by job (as the backends' ``_<name>_<job>``
modules are), not cut in half.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "journal_archivist"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300

MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_a_module_stays_small(path: Path) -> None:
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_name(path)}: {lines} lines; split it by job"
    big = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert not big, f"{_name(path)}: classes over {MAX_CLASS_LINES} lines: {big}"


def test_the_package_is_found() -> None:
    assert len(MODULES) > 40  # the glob did not silently match nothing
