"""The three behaviours of the original Rust integration test, ported.

Source: ../shared/seed/multi_backend_writer_test.rs.txt. Timing is the thing tested
in the backpressure case, so it keeps the seed's generous margin; everywhere else
the tests wait on the library's own hooks instead of sleeping.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio

from journal_archivist import Archivist, FailureMode, OverflowPolicy, Queued
from journal_archivist.testing import MockBackend
from tests.helpers import record, registration

if TYPE_CHECKING:
    from pathlib import Path


def queued(
    overflow: OverflowPolicy, *, capacity: int = 8, window_ms: int = 25
) -> Queued:
    """The seed's registration: Queued(batch_window_ms=25, capacity=8, overflow)."""
    return Queued(batch_window_ms=window_ms, capacity=capacity, overflow=overflow)


async def test_queued_write_returns_immediately_then_eventually_lands(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    reg = registration(
        mock,
        name="queued",
        write_policy=queued(OverflowPolicy.BLOCK),
        failure_mode=FailureMode.REQUIRED,
    )
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()  # delivery cannot finish: the append must not wait for it
        with anyio.fail_after(1):
            await archivist.append_messages(session, [record(session)])
        assert mock.appended_count(session) == 0
        mock.release()
        with anyio.fail_after(0.5):  # the seed's 500 ms budget
            await mock.wait_for_records(session, 1)
        assert mock.appended_count(session) == 1


async def test_coalescing_merges_consecutive_appends_for_same_session(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    reg = registration(mock, name="queued", write_policy=queued(OverflowPolicy.BLOCK))
    async with Archivist.open(journal_path, [reg]) as archivist:
        for i in range(5):
            await archivist.append_messages(session, [record(session, f"m{i}")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.append_call_count(session) <= 5
    assert mock.appended_count(session) == 5, "all 5 messages should land"
    assert [r.content_md for r in mock.records(session)] == [f"m{i}" for i in range(5)]


async def test_appends_made_during_a_dispatch_coalesce_into_one_call(
    journal_path: Path, session: UUID
) -> None:
    # A stricter form of the seed's check: while the writer is stuck delivering the
    # first append, four more queue up and must then go out as one call.
    mock = MockBackend()
    reg = registration(mock, name="queued", write_policy=queued(OverflowPolicy.BLOCK))
    async with Archivist.open(journal_path, [reg]) as archivist:
        mock.hold()
        await archivist.append_messages(session, [record(session, "m0")])
        with anyio.fail_after(5):
            await mock.wait_held()
        for i in range(1, 5):
            await archivist.append_messages(session, [record(session, f"m{i}")])
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.append_call_count(session) == 2
    assert [r.content_md for r in mock.records(session)] == [f"m{i}" for i in range(5)]


async def test_overflow_block_applies_backpressure(journal_path: Path) -> None:
    # Capacity 2, no batch window and a 50 ms backend: the writer spends almost
    # all its time in dispatch, so appends to distinct sessions (which cannot
    # coalesce) must wait for room again and again.
    mock = MockBackend()
    mock.set_per_op_delay(0.05)
    reg = registration(
        mock,
        name="queued",
        write_policy=queued(OverflowPolicy.BLOCK, capacity=2, window_ms=0),
    )
    async with Archivist.open(journal_path, [reg], close_timeout=0) as archivist:
        # Prime the writer and wait until it is inside its first dispatch.
        mock.hold()
        scroll0 = uuid4()
        await archivist.append_messages(scroll0, [record(scroll0)])
        with anyio.fail_after(5):
            await mock.wait_held()
        mock.release()

        start = time.monotonic()
        for _ in range(24):
            scroll = uuid4()
            await archivist.append_messages(scroll, [record(scroll)])
        elapsed = time.monotonic() - start
    # A non-blocking run takes a few milliseconds; the seed's floor is 100 ms.
    assert elapsed >= 0.1, f"block policy did not apply backpressure ({elapsed:.3f}s)"
