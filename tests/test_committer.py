"""Group commit: many appends per transaction, and every appender gets an answer.

These tests hold the committer inside its transaction (a white-box hook on the
journal's INSERT) to reach the states that matter deterministically. Also: which
connection (which ``synchronous`` level) appends commit on, how failed commits
count toward failing the archivist, and the DROP_OLDEST trim done in the commit.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

import journal_archivist._intake as intake_module
from journal_archivist import (
    Archivist,
    ArchivistFailed,
    Durability,
    JournalWriteFailed,
    OverflowPolicy,
    Queued,
)
from journal_archivist._journal import Journal, Transaction
from journal_archivist.testing import MockBackend
from tests.helpers import record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID


class InsertGate:
    """Holds the committer inside its next INSERT until ``release()``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = anyio.Event()
        self.released = anyio.Event()
        self.inserts: list[int] = []
        original = Transaction.insert

        async def insert(tx: Transaction, rows: Any) -> None:
            rows = list(rows)
            self.inserts.append(len(rows))
            self.entered.set()
            await self.released.wait()
            await original(tx, rows)

        monkeypatch.setattr(Transaction, "insert", insert)

    def release(self) -> None:
        self.released.set()


async def test_appends_waiting_during_a_commit_share_the_next_transaction(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = InsertGate(monkeypatch)
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        async with anyio.create_task_group() as group:
            group.start_soon(archivist.append_messages, session, [record(session, "a")])
            with anyio.fail_after(5):
                await gate.entered.wait()
            for i in range(20):
                group.start_soon(
                    archivist.append_messages, session, [record(session, f"b{i}")]
                )
            await anyio.wait_all_tasks_blocked()
            gate.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    # One transaction for the first append, one for the twenty that waited.
    assert gate.inserts == [1, 20]
    assert mock.appended_count(session) == 21


async def test_a_caller_cancelled_mid_commit_leaves_the_others_answered(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = InsertGate(monkeypatch)
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        gave_up = anyio.CancelScope()
        answered = []

        async def impatient() -> None:
            with gave_up:
                await archivist.append_messages(session, [record(session, "gave up")])

        async def patient() -> None:
            await archivist.append_messages(session, [record(session, "waited")])
            answered.append(True)

        async with anyio.create_task_group() as group:
            group.start_soon(impatient)
            group.start_soon(patient)
            with anyio.fail_after(5):
                await gate.entered.wait()  # both are in the transaction now
            gave_up.cancel()
            await anyio.wait_all_tasks_blocked()
            gate.release()
        assert answered == [True]
        # The archivist lives on, and the cancelled append was committed anyway.
        await archivist.append_messages(session, [record(session, "after")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    contents = [r.content_md for r in mock.records(session)]
    assert sorted(contents) == ["after", "gave up", "waited"]


async def test_a_caller_cancelled_while_queued_withdraws_and_the_others_commit(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One caller cancelled must not wake or cancel the others waiting for the
    # same round, and its append is withdrawn from the queue.
    gate = InsertGate(monkeypatch)
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        gave_up = anyio.CancelScope()
        answered: list[str] = []

        async def impatient() -> None:
            with gave_up:
                await archivist.append_messages(session, [record(session, "gave up")])

        async def patient(text: str) -> None:
            await archivist.append_messages(session, [record(session, text)])
            answered.append(text)

        async with anyio.create_task_group() as group:
            group.start_soon(patient, "first")
            with anyio.fail_after(5):
                await gate.entered.wait()  # the first round is in its transaction
            group.start_soon(patient, "a")
            group.start_soon(impatient)
            group.start_soon(patient, "b")
            await anyio.wait_all_tasks_blocked()  # all three queued for round two
            gave_up.cancel()
            await anyio.wait_all_tasks_blocked()
            assert answered == []  # nobody else woke up early
            gate.release()
        assert sorted(answered) == ["a", "b", "first"]
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert gate.inserts == [1, 2]  # the withdrawn append was never journaled
    contents = [r.content_md for r in mock.records(session)]
    assert sorted(contents) == ["a", "b", "first"]


async def test_a_shielded_append_in_a_cancelled_task_commits_beside_a_cancelled_one(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task being cancelled may still journal a last record under a shield
    # (cleanup): another caller of the same round given up meanwhile must not
    # take it down with it.
    gate = InsertGate(monkeypatch)
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        outer = anyio.CancelScope()
        gave_up = anyio.CancelScope()
        results: list[str] = []

        async def cleaning_up() -> None:
            with outer:
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await archivist.append_messages(
                            session, [record(session, "last words")]
                        )
                        results.append("last words committed")

        async def impatient() -> None:
            with gave_up:
                await archivist.append_messages(session, [record(session, "gave up")])

        async with anyio.create_task_group() as group:
            group.start_soon(archivist.append_messages, session, [record(session, "a")])
            with anyio.fail_after(5):
                await gate.entered.wait()  # round one holds the committer
            group.start_soon(cleaning_up)
            await anyio.wait_all_tasks_blocked()
            outer.cancel()  # the shielded append joins the queue
            group.start_soon(impatient)
            await anyio.wait_all_tasks_blocked()
            gave_up.cancel()
            await anyio.wait_all_tasks_blocked()
            gate.release()
        assert results == ["last words committed"]
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert sorted(r.content_md for r in mock.records(session)) == ["a", "last words"]


async def test_callers_behind_a_blocked_append_are_not_woken_by_other_rounds(
    journal_path: Path, session: UUID
) -> None:
    # Each caller is woken once its own append is decided: a crowd waiting for
    # room under BLOCK costs nothing per round (persisting rounds run meanwhile).
    mock = MockBackend()
    mock.hold()
    policy = Queued(capacity=1, overflow=OverflowPolicy.BLOCK, batch_window_ms=0)
    reg = registration(mock, write_policy=policy)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [record(session, "fills it")])
        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(
                    archivist.append_messages, session, [record(session, f"w{i}")]
                )
            await anyio.wait_all_tasks_blocked()
            committer = archivist._committer  # white box
            waiting = list(committer._intake._queue)
            assert len(waiting) == 5
            ledger = committer._ledger
            bit = archivist._writers[0].bit
            persisted = ledger.flushed_gen
            for _ in range(3):  # persisting rounds that decide none of them
                ledger.journaled(bit, 0, 0)  # bookkeeping to write
                await committer.flush(counters=True)
            assert ledger.flushed_gen >= persisted + 3  # the rounds did run
            assert not any(a.caller is not None and a.caller.done() for a in waiting)
            mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert len(mock.records(session)) == 6


async def test_a_round_that_only_journals_entries_is_one_thread_hop(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # INSERT and COMMIT go to the connection's thread together (the loop pays a
    # thread switch per hop); the hop is made through aiosqlite's _execute.
    mock = MockBackend()
    mock.hold()  # nothing settles: no bookkeeping round runs meanwhile
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        durable = archivist._journal._durable  # white box
        hops: list[object] = []
        original = durable._execute

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(fn)
            return await original(fn, *args, **kwargs)

        monkeypatch.setattr(durable, "_execute", counted)
        await archivist.append_messages(session, [record(session, "one hop")])
        assert len(hops) == 1
        monkeypatch.undo()
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert [r.content_md for r in mock.records(session)] == ["one hop"]


async def test_a_cancelled_open_releases_the_journal(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = anyio.Event()
    original = Journal._load

    async def stuck_load(journal: Journal) -> None:
        entered.set()
        await anyio.sleep_forever()
        await original(journal)

    monkeypatch.setattr(Journal, "_load", stuck_load)
    async with anyio.create_task_group() as group:
        group.start_soon(_open_and_close, journal_path)
        with anyio.fail_after(5):
            await entered.wait()
        group.cancel_scope.cancel()
    monkeypatch.setattr(Journal, "_load", original)
    async with Archivist.open(journal_path, [registration()]):
        pass  # not JournalLocked: the cancelled open let go of everything


async def _open_and_close(path: Path) -> None:
    archivist = await Archivist.open(path, [registration()])
    await archivist.shutdown()


@pytest.mark.parametrize(
    ("durability", "level"),
    [
        (Durability.FULL, 2),  # synchronous=FULL: the commit fsyncs
        (Durability.NORMAL, 1),  # synchronous=NORMAL
    ],
)
async def test_appends_commit_on_the_connection_of_the_durability_asked_for(
    journal_path: Path,
    session: UUID,
    monkeypatch: pytest.MonkeyPatch,
    durability: Durability,
    level: int,
) -> None:
    # Each connection's level is checked in test_journal; this checks that the
    # transactions that journal appends run on the durable one, not on the one
    # done-marks use.
    levels: list[int] = []
    original = Transaction.insert

    async def insert(tx: Transaction, rows: Any) -> None:
        ((got,),) = await tx._conn.execute_fetchall("PRAGMA synchronous")
        levels.append(got)
        await original(tx, rows)

    monkeypatch.setattr(Transaction, "insert", insert)
    async with Archivist.open(
        journal_path, [registration()], durability=durability
    ) as archivist:
        for i in range(3):
            await archivist.append_messages(session, [record(session, f"m{i}")])
            with anyio.fail_after(5):
                await archivist.wait_drained()  # done-marks commit in between
    assert levels == [level] * 3


def _commit_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


async def test_a_full_disk_between_io_errors_neither_counts_nor_resets_the_streak(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    # guarantees.md 1: a full disk "does not count toward failing, and does not
    # reset the count"; the third I/O error in a row fails the archivist.
    failures = [
        (sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"),
        (sqlite3.SQLITE_IOERR_FSYNC, "disk I/O error"),
        (sqlite3.SQLITE_FULL, "database or disk is full"),
        (sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"),
    ]

    async def insert(tx: Transaction, rows: Any) -> None:
        raise _commit_error(*failures.pop(0))

    async def use() -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            monkeypatch.setattr(Transaction, "insert", insert)
            for _ in range(3):
                with pytest.raises(JournalWriteFailed):
                    await archivist.append_messages(session, [record(session, "x")])
                assert not archivist.health().journal.failed
            with pytest.raises(JournalWriteFailed, match="disk I/O error"):
                await archivist.append_messages(session, [record(session, "x")])
            assert archivist.health().journal.failed
            monkeypatch.undo()

    with pytest.raises(ArchivistFailed, match="3 commits in a row"):
        await use()
    assert failures == []


async def test_drop_oldest_never_drops_the_entry_it_makes_room_for(
    journal_path: Path, session: UUID
) -> None:
    # Nothing in flight (the writer lingers for a fuller batch): a new entry
    # bigger than the whole byte capacity pushes out the older one and stays,
    # alone, as an oversized entry fits an empty backlog.
    mock = MockBackend()
    lingering = Queued(
        batch_window_ms=60_000,
        overflow=OverflowPolicy.DROP_OLDEST,
        capacity_bytes=1_000,
    )
    async with Archivist.open(
        journal_path, [registration(mock, write_policy=lingering)]
    ) as archivist:
        await archivist.append_messages(session, [record(session, "small")])
        await archivist.append_messages(session, [record(session, "big" * 500)])
        health = archivist.health().backends["mock"]
        assert (health.lag_entries, health.dropped) == (1, 1)
        with anyio.fail_after(5):  # the window is 60 s: no lingering when draining
            await archivist.shutdown()
    assert [r.content_md for r in mock.records(session)] == ["big" * 500]


async def test_an_erasure_beyond_the_planned_group_stays_behind_its_sessions_append(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # guarantees.md 11: an erasure passes blocked appends of other sessions, but
    # an undecided append of its own session made before it stays ahead of it,
    # also when both wait beyond the appends one round plans.
    monkeypatch.setattr(intake_module, "MAX_GROUP", 4)  # rounds plan 4 appends
    mock = MockBackend()
    policy = Queued(capacity=1, overflow=OverflowPolicy.BLOCK, batch_window_ms=0)
    erased, filler = uuid4(), uuid4()
    async with Archivist.open(
        journal_path, [registration(mock, write_policy=policy)]
    ) as archivist:
        mock.hold()
        await archivist.append_messages(filler, [record(filler, "held")])
        with anyio.fail_after(5):
            await mock.wait_held()
        others = [uuid4() for _ in range(4)]
        async with anyio.create_task_group() as group:
            for other in others:  # the four appends a round plans: all blocked
                group.start_soon(archivist.append_messages, other, [record(other)])
                await anyio.wait_all_tasks_blocked()
            group.start_soon(
                archivist.append_messages, erased, [record(erased, "before")]
            )
            await anyio.wait_all_tasks_blocked()
            group.start_soon(archivist.delete_session, erased)
            await anyio.wait_all_tasks_blocked()
            mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.erasures == [erased]
    assert mock.records(erased) == []  # erased after it was archived, not before
    assert all(mock.appended_count(other) == 1 for other in others)


async def test_entries_reach_the_writers_without_their_encoded_payload(
    journal_path: Path, session: UUID
) -> None:
    # The writers deliver the records; the encoded payload lives on in the
    # journal only, so a large record is not held twice while it is delivered.
    mock = MockBackend()
    mock.hold()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        await archivist.append_messages(session, [record(session, "x" * 10_000)])
        with anyio.fail_after(5):
            await mock.wait_held()
        [entry] = archivist._writers[0].book.in_flight  # white box
        assert entry.payload == b""
        assert entry.size > 10_000
        assert [r.content_md for r in entry.records or []] == ["x" * 10_000]
        mock.release()
