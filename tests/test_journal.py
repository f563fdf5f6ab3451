"""The journal file: ownership, bad files, checksums, space, registrations.

These tests damage real SQLite files on purpose and check that the damage is
reported, never silently delivered or silently lost (contract 2, 9).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import anyio
import pytest

from journal_archivist import (
    Archivist,
    Durability,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalIncompatible,
    JournalLocked,
    JournalWriteFailed,
    Queued,
    _intake,
    _space,
)
from journal_archivist._config import MAX_BACKENDS as CONFIG_MAX_BACKENDS
from journal_archivist._schema import MAX_BACKENDS, MIGRATIONS, SCHEMA_VERSION
from journal_archivist.testing import MockBackend
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Run one query on its own connection, closed before returning."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


async def journal_with_backlog(path: Path, session: UUID, count: int) -> None:
    """Leave ``count`` undelivered entries of ``session`` in the journal at ``path``."""
    held = MockBackend()
    archivist = await Archivist.open(path, [registration(held)])
    held.hold()
    await archivist.append_messages(session, [record(session, "first")])
    for i in range(1, count):
        await archivist.append_messages(session, [record(session, f"entry-{i:04d}")])
    await archivist.shutdown(timeout=0)


class TestOwnership:
    async def test_a_second_open_in_this_process_is_locked_out(
        self, journal_path: Path
    ) -> None:
        async with Archivist.open(journal_path, [registration()]):
            this_process = rf"another Archivist of this process \(pid {os.getpid()}\)"
            with pytest.raises(JournalLocked, match=this_process) as info:
                await Archivist.open(journal_path, [registration()])
        assert info.value.path == str(journal_path)
        assert info.value.pid == os.getpid()
        async with Archivist.open(journal_path, [registration()]):
            pass  # released at shutdown

    async def test_another_process_is_locked_out(self, journal_path: Path) -> None:
        script = textwrap.dedent(
            f"""
            import anyio, sys
            from journal_archivist import Archivist, JournalLocked, Registration
            from journal_archivist.testing import MockBackend
            async def main():
                reg = Registration(name="mock", backend=MockBackend())
                try:
                    await Archivist.open({str(journal_path)!r}, [reg])
                except JournalLocked as exc:
                    print("locked:", exc)
                    sys.exit(3)
            anyio.run(main)
            """
        )
        async with Archivist.open(journal_path, [registration()]):
            result = await anyio.run_process(
                [sys.executable, "-c", script], check=False
            )
        assert result.returncode == 3, result.stderr.decode()
        assert str(journal_path) in result.stdout.decode()
        # The holder is named: the operator knows which process to look at.
        assert f"locked by another process (pid {os.getpid()})" in (
            result.stdout.decode()
        )

    async def test_a_symlink_to_the_journal_is_refused_while_it_is_open(
        self, journal_path: Path, tmp_path: Path
    ) -> None:
        # Not a second name for the same lock: a symlink is never followed
        # (tests/test_private_files.py has the rest).
        alias = tmp_path / "alias.db"
        async with Archivist.open(journal_path, [registration()]):
            alias.symlink_to(journal_path)
            with pytest.raises(JournalError, match="is a symbolic link"):
                await Archivist.open(alias, [registration()])


class TestFiles:
    async def test_files_are_owner_only(self, journal_path: Path) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            session = uuid4()
            await archivist.append_messages(session, [record(session)])
            for suffix in ("", "-wal", "-shm", ".lock"):
                mode = stat.S_IMODE(os.stat(f"{journal_path}{suffix}").st_mode)
                assert mode == 0o600, f"{suffix or 'journal'} has mode {mode:o}"

    async def test_a_missing_directory_is_created(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "journal.db"
        async with Archivist.open(path, [registration()]):
            pass
        assert path.exists()

    async def test_a_directory_that_cannot_exist_is_a_clear_error(
        self, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(JournalError, match="cannot create the journal directory"):
            await Archivist.open(blocker / "journal.db", [registration()])

    def test_a_read_only_directory_is_a_clear_error(self) -> None:
        # Root may write anywhere, so the open runs in a forked child that has
        # dropped to the unprivileged "nobody" user (and as is, when not root).
        base = Path(tempfile.mkdtemp(prefix="ja-ro-"))
        try:
            locked = base / "ro"
            locked.mkdir(mode=0o555)
            base.chmod(0o755)
            code, message = _in_child_as_nobody(_open_reporting, locked / "j.db")
        finally:
            shutil.rmtree(base)
        assert code == 3, message
        assert f"the journal directory {str(locked)!r} is not writable" in message

    async def test_garbage_is_refused_and_left_untouched(
        self, journal_path: Path
    ) -> None:
        garbage = os.urandom(8192)
        journal_path.write_bytes(garbage)
        journal_path.chmod(0o600)  # else refused for its mode first
        with pytest.raises(JournalCorrupt, match="corrupt or not a journal") as info:
            await Archivist.open(journal_path, [registration()])
        assert info.value.path == str(journal_path)
        assert journal_path.read_bytes() == garbage
        async with Archivist.open(journal_path.with_name("new.db"), [registration()]):
            pass  # the lock of the refused journal was released

    async def test_another_applications_database_is_not_a_journal(
        self, journal_path: Path
    ) -> None:
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        journal_path.chmod(0o600)  # else refused for its mode first
        before = journal_path.read_bytes()
        with pytest.raises(JournalCorrupt, match="not a journal"):
            await Archivist.open(journal_path, [registration()])
        assert journal_path.read_bytes() == before

    async def test_a_damaged_page_that_open_never_reads_is_refused_at_open(
        self, journal_path: Path, session: UUID
    ) -> None:
        # Open reads the first and last pages of the entries; a damaged page in
        # between would otherwise be found by a writer, later, mid-delivery.
        await journal_with_backlog(journal_path, session, 400)
        data = bytearray(journal_path.read_bytes())
        page_size = int.from_bytes(data[16:18], "big")
        pages = len(data) // page_size
        assert pages > 10, "the entries must span many pages"
        middle = (pages // 2) * page_size
        data[middle : middle + page_size] = bytes(page_size)
        journal_path.write_bytes(bytes(data))
        with pytest.raises(JournalCorrupt, match="corrupt"):
            await Archivist.open(journal_path, [registration()])
        assert journal_path.read_bytes() == bytes(data), "left untouched"

    async def test_a_journal_missing_a_table_is_refused_at_open(
        self, journal_path: Path, session: UUID
    ) -> None:
        # Rather than a writer dying on it later.
        await journal_with_backlog(journal_path, session, 2)
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute("DROP TABLE payloads")
            db.commit()
        before = journal_path.read_bytes()
        with pytest.raises(JournalCorrupt, match=r"tables missing: \['payloads'\]"):
            await Archivist.open(journal_path, [registration()])
        assert journal_path.read_bytes() == before

    async def test_a_truncated_journal_is_refused(
        self, journal_path: Path, session: UUID
    ) -> None:
        await journal_with_backlog(journal_path, session, 300)
        data = journal_path.read_bytes()
        journal_path.write_bytes(data[: len(data) // 2])
        with pytest.raises(JournalCorrupt):
            await Archivist.open(journal_path, [registration()])
        assert journal_path.read_bytes() == data[: len(data) // 2]

    async def test_a_journal_from_a_newer_version_is_refused(
        self, journal_path: Path
    ) -> None:
        async with Archivist.open(journal_path, [registration()]):
            pass
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute("PRAGMA user_version = 99")
        with pytest.raises(JournalIncompatible, match="version 99 is newer") as info:
            await Archivist.open(journal_path, [registration()])
        assert (info.value.found, info.value.supported) == (99, SCHEMA_VERSION)


class TestLargeRecords:
    async def test_a_record_over_a_mebibyte_round_trips_live_and_after_restart(
        self, journal_path: Path, session: UUID
    ) -> None:
        # Payloads from LargeValues.THRESHOLD up go to SQLite through a function
        # rather than a binding; the stored entry must be the same.
        content = "".join(chr(0x41 + i % 50) for i in range(3 << 20))
        big = [record(session, content), record(session, "small")]
        limit = 8 << 20
        live = MockBackend()
        async with Archivist.open(
            journal_path, [registration(live)], max_record_bytes=limit
        ) as archivist:
            await archivist.append_messages(session, big)
            await archivist.append_messages(session, [record(session, "after")])
            with anyio.fail_after(10):
                await archivist.wait_drained()
        assert live.records(session)[:2] == big
        held = MockBackend()
        held.hold()
        archivist = await Archivist.open(
            journal_path, [registration(held)], max_record_bytes=limit
        )
        await archivist.append_messages(session, big)
        await archivist.shutdown(timeout=0)
        later = MockBackend()
        async with Archivist.open(
            journal_path, [registration(later)], max_record_bytes=limit
        ) as archivist:
            with anyio.fail_after(10):
                await archivist.wait_drained()
            assert archivist.health().journal.quarantined == 0
        assert later.records(session) == big
        # Settled, the entry went, and its payload row with it.
        assert query(journal_path, "SELECT count(*) FROM payloads") == [(0,)]

    async def test_a_large_payload_lives_in_a_row_of_its_own_until_settled(
        self, journal_path: Path, session: UUID
    ) -> None:
        # Settling it for one backend rewrites its entries row (targets); the
        # megabytes are not in that row.
        content = "y" * (2 << 20)
        fast, slow = MockBackend(), MockBackend()
        slow.hold()
        regs = [registration(fast, name="fast"), registration(slow, name="slow")]
        async with Archivist.open(
            journal_path, regs, max_record_bytes=4 << 20
        ) as archivist:
            await archivist.append_messages(session, [record(session, content)])
            with anyio.fail_after(10):
                await archivist.wait_drained("fast")
            [(entry_payload, targets)] = query(
                journal_path, "SELECT length(payload), targets FROM entries"
            )
            [(length,)] = query(journal_path, "SELECT length(payload) FROM payloads")
            assert entry_payload == 0
            assert length > len(content)  # the whole encoded record
            assert targets == archivist._writers[1].mask  # only "slow" owes it
            slow.release()
            with anyio.fail_after(10):
                await archivist.wait_drained()
        assert [r.content_md for r in slow.records(session)] == [content]
        assert query(journal_path, "SELECT count(*) FROM payloads") == [(0,)]
        assert query(journal_path, "SELECT count(*) FROM entries") == [(0,)]

    async def test_a_large_entry_without_its_payload_row_is_quarantined(
        self, journal_path: Path, session: UUID
    ) -> None:
        held = MockBackend()
        held.hold()
        archivist = await Archivist.open(
            journal_path, [registration(held)], max_record_bytes=4 << 20
        )
        await archivist.append_messages(session, [record(session, "z" * (2 << 20))])
        await archivist.append_messages(session, [record(session, "small")])
        await archivist.shutdown(timeout=0)
        with closing(sqlite3.connect(journal_path)) as db:
            db.execute("DELETE FROM payloads")
            db.commit()
        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock)], max_record_bytes=4 << 20
        ) as archivist:
            with anyio.fail_after(10):
                await archivist.wait_drained()
            assert archivist.health().journal.quarantined == 1
        assert [r.content_md for r in mock.records(session)] == ["small"]


class TestDurabilitySettings:
    @pytest.mark.parametrize(
        ("durability", "level"),
        [
            (Durability.FULL, 2),  # synchronous=FULL: an fsync per commit
            (Durability.NORMAL, 1),  # synchronous=NORMAL: fsync at checkpoints
        ],
    )
    async def test_appends_commit_at_the_durability_asked_for(
        self, journal_path: Path, durability: Durability, level: int
    ) -> None:
        # White box: what an append's transaction runs under. (The power-loss
        # torture test is what proves the setting keeps its promise.)
        async with Archivist.open(
            journal_path, [registration()], durability=durability
        ) as archivist:
            journal = archivist._journal
            for conn, expected in ((journal._durable, level), (journal._lazy, 1)):
                ((got,),) = await conn.execute_fetchall("PRAGMA synchronous")
                assert got == expected


class TestChecksums:
    async def test_a_flipped_bit_in_a_payload_is_quarantined_not_delivered(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        await journal_with_backlog(journal_path, session, 3)
        data = bytearray(journal_path.read_bytes())
        at = data.find(b"entry-0001")
        assert at > 0, "the payload is stored in the main file after a clean close"
        data[at] ^= 0x01  # "entry-0001" becomes "dntry-0001": SQLite cannot tell
        journal_path.write_bytes(bytes(data))

        mock = MockBackend()
        with caplog.at_level(logging.ERROR, logger="journal_archivist"):
            async with Archivist.open(journal_path, [registration(mock)]) as archivist:
                with anyio.fail_after(5):
                    await archivist.wait_drained()
                report = archivist.health()
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.backends["mock"].quarantined == 1
        assert report.journal.quarantined == 1
        assert any(
            "quarantined: checksum mismatch" in r.getMessage() for r in caplog.records
        )
        [(seq, reason)] = query(journal_path, "SELECT seq, reason FROM quarantine")
        assert seq == 2
        assert "checksum mismatch" in reason


class TestLostTail:
    async def test_a_high_water_above_the_journal_is_reported_as_lost(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        await journal_with_backlog(journal_path, session, 2)
        # What a damaged WAL frame leaves behind: the lock file remembers seq 5,
        # the journal only has 2 entries.
        from journal_archivist._lockfile import LockFile

        lock = LockFile(f"{journal_path}.lock", str(journal_path))
        lock.write_high_water(5)
        lock.release()
        mock = MockBackend()
        with caplog.at_level(logging.ERROR, logger="journal_archivist"):
            async with Archivist.open(journal_path, [registration(mock)]) as archivist:
                assert archivist.health().journal.lost_entries == 3
                await archivist.append_messages(session, [record(session, "after")])
                await archivist.wait_drained()
        assert any(
            "3 acknowledged entries (seq 3..5)" in r.getMessage()
            for r in caplog.records
        )
        assert len(mock.records(session)) == 3
        assert query(journal_path, "SELECT max(counted_through) FROM backends") == [
            (6,)
        ]
        async with Archivist.open(journal_path, [registration()]) as archivist:
            assert (
                archivist.health().journal.lost_entries == 3
            )  # persisted, not re-counted

    async def test_a_damaged_wal_frame_after_a_crash_is_detected(
        self, journal_path: Path, session: UUID
    ) -> None:
        # A real lost tail: a process commits entries and dies (they live only in
        # the WAL), then the last WAL frame is damaged. SQLite replays the WAL up
        # to the bad frame and silently drops the commits after it.
        script = textwrap.dedent(
            f"""
            import anyio, os, uuid
            from journal_archivist import Archivist, MessageRecord, Registration
            from journal_archivist.testing import MockBackend
            async def main():
                mock = MockBackend()
                mock.hold()
                reg = Registration(name="mock", backend=mock)
                archivist = await Archivist.open({str(journal_path)!r}, [reg])
                session = uuid.UUID({str(session)!r})
                for i in range(5):
                    rec = MessageRecord(
                        session=session, role="user", content_md=f"m{{i}}"
                    )
                    await archivist.append_messages(session, [rec])
                os._exit(0)  # die without closing: no checkpoint
            anyio.run(main)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, check=False
        )
        assert result.returncode == 0, result.stderr.decode()
        wal = Path(f"{journal_path}-wal")
        data = bytearray(wal.read_bytes())
        assert len(data) > 4096
        data[-100] ^= 0xFF  # inside the last frame of the last commit
        wal.write_bytes(bytes(data))
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            lost = archivist.health().journal.lost_entries
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert lost >= 1
        assert len(mock.records(session)) == 5 - lost


class TestSpace:
    async def test_free_space_is_known_from_open(self, journal_path: Path) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            free = archivist.health().journal.free_bytes
        assert free is not None
        assert free > 0

    async def test_appends_are_refused_below_the_reserve_and_resume_by_themselves(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        free = {"bytes": 10 * 1024 * 1024}
        monkeypatch.setattr(_space, "free_bytes", lambda directory: free["bytes"])
        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock)], free_space_reserve=64 * 1024 * 1024
        ) as archivist:
            with pytest.raises(JournalFull, match="below the reserve") as info:
                await archivist.append_messages(session, [record(session, "refused")])
            assert (info.value.free, info.value.reserve) == (
                10 * 1024 * 1024,
                64 * 1024 * 1024,
            )
            assert archivist.health().journal.low_space
            free["bytes"] = 1 << 40
            await archivist.append_messages(session, [record(session, "accepted")])
            assert not archivist.health().journal.low_space
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert [r.content_md for r in mock.records(session)] == ["accepted"]

    async def test_every_waiting_append_is_refused_not_just_one_group(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_space, "free_bytes", lambda directory: 0)
        monkeypatch.setattr(_intake, "MAX_GROUP", 2)
        refused: list[JournalFull] = []

        async def append(i: int) -> None:
            try:
                await archivist.append_messages(session, [record(session, str(i))])
            except JournalFull as exc:
                refused.append(exc)

        async with Archivist.open(
            journal_path, [registration()], free_space_reserve=1
        ) as archivist:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:
                    for i in range(7):
                        group.start_soon(append, i)
        assert len(refused) == 7

    async def test_delivery_continues_while_appends_are_refused(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        free = {"bytes": 1 << 40}
        monkeypatch.setattr(_space, "free_bytes", lambda directory: free["bytes"])
        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock)], free_space_reserve=1024
        ) as archivist:
            mock.hold()
            await archivist.append_messages(session, records(session, 3))
            monkeypatch.setattr(_space, "CHECK_INTERVAL", 0.0)
            free["bytes"] = 0
            with pytest.raises(JournalFull):
                await archivist.append_messages(session, [record(session)])
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert mock.appended_count(session) == 3

    async def test_a_failed_commit_acknowledges_nothing_of_its_group(
        self, journal_path: Path, session: UUID
    ) -> None:
        # SQLITE_FULL, the way a full disk reports it: cap the file's page count.
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            await archivist.append_messages(session, [record(session, "before")])
            await archivist.wait_drained()
            conn = archivist._journal._durable  # white box: inject the fault
            (pages,) = next(iter(await conn.execute_fetchall("PRAGMA page_count")))
            await conn.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(JournalWriteFailed, match="full") as info:
                await archivist.append_messages(
                    session, [record(session, "x" * 20_000)]
                )
            assert isinstance(info.value.__cause__, sqlite3.Error)
            assert archivist.health().journal.commit_failures == 1
            await conn.execute("PRAGMA max_page_count = 1073741823")
            await archivist.append_messages(session, [record(session, "after")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            assert archivist.health().journal.commit_failures == 0
        assert [r.content_md for r in mock.records(session)] == ["before", "after"]


class TestRegistrations:
    async def test_a_backend_given_a_removed_backends_bit_owes_none_of_its_entries(
        self, journal_path: Path, session: UUID
    ) -> None:
        # A bit freed by a removed backend goes to the next one registered, which
        # starts at the tail: it owes nothing of what its bit meant before.
        held, old = MockBackend(), MockBackend()
        held.hold()  # "held" keeps the entries journaled after "old" had them
        archivist = await Archivist.open(
            journal_path,
            [registration(held, name="held"), registration(old, name="old")],
        )
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await archivist.wait_drained("old")
        await archivist.shutdown(timeout=0)
        assert old.appended_count(session) == 3

        # "old" is gone, "new" takes its bit; the old entries are owed to "held".
        again, new = MockBackend(), MockBackend()
        regs = [registration(again, name="held"), registration(new, name="new")]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(session, [record(session, "after")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            assert archivist.health().backends["new"].delivered == 1
        assert [r.content_md for r in new.records(session)] == ["after"]
        assert [r.content_md for r in again.records(session)] == [
            "m0",
            "m1",
            "m2",
            "after",
        ]

    async def test_a_new_backend_starts_at_the_tail(
        self, journal_path: Path, session: UUID
    ) -> None:
        await journal_with_backlog(journal_path, session, 2)
        old, new = MockBackend(), MockBackend()
        regs = [registration(old, name="mock"), registration(new, name="new")]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(session, [record(session, "later")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert [r.content_md for r in old.records(session)] == [
            "first",
            "entry-0001",
            "later",
        ]
        assert [r.content_md for r in new.records(session)] == ["later"]

    async def test_a_removed_backend_releases_its_pending_entries(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        await journal_with_backlog(journal_path, session, 4)
        other = MockBackend()
        with caplog.at_level(logging.WARNING, logger="journal_archivist"):
            async with Archivist.open(
                journal_path, [registration(other, name="other")]
            ):
                pass
        assert any(
            "'mock' is no longer registered: released its 4 pending" in r.getMessage()
            for r in caplog.records
        )
        assert other.records(session) == []
        assert query(journal_path, "SELECT count(*) FROM entries") == [(0,)]

    async def test_a_renamed_backend_is_a_removal_plus_an_addition(
        self, journal_path: Path, session: UUID
    ) -> None:
        await journal_with_backlog(journal_path, session, 2)
        renamed = MockBackend()
        async with Archivist.open(
            journal_path, [registration(renamed, name="renamed")]
        ) as a:
            await a.append_messages(session, [record(session, "new")])
            await a.wait_drained()
        assert [r.content_md for r in renamed.records(session)] == ["new"]

    async def test_a_disabled_backend_keeps_its_backlog_for_later(
        self, journal_path: Path, session: UUID
    ) -> None:
        await journal_with_backlog(journal_path, session, 2)
        regs = [registration(name="mock", enabled=False), registration(name="other")]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(
                session, [record(session, "while disabled")]
            )
            assert archivist.health().backends["mock"].lag_entries == 2
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0001"]


class TestSpaceReuse:
    async def test_delivered_entries_are_deleted_and_compact_shrinks_the_file(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        reg = registration(mock, write_policy=Queued(batch_window_ms=0))
        async with Archivist.open(journal_path, [reg]) as archivist:
            mock.hold()
            for i in range(200):
                await archivist.append_messages(
                    session, [record(session, f"{i}" + "x" * 4000)]
                )
            await archivist.append_messages(session, [])
            grown = (
                journal_path.stat().st_size + Path(f"{journal_path}-wal").stat().st_size
            )
            mock.release()
            with anyio.fail_after(10):
                await archivist.wait_drained()
            assert query(journal_path, "SELECT count(*) FROM entries") == [(0,)]
            await archivist.compact()
            assert query(journal_path, "PRAGMA freelist_count") == [(0,)]
            size = journal_path.stat().st_size
        assert size < grown / 4, (size, grown)
        assert mock.appended_count(session) == 200


def _open_reporting(path: Path) -> None:
    """Open a journal at ``path``; exit 3 with the message of a JournalError."""

    async def main() -> None:
        await Archivist.open(path, [registration()])

    try:
        anyio.run(main)
    except JournalError as exc:
        raise SystemExit((3, str(exc))) from exc


def _in_child_as_nobody(fn: Callable[[Path], None], path: Path) -> tuple[int, str]:
    """Run ``fn(path)`` in a forked child (as ``nobody`` if we are root)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return
        code, message = 0, "returned"
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fn(path)
        except SystemExit as exc:
            code, message = exc.args[0] if isinstance(exc.args[0], tuple) else (1, "")
        except BaseException as exc:
            code, message = 4, repr(exc)
        os.write(write, message.encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


class TestSharedEntries:
    async def test_entries_every_backend_delivered_are_deleted(
        self, journal_path: Path, session: UUID
    ) -> None:
        a, b = MockBackend(), MockBackend()
        regs = [registration(a, name="a"), registration(b, name="b")]
        async with Archivist.open(journal_path, regs) as archivist:
            for i in range(20):
                await archivist.append_messages(session, [record(session, f"{i}")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            assert query(journal_path, "SELECT count(*) FROM entries") == [(0,)]
        assert a.appended_count(session) == b.appended_count(session) == 20

    async def test_an_entry_one_backend_still_owes_stays(
        self, journal_path: Path, session: UUID
    ) -> None:
        fast, held = MockBackend(), MockBackend()
        regs = [registration(fast, name="fast"), registration(held, name="held")]
        async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
            held.hold()
            await archivist.append_messages(session, records(session, 3))
            with anyio.fail_after(5):
                await archivist.wait_drained("fast")
            rows = query(journal_path, "SELECT targets FROM entries")
        assert len(rows) == 1
        held_bit = rows[0][0]
        assert held_bit != 0  # only "held" still owes it

    async def test_a_damaged_entry_read_by_two_backends_counts_once(
        self, journal_path: Path, session: UUID
    ) -> None:
        regs = [registration(MockBackend(), name="a"), registration(name="b")]
        held = [registration(MockBackend(), name=n) for n in ("a", "b")]
        archivist = await Archivist.open(journal_path, held)
        for reg in held:
            reg.backend.hold()  # type: ignore[attr-defined]
        await archivist.append_messages(session, [record(session, "first")])
        await archivist.append_messages(session, [record(session, "entry-0001")])
        await archivist.shutdown(timeout=0)
        data = bytearray(journal_path.read_bytes())
        data[data.find(b"entry-0001")] ^= 0x01
        journal_path.write_bytes(bytes(data))
        async with Archivist.open(journal_path, regs) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
            report = archivist.health()
        assert report.backends["a"].quarantined == report.backends["b"].quarantined == 1
        assert report.journal.quarantined == 1


def test_max_backends_is_the_bits_the_schema_allows() -> None:
    # One number: the registrations Archivist.open takes, the bits the journal
    # hands out, and the CHECK on backends.bit in the stored schema.
    assert f"CHECK (bit BETWEEN 0 AND {MAX_BACKENDS - 1})" in MIGRATIONS[0].sql
    assert CONFIG_MAX_BACKENDS == MAX_BACKENDS
