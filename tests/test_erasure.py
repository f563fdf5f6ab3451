"""Durable session erasure: ``Archivist.delete_session`` end to end.

An erasure is a journal entry like an append: ordered after the session's earlier
appends for every backend, surviving restarts and outages, never dropped for a
full backlog, and leaving no row of the session in the journal once delivered.
"""

from __future__ import annotations

import math
import sqlite3
import time
from contextlib import closing
from fractions import Fraction
from types import SimpleNamespace
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import pytest
from hypothesis import example, given, strategies as st

from journal_archivist import (
    Archivist,
    BackendError,
    FailureMode,
    OverflowPolicy,
    Queued,
    QueueFull,
    RetryPolicy,
    _intake,
)
from journal_archivist._transaction import from_micros, to_micros
from journal_archivist.testing import MockBackend
from tests.helpers import GroupLog, contents, record, records, registration

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from journal_archivist import MessageRecord


def journal_rows(journal_path: Path, session: UUID) -> dict[str, int]:
    """Rows of ``session`` left in each journal table."""
    with closing(sqlite3.connect(journal_path)) as db:
        return {
            table: db.execute(
                f"SELECT count(*) FROM {table} WHERE session = ?", (session.bytes,)
            ).fetchone()[0]
            for table in ("entries", "dead_letters", "quarantine")
        }


async def test_erasure_reaches_every_backend_after_earlier_appends(
    journal_path: Path,
) -> None:
    first, second = MockBackend(), MockBackend()
    gone, kept = uuid4(), uuid4()
    regs = [registration(first, name="first"), registration(second, name="second")]
    async with Archivist.open(journal_path, regs) as archivist:
        await archivist.append_messages(gone, records(gone, 3))
        await archivist.append_messages(kept, records(kept, 2))
        with anyio.fail_after(5):
            await archivist.wait_drained()
        await archivist.delete_session(gone)
        await archivist.append_messages(gone, [record(gone, "after")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert await archivist.read_session(gone) == first.records(gone)
    for mock in (first, second):
        assert mock.erasures == [gone]
        assert contents(mock, gone) == ["after"]
        assert contents(mock, kept) == ["m0", "m1"]
    assert journal_rows(journal_path, gone) == {
        "entries": 0,
        "dead_letters": 0,
        "quarantine": 0,
    }


async def test_erasure_requested_while_the_backend_is_down_is_delivered_later(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        mock.go_down()
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await mock.wait_failures(1)
        await archivist.delete_session(session)
        await archivist.append_messages(session, [record(session, "after")])
        mock.come_back()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.erasures == [session]
    assert contents(mock, session) == ["after"]
    assert journal_rows(journal_path, session)["entries"] == 0


async def test_records_pending_behind_an_erasure_are_never_sent(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    other = uuid4()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        mock.hold()  # the writer waits at the gate with a batch of ``other``
        await archivist.append_messages(other, [record(other)])
        with anyio.fail_after(5):
            await mock.wait_held()
        await archivist.append_messages(session, records(session, 3))
        await archivist.delete_session(session)
        await archivist.append_messages(session, [record(session, "after")])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.erasures == [session]
    # Coalesced into the erasure's batch, the erased records were never sent.
    assert [r.content_md for r in mock.deliveries(session)] == ["after"]


async def test_erasure_survives_a_restart(journal_path: Path, session: UUID) -> None:
    down = MockBackend()
    down.go_down()
    async with Archivist.open(journal_path, [registration(down)]) as archivist:
        await archivist.delete_session(session)
        await archivist.shutdown(timeout=0)
    # The archive still holds the session from before; the erasure reaches it.
    archive = MockBackend()
    await archive.append_messages(session, records(session, 2))
    async with Archivist.open(journal_path, [registration(archive)]) as archivist:
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert archive.erasures == [session]
    assert archive.records(session) == []


async def test_read_session_hides_what_a_pending_erasure_will_remove(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        await archivist.append_messages(session, records(session, 2))
        with anyio.fail_after(5):
            await archivist.wait_drained()
        mock.hold()
        await archivist.delete_session(session)
        with anyio.fail_after(5):
            await mock.wait_held()  # the erasure is in flight, not yet applied
        await archivist.append_messages(session, [record(session, "after")])
        assert contents(mock, session) == ["m0", "m1"]
        read = await archivist.read_session(session)
        assert [r.content_md for r in read] == ["after"]
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert [r.content_md for r in await archivist.read_session(session)] == [
            "after"
        ]


@pytest.mark.parametrize(
    "overflow",
    [OverflowPolicy.REJECT, OverflowPolicy.DROP_NEWEST, OverflowPolicy.DROP_OLDEST],
)
async def test_a_full_backlog_never_refuses_or_drops_an_erasure(
    journal_path: Path, session: UUID, overflow: OverflowPolicy
) -> None:
    mock = MockBackend()
    policy = Queued(capacity=2, overflow=overflow, batch_window_ms=0)
    async with Archivist.open(
        journal_path, [registration(mock, write_policy=policy)]
    ) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session, "m0")])
        with anyio.fail_after(5):
            await mock.wait_held()
        await archivist.append_messages(session, [record(session, "m1")])
        await archivist.delete_session(session)  # over capacity, still admitted
        other = uuid4()
        for i in range(3):  # DROP_OLDEST drops around the erasure, never it
            if overflow is OverflowPolicy.REJECT:
                with pytest.raises(QueueFull):
                    await archivist.append_messages(other, [record(other, f"o{i}")])
            else:
                await archivist.append_messages(other, [record(other, f"o{i}")])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        dropped = archivist.health().backends["mock"].dropped
    assert mock.erasures == [session]
    assert contents(mock, session) == []
    assert (
        dropped
        == {
            OverflowPolicy.REJECT: 0,
            OverflowPolicy.DROP_NEWEST: 3,  # every later append
            # m1, then each o as it arrives: the one in flight and the erasure
            # fill the backlog, and neither can be dropped.
            OverflowPolicy.DROP_OLDEST: 4,
        }[overflow]
    )


async def test_erasure_purges_parked_copies_of_the_session(
    journal_path: Path,
) -> None:
    mock = MockBackend()
    gone, kept = uuid4(), uuid4()
    poison_gone, poison_kept = record(gone, "poison"), record(kept, "poison")
    mock.poison(poison_gone.message_id)
    mock.poison(poison_kept.message_id)
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(gone, [poison_gone])
        await archivist.append_messages(kept, [poison_kept])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert journal_rows(journal_path, gone)["dead_letters"] == 1
        await archivist.delete_session(gone)
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert journal_rows(journal_path, gone) == {
        "entries": 0,
        "dead_letters": 0,
        "quarantine": 0,
    }
    assert journal_rows(journal_path, kept)["dead_letters"] == 1


async def test_delete_session_checks_its_argument(journal_path: Path) -> None:
    async with Archivist.open(journal_path, [registration()]) as archivist:
        with pytest.raises(TypeError, match=r"session must be a uuid\.UUID, got str"):
            await archivist.delete_session(str(uuid4()))  # type: ignore[arg-type]


class ScriptedFailures(MockBackend):
    """Raises ``errors`` on its first calls, one each, then works; ``calls`` says
    when each call came."""

    def __init__(self, *errors: BackendError) -> None:
        super().__init__()
        self.errors = list(errors)
        self.calls: list[float] = []

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        self.calls.append(anyio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        await super().append_messages(session, records)


async def test_writer_honours_retry_after(journal_path: Path, session: UUID) -> None:
    backend = ScriptedFailures(BackendError("busy", retry_after=0.3))
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=5)
    async with Archivist.open(
        journal_path, [registration(backend, retry=retry)]
    ) as archivist:
        await archivist.append_messages(session, [record(session)])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    first, second = backend.calls
    assert second - first >= 0.25  # asked for 0.3 s; jitter alone is ~1 ms


async def test_retry_after_is_honoured_before_giving_up_and_then_forgotten(
    journal_path: Path, session: UUID
) -> None:
    backend = ScriptedFailures(
        BackendError("too many requests", retry_after=0.3),
        BackendError("too many requests", retry_after=0.3),
        BackendError("transient"),  # no retry_after: a short backoff
    )
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=2)
    reg = registration(backend, retry=retry, failure_mode=FailureMode.BEST_EFFORT)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [record(session, "m0")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        await archivist.append_messages(session, [record(session, "m1")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    first, second, third, fourth = backend.calls
    assert second - first >= 0.25  # the retry waited as asked
    assert third - second >= 0.25  # so did giving up (m0 is dead-lettered)
    assert fourth - third < 0.25  # m1's plain failure: no leftover pause
    assert contents(backend, session) == ["m1"]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1", TypeError),
        (True, TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
    ],
)
def test_retry_after_must_be_a_finite_number(value: object, error: type) -> None:
    with pytest.raises(error, match="retry_after"):
        BackendError("busy", retry_after=value)  # type: ignore[arg-type]


def test_a_negative_retry_after_counts_as_zero() -> None:
    assert BackendError("busy", retry_after=-3).retry_after == 0.0


async def test_a_damaged_erasure_among_dropped_appends_is_quarantined(
    journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
) -> None:
    # Found in review: a damaged row read back as an append was skipped below
    # the DROP_OLDEST floor, though the journal never drops an erasure.
    down = MockBackend()
    down.go_down()
    async with Archivist.open(journal_path, [registration(down)]) as archivist:
        await archivist.append_messages(session, [record(session, "a1")])
        await archivist.delete_session(session)
        await archivist.append_messages(session, [record(session, "a2")])
        await archivist.shutdown(timeout=0)
    with closing(sqlite3.connect(journal_path)) as db:
        db.execute("UPDATE entries SET crc = crc + 1 WHERE op = 2")
        db.commit()
    mock = MockBackend()
    policy = Queued(
        capacity=2, overflow=OverflowPolicy.DROP_OLDEST, batch_window_ms=0, max_batch=1
    )
    reg = registration(mock, write_policy=policy)
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        with anyio.fail_after(5):
            await mock.wait_held()  # a1 in flight
        other = uuid4()
        await archivist.append_messages(other, [record(other, "o1")])  # drops a2
        await archivist.append_messages(other, [record(other, "o2")])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["mock"]
    assert (health.quarantined, health.lag_entries) == (1, 0)
    assert "has no entries behind it" not in caplog.text
    with closing(sqlite3.connect(journal_path)) as db:
        assert db.execute("SELECT op FROM quarantine").fetchall() == [(2,)]


async def test_a_disabled_backend_gets_the_erasure_when_enabled_again(
    journal_path: Path, session: UUID
) -> None:
    a, b = MockBackend(), MockBackend()
    b.go_down()
    regs = [registration(a, name="a"), registration(b, name="b")]
    async with Archivist.open(journal_path, regs) as archivist:
        await archivist.append_messages(session, records(session, 2))
        with anyio.fail_after(5):
            await a.wait_for_records(session, 2)
        await archivist.shutdown(timeout=0)
    # b is disabled for a while, with the session's appends in its backlog.
    regs = [registration(a, name="a"), registration(b, name="b", enabled=False)]
    async with Archivist.open(journal_path, regs) as archivist:
        await archivist.delete_session(session)
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["b"].lag_entries == 2  # append, erasure
    b.come_back()
    regs = [registration(a, name="a"), registration(b, name="b")]
    async with Archivist.open(journal_path, regs) as archivist:
        assert archivist.health().backends["b"].lag_entries == 2  # append, erasure
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert (a.erasures, b.erasures) == ([session], [session])
    assert a.records(session) == b.records(session) == []
    assert journal_rows(journal_path, session)["entries"] == 0


async def test_erasure_purges_parked_copies_kept_for_removed_backends(
    journal_path: Path,
) -> None:
    gone, kept = uuid4(), uuid4()
    a, b = MockBackend(), MockBackend()
    poisons = [record(gone, "poison"), record(kept, "poison")]
    for poison in poisons:
        b.poison(poison.message_id)
    regs = [
        registration(a, name="a"),
        registration(b, name="b", failure_mode=FailureMode.BEST_EFFORT),
    ]
    async with Archivist.open(journal_path, regs) as archivist:
        for poison in poisons:
            await archivist.append_messages(poison.session, [poison])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert journal_rows(journal_path, gone)["dead_letters"] == 1
    async with Archivist.open(journal_path, [registration(a, name="a")]) as archivist:
        await archivist.delete_session(gone)  # b is no longer registered
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert journal_rows(journal_path, gone)["dead_letters"] == 0
    assert journal_rows(journal_path, kept)["dead_letters"] == 1


async def test_an_erasure_passes_a_blocked_append_of_another_session(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    policy = Queued(capacity=1, overflow=OverflowPolicy.BLOCK, batch_window_ms=0)
    reg = registration(mock, write_policy=policy)
    other = uuid4()
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session, "m0")])
        with anyio.fail_after(5):
            await mock.wait_held()
        order: list[str] = []

        async def append(target: UUID, content: str) -> None:
            await archivist.append_messages(target, [record(target, content)])
            order.append(content)

        async def erase(target: UUID, label: str) -> None:
            await archivist.delete_session(target)
            order.append(label)

        async with anyio.create_task_group() as group:
            group.start_soon(append, other, "blocked")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(erase, other, "erase other")  # must wait its turn
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                await erase(session, "erase session")  # passes the blocked one
            assert order == ["erase session"]
            mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert order == ["erase session", "blocked", "erase other"]
    assert mock.erasures == [session, other]
    assert mock.records(other) == []


async def test_an_erasure_passes_more_blocked_appends_than_one_round_plans(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    import journal_archivist._intake as intake_module

    monkeypatch.setattr(intake_module, "MAX_GROUP", 4)  # rounds plan 4 appends
    mock = MockBackend()
    policy = Queued(capacity=1, overflow=OverflowPolicy.BLOCK, batch_window_ms=0)
    reg = registration(mock, write_policy=policy)
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session, "m0")])
        with anyio.fail_after(5):
            await mock.wait_held()
        others = [uuid4() for _ in range(10)]
        async with anyio.create_task_group() as group:
            for other in others:  # ten appends wait under BLOCK
                group.start_soon(archivist.append_messages, other, [record(other)])
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                await archivist.delete_session(session)
            assert mock.erasures == []  # journaled, not delivered yet
            mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist._committer._intake.erasures == 0  # white box: the count
    assert mock.erasures == [session]
    assert all(mock.appended_count(other) == 1 for other in others)


async def test_a_quarantined_erasure_purges_nothing(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    poison = record(session, "poison")
    mock.poison(poison.message_id)
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [poison])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        mock.go_down()
        await archivist.delete_session(session)
        await archivist.shutdown(timeout=0)
    with closing(sqlite3.connect(journal_path)) as db:
        db.execute("UPDATE entries SET crc = crc + 1 WHERE op = 2")
        db.commit()
    mock.come_back()
    async with Archivist.open(journal_path, [reg]) as archivist:
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["mock"].quarantined == 1
    # The backend never erased: the dead letter is the operator's only copy.
    assert mock.erasures == []
    assert journal_rows(journal_path, session)["dead_letters"] == 1


@example(
    stamp=1796278796.3904011
)  # the time a CI run met: ceil(stamp * 1e6) fell short
@given(stamp=st.floats(min_value=0.0, max_value=4e9))
def test_an_erasure_time_kept_in_microseconds_is_never_before_it(stamp: float) -> None:
    micros = to_micros(stamp)
    assert from_micros(micros) >= stamp
    assert micros - 1 < Fraction(stamp) * 1_000_000  # rounded up by under 1 us


async def test_journal_times_order_an_erasure_even_when_the_clock_steps_back(
    journal_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Archives keep erasure marks by journal time (``SessionGroup``): a record
    appended after an erasure, even after a restart with the clock an hour back
    and the erasure long settled, must carry a later time than the erasure."""
    log = GroupLog()
    async with Archivist.open(journal_path, [registration(log)]) as archivist:
        await archivist.append_messages(session, [record(session, "before")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        await archivist.delete_session(session)
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert journal_rows(journal_path, session)["entries"] == 0
    (before,) = log.groups[0].appended_at
    erased_at = log.groups[-1].erased_at
    assert erased_at is not None
    assert before < erased_at

    an_hour_back = time.time() - 3600.0
    monkeypatch.setattr(_intake, "time", SimpleNamespace(time=lambda: an_hour_back))
    log.groups.clear()
    async with Archivist.open(journal_path, [registration(log)]) as archivist:
        await archivist.append_messages(session, [record(session, "after")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    (after,) = log.groups[0].appended_at
    assert after > erased_at
    assert contents(log, session) == ["after"]
