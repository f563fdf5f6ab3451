"""Overflow policies (contract 4): BLOCK, REJECT, DROP_NEWEST and DROP_OLDEST.

A backend held at MockBackend's gate cannot make room, so each test reaches a full
backlog deterministically. Capacity counts every entry not yet settled, including
the one the writer is delivering.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import Archivist, OverflowPolicy, Queued, QueueFull
from journal_archivist._records import encode_append
from journal_archivist.testing import MockBackend
from tests.helpers import contents, record, registration

if TYPE_CHECKING:
    from pathlib import Path


def policy(overflow: OverflowPolicy, capacity: int = 2, **fields: object) -> Queued:
    return Queued(capacity=capacity, overflow=overflow, batch_window_ms=0, **fields)  # type: ignore[arg-type]


async def fill(
    archivist: Archivist, mock: MockBackend, session: UUID, count: int
) -> None:
    """Append ``count`` entries while the first one is stuck in delivery."""
    mock.hold()
    for i in range(count):
        await archivist.append_messages(session, [record(session, f"m{i}")])
        if i == 0:
            with anyio.fail_after(5):
                await mock.wait_held()


class TestReject:
    async def test_full_backlog_refuses_the_append_for_every_backend(
        self, journal_path: Path, session: UUID
    ) -> None:
        strict, roomy = MockBackend(), MockBackend()
        regs = [
            registration(
                strict, name="strict", write_policy=policy(OverflowPolicy.REJECT)
            ),
            registration(roomy, name="roomy"),
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, strict, session, 2)
            with pytest.raises(
                QueueFull, match=r"'strict' is full \(2 entries\)"
            ) as info:
                await archivist.append_messages(session, [record(session, "refused")])
            assert (info.value.backend, info.value.capacity) == ("strict", 2)
            # Nothing of the refused call was journaled, for anyone.
            with anyio.fail_after(5):
                await archivist.wait_drained("roomy")
            assert contents(roomy, session) == ["m0", "m1"]
            strict.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
            await archivist.append_messages(session, [record(session, "later")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(strict, session) == ["m0", "m1", "later"]
        assert contents(roomy, session) == ["m0", "m1", "later"]
        assert archivist.health().backends["strict"].dropped == 0


class TestBlock:
    async def test_blocked_append_proceeds_once_room_is_made(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.BLOCK))]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 2)
            done = anyio.Event()

            async def blocked() -> None:
                await archivist.append_messages(session, [record(session, "m2")])
                done.set()

            async with anyio.create_task_group() as group:
                group.start_soon(blocked)
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()
                assert archivist.health().backends["mock"].lag_entries == 2
                mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == ["m0", "m1", "m2"]

    async def test_block_timeout_raises_queue_full_and_journals_nothing(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [
            registration(
                mock, write_policy=policy(OverflowPolicy.BLOCK, block_timeout=0.05)
            )
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 2)
            with (
                anyio.fail_after(5),
                pytest.raises(QueueFull, match="after waiting") as info,
            ):
                await archivist.append_messages(session, [record(session, "late")])
            assert info.value.waited is not None
            assert info.value.waited >= 0.05
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == ["m0", "m1"]

    async def test_blocked_appends_keep_their_arrival_order(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.BLOCK))]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 2)
            async with anyio.create_task_group() as group:
                for i in range(2, 6):
                    group.start_soon(
                        archivist.append_messages, session, [record(session, f"m{i}")]
                    )
                    await anyio.wait_all_tasks_blocked()
                mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == [f"m{i}" for i in range(6)]

    async def test_cancelled_blocked_append_is_withdrawn(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.BLOCK))]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 2)
            with anyio.move_on_after(0.05) as scope:
                await archivist.append_messages(session, [record(session, "gone")])
            assert scope.cancelled_caught
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
            await archivist.append_messages(session, [record(session, "next")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == ["m0", "m1", "next"]

    async def test_oversized_entry_fits_an_empty_byte_bounded_backlog(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [
            registration(
                mock, write_policy=policy(OverflowPolicy.BLOCK, capacity_bytes=100)
            )
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            with anyio.fail_after(5):
                await archivist.append_messages(session, [record(session, "x" * 500)])
                await archivist.wait_drained()
        assert mock.appended_count(session) == 1


class TestDropNewest:
    async def test_new_entries_are_dropped_and_counted_for_that_backend_only(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        lossy, roomy = MockBackend(), MockBackend()
        regs = [
            registration(
                lossy, name="lossy", write_policy=policy(OverflowPolicy.DROP_NEWEST)
            ),
            registration(roomy, name="roomy"),
        ]
        with caplog.at_level(logging.WARNING, logger="journal_archivist"):
            async with Archivist.open(journal_path, regs) as archivist:
                await fill(archivist, lossy, session, 5)
                assert archivist.health().backends["lossy"].dropped == 3
                lossy.release()
                with anyio.fail_after(5):
                    await archivist.wait_drained()
        assert contents(lossy, session) == ["m0", "m1"]
        assert contents(roomy, session) == [f"m{i}" for i in range(5)]
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 1, "drop warnings are rate-limited"
        assert "DROP_NEWEST" in warnings[0].getMessage()

        async with Archivist.open(journal_path, regs) as archivist:
            assert archivist.health().backends["lossy"].dropped == 3  # persisted

    async def test_an_append_every_backend_drops_is_acknowledged_without_a_row(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.DROP_NEWEST, 1))]
        async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
            await fill(archivist, mock, session, 3)
            health = archivist.health().backends["mock"]
            assert (health.lag_entries, health.dropped) == (1, 2)


class TestDropOldest:
    async def test_oldest_undelivered_entries_make_room(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.DROP_OLDEST))]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 5)
            health = archivist.health().backends["mock"]
            assert (health.lag_entries, health.dropped) == (2, 3)
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        # m0 was in flight and cannot be recalled; m1..m3 made room for m4.
        assert contents(mock, session) == ["m0", "m4"]
        async with Archivist.open(journal_path, regs) as archivist:
            assert archivist.health().backends["mock"].dropped == 3

    async def test_drops_entries_still_in_the_journal_after_a_restart(
        self, journal_path: Path, session: UUID
    ) -> None:
        held = MockBackend()
        roomy = [registration(held, write_policy=Queued(capacity=100, max_batch=1))]
        archivist = await Archivist.open(journal_path, roomy)
        await fill(archivist, held, session, 5)
        await archivist.shutdown(timeout=0)

        mock = MockBackend()
        tight = policy(OverflowPolicy.DROP_OLDEST, capacity=3, max_batch=1)
        async with Archivist.open(
            journal_path, [registration(mock, write_policy=tight)]
        ) as archivist:
            mock.hold()
            with anyio.fail_after(5):
                await mock.wait_held()  # m0 is in flight
            await archivist.append_messages(session, [record(session, "new")])
            health = archivist.health().backends["mock"]
            assert (health.lag_entries, health.dropped) == (3, 3)
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == ["m0", "m4", "new"]

    async def test_a_batch_in_flight_at_shutdown_is_delivered_after_the_restart(
        self, journal_path: Path, session: UUID
    ) -> None:
        # The drops pass the batch in flight (m0): the stored floor is above it,
        # yet it was never dropped, so the next open must deliver it.
        held = MockBackend()
        tight = policy(OverflowPolicy.DROP_OLDEST, capacity=3)
        archivist = await Archivist.open(
            journal_path, [registration(held, write_policy=tight)]
        )
        await fill(archivist, held, session, 8)
        assert archivist.health().backends["mock"].dropped == 5  # m1..m5
        await archivist.shutdown(timeout=0)
        assert contents(held, session) == []

        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock, write_policy=tight)]
        ) as archivist:
            assert archivist.health().backends["mock"].lag_entries == 3
            with anyio.fail_after(5):
                await archivist.wait_drained()
            health = archivist.health()
        assert contents(mock, session) == ["m0", "m6", "m7"]
        assert (health.backends["mock"].dropped, health.journal.lost_entries) == (5, 0)

    async def test_byte_capacity_drops_as_many_as_needed(
        self, journal_path: Path
    ) -> None:
        mock = MockBackend()
        sessions = [uuid4() for _ in range(6)]
        recs = [record(s, "x" * 100) for s in sessions[:5]]
        big = record(sessions[5], "y" * 300)
        size, big_size = (
            len(encode_append(r.session, [r], max_record_bytes=1 << 20))
            for r in (recs[0], big)
        )
        # Three entries fit, a fourth does not; the big one needs two to go.
        capacity = 3 * size + size // 2
        assert 2 * size + big_size > capacity >= size + big_size
        small = policy(
            OverflowPolicy.DROP_OLDEST, capacity=100, capacity_bytes=capacity
        )
        regs = [registration(mock, write_policy=small)]
        seen = []
        async with Archivist.open(journal_path, regs) as archivist:
            mock.hold()
            for i, rec in enumerate(recs):
                await archivist.append_messages(rec.session, [rec])
                if i == 0:
                    with anyio.fail_after(5):
                        await mock.wait_held()  # the first is in flight
                health = archivist.health().backends["mock"]
                seen.append((health.lag_entries, health.lag_bytes, health.dropped))
            await archivist.append_messages(big.session, [big])
            health = archivist.health().backends["mock"]
            seen.append((health.lag_entries, health.lag_bytes, health.dropped))
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
            final = archivist.health().backends["mock"]
        assert seen == [
            (1, size, 0),
            (2, 2 * size, 0),
            (3, 3 * size, 0),
            (3, 3 * size, 1),  # the oldest not in flight (the 2nd) made room
            (3, 3 * size, 2),  # then the 3rd
            (2, size + big_size, 4),  # the 4th and 5th, for the big one
        ]
        # In flight (kept) and the newest (kept): nothing else arrived.
        assert [mock.appended_count(s) for s in sessions] == [1, 0, 0, 0, 0, 1]
        assert (final.delivered, final.dropped, final.lag_entries) == (2, 4, 0)

    async def test_incoming_entry_is_dropped_when_only_in_flight_ones_are_older(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        regs = [registration(mock, write_policy=policy(OverflowPolicy.DROP_OLDEST, 1))]
        async with Archivist.open(journal_path, regs) as archivist:
            await fill(archivist, mock, session, 3)
            health = archivist.health().backends["mock"]
            assert (health.lag_entries, health.dropped) == (1, 2)
            mock.release()
            with anyio.fail_after(5):
                await archivist.wait_drained()
        assert contents(mock, session) == ["m0"]
