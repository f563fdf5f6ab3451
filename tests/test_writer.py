"""Writer loops: retries, health, bisection and dead letters, Sync writes, order.

Contracts 3 (order), 5 (isolation), 6 (failure modes) and 7 (health).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import (
    Archivist,
    BackendError,
    DeliveryFailed,
    FailureMode,
    HealthStatus,
    MessageRecord,
    OverflowPolicy,
    RetryPolicy,
    Sync,
)
from journal_archivist.testing import MockBackend
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from pathlib import Path

    from journal_archivist.backends import SessionGroup


def contents(mock: MockBackend, session: UUID) -> list[str]:
    return [r.content_md for r in mock.records(session)]


def dead_letters(journal_path: Path) -> list[tuple[str, int, str, int]]:
    with closing(sqlite3.connect(journal_path)) as db:
        return db.execute(
            "SELECT backend, seq, error, attempts FROM dead_letters ORDER BY id"
        ).fetchall()


async def test_transient_failures_are_retried_until_delivered(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    mock.fail_next(2)
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["mock"]
    assert contents(mock, session) == ["m0", "m1", "m2"]
    assert mock.failed_calls == 2
    assert health.status is HealthStatus.HEALTHY
    assert health.consecutive_failures == 0
    assert health.last_error == "BackendError: injected failure"


class HealthRecorder(MockBackend):
    """Notes the backend's health, as the archivist reports it, at every call."""

    archivist: Archivist | None = None

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[HealthStatus] = []

    def _note(self) -> None:
        assert self.archivist is not None
        self.seen.append(self.archivist.health().backends["mock"].status)

    async def append_messages(self, session: UUID, records: Any) -> None:
        self._note()
        await super().append_messages(session, records)

    async def health_check(self) -> None:
        self._note()
        await super().health_check()


async def test_health_goes_degraded_then_unhealthy_then_back(
    journal_path: Path, session: UUID
) -> None:
    mock = HealthRecorder()
    slow_retry = RetryPolicy(initial_delay=0.001, max_delay=0.005)
    async with Archivist.open(
        journal_path, [registration(mock, retry=slow_retry)], close_timeout=0
    ) as archivist:
        mock.archivist = archivist
        mock.go_down("connection refused")
        await archivist.append_messages(session, [record(session)])
        with anyio.fail_after(5):
            await mock.wait_failures(4)
        health = archivist.health().backends["mock"]
        assert health.status is HealthStatus.UNHEALTHY
        assert health.consecutive_failures >= 3
        assert health.last_error == "BackendError: connection refused"
        assert mock.health_checks >= 1, "an UNHEALTHY backend is probed first"
        mock.come_back()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["mock"]
    # Each call saw the status the failures before it had set.
    assert mock.seen[:4] == [
        HealthStatus.HEALTHY,
        HealthStatus.DEGRADED,
        HealthStatus.DEGRADED,
        HealthStatus.UNHEALTHY,
    ]
    assert health.status is HealthStatus.HEALTHY
    assert mock.appended_count(session) == 1


async def test_required_backend_retries_non_retryable_errors_and_never_dead_letters(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    mock.fail_next(5, retryable=False)
    reg = registration(mock, failure_mode=FailureMode.REQUIRED)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, records(session, 2))
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["mock"].dead_lettered == 0
    assert contents(mock, session) == ["m0", "m1"]
    assert dead_letters(journal_path) == []


async def test_best_effort_bisects_and_dead_letters_only_the_poison_entry(
    journal_path: Path,
) -> None:
    mock = MockBackend()
    a, b = uuid4(), uuid4()
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
    poison = record(a, "poison")
    mock.poison(poison.message_id)
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()  # let the whole batch queue up behind the first entry
        await archivist.append_messages(a, [record(a, "a0")])
        with anyio.fail_after(5):
            await mock.wait_held()
        await archivist.append_messages(b, [record(b, "b0")])
        await archivist.append_messages(a, [poison])
        await archivist.append_messages(b, [record(b, "b1")])
        await archivist.append_messages(a, [record(a, "a1")])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["mock"]
    assert contents(mock, a) == ["a0", "a1"]
    assert contents(mock, b) == ["b0", "b1"]
    assert (health.dead_lettered, health.delivered) == (1, 4)
    [(backend, seq, error, attempts)] = dead_letters(journal_path)
    assert (backend, seq, attempts) == ("mock", 3, 1)
    assert "poison record" in error
    async with Archivist.open(journal_path, [reg]) as archivist:
        assert archivist.health().backends["mock"].dead_lettered == 1


async def test_best_effort_retryable_poison_uses_its_attempts_before_bisecting(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    poison = record(session, "poison")
    mock.poison(poison.message_id, retryable=True)
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=2)
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT, retry=retry)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [poison])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    [(_, _, _, attempts)] = dead_letters(journal_path)
    assert attempts == 2


async def test_best_effort_outage_dead_letters_nothing(
    journal_path: Path, session: UUID
) -> None:
    # While health_check fails, the backend is down, not poisoned: the batch keeps
    # its attempts and nothing is dead-lettered.
    mock = MockBackend()
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=1)
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT, retry=retry)
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.go_down()
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await mock.wait_failures(10)
        assert archivist.health().backends["mock"].dead_lettered == 0
        mock.come_back()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert contents(mock, session) == ["m0", "m1", "m2"]
    assert dead_letters(journal_path) == []


class Crashy(MockBackend):
    """A backend whose calls raise an unexpected exception a number of times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def write_batch(self, groups: list[SessionGroup]) -> None:  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected bug in backend")
        await super().write_batch(groups)


async def test_unexpected_exceptions_are_retried_and_logged_with_traceback_once(
    journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
) -> None:
    crashy = Crashy(failures=4)
    with caplog.at_level(logging.WARNING, logger="journal_archivist"):
        async with Archivist.open(journal_path, [registration(crashy)]) as archivist:
            await archivist.append_messages(session, [record(session)])
            with anyio.fail_after(5):
                await archivist.wait_drained()
    assert crashy.appended_count(session) == 1
    with_trace = [r for r in caplog.records if r.exc_info]
    assert len(with_trace) == 1
    assert "RuntimeError: unexpected bug in backend" in with_trace[0].getMessage()


async def test_a_hanging_call_times_out_and_is_retried(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.001, attempt_timeout=0.05)
    async with Archivist.open(
        journal_path, [registration(mock, retry=retry)]
    ) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session)])
        with anyio.fail_after(5):
            await mock.wait_held(2)  # the first call timed out; its retry waits
        health = archivist.health().backends["mock"]
        assert health.consecutive_failures >= 1
        assert health.last_error == "TimeoutError"
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.appended_count(session) == 1


class TestSync:
    async def test_append_returns_after_delivery(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        reg = registration(mock, write_policy=Sync(timeout=5))
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(session, [record(session)])
            assert mock.appended_count(session) == 1

    async def test_required_failure_raises_and_the_entry_is_retried(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        mock.fail_next(1)
        reg = registration(mock, write_policy=Sync(timeout=5))
        async with Archivist.open(journal_path, [reg]) as archivist:
            with pytest.raises(DeliveryFailed, match="stays journaled") as info:
                await archivist.append_messages(session, [record(session)])
            assert info.value.backend == "mock"
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert mock.appended_count(session) == 1

    async def test_required_timeout_raises_and_the_entry_stays_journaled(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        reg = registration(mock, write_policy=Sync(timeout=0.05))
        async with Archivist.open(journal_path, [reg]) as archivist:
            mock.hold()
            with pytest.raises(DeliveryFailed, match=r"not delivered within 0.05s"):
                await archivist.append_messages(session, [record(session)])
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert mock.appended_count(session) == 1

    async def test_best_effort_failure_returns_quietly(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        poison = record(session)
        mock.poison(poison.message_id)
        reg = registration(
            mock, write_policy=Sync(timeout=5), failure_mode=FailureMode.BEST_EFFORT
        )
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(session, [poison])
            assert archivist.health().backends["mock"].dead_lettered == 1

    @pytest.mark.parametrize(
        "overflow", [OverflowPolicy.DROP_NEWEST, OverflowPolicy.DROP_OLDEST]
    )
    async def test_a_required_sync_entry_that_is_dropped_raises(
        self, journal_path: Path, session: UUID, overflow: OverflowPolicy
    ) -> None:
        mock = MockBackend()
        policy = Sync(timeout=5, capacity=1, overflow=overflow)
        reg = registration(mock, write_policy=policy)
        async with Archivist.open(journal_path, [reg]) as archivist:
            mock.hold()
            async with anyio.create_task_group() as group:
                group.start_soon(archivist.append_messages, session, [record(session)])
                with anyio.fail_after(5):
                    await mock.wait_held()  # the first entry is in flight
                # Nothing older can make room: the new entry itself is dropped.
                with pytest.raises(DeliveryFailed, match=f"dropped by {overflow.name}"):
                    await archivist.append_messages(session, [record(session, "x")])
                mock.release()
            assert archivist.health().backends["mock"].dropped == 1

    async def test_sync_and_queued_backends_side_by_side(
        self, journal_path: Path, session: UUID
    ) -> None:
        sync, queued = MockBackend(), MockBackend()
        regs = [
            registration(sync, name="sync", write_policy=Sync(timeout=5)),
            registration(queued, name="queued"),
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            queued.hold()
            await archivist.append_messages(session, [record(session)])
            assert sync.appended_count(session) == 1
            assert queued.appended_count(session) == 0
            queued.release()


async def test_per_session_order_survives_retries(journal_path: Path) -> None:
    mock = MockBackend()
    sessions = [uuid4() for _ in range(4)]
    expected: dict[UUID, list[str]] = {s: [] for s in sessions}
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        for i in range(40):
            s = sessions[i % 4]
            if i % 7 == 0:
                mock.fail_next(1)
            await archivist.append_messages(s, [record(s, f"r{i}")])
            expected[s].append(f"r{i}")
        with anyio.fail_after(5):
            await archivist.wait_drained()
    for s in sessions:
        assert contents(mock, s) == expected[s]


class BadRecords(MockBackend):
    """Refuses any record whose content says so, non-retryably."""

    async def append_messages(
        self, session: UUID, records: list[MessageRecord]
    ) -> None:  # type: ignore[override]
        if any(r.content_md == "refuse" for r in records):
            raise BackendError("record refused", retryable=False)
        await super().append_messages(session, records)


async def test_many_poison_entries_in_one_batch_are_all_isolated(
    journal_path: Path, session: UUID
) -> None:
    mock = BadRecords()
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
    names = ["ok", "refuse", "ok", "ok", "refuse", "refuse", "ok"]
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        for i, name in enumerate(names):
            await archivist.append_messages(session, [record(session, name)])
            if i == 0:
                with anyio.fail_after(5):
                    await mock.wait_held()
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["mock"].dead_lettered == 3
    assert contents(mock, session) == ["ok"] * 4
    assert [seq for _, seq, _, _ in dead_letters(journal_path)] == [2, 5, 6]


async def test_sync_append_behind_a_failing_batch_fails_fast(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    reg = registration(mock, write_policy=Sync(timeout=30))
    async with Archivist.open(journal_path, [reg], close_timeout=0) as archivist:
        mock.go_down()
        with pytest.raises(DeliveryFailed):
            await archivist.append_messages(session, [record(session, "first")])
        # The writer is still retrying "first"; "second" waits behind it and must
        # hear of the next failure rather than wait out its 30 s timeout.
        with (
            anyio.fail_after(5),
            pytest.raises(DeliveryFailed, match="backend is down"),
        ):
            await archivist.append_messages(session, [record(session, "second")])
        mock.come_back()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert [r.content_md for r in mock.records(session)] == ["first", "second"]


async def test_a_bisected_batch_delivers_its_halves_in_order(
    journal_path: Path, session: UUID
) -> None:
    # Contract 3 holds across bisection: the half before the split goes first.
    mock = MockBackend()
    reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
    poison = record(session, "poison")
    mock.poison(poison.message_id)
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session, "first")])
        with anyio.fail_after(5):
            await mock.wait_held()
        # One batch behind the held one: [a, poison | b, c, d] when bisected.
        for rec in [record(session, "a"), poison, *records(session, 3, "r")]:
            await archivist.append_messages(session, [rec])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["mock"].dead_lettered == 1
    assert contents(mock, session) == ["first", "a", "r0", "r1", "r2"]
