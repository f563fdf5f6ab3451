"""Operator calls on dead letters and quarantine: replay and purge.

A replay requeues a backend's dead letters for that backend alone, durably,
without touching the other backends; it never brings back a session whose
erasure is still pending; a purge deletes with a count.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import (
    Archivist,
    ArchivistClosed,
    FailureMode,
    MessageRecord,
)
from journal_archivist.testing import MockBackend
from tests.helpers import GroupLog, contents, query, record, registration

if TYPE_CHECKING:
    from pathlib import Path

    from journal_archivist import Registration


def dead_letter_ids(journal_path: Path, backend: str) -> list[int]:
    rows = query(
        journal_path, f"SELECT id FROM dead_letters WHERE backend = '{backend}'"
    )
    return [int(str(row_id)) for (row_id,) in rows]


def two_backends(poisoned: MockBackend, healthy: MockBackend) -> list[Registration]:
    return [
        registration(poisoned, "a", failure_mode=FailureMode.BEST_EFFORT),
        registration(healthy, "b"),
    ]


async def dead_letter(
    archivist: Archivist, mock: MockBackend, session: UUID, *texts: str
) -> list[MessageRecord]:
    """Append ``texts`` as poison for ``mock`` and wait until they are dead letters."""
    poison = [record(session, text) for text in texts]
    for one in poison:
        mock.poison(one.message_id)
        await archivist.append_messages(session, [one])
    with anyio.fail_after(5):
        await archivist.wait_drained()
    return poison


async def test_replay_requeues_dead_letters_for_their_backend_alone(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        await archivist.append_messages(session, [record(session, "before")])
        [poison] = await dead_letter(archivist, a, session, "poison")
        assert contents(a, session) == ["before"]
        calls_to_b = b.append_call_count(session)
        a.cure(poison.message_id)
        assert await archivist.replay_dead_letters("a") == 1
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends
    assert contents(a, session) == ["before", "poison"]
    assert contents(b, session) == ["before", "poison"]
    assert b.append_call_count(session) == calls_to_b  # b was not sent it again
    assert dead_letter_ids(journal_path, "a") == []
    # The counters count what happened: it was dead-lettered once, then delivered.
    assert (health["a"].dead_lettered, health["a"].delivered) == (1, 2)
    assert health["b"].delivered == 2


async def test_replay_of_chosen_ids_leaves_the_others(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        first, _ = await dead_letter(archivist, a, session, "p1", "p2")
        id1, id2 = dead_letter_ids(journal_path, "a")
        a.cure(first.message_id)
        assert await archivist.replay_dead_letters("a", [id1, 10_000]) == 1
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert contents(a, session) == ["p1"]
        assert dead_letter_ids(journal_path, "a") == [id2]
        # Ids of another backend's letters (or of none) are ignored.
        assert await archivist.replay_dead_letters("b", [id2]) == 0
        assert dead_letter_ids(journal_path, "a") == [id2]


async def test_a_replayed_entry_is_durable_before_delivery(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        [poison] = await dead_letter(archivist, a, session, "poison")
        a.cure(poison.message_id)
        a.go_down()
        assert await archivist.replay_dead_letters("a") == 1
        await archivist.shutdown(timeout=0)
    assert contents(a, session) == []
    a.come_back()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert contents(a, session) == ["poison"]
    assert contents(b, session) == ["poison"]


async def test_replay_leaves_letters_of_a_session_whose_erasure_is_pending(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    other = uuid4()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        [erased] = await dead_letter(archivist, a, session, "erased")
        [kept] = await dead_letter(archivist, a, other, "kept")
        a.cure(erased.message_id)
        a.cure(kept.message_id)
        a.go_down()
        await archivist.delete_session(session)
        # Replayed after the pending erasure, "erased" would come back.
        assert await archivist.replay_dead_letters("a") == 1
        a.come_back()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert contents(a, session) == []
    assert contents(a, other) == ["kept"]
    # The erasure, once settled, purged the letter it made unreplayable.
    assert dead_letter_ids(journal_path, "a") == []


async def test_replay_leaves_a_damaged_letter(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        [poison] = await dead_letter(archivist, a, session, "poison")
    with closing(sqlite3.connect(journal_path)) as db, db:
        db.execute("UPDATE dead_letters SET crc = crc + 1")
    a.cure(poison.message_id)
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        assert await archivist.replay_dead_letters("a") == 0
    assert contents(a, session) == []
    assert len(dead_letter_ids(journal_path, "a")) == 1


async def test_replay_pages_through_more_letters_than_one_transaction(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    count = 1100  # more than MAX_GROUP (1024): two transactions
    texts = [f"p{i}" for i in range(count)]
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        poison = [record(session, text) for text in texts]
        for one in poison:
            a.poison(one.message_id)
        async with anyio.create_task_group() as tg:
            for one in poison:
                tg.start_soon(archivist.append_messages, session, [one])
        with anyio.fail_after(30):
            await archivist.wait_drained()
        assert len(dead_letter_ids(journal_path, "a")) == count
        for one in poison:
            a.cure(one.message_id)
        assert await archivist.replay_dead_letters("a") == count
        with anyio.fail_after(30):
            await archivist.wait_drained()
    assert sorted(contents(a, session)) == sorted(texts)


async def test_replay_needs_a_registered_enabled_backend(
    journal_path: Path,
) -> None:
    a, b = MockBackend(), MockBackend()
    regs = [registration(a, "a"), registration(b, "b", enabled=False)]
    async with Archivist.open(journal_path, regs) as archivist:
        with pytest.raises(ValueError, match="no backend named 'c'"):
            await archivist.replay_dead_letters("c")
        with pytest.raises(ValueError, match="'b' is disabled"):
            await archivist.replay_dead_letters("b")
        with pytest.raises(TypeError, match="ids must be ints"):
            await archivist.replay_dead_letters("a", ["1"])  # type: ignore[list-item]
    with pytest.raises(ArchivistClosed):
        await archivist.replay_dead_letters("a")
    with pytest.raises(ArchivistClosed):
        await archivist.purge_dead_letters("a")


async def test_purge_dead_letters_counts_what_went(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    async with Archivist.open(journal_path, two_backends(a, b)) as archivist:
        await dead_letter(archivist, a, session, "p1", "p2", "p3")
        id1, id2, id3 = dead_letter_ids(journal_path, "a")
        assert await archivist.purge_dead_letters("b") == 0
        assert await archivist.purge_dead_letters("a", [id2]) == 1
        assert dead_letter_ids(journal_path, "a") == [id1, id3]
        assert await archivist.purge_dead_letters("a") == 2
        assert dead_letter_ids(journal_path, "a") == []
        # A name no longer registered (or never) may be purged: nothing to do here.
        assert await archivist.purge_dead_letters("gone") == 0
        assert archivist.health().backends["a"].dead_lettered == 3


async def test_purge_quarantine_counts_what_went(journal_path: Path) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]):
        pass
    with closing(sqlite3.connect(journal_path)) as db, db:
        db.executemany(
            "INSERT INTO quarantine (backend, seq, reason, quarantined_at)"
            " VALUES (?, ?, 'checksum mismatch', 0)",
            [("mock", 1), ("mock", 2), ("old", 3)],
        )
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        assert await archivist.purge_quarantine("mock", [1]) == 1
        assert await archivist.purge_quarantine("old") == 1
        assert await archivist.purge_quarantine("mock") == 1
    assert query(journal_path, "SELECT count(*) FROM quarantine") == [(0,)]


async def test_a_replayed_record_keeps_its_first_journal_time(
    journal_path: Path, session: UUID
) -> None:
    """An archive's erasure marks compare journal times: a replay must not make
    an old record look new (``docs/scaling.md``)."""
    log = GroupLog()
    regs = [registration(log, "a", failure_mode=FailureMode.BEST_EFFORT)]
    async with Archivist.open(journal_path, regs) as archivist:
        [poison] = await dead_letter(archivist, log, session, "poison")
        (first,) = query(journal_path, "SELECT enqueued_at FROM dead_letters")[0]
        log.cure(poison.message_id)
        assert await archivist.replay_dead_letters("a") == 1
        with anyio.fail_after(5):
            await archivist.wait_drained()
    times = log.times_of(poison.message_id)
    assert times[-1] == first
    assert set(times) == {first}  # every attempt, before and after, carried it
