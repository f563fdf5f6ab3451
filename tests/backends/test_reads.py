"""``Archivist.read_session`` over the built-in archives, as a service uses them:
the highest-priority readable archive that answers, merged with what the journal
still holds for it, in order and without duplicates (contract 10)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist, ReadFailed
from journal_archivist.backends import JsonlArchive, SqliteArchive
from tests.helpers import records, registration, texts

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID


async def test_a_backlog_is_merged_with_what_the_archive_holds(
    tmp_path: Path, session: UUID
) -> None:
    path = tmp_path / "archive.db"
    archive = SqliteArchive(path, busy_timeout=0.01)
    async with Archivist.open(
        tmp_path / "journal.db", [registration(archive, name="sqlite")]
    ) as archivist:
        await archivist.append_messages(session, records(session, 2, "a"))
        with anyio.fail_after(5):
            await archivist.wait_drained()
        # Another connection holds the archive's write lock: writes fail (busy,
        # retryable) and pile up in the journal, while reads still work (WAL).
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            await archivist.append_messages(session, records(session, 2, "b"))
            await archivist.append_messages(session, records(session, 1, "c"))
            got = await archivist.read_session(session)
            assert texts(got) == ["a0", "a1", "b0", "b1", "c0"]
            assert archivist.health().backends["sqlite"].lag_entries == 2
            other.execute("ROLLBACK")
        with anyio.fail_after(5):
            await archivist.wait_drained()
        again = await archivist.read_session(session)
    assert again == got


async def test_a_down_archive_falls_back_to_the_next_in_priority(
    tmp_path: Path, session: UUID
) -> None:
    # The SQLite archive's directory is missing (an unmounted volume): it can
    # neither write nor read, and the JSONL archive answers instead.
    sqlite = SqliteArchive(tmp_path / "missing" / "archive.db")
    jsonl = JsonlArchive(tmp_path / "jsonl")
    regs = [
        registration(sqlite, name="sqlite", priority=10),
        registration(jsonl, name="jsonl", priority=1),
    ]
    async with Archivist.open(tmp_path / "journal.db", regs, close_timeout=0) as a:
        await a.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await a.wait_drained("jsonl")
        assert texts(await a.read_session(session)) == ["m0", "m1", "m2"]
        assert a.health().backends["sqlite"].lag_entries == 1

        # Both down: the error names each archive and why.
        (tmp_path / "jsonl").rename(tmp_path / "moved")
        (tmp_path / "jsonl").write_text("not a directory")
        with pytest.raises(ReadFailed) as info:
            await a.read_session(session)
        assert set(info.value.errors) == {"sqlite", "jsonl"}
        assert "directory" in str(info.value.errors["sqlite"])
        assert "Not a directory" in str(info.value.errors["jsonl"])

        # The volume is back: the SQLite archive catches up and answers again.
        (tmp_path / "missing").mkdir()
        with anyio.fail_after(10):
            await a.wait_drained("sqlite")
        assert texts(await a.read_session(session)) == ["m0", "m1", "m2"]
