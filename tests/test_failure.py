"""A dead archivist says so: health reports it, every call raises at once, nothing
hangs, and the journal is released for the next open.

A loop dies on a bug or a journal that cannot be read (here: the journal reader
raising as a damaged page makes it), or when the committer meets three I/O errors
in a row. Also: an archivist used from another event loop says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from journal_archivist import (
    Archivist,
    ArchivistClosed,
    ArchivistFailed,
    JournalWriteFailed,
    OverflowPolicy,
    Sync,
    WrongEventLoop,
)
from journal_archivist._journal import Journal, Transaction, _write_failed
from journal_archivist._reader import Reader
from journal_archivist._upkeep import CHECKPOINT_BYTES
from journal_archivist.testing import MockBackend
from tests.helpers import append_catching, record, registration
from tests.test_committer import InsertGate

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from uuid import UUID

MALFORMED = "database disk image is malformed"


@pytest.fixture
def unreadable_journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The journal's reader raises, as a damaged page makes SQLite do."""

    async def pending(*args: Any) -> Any:
        raise sqlite3.DatabaseError(MALFORMED)

    monkeypatch.setattr(Reader, "pending", pending)
    yield
    monkeypatch.undo()


async def with_backlog(path: Path, session: UUID, count: int = 3) -> None:
    held = MockBackend()
    held.hold()
    archivist = await Archivist.open(path, [registration(held)])
    for i in range(count):
        await archivist.append_messages(session, [record(session, f"m{i}")])
    await archivist.shutdown(timeout=0)


def assert_one_line_failure(error: BaseException, what: str) -> None:
    assert isinstance(error, ArchivistFailed)
    assert "\n" not in str(error)
    assert f"{what} died: DatabaseError: {MALFORMED}" in str(error)
    assert isinstance(error.__cause__, sqlite3.DatabaseError)


WRITER = "the writer loop of backend 'mock'"


class TestALoopDies:
    async def test_health_and_every_call_say_so_at_once(
        self,
        journal_path: Path,
        session: UUID,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        await with_backlog(journal_path, session)
        died = anyio.Event()
        original = Reader.pending

        async def pending(reader: Reader, *args: Any) -> Any:
            died.set()
            raise sqlite3.DatabaseError(MALFORMED)

        monkeypatch.setattr(Reader, "pending", pending)
        archivist = await Archivist.open(journal_path, [registration()])
        with anyio.fail_after(5):
            await died.wait()
            # wait_drained was the call that hung: it now raises, and at once.
            with pytest.raises(ArchivistFailed) as drained:
                await archivist.wait_drained()
        assert_one_line_failure(drained.value, WRITER)
        report = archivist.health()
        assert report.journal.failed
        assert report.journal.failure == f"{WRITER} died: DatabaseError: {MALFORMED}"
        assert archivist.is_closed
        with pytest.raises(ArchivistFailed) as appended:
            await archivist.append_messages(session, [record(session, "late")])
        assert_one_line_failure(appended.value, WRITER)
        with pytest.raises(ArchivistFailed):
            await archivist.delete_session(session)
        with pytest.raises(ArchivistFailed):
            await archivist.read_session(session)
        with pytest.raises(ArchivistFailed):  # a failure is never silent
            await archivist.shutdown()
        assert [r.levelno for r in caplog.records if WRITER in r.getMessage()] == [
            logging.CRITICAL
        ]
        # The lock is released and nothing acknowledged was lost.
        monkeypatch.setattr(Reader, "pending", original)
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as reopened:
            with anyio.fail_after(5):
                await reopened.wait_drained()
        assert [r.content_md for r in mock.records(session)] == ["m0", "m1", "m2"]

    async def test_appenders_waiting_on_it_are_woken(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A Sync appender waits for delivery; a BLOCKed one for room: neither
        # may hang when the archivist dies under them.
        await with_backlog(journal_path, session, count=2)
        gate = anyio.Event()

        async def pending(*args: Any) -> Any:
            await gate.wait()
            raise sqlite3.DatabaseError(MALFORMED)

        monkeypatch.setattr(Reader, "pending", pending)
        policy = Sync(timeout=60, capacity=3, overflow=OverflowPolicy.BLOCK)
        errors: list[BaseException] = []
        failed = (ArchivistFailed, errors)  # what append_catching collects, where

        async def use() -> None:
            async with Archivist.open(
                journal_path, [registration(write_policy=policy)]
            ) as archivist:
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as group:
                        group.start_soon(
                            append_catching, archivist, session, "syncs", *failed
                        )  # fits: waits
                        await anyio.wait_all_tasks_blocked()
                        group.start_soon(
                            append_catching, archivist, session, "blocks", *failed
                        )  # no room
                        # White box: until it waits for room, not only its turn.
                        intake = archivist._committer._intake
                        while not (intake.head and intake.head.blocked_on is not None):
                            await anyio.wait_all_tasks_blocked()
                        assert errors == []
                        gate.set()

        with pytest.raises(ArchivistFailed):  # at the end of the block
            await use()
        assert len(errors) == 2
        for error in errors:
            assert_one_line_failure(error, WRITER)

    async def test_wait_drained_raises_at_once_though_stopping_takes_long(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The committer is held inside a transaction, so stopping the archivist
        # (which writes the last done-marks) takes its full time; wait_drained
        # must not wait for that.
        await with_backlog(journal_path, session)
        gate = anyio.Event()

        async def pending(*args: Any) -> Any:
            await gate.wait()
            raise sqlite3.DatabaseError(MALFORMED)

        monkeypatch.setattr(Reader, "pending", pending)
        held = InsertGate(monkeypatch)
        archivist = await Archivist.open(journal_path, [registration()])
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._append_quietly, archivist, session)
                with anyio.fail_after(5):
                    await held.entered.wait()
                gate.set()
                with anyio.fail_after(10), pytest.raises(ArchivistFailed):
                    await archivist.wait_drained()
                held.release()
        finally:
            held.release()
            with contextlib.suppress(ArchivistFailed):
                await archivist.shutdown()

    @staticmethod
    async def _append_quietly(archivist: Archivist, session: UUID) -> None:
        with contextlib.suppress(ArchivistFailed):
            await archivist.append_messages(session, [record(session, "held")])

    async def test_the_end_of_its_async_with_block_raises_it(
        self, journal_path: Path, session: UUID, unreadable_journal: None
    ) -> None:
        await with_backlog(journal_path, session)

        async def use() -> None:
            async with Archivist.open(journal_path, [registration()]) as archivist:
                with anyio.fail_after(5), pytest.raises(ArchivistFailed):
                    await archivist.wait_drained()

        with pytest.raises(ArchivistFailed) as info:
            await use()
        assert_one_line_failure(info.value, WRITER)

    async def test_the_blocks_own_error_is_not_hidden_by_it(
        self, journal_path: Path, session: UUID, unreadable_journal: None
    ) -> None:
        await with_backlog(journal_path, session)

        async def use() -> None:
            async with Archivist.open(journal_path, [registration()]) as archivist:
                with anyio.fail_after(5), pytest.raises(ArchivistFailed):
                    await archivist.wait_drained()
                raise KeyError("the body's own")

        with pytest.raises(KeyError, match="the body's own"):
            await use()


def spy_on_journal(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record each call of Journal.rewrite, compact and checkpoint, with whether
    a rewrite was due when it was made."""
    calls: list[tuple[str, bool]] = []
    for name in ("rewrite", "compact", "checkpoint"):
        original = getattr(Journal, name)

        def spy(
            journal: Journal, *args: Any, _name: str = name, _original: Any = original
        ) -> Any:
            calls.append((_name, journal.rewrite_needed))
            return _original(journal, *args)

        monkeypatch.setattr(Journal, name, spy)
    return calls


class TestAJournalThatMustBeRewritten:
    async def test_closing_it_unrewritten_keeps_the_wal_for_the_next_open(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # After a failed fsync the file may lack pages the WAL still has: closing
        # must not checkpoint the WAL into it and delete it.
        async def rewrite(journal: Journal) -> None:
            raise JournalWriteFailed(journal.path, "rewrite failed: disk I/O error")

        mock = MockBackend()
        mock.hold()
        archivist = await Archivist.open(journal_path, [registration(mock)])
        await archivist.append_messages(session, [record(session, "kept")])
        archivist._journal.rewrite_needed = True  # white box: as a failed fsync
        monkeypatch.setattr(Journal, "rewrite", rewrite)
        await archivist.shutdown(timeout=0)
        wal = journal_path.with_name(journal_path.name + "-wal")
        assert wal.exists()
        assert wal.stat().st_size > 0
        monkeypatch.undo()
        later = MockBackend()
        async with Archivist.open(journal_path, [registration(later)]) as reopened:
            with anyio.fail_after(5):
                await reopened.wait_drained()
        assert [r.content_md for r in later.records(session)] == ["kept"]

    async def test_compaction_rewrites_it_first(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Compaction checkpoints: before the rewrite, that would copy frames from
        # past a hole in the WAL on disk into the file (Journal.rewrite).
        async with Archivist.open(journal_path, [registration()]) as archivist:
            for _ in range(64):
                await archivist.append_messages(session, [record(session, "x" * 4096)])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        calls = spy_on_journal(monkeypatch)
        # Reopened with free pages and nothing to deliver: compact() alone acts.
        async with Archivist.open(journal_path, [registration()]) as archivist:
            archivist._journal.rewrite_needed = True  # white box: as a failed fsync
            with anyio.fail_after(5):
                await archivist.compact()
            assert calls[0] == ("rewrite", True)
            assert ("compact", False) in calls  # and then it compacts
            assert ("compact", True) not in calls
            assert not archivist._journal.rewrite_needed

    async def test_a_checkpoint_rewrites_it_first(
        self, journal_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = spy_on_journal(monkeypatch)
        async with Archivist.open(journal_path, [registration()]) as archivist:
            committer = archivist._committer
            # White box: a failed fsync, and a checkpoint due, with nothing to
            # commit (a commit round would rewrite it first on its own).
            archivist._journal.rewrite_needed = True
            committer._upkeep.wal_debt = CHECKPOINT_BYTES
            committer._kick.set()
            with anyio.fail_after(5):
                while not any(name == "checkpoint" for name, _ in calls):
                    await anyio.wait_all_tasks_blocked()
        assert calls[:2] == [("rewrite", True), ("checkpoint", False)]

    async def test_a_rewrite_that_fails_counts_toward_the_three_failures(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Its last step, the fsync of the emptied WAL, fails with an OSError.
        async def rewrite(journal: Journal) -> None:
            raise JournalWriteFailed(
                journal.path,
                "rewrite failed: [Errno 5] Input/output error",
                io_error=True,  # as Journal.rewrite classifies its OSError
            ) from OSError(5, "Input/output error")

        async def use() -> None:
            async with Archivist.open(journal_path, [registration()]) as archivist:
                archivist._journal.rewrite_needed = True  # white box
                monkeypatch.setattr(Journal, "rewrite", rewrite)
                for _ in range(3):
                    with pytest.raises(JournalWriteFailed, match="rewrite failed"):
                        await archivist.append_messages(session, [record(session, "x")])
                assert archivist.health().journal.failed
                monkeypatch.undo()

        with pytest.raises(ArchivistFailed, match="3 commits in a row"):
            await use()

    async def test_shutdown_during_the_rewrite_closes_rather_than_fails(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        entered = anyio.Event()

        async def rewrite(journal: Journal) -> None:
            entered.set()
            await anyio.sleep_forever()

        archivist = await Archivist.open(journal_path, [registration()])
        archivist._journal.rewrite_needed = True  # white box: as a failed fsync
        monkeypatch.setattr(Journal, "rewrite", rewrite)
        outcome: list[BaseException] = []
        async with anyio.create_task_group() as group:
            group.start_soon(
                append_catching, archivist, session, "x", ArchivistClosed, outcome
            )
            with anyio.fail_after(5):
                await entered.wait()
            # The rewrite at close hangs too: the WAL is kept, past its bound.
            with anyio.fail_after(5):
                await archivist.shutdown(timeout=0)
        assert [type(e) for e in outcome] == [ArchivistClosed]
        assert not archivist.health().journal.failed


class TestACommitterThatDies:
    async def test_appends_queued_behind_it_learn_why(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # It dies between rounds (here in a checkpoint, of a bug): the appends
        # waiting for the next round get ArchivistFailed, not ArchivistClosed.
        gate = anyio.Event()

        async def checkpoint(journal: Journal) -> None:
            await gate.wait()
            raise RuntimeError("a bug in the checkpoint")

        monkeypatch.setattr(Journal, "checkpoint", checkpoint)
        archivist = await Archivist.open(journal_path, [registration()])
        archivist._committer._upkeep.wal_debt = CHECKPOINT_BYTES  # white box: due now
        await archivist.append_messages(session, [record(session, "first")])
        outcome: list[BaseException] = []
        async with anyio.create_task_group() as group:
            group.start_soon(
                append_catching, archivist, session, "queued", ArchivistFailed, outcome
            )
            await anyio.wait_all_tasks_blocked()
            assert len(archivist._committer._intake)  # white box: it is queued
            gate.set()
        assert len(outcome) == 1
        assert "the committer died: RuntimeError: a bug" in str(outcome[0])
        with pytest.raises(ArchivistFailed):
            await archivist.shutdown()


def io_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


class TestCommitFailures:
    async def test_three_io_failures_in_a_row_fail_the_archivist(
        self, journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def insert(tx: Transaction, rows: Any) -> None:
            raise io_error(sqlite3.SQLITE_IOERR_WRITE, "disk I/O error")

        async def use() -> None:
            async with Archivist.open(journal_path, [registration()]) as archivist:
                monkeypatch.setattr(Transaction, "insert", insert)
                for attempt in range(3):
                    assert not archivist.health().journal.failed
                    with pytest.raises(JournalWriteFailed, match="disk I/O error"):
                        await archivist.append_messages(session, [record(session, "x")])
                    assert archivist.health().journal.commit_failures == attempt + 1
                assert archivist.health().journal.failed
                monkeypatch.undo()
                with pytest.raises(ArchivistFailed, match="3 commits in a row"):
                    await archivist.append_messages(session, [record(session, "y")])
                with pytest.raises(ArchivistFailed):
                    await archivist.wait_drained()

        # Leaving the block raises the failure too (it never met it there).
        with pytest.raises(ArchivistFailed, match="failed with an I/O error"):
            await use()

    async def test_a_full_disk_refuses_appends_but_never_fails_the_archivist(
        self,
        journal_path: Path,
        session: UUID,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def insert(tx: Transaction, rows: Any) -> None:
            raise io_error(sqlite3.SQLITE_FULL, "database or disk is full")

        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            monkeypatch.setattr(Transaction, "insert", insert)
            with caplog.at_level(logging.ERROR, logger="journal_archivist"):
                for _ in range(8):
                    with pytest.raises(JournalWriteFailed, match="full"):
                        await archivist.append_messages(session, [record(session, "x")])
            assert archivist.health().journal.commit_failures == 8
            assert not archivist.health().journal.failed
            # One line for the streak, not one per failed commit.
            lines = [r for r in caplog.records if "commit failed" in r.getMessage()]
            assert len(lines) == 1
            monkeypatch.undo()
            await archivist.append_messages(session, [record(session, "after")])
            assert archivist.health().journal.commit_failures == 0
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert [r.content_md for r in mock.records(session)] == ["after"]


class TestEventLoops:
    def test_opening_in_one_asyncio_run_and_using_it_in_another_says_why(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        # The first thing a newcomer tries.
        async def open_it() -> Archivist:
            return await Archivist.open(journal_path, [registration()])

        with caplog.at_level(logging.WARNING, logger="journal_archivist"):
            archivist = asyncio.run(open_it())
        assert "closing without shutdown() (did asyncio.run() return?)" in caplog.text
        assert "CancelledError" not in caplog.text
        with pytest.raises(WrongEventLoop, match="has since closed") as info:
            asyncio.run(archivist.append_messages(session, [record(session, "x")]))
        assert info.value.loop_closed
        assert "asyncio.run()" in str(info.value)
        # Stopped already: shutting down from anywhere just says it is done.
        asyncio.run(archivist.shutdown())

        # And the journal was released by its own loop on the way out.
        async def reopen() -> None:
            async with Archivist.open(journal_path, [registration()]):
                pass

        asyncio.run(reopen())

    async def test_using_it_from_another_running_loop_is_refused(
        self, journal_path: Path, session: UUID
    ) -> None:
        errors: list[BaseException] = []
        async with Archivist.open(journal_path, [registration()]) as archivist:

            def other_thread() -> None:
                try:
                    asyncio.run(
                        archivist.append_messages(session, [record(session, "x")])
                    )
                except WrongEventLoop as exc:
                    errors.append(exc)

            thread = threading.Thread(target=other_thread)
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
            await archivist.append_messages(session, [record(session, "here")])
        [error] = errors
        assert isinstance(error, WrongEventLoop)
        assert not error.loop_closed
        assert "serves only that one" in str(error)


@pytest.mark.parametrize(
    ("cause", "io_error"),
    [
        (io_error(sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"), True),
        (io_error(sqlite3.SQLITE_IOERR_FSYNC, "disk I/O error"), True),
        (io_error(sqlite3.SQLITE_IOERR, "disk I/O error"), True),
        (OSError(5, "Input/output error"), True),
        (io_error(sqlite3.SQLITE_FULL, "database or disk is full"), False),
        (io_error(sqlite3.SQLITE_BUSY, "database is locked"), False),
        (ValueError("not SQLite's"), False),
    ],
)
def test_the_journal_classifies_what_failed(
    cause: BaseException, io_error: bool
) -> None:
    # The one place SQLite's error codes are read (journal_archivist/_journal.py).
    failed = _write_failed("j.db", str(cause), cause)
    assert failed.io_error is io_error
