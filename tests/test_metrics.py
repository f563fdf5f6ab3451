"""Metrics: histograms, the hooks, and the stats of a live archivist.

The hook tests open a real archivist and read ``archivist._runtime.metrics`` and
``archivist.stats()``: they check where the committer, the append path and the
writers call each hook.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, strategies as st

from journal_archivist import (
    Archivist,
    ArchivistClosed,
    ArchivistFailed,
    BackendError,
    DeliveryFailed,
    FailureMode,
    JournalFull,
    JournalWriteFailed,
    OverflowPolicy,
    Queued,
    QueueFull,
    Sync,
    ValidationError,
)
from journal_archivist._metrics import (
    BATCH_SIZE_BOUNDS,
    DURATION_BOUNDS,
    REJECTION_REASONS,
    Histogram,
    Metrics,
    rejection_reason,
)
from journal_archivist._stats_live import collect_stats
from journal_archivist.backends import SqliteArchive
from journal_archivist.testing import MockBackend
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    from journal_archivist._stats import Stats

# -- Histogram ---------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


class TestHistogram:
    def test_a_value_on_a_bound_counts_in_that_bucket(self) -> None:
        histogram = Histogram([1.0, 2.0, 4.0])
        for value in (0.5, 1.0, 1.5, 2.0, 4.0, 5.0):
            histogram.observe(value)
        snap = histogram.snapshot()
        assert snap.bounds == (1.0, 2.0, 4.0)
        assert snap.counts == (2, 4, 5)  # cumulative: <= 1, <= 2, <= 4
        assert snap.count == 6  # the +Inf bucket
        assert snap.sum == 14.0

    def test_an_empty_histogram_counts_nothing(self) -> None:
        snap = Histogram(DURATION_BOUNDS).snapshot()
        assert snap.counts == (0,) * len(DURATION_BOUNDS)
        assert (snap.count, snap.sum) == (0, 0.0)

    @pytest.mark.parametrize(
        ("bounds", "message"),
        [
            ([], "at least one bucket bound"),  # no bucket at all
            ([1.0, 1.0], "increase strictly"),  # a duplicate bound
            ([2.0, 1.0], "increase strictly"),  # descending
            ([1.0, math.inf], "finite"),  # +Inf is implied, never given
            ([math.nan], "finite"),  # NaN is no bound
        ],
    )
    def test_bad_bounds_are_refused(self, bounds: list[float], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Histogram(bounds)

    @given(
        bounds=st.lists(finite, min_size=1, max_size=20, unique=True).map(sorted),
        values=st.lists(finite, max_size=200),
    )
    def test_snapshot_counts_each_value_under_every_bound_it_is_within(
        self, bounds: list[float], values: list[float]
    ) -> None:
        histogram = Histogram(bounds)
        for value in values:
            histogram.observe(value)
        snap = histogram.snapshot()
        assert snap.counts == tuple(sum(v <= b for v in values) for b in bounds)
        assert list(snap.counts) == sorted(snap.counts)  # cumulative
        assert snap.count == len(values)
        assert snap.sum == pytest.approx(math.fsum(values), abs=1e-3)

    @given(st.lists(st.integers(min_value=1, max_value=1024), max_size=100))
    def test_batch_sizes_of_a_commit_group_each_fall_in_a_finite_bucket(
        self, sizes: list[int]
    ) -> None:
        histogram = Histogram(BATCH_SIZE_BOUNDS)
        for size in sizes:
            histogram.observe(size)
        snap = histogram.snapshot()
        assert snap.counts[-1] == snap.count == len(sizes)  # nothing past 1024
        assert snap.sum == sum(sizes)


def test_the_bounds_span_the_workload() -> None:
    assert (BATCH_SIZE_BOUNDS[0], BATCH_SIZE_BOUNDS[-1]) == (1, 1024)
    assert (DURATION_BOUNDS[0], DURATION_BOUNDS[-1]) == (0.0001, 10.0)
    assert list(DURATION_BOUNDS) == sorted(set(DURATION_BOUNDS))


# -- Metrics -----------------------------------------------------------------------


class TestMetrics:
    def test_hooks_count(self) -> None:
        metrics = Metrics()
        metrics.appended(3)
        metrics.appended(2)
        metrics.commit(5, 0.002)
        metrics.append_latency(0.003)
        metrics.append_latency(20.0)
        metrics.delivery_failed("a")
        metrics.delivery_failed("a")
        metrics.delivery_failed("b")
        metrics.rejected("queue_full")
        assert metrics.appends_total == 5
        batch = metrics.commit_batch_size.snapshot()
        assert (batch.count, batch.sum) == (1, 5.0)
        assert batch.counts[BATCH_SIZE_BOUNDS.index(8.0)] == 1
        assert batch.counts[BATCH_SIZE_BOUNDS.index(4.0)] == 0
        assert metrics.commit_duration_seconds.snapshot().count == 1
        latency = metrics.append_latency_seconds.snapshot()
        assert (latency.count, latency.counts[-1]) == (2, 1)  # 20 s: only in +Inf
        assert (metrics.failed_attempts("a"), metrics.failed_attempts("b")) == (2, 1)
        assert metrics.failed_attempts("never") == 0
        assert metrics.rejections() == {
            "queue_full": 1,
            "journal_full": 0,
            "validation": 0,
            "write_failed": 0,
            "closed": 0,
        }

    def test_a_round_that_journaled_nothing_is_not_a_commit(self) -> None:
        metrics = Metrics()
        metrics.commit(0, 0.5)  # a round that only settled entries
        assert metrics.commit_batch_size.snapshot().count == 0
        assert metrics.commit_duration_seconds.snapshot().count == 0

    def test_rejections_lists_every_reason_and_is_a_copy(self) -> None:
        metrics = Metrics()
        got = metrics.rejections()
        assert list(got) == list(REJECTION_REASONS)
        got["closed"] = 7
        assert metrics.rejections()["closed"] == 0

    def test_an_unknown_rejection_reason_is_refused(self) -> None:
        metrics = Metrics()
        with pytest.raises(ValueError, match="unknown rejection reason 'full'"):
            metrics.rejected("full")
        assert sum(metrics.rejections().values()) == 0

    @pytest.mark.parametrize(
        ("error", "reason"),
        [
            (QueueFull("a", 2), "queue_full"),  # REJECT, or BLOCK timed out
            (JournalFull("/j", 1, 2), "journal_full"),  # below the reserve
            (ValidationError("bad"), "validation"),  # refused before journaling
            (JournalWriteFailed("/j", "disk"), "write_failed"),  # commit failed
            (ArchivistClosed(), "closed"),  # shut down
            (ArchivistFailed("a loop died"), "closed"),  # failed: takes no calls
            (DeliveryFailed("a", "down"), None),  # journaled: not a refusal
            (TypeError("not a UUID"), None),  # a caller's bug
        ],
    )
    def test_refused_counts_under_the_errors_reason(
        self, error: BaseException, reason: str | None
    ) -> None:
        metrics = Metrics()
        assert rejection_reason(error) == reason
        metrics.refused(error)
        expected = dict.fromkeys(REJECTION_REASONS, 0)
        if reason is not None:
            expected[reason] = 1
        assert metrics.rejections() == expected


# -- collect_stats on a live runtime -------------------------------------------------


def _stats(archivist: Archivist, metrics: Metrics | None = None) -> Stats:
    return collect_stats(archivist._runtime, metrics or Metrics())


class TestCollectStats:
    async def test_reports_the_journal_and_each_backend(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            await archivist.append_messages(session, records(session, 2))
            await archivist.append_messages(session, records(session, 1, "n"))
            with anyio.fail_after(5):
                await archivist.wait_drained()
            metrics = Metrics()
            metrics.delivery_failed("mock")
            stats = _stats(archivist, metrics)
            journal = stats.journal
            assert journal.path == str(journal_path)
            assert journal.size_bytes == os.stat(journal_path).st_size > 0
            assert journal.wal_bytes == os.stat(f"{journal_path}-wal").st_size
            assert journal.free_bytes is not None
            assert journal.free_bytes > 0
            assert journal.entries_journaled_total == 2  # two calls, two entries
            assert journal.entries is None  # not counted live
            assert (journal.lost_entries, journal.repaired_rows) == (0, 0)
            assert journal.quarantined == 0
            assert journal.lock_holder_pid == os.getpid()
            (backend,) = stats.backends
            assert (backend.name, backend.enabled, backend.up) == ("mock", True, True)
            assert (backend.pending_entries, backend.pending_bytes) == (0, 0)
            assert backend.oldest_pending_age is None
            assert backend.delivered_total == 2
            assert backend.dropped_total == 0
            assert backend.dead_lettered_total == backend.quarantined_total == 0
            assert backend.failed_attempts_total == 1  # from the metrics given
            assert (backend.dead_letters, backend.quarantine) == (None, None)
            assert stats.appends_total == 0  # the metrics given saw no append
            assert stats.append_rejections_total == metrics.rejections()
            assert stats.commit_batch_size == metrics.commit_batch_size.snapshot()

    async def test_reports_pending_entries_and_their_age(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            mock.hold()
            await archivist.append_messages(session, records(session, 1))
            await archivist.append_messages(session, records(session, 1, "n"))
            with anyio.fail_after(5):
                await mock.wait_held()
            (backend,) = _stats(archivist).backends
            health = archivist.health().backends["mock"]
            assert backend.pending_entries == health.lag_entries == 2
            assert backend.pending_bytes == health.lag_bytes > 0
            assert backend.oldest_pending_age is not None
            assert backend.oldest_pending_age >= 0
            mock.release()

    async def test_a_backend_whose_last_attempt_failed_is_down(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            mock.go_down()
            await archivist.append_messages(session, records(session, 1))
            with anyio.fail_after(5):
                await mock.wait_failures(1)
            (backend,) = _stats(archivist).backends
            assert backend.up is False
            mock.come_back()
            with anyio.fail_after(5):
                await archivist.wait_drained()
            (backend,) = _stats(archivist).backends
            assert backend.up is True

    async def test_a_disabled_backend_is_neither_up_nor_down(
        self, journal_path: Path, session: UUID
    ) -> None:
        regs = [registration(name="on"), registration(name="off", enabled=False)]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.delete_session(session)
            stats = _stats(archivist)
        off = stats.backends[1]
        assert [(b.name, b.enabled) for b in stats.backends] == [
            ("on", True),
            ("off", False),
        ]
        assert off.up is None
        assert off.pending_entries == 1  # the erasure waits for it

    async def test_a_missing_wal_counts_zero_bytes(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, records(session, 1))
        # Closed: SQLite checkpointed and removed the WAL.
        assert not os.path.exists(f"{journal_path}-wal")
        stats = _stats(archivist)
        assert stats.journal.wal_bytes == 0
        assert stats.journal.size_bytes == os.stat(journal_path).st_size
        assert stats.journal.lock_holder_pid is None  # nobody holds it now

    async def test_journal_kept_counters_are_exact_across_a_restart(
        self, journal_path: Path, session: UUID, tmp_path: Path
    ) -> None:
        archive = SqliteArchive(tmp_path / "archive.db")

        async def open_it() -> Archivist:
            return await Archivist.open(
                journal_path, [registration(archive, name="archive")]
            )

        archivist = await open_it()
        try:
            for i in range(5):
                await archivist.append_messages(session, [record(session, str(i))])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            before = _stats(archivist)
        finally:
            await archivist.shutdown()
        archivist = await open_it()
        try:
            after = _stats(archivist)
        finally:
            await archivist.shutdown()
        assert before.backends[0].delivered_total == 5
        assert after.backends == before.backends
        assert after.journal.entries_journaled_total == 5
        assert before.journal.entries_journaled_total == 5


# -- the hooks, as wired into the archivist ------------------------------------------


class TestHooks:
    async def test_appends_commits_and_latency_are_counted(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            async with anyio.create_task_group() as group:
                for i in range(8):
                    group.start_soon(
                        archivist.append_messages, session, [record(session, str(i))]
                    )
            await archivist.delete_session(session)  # an erasure is an entry too
            with anyio.fail_after(5):
                await archivist.wait_drained()
            stats = archivist.stats()
        assert stats.appends_total == 9
        batch = stats.commit_batch_size
        assert batch is not None
        assert batch.sum == 9  # every append in exactly one commit group
        assert 1 <= batch.count <= 9
        duration = stats.commit_duration_seconds
        assert duration is not None
        assert duration.count == batch.count
        latency = stats.append_latency_seconds
        assert latency is not None
        assert latency.count == 9
        assert stats.append_rejections_total == dict.fromkeys(REJECTION_REASONS, 0)
        assert stats.journal.entries_journaled_total == 9

    async def test_failed_delivery_attempts_are_counted_per_backend(
        self, journal_path: Path, session: UUID
    ) -> None:
        flaky, steady = MockBackend(), MockBackend()
        regs = [registration(flaky, name="flaky"), registration(steady, name="steady")]
        async with Archivist.open(journal_path, regs) as archivist:
            flaky.fail_next(2)
            await archivist.append_messages(session, records(session, 1))
            with anyio.fail_after(5):
                await archivist.wait_drained()
            stats = archivist.stats()
        by_name = {b.name: b for b in stats.backends}
        assert by_name["flaky"].failed_attempts_total == 2
        assert by_name["steady"].failed_attempts_total == 0
        assert by_name["flaky"].delivered_total == 1
        assert by_name["flaky"].up is True

    async def test_a_full_backlog_counts_as_queue_full(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        strict = Queued(capacity=1, overflow=OverflowPolicy.REJECT, batch_window_ms=0)
        async with Archivist.open(
            journal_path, [registration(mock, write_policy=strict)]
        ) as archivist:
            mock.hold()
            await archivist.append_messages(session, [record(session, "held")])
            with pytest.raises(QueueFull, match="is full"):
                await archivist.append_messages(session, [record(session, "no")])
            rejections = archivist.stats().append_rejections_total
            mock.release()
        assert rejections is not None
        assert rejections["queue_full"] == 1
        assert sum(rejections.values()) == 1

    async def test_low_space_counts_as_journal_full(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(
            journal_path, [registration()], free_space_reserve=1 << 62
        ) as archivist:
            with pytest.raises(JournalFull, match="below the reserve"):
                await archivist.append_messages(session, [record(session)])
            rejections = archivist.stats().append_rejections_total
        assert rejections is not None
        assert rejections["journal_full"] == 1

    async def test_a_bad_call_counts_as_validation(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(
            journal_path, [registration()], max_append_records=1
        ) as archivist:
            with pytest.raises(ValidationError, match="records"):
                await archivist.append_messages(session, records(session, 2))
            rejections = archivist.stats().append_rejections_total
            assert archivist.stats().appends_total == 0
        assert rejections is not None
        assert rejections["validation"] == 1

    async def test_a_failed_commit_counts_as_write_failed(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, [record(session, "before")])
            with anyio.fail_after(5):
                await archivist.wait_drained()
            conn = archivist._journal._durable  # white box: fill the "disk"
            (pages,) = next(iter(await conn.execute_fetchall("PRAGMA page_count")))
            await conn.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(JournalWriteFailed, match="full"):
                await archivist.append_messages(
                    session, [record(session, "x" * 20_000)]
                )
            await conn.execute("PRAGMA max_page_count = 1073741823")
            stats = archivist.stats()
        assert stats.append_rejections_total is not None
        assert stats.append_rejections_total["write_failed"] == 1
        assert stats.appends_total == 1

    async def test_an_append_after_shutdown_counts_as_closed(
        self, journal_path: Path, session: UUID
    ) -> None:
        archivist = await Archivist.open(journal_path, [registration()])
        await archivist.shutdown()
        with pytest.raises(ArchivistClosed):
            await archivist.append_messages(session, [record(session)])
        with pytest.raises(ArchivistClosed):
            await archivist.delete_session(session)
        assert archivist._runtime.metrics.rejections()["closed"] == 2

    async def test_a_delivery_failure_is_not_a_rejection(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        reg = registration(
            mock,
            write_policy=Sync(timeout=5.0),
            failure_mode=FailureMode.REQUIRED,
        )
        async with Archivist.open(journal_path, [reg]) as archivist:
            mock.fail_next(1)
            with pytest.raises(DeliveryFailed):
                await archivist.append_messages(session, records(session, 1))
            stats = archivist.stats()
            await archivist.aclose()
        assert stats.appends_total == 1  # journaled, then not delivered
        assert stats.append_rejections_total == dict.fromkeys(REJECTION_REASONS, 0)


def test_backend_error_is_not_counted_as_a_rejection() -> None:
    assert rejection_reason(BackendError("down", retryable=True)) is None
