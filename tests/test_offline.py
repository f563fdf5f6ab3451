"""The offline reader: status, check, salvage and the side tables, read from the
file alone, while the owner runs or after it is gone."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from journal_archivist import (
    Archivist,
    FailureMode,
    JournalCorrupt,
    JournalError,
    JournalIncompatible,
)
from journal_archivist._offline import read_status
from journal_archivist._offline_check import Verdict, check
from journal_archivist._offline_tables import (
    list_dead_letters,
    list_quarantine,
    show_dead_letter,
    show_quarantine,
)
from journal_archivist._salvage import salvage
from journal_archivist._schema import SCHEMA_VERSION
from journal_archivist.testing import MockBackend
from tests.helpers import contents, query, record, records, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    from journal_archivist._stats import BackendStats

#: Contents long enough that a page of the journal holds a few entries only.
FILLER = "x" * 900


def flip_byte_of(path: Path, needle: bytes, offset: int = 0) -> None:
    """Flip the low bit of one byte of ``needle`` where the file holds it (its
    only copy: the journal must be checkpointed, with no WAL left)."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, f"{needle!r} is not in {path}"
    assert data.find(needle, at + 1) < 0, f"{needle!r} is in {path} twice"
    data[at + offset] ^= 0x01
    path.write_bytes(bytes(data))


def smash_page_of(path: Path, needle: bytes) -> None:
    """Overwrite the header of the b-tree page holding ``needle`` with garbage:
    SQLite calls the file malformed, and every row of that page is lost."""
    with closing(sqlite3.connect(path)) as db:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0
    start = at - at % page_size
    data[start : start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def without_ages(backends: tuple[BackendStats, ...]) -> list[BackendStats]:
    return [msgspec.structs.replace(b, oldest_pending_age=None) for b in backends]


async def backlog(journal_path: Path, count: int, session: UUID) -> None:
    """Journal ``count`` entries of ``session`` for a backend "mock" that is down,
    then close: they stay pending in a checkpointed journal."""
    mock = MockBackend()
    mock.go_down()
    async with Archivist.open(journal_path, [registration(mock)], close_timeout=0):
        pass
    async with Archivist.open(
        journal_path, [registration(mock)], close_timeout=0
    ) as archivist:
        for i in range(count):
            await archivist.append_messages(
                session, [record(session, f"needle-{i:03d} {FILLER}")]
            )
    assert not os.path.exists(f"{journal_path}-wal") or (
        os.path.getsize(f"{journal_path}-wal") == 0
    )


class TestStatus:
    async def test_counts_match_the_live_archivist_and_name_the_lock_holder(
        self, journal_path: Path, session: UUID
    ) -> None:
        up, down = MockBackend(), MockBackend()
        down.go_down()
        regs = [registration(up, "up"), registration(down, "down")]
        async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
            await archivist.append_messages(session, records(session, 3))
            await archivist.append_messages(session, records(session, 2, "n"))
            with anyio.fail_after(5):
                await archivist.wait_drained("up")
            stats = read_status(journal_path)
            health = archivist.health().backends
            assert check(journal_path).verdict is Verdict.OK
        assert stats.journal.lock_holder_pid == os.getpid()
        assert stats.journal.entries_journaled_total == 2
        by_name = {b.name: b for b in stats.backends}
        for name in ("up", "down"):
            assert by_name[name].pending_entries == health[name].lag_entries
            assert by_name[name].pending_bytes == health[name].lag_bytes
            assert by_name[name].delivered_total == health[name].delivered
        assert by_name["down"].pending_entries == 2
        assert by_name["down"].oldest_pending_age is not None
        assert by_name["up"].oldest_pending_age is None
        assert by_name["up"].up is None  # only a live archivist knows
        after = read_status(journal_path)
        assert after.journal.lock_holder_pid is None
        assert [b.pending_entries for b in after.backends] == [0, 2]

    async def test_enabled_comes_from_the_caller(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, [record(session)])
        [backend] = read_status(journal_path, enabled={"mock": False}).backends
        assert backend.enabled is False

    def test_refuses_what_is_not_a_journal(self, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a database at all" * 200)
        with pytest.raises(JournalCorrupt, match="not a database"):
            read_status(garbage)
        other = tmp_path / "other.db"
        with closing(sqlite3.connect(other)) as db:
            db.execute("CREATE TABLE t (x)")
        with pytest.raises(JournalCorrupt, match="not a journal: application_id 0x0"):
            read_status(other)
        with pytest.raises(JournalError, match="no such file"):
            read_status(tmp_path / "missing.db")

    async def test_refuses_a_newer_schema(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, [record(session)])
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(JournalIncompatible, match="newer than the supported"):
            read_status(journal_path)


class TestCheck:
    async def test_a_sound_journal_is_ok_even_while_open(
        self, journal_path: Path, session: UUID
    ) -> None:
        down = MockBackend()
        down.go_down()
        async with Archivist.open(
            journal_path, [registration(down)], close_timeout=0
        ) as archivist:
            for i in range(3):
                await archivist.append_messages(session, records(session, 2, f"{i}"))
            report = check(journal_path)
        assert report.verdict is Verdict.OK, report.findings
        assert (report.entries_checked, report.high_water_seq) == (3, 3)
        assert check(journal_path, full=True).verdict is Verdict.OK

    async def test_a_flipped_byte_in_an_entry_is_damage(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, 3, session)
        flip_byte_of(journal_path, b"needle-001")
        report = check(journal_path)
        assert report.verdict is Verdict.DAMAGED
        assert (report.entries_checked, report.entries_damaged) == (3, 1)
        [finding] = report.findings
        assert (finding.kind, finding.where) == ("entry", "seq 2")
        assert "checksum mismatch" in finding.detail

    async def test_counters_that_disagree_with_the_rows_are_damage(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, 2, session)
        # A bookkeeping bug, not a flip (the row's checksum is resealed by open):
        # simulate it by deleting an entry the counters still count.
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute("DELETE FROM entries WHERE seq = 1")
            db.commit()
        report = check(journal_path)
        assert report.verdict is Verdict.DAMAGED
        assert [f.kind for f in report.findings] == ["counters"]

    def test_garbage_is_not_a_journal(self, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(os.urandom(8192))
        report = check(garbage)
        assert report.verdict is Verdict.NOT_A_JOURNAL
        assert "not a database" in report.findings[0].detail

    async def test_a_smashed_page_is_corrupt(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, 40, session)
        smash_page_of(journal_path, b"needle-020")
        report = check(journal_path)
        assert report.verdict is Verdict.CORRUPT
        assert report.findings[0].kind == "file"


class TestSalvage:
    async def test_copies_what_is_readable_into_a_journal_that_opens_and_drains(
        self, journal_path: Path, tmp_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, 40, session)
        flip_byte_of(journal_path, b"needle-003")
        smash_page_of(journal_path, b"needle-020")
        with pytest.raises(JournalCorrupt):
            await Archivist.open(journal_path, [registration()])
        out = tmp_path / "salvaged" / "journal.db"
        report = salvage(journal_path, out)
        assert report.entries_skipped == 1  # the flipped one
        lost = 40 - report.entries_copied - report.entries_skipped
        assert 0 < lost < 10  # the smashed page's rows
        assert report.unreadable_keys >= lost
        assert report.high_water_seq == 40
        assert report.backends_copied == ["mock"]
        assert check(out).verdict is Verdict.OK
        mock = MockBackend()
        async with Archivist.open(out, [registration(mock)]) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
            journal = archivist.health().journal
            # Sequence numbers go on from the old journal's high-water.
            await archivist.append_messages(session, [record(session, "after")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        got = contents(mock, session)
        assert len(got) == report.entries_copied + 1
        assert "needle-000" in got[0]
        assert not any(text.startswith("needle-003") for text in got)
        assert got[-1] == "after"
        assert journal.lost_entries == 1
        assert query(out, "SELECT count(*) FROM entries") == [(0,)]

    async def test_keeps_positions_counters_and_side_tables(
        self, journal_path: Path, tmp_path: Path, session: UUID
    ) -> None:
        poisoned, down = MockBackend(), MockBackend()
        regs = [
            registration(poisoned, "a", failure_mode=FailureMode.BEST_EFFORT),
            registration(down, "b"),
        ]
        down.go_down()
        async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
            poison = record(session, "poison")
            poisoned.poison(poison.message_id)
            await archivist.append_messages(session, [record(session, "first")])
            await archivist.append_messages(session, [poison])
            with anyio.fail_after(5):
                await archivist.wait_drained("a")
        assert check(journal_path).verdict is Verdict.OK
        before = read_status(journal_path)
        out = tmp_path / "copy.db"
        report = salvage(journal_path, out)
        assert (report.entries_copied, report.dead_letters_copied) == (2, 1)
        after = read_status(out)
        assert without_ages(after.backends) == without_ages(before.backends)
        assert after.journal.entries_journaled_total == 2
        [letter] = list_dead_letters(out)
        assert letter.backend == "a"

    async def test_rebuilds_a_damaged_backend_row_and_drops_a_nameless_one(
        self, journal_path: Path, tmp_path: Path, session: UUID
    ) -> None:
        a, b = MockBackend(), MockBackend()
        a.go_down()
        b.go_down()
        regs = [registration(a, "a"), registration(b, "b")]
        async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
            await archivist.append_messages(session, records(session, 2))
        with closing(sqlite3.connect(journal_path)) as db:
            # More than one flipped bit: open could not undo it exactly.
            db.execute("UPDATE backends SET cursor = 7, pending = 70 WHERE name = 'a'")
            db.execute("UPDATE backends SET name = X'ff00' WHERE name = 'b'")
            db.commit()
        report = salvage(journal_path, tmp_path / "copy.db")
        assert report.backends_rebuilt == ["a"]
        assert report.backends_dropped == [1]
        assert (report.entries_copied, report.entries_orphaned) == (1, 0)
        [backend] = read_status(tmp_path / "copy.db").backends
        assert (backend.name, backend.pending_entries) == ("a", 1)
        assert check(tmp_path / "copy.db").verdict is Verdict.OK

    async def test_refuses_an_existing_out(
        self, journal_path: Path, tmp_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, [record(session)])
        out = tmp_path / "taken.db"
        out.write_bytes(b"keep me")
        with pytest.raises(JournalError, match="will not overwrite"):
            salvage(journal_path, out)
        assert out.read_bytes() == b"keep me"


class TestSideTables:
    async def test_dead_letters_list_and_show(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        reg = registration(mock, "a", failure_mode=FailureMode.BEST_EFFORT)
        poison = record(session, "poison")
        mock.poison(poison.message_id)
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(session, [poison])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            [letter] = list_dead_letters(journal_path)  # while it runs
        assert (letter.backend, letter.seq, letter.op) == ("a", 1, "append")
        assert letter.session == str(session)
        assert letter.records is None
        assert letter.error is not None
        assert "poison" in letter.error
        shown = show_dead_letter(journal_path, letter.id)
        assert shown.records == [poison]
        assert list_dead_letters(journal_path, backend="other") == []
        with pytest.raises(KeyError, match="no dead letter with id 99"):
            show_dead_letter(journal_path, 99)

    async def test_quarantine_list_and_show(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, 2, session)
        flip_byte_of(journal_path, b"needle-001")
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
        [row] = list_quarantine(journal_path)
        assert (row.backend, row.seq) == ("mock", 2)
        assert row.reason is not None
        assert "checksum" in row.reason
        assert list_quarantine(journal_path, backend="other") == []
        shown = show_quarantine(journal_path, row.id)
        assert shown.id == row.id
        with pytest.raises(KeyError, match="no quarantined row with id 99"):
            show_quarantine(journal_path, 99)


class TestReadOnlyFolder:
    """Without write access to the folder no -shm can be made: a closed journal
    is read with ``immutable=1``; one whose WAL holds commits is refused."""

    async def test_a_closed_journal_is_read(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await backlog(journal_path, 2, session)
        assert not os.path.exists(f"{journal_path}-shm")
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
        [backend] = read_status(journal_path).backends
        assert backend.pending_entries == 2

    async def test_a_journal_whose_wal_holds_commits_is_refused(
        self,
        journal_path: Path,
        tmp_path: Path,
        session: UUID,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        copy = tmp_path / "copy"
        copy.mkdir()
        down = MockBackend()
        down.go_down()
        async with Archivist.open(
            journal_path, [registration(down)], close_timeout=0
        ) as archivist:
            await archivist.append_messages(session, [record(session)])
            for suffix in ("", "-wal"):
                shutil.copy(f"{journal_path}{suffix}", copy / f"journal.db{suffix}")
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
        with pytest.raises(JournalError, match="its WAL holds"):
            read_status(copy / "journal.db")
