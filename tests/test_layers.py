"""Which module may import what: the decisions stay pure, SQLite stays in the journal.

Read from the source (``ast``), so a test fails the moment a pure module reaches
for an event loop or a database, not when someone happens to notice.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "journal_archivist"

#: Modules that decide without doing I/O: testable without an event loop.
PURE = (
    "_admission",
    "_backlog",
    "_batching",
    "_delivery",
    "_errors",
    "_failure",
    "_health",
    "_intake",
    "_journal_types",
    "_ledger",
    "_metrics",
    "_policies",
    "_printable",
    "_read_merge",
    "_records",
    "_rows",
    "_schema",
    "_stats",
    "_throttle",
    "backends/_base",
    "backends/_codec",
    "backends/_jetstream_wire",
    "backends/_webhook_wire",
)
#: What a pure module never imports.
IO_LIBRARIES = frozenset({"anyio", "aiosqlite", "sqlite3", "asyncpg", "httpx", "nats"})
#: The core modules that may speak to SQLite itself (the backends have their own):
#: the journal and its parts.
SQLITE_OWNERS = frozenset(
    {
        "_journal",
        "_journal_file",
        "_journal_load",
        # The offline reader: a read-only sqlite3 connection, no event loop, so
        # it reads while the owner runs (status, check, the side tables).
        "_offline",
        "_offline_check",
        # Salvage reads a damaged file row by row and writes a new journal.
        "_salvage",
        "_transaction",
    }
)


def imported(module: str) -> set[str]:
    """The top-level names of what ``module`` imports at run time or for typing."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def core_modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_library(module: str) -> None:
    assert imported(module) & IO_LIBRARIES == set()


@pytest.mark.parametrize("module", core_modules())
def test_only_the_journal_imports_sqlite3(module: str) -> None:
    # SQLite's error codes are read in _journal_file (is_corruption, and
    # write_failed for JournalWriteFailed.io_error); the journal's other parts
    # catch sqlite3.Error to translate it; the rest of the core sees our own
    # exceptions.
    if module not in SQLITE_OWNERS:
        assert "sqlite3" not in imported(module)
