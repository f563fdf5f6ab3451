"""docs/security.md says what the code does: every limit it names, with its value.

Each row of the "Limits" table names a constant in backticks and its value; the
constant must exist and hold that value, and the behaviour past it is tested where
the limit is enforced (tests/test_records.py, tests/test_archivist.py,
tests/backends/test_jsonl_security.py). The file modes and the journal's value
limit it quotes are checked the same way.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import journal_archivist
from journal_archivist import _config, _private_files

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"
UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def limit_rows() -> list[tuple[str, str]]:
    """``(what, default column)`` of each row of the Limits table."""
    rows = []
    for line in section("Limits").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if (
            len(cells) == 4
            and cells[0] not in ("limit",)
            and not cells[0].startswith("-")
        ):
            rows.append((cells[0], cells[1]))
    return rows


def constant(dotted: str) -> object:
    """The value of a constant named as in the docs: ``NAME`` (the package, or
    its config) or ``module.path.NAME``."""
    module_name, _, name = dotted.rpartition(".")
    if module_name:
        return getattr(importlib.import_module(module_name), name)
    for module in (journal_archivist, _config):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"docs/security.md names {dotted}, which does not exist")


def quantity(text: str) -> int:
    """The number a cell starts with: ``10,000``, ``64 MiB``, ``64 levels``."""
    match = re.match(r"([\d,]+)\s*(KiB|MiB|GiB)?", text)
    assert match, f"no number in {text!r}"
    return int(match[1].replace(",", "")) * UNITS.get(match[2] or "", 1)


def test_the_limits_table_has_the_limits() -> None:
    assert len(limit_rows()) >= 5


@pytest.mark.parametrize(("what", "default"), limit_rows())
def test_each_limit_names_a_constant_with_its_value(what: str, default: str) -> None:
    names = re.findall(r"`([A-Za-z_][\w.]*[A-Z_]{3,})`", default)
    assert names, f"the limit {what!r} names no constant: {default!r}"
    for name in names:
        assert constant(name) == quantity(default), (what, name)


def test_the_file_modes_are_the_ones_quoted() -> None:
    files = section("Files")
    assert _private_files.FILE_MODE == 0o600
    assert _private_files.FOLDER_MODE == 0o700
    assert "exactly 0600, a folder exactly 0700" in files


def test_the_journal_value_limit_is_the_one_quoted() -> None:
    text = section("Limits")
    assert f"{_config.JOURNAL_VALUE_LIMIT:,} bytes" in text.replace("\n", " ")
    assert "`JOURNAL_VALUE_LIMIT`" in text
