"""Group commit: many appends per transaction, and every appender gets an answer.

These tests hold the committer inside its transaction (a white-box hook on the
journal's INSERT) to reach the states that matter deterministically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from journal_archivist import Archivist
from journal_archivist._journal import Journal, Transaction
from journal_archivist.testing import MockBackend
from tests.helpers import record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    import pytest


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
