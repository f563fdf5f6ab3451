"""The Archivist's lifecycle and API: open, append, read, health, drain, shutdown."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import (
    DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    Archivist,
    ArchivistClosed,
    HealthStatus,
    MessageRecord,
    Queued,
    ReadFailed,
    ValidationError,
)
from journal_archivist._records import encode_append
from journal_archivist.testing import MockBackend
from tests.helpers import append_catching, record, records, registration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


async def test_await_open_delivers_and_shuts_down(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    archivist = await Archivist.open(journal_path, [registration(mock)])
    try:
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await archivist.wait_drained()
    finally:
        await archivist.shutdown()
    assert mock.appended_count(session) == 3
    assert archivist.is_closed


async def test_async_with_exit_drains_what_was_appended(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        await archivist.append_messages(session, records(session, 4))
    assert mock.appended_count(session) == 4


async def test_entering_the_same_open_twice_is_refused(journal_path: Path) -> None:
    opening = Archivist.open(journal_path, [registration()])
    async with opening:
        with pytest.raises(RuntimeError, match="already entered"):
            await opening.__aenter__()


async def test_calls_after_shutdown_raise_archivist_closed(
    journal_path: Path, session: UUID
) -> None:
    archivist = await Archivist.open(journal_path, [registration()])
    await archivist.shutdown()
    await archivist.shutdown()  # a second call is harmless
    with pytest.raises(ArchivistClosed, match="closed"):
        await archivist.append_messages(session, [record(session)])
    with pytest.raises(ArchivistClosed):
        await archivist.read_session(session)
    with pytest.raises(ArchivistClosed):
        await archivist.wait_drained()


async def test_concurrent_shutdowns_both_return(journal_path: Path) -> None:
    archivist = await Archivist.open(journal_path, [registration()])
    async with anyio.create_task_group() as group:
        group.start_soon(archivist.shutdown)
        group.start_soon(archivist.shutdown, 0)
    assert archivist.is_closed


async def test_shutdown_without_deadline_waits_for_delivery(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    archivist = await Archivist.open(journal_path, [registration(mock)])
    mock.hold()
    await archivist.append_messages(session, records(session, 2))
    with anyio.fail_after(5):
        await mock.wait_held()

    async def release_later() -> None:
        await anyio.wait_all_tasks_blocked()
        mock.release()

    async with anyio.create_task_group() as group:
        group.start_soon(release_later)
        with anyio.fail_after(5):
            await archivist.shutdown()
    assert mock.appended_count(session) == 2


async def test_shutdown_deadline_leaves_undelivered_entries_journaled(
    journal_path: Path, session: UUID
) -> None:
    held = MockBackend()
    archivist = await Archivist.open(journal_path, [registration(held)])
    held.hold()
    await archivist.append_messages(session, records(session, 3))
    with anyio.fail_after(5):
        await archivist.shutdown(timeout=0.05)
    assert held.appended_count(session) == 0

    fresh = MockBackend()
    async with Archivist.open(journal_path, [registration(fresh)]) as archivist:
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert [r.content_md for r in fresh.records(session)] == ["m0", "m1", "m2"]


async def test_waiting_for_a_drain_ends_when_the_archivist_shuts_down(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    archivist = await Archivist.open(journal_path, [registration(mock)])
    mock.hold()
    await archivist.append_messages(session, [record(session)])
    outcome: list[BaseException] = []

    async def wait() -> None:
        try:
            await archivist.wait_drained()
        except ArchivistClosed as exc:
            outcome.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await archivist.shutdown(timeout=0)
    assert len(outcome) == 1


async def test_a_connection_that_fails_to_close_does_not_hang_shutdown(
    journal_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from journal_archivist._reader import Reader

    close = Reader.close

    async def failing_close(self: Reader) -> None:
        await close(self)
        raise sqlite3.OperationalError("disk I/O error")

    archivist = await Archivist.open(journal_path, [registration()])
    monkeypatch.setattr(Reader, "close", failing_close)
    with anyio.fail_after(5):
        await archivist.shutdown()
    assert "disk I/O error" in caplog.text
    monkeypatch.undo()
    async with Archivist.open(journal_path, [registration()]):
        pass  # the lock was released all the same


async def test_append_refused_while_shutting_down_is_not_journaled(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    reg = registration(mock, write_policy=Queued(capacity=1, batch_window_ms=0))
    archivist = await Archivist.open(journal_path, [reg])
    mock.hold()
    await archivist.append_messages(session, [record(session, "first")])
    outcome: list[BaseException] = []
    async with anyio.create_task_group() as group:
        group.start_soon(
            append_catching, archivist, session, "blocked", ArchivistClosed, outcome
        )
        await anyio.wait_all_tasks_blocked()
        await archivist.shutdown(timeout=0)
    assert len(outcome) == 1
    assert "before this append was journaled" in str(outcome[0])

    fresh = MockBackend()
    async with Archivist.open(journal_path, [registration(fresh)]) as archivist:
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert [r.content_md for r in fresh.records(session)] == ["first"]


@pytest.mark.parametrize(
    ("registrations", "error", "match"),
    [
        # Two registrations may not share a name: it is their identity.
        (
            lambda: [registration(name="a"), registration(name="a")],
            ValueError,
            "unique",
        ),
        # Nothing to deliver to.
        (lambda: [registration(enabled=False)], ValueError, "at least one"),
        # Something that is not a Registration.
        (lambda: [object()], TypeError, "Registration"),
    ],
)
def test_open_refuses_bad_registrations(
    journal_path: Path, registrations: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Archivist.open(journal_path, registrations())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_record_bytes": 0}, "max_record_bytes must be >= 1"),
        ({"max_append_records": 0}, r"max_append_records must be >= 1, got 0"),
        # A call could not carry a record max_record_bytes allows.
        (
            {"max_record_bytes": 2048, "max_append_bytes": 2047},
            r"max_append_bytes \(2047\) must be >= max_record_bytes \(2048\)",
        ),
        # One call is one value in the journal: past SQLite's limit it would
        # fail at commit, after the time and memory of encoding it.
        (
            {"max_record_bytes": 10**9, "max_append_bytes": 10**9},
            r"max_append_bytes \(1000000000\) must be below 999999984",
        ),
        ({"free_space_reserve": -1}, "free_space_reserve must be >= 0"),
        ({"close_timeout": -1.0}, "close_timeout must be >= 0"),
        ({"durability": "full"}, "durability must be a Durability"),
    ],
)
def test_open_refuses_bad_options(
    journal_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        Archivist.open(journal_path, [registration()], **kwargs)  # type: ignore[arg-type]


def test_registration_names_are_validated() -> None:
    with pytest.raises(ValueError, match="registration name"):
        registration(name="no spaces")
    with pytest.raises(TypeError, match="must be an ArchiveBackend"):
        registration(backend=object())  # type: ignore[arg-type]


async def test_empty_append_is_a_no_op(journal_path: Path, session: UUID) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        await archivist.append_messages(session, [])
        assert archivist.health().backends["mock"].lag_entries == 0
    assert mock.batch_calls == 0


async def test_session_must_be_a_uuid(journal_path: Path, session: UUID) -> None:
    async with Archivist.open(journal_path, [registration()]) as archivist:
        with pytest.raises(TypeError, match=r"session must be a uuid\.UUID"):
            await archivist.append_messages(str(session), [record(session)])  # type: ignore[arg-type]
        for call in (archivist.read_session, archivist.delete_session):
            with pytest.raises(TypeError, match=r"session must be a uuid\.UUID"):
                await call(str(session))  # type: ignore[arg-type]
        assert archivist.close_timeout is not None


async def test_invalid_record_journals_nothing_of_the_call(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        good = record(session, "good")
        bad = MessageRecord(session=uuid4(), role="user")
        with pytest.raises(ValidationError, match="record 1") as info:
            await archivist.append_messages(session, [good, bad])
        assert (info.value.index, info.value.field) == (1, "session")
        assert archivist.health().backends["mock"].lag_entries == 0
        await archivist.wait_drained()
    assert mock.appended_count(session) == 0


async def test_max_record_bytes_is_configurable(
    journal_path: Path, session: UUID
) -> None:
    async with Archivist.open(
        journal_path, [registration()], max_record_bytes=400
    ) as archivist:
        await archivist.append_messages(session, [record(session, "x" * 100)])
        with pytest.raises(ValidationError, match=r"exceeds max_record_bytes \(400\)"):
            await archivist.append_messages(session, [record(session, "x" * 400)])


def test_the_limits_of_a_call_default_to_the_named_constants() -> None:
    params = inspect.signature(Archivist.open).parameters
    assert params["max_append_records"].default == DEFAULT_MAX_APPEND_RECORDS
    assert params["max_append_bytes"].default is None  # the larger of the two
    assert (DEFAULT_MAX_APPEND_RECORDS, DEFAULT_MAX_APPEND_BYTES) == (10_000, 64 << 20)
    assert DEFAULT_MAX_APPEND_BYTES >= DEFAULT_MAX_RECORD_BYTES


class _Unreadable(Sequence[MessageRecord]):
    """A call's records that may be counted but not read."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> MessageRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[MessageRecord]: ...
    def __getitem__(
        self, index: int | slice
    ) -> MessageRecord | Sequence[MessageRecord]:
        raise AssertionError("an oversized call was read")


async def test_a_call_over_max_append_records_is_refused_before_it_is_read(
    journal_path: Path, session: UUID
) -> None:
    # Two million small records in one call took 3.4 GiB before it was refused by
    # nothing at all: the count is now checked before any record is read.
    mock = MockBackend()
    async with Archivist.open(
        journal_path, [registration(mock)], max_append_records=3
    ) as archivist:
        with pytest.raises(
            ValidationError,
            match=r"^4 records in one call exceed max_append_records \(3\)$",
        ) as caught:
            await archivist.append_messages(session, _Unreadable(4))
        assert (caught.value.index, caught.value.field) == (None, None)
        assert archivist.health().backends["mock"].lag_entries == 0
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.appended_count(session) == 3


async def test_a_call_over_max_append_bytes_journals_nothing(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    # A fixed timestamp: one with no microseconds would encode 4 bytes shorter.
    when = datetime(2024, 5, 1, 12, 30, 0, 123_456, tzinfo=UTC)
    batch = [record(session, f"{'x' * 150}{i}", ts=when) for i in range(5)]
    size = len(encode_append(session, batch[:1], max_record_bytes=1 << 20)) - 1
    async with Archivist.open(
        journal_path,
        [registration(mock)],
        max_record_bytes=size,
        max_append_bytes=4 * size,
    ) as archivist:
        with pytest.raises(
            ValidationError,
            match=rf"more than max_append_bytes \({4 * size}\): {5 * size} bytes"
            r" by record 4,",
        ):
            await archivist.append_messages(session, batch)
        assert archivist.health().backends["mock"].lag_entries == 0
        await archivist.append_messages(session, batch[:4])  # exactly the limit
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert mock.records(session) == batch[:4]


async def test_health_reports_lag_age_and_counts(
    journal_path: Path, session: UUID
) -> None:
    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        mock.hold()
        await archivist.append_messages(session, records(session, 2))
        await archivist.append_messages(session, records(session, 1, prefix="x"))
        report = archivist.health()
        health = report.backends["mock"]
        assert health.status is HealthStatus.HEALTHY
        assert health.lag_entries == 2  # entries are appends, not records
        assert health.lag_bytes > 0
        assert health.oldest_pending_age is not None
        assert health.oldest_pending_age >= 0
        assert health.delivered == 0
        assert report.journal.path == str(journal_path)
        assert report.journal.free_bytes is not None
        mock.release()
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["mock"]
        assert (health.lag_entries, health.lag_bytes, health.delivered) == (0, 0, 2)
        assert health.oldest_pending_age is None


async def test_counters_survive_a_restart(journal_path: Path, session: UUID) -> None:
    async with Archivist.open(journal_path, [registration()]) as archivist:
        for i in range(3):
            await archivist.append_messages(session, [record(session, str(i))])
        await archivist.wait_drained()
    async with Archivist.open(journal_path, [registration()]) as archivist:
        assert archivist.health().backends["mock"].delivered == 3


async def test_wait_drained_names_unknown_and_disabled_backends(
    journal_path: Path,
) -> None:
    regs = [registration(name="on"), registration(name="off", enabled=False)]
    async with Archivist.open(journal_path, regs) as archivist:
        with pytest.raises(ValueError, match="no backend named 'nope'"):
            await archivist.wait_drained("nope")
        with pytest.raises(ValueError, match="'off' is disabled"):
            await archivist.wait_drained("off")
        await archivist.wait_drained("on")


async def test_wait_drained_for_one_backend_ignores_a_stuck_one(
    journal_path: Path, session: UUID
) -> None:
    fast, stuck = MockBackend(), MockBackend()
    regs = [registration(fast, name="fast"), registration(stuck, name="stuck")]
    async with Archivist.open(journal_path, regs, close_timeout=0) as archivist:
        stuck.hold()
        await archivist.append_messages(session, records(session, 3))
        with anyio.fail_after(5):
            await archivist.wait_drained("fast")  # isolation: contract 5
        assert fast.appended_count(session) == 3
        assert archivist.health().backends["stuck"].lag_entries == 1


class TestReadSession:
    async def test_merges_archived_and_pending_records_in_order(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock)], close_timeout=0
        ) as archivist:
            await archivist.append_messages(session, records(session, 2))
            await archivist.wait_drained()
            mock.hold()
            await archivist.append_messages(session, records(session, 2, prefix="p"))
            with anyio.fail_after(5):
                await mock.wait_held()
            await archivist.append_messages(session, records(session, 1, prefix="q"))
            got = await archivist.read_session(session)
        assert [r.content_md for r in got] == ["m0", "m1", "p0", "p1", "q0"]

    async def test_falls_back_to_the_next_readable_backend(
        self, journal_path: Path, session: UUID
    ) -> None:
        primary, secondary = MockBackend(), MockBackend()
        regs = [
            registration(primary, name="primary", priority=10),
            registration(secondary, name="secondary", priority=1),
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(session, records(session, 2))
            await archivist.wait_drained()
            primary.go_down()
            got = await archivist.read_session(session)
        assert [r.content_md for r in got] == ["m0", "m1"]

    async def test_prefers_the_highest_priority_healthy_backend(
        self, journal_path: Path, session: UUID
    ) -> None:
        low, high = MockBackend(), MockBackend()
        regs = [
            registration(low, name="low", priority=1),
            registration(high, name="high", priority=5),
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(session, [record(session)])
            await archivist.wait_drained()
            got = await archivist.read_session(session)
        assert (high.read_calls, low.read_calls) == (1, 0)
        assert len(got) == 1

    async def test_unreadable_registrations_are_skipped(
        self, journal_path: Path, session: UUID
    ) -> None:
        regs = [registration(MockBackend(), readable=False)]
        async with Archivist.open(journal_path, regs) as archivist:
            with pytest.raises(
                ReadFailed, match="no backend is registered as readable"
            ):
                await archivist.read_session(session)

    async def test_raises_when_every_readable_backend_fails(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        async with Archivist.open(journal_path, [registration(mock)]) as archivist:
            mock.go_down("offline for maintenance")
            with pytest.raises(ReadFailed, match="offline for maintenance") as info:
                await archivist.read_session(session)
        assert set(info.value.errors) == {"mock"}

    async def test_a_backend_without_read_support_falls_through(
        self, journal_path: Path, session: UUID
    ) -> None:
        writer_only, readable = MockBackend(readable=False), MockBackend()
        regs = [
            registration(writer_only, name="write-only", priority=9),
            registration(readable, name="readable", priority=1),
        ]
        async with Archivist.open(journal_path, regs) as archivist:
            await archivist.append_messages(session, [record(session)])
            await archivist.wait_drained()
            got = await archivist.read_session(session)
        assert len(got) == 1


async def test_other_sessions_are_not_read(journal_path: Path) -> None:
    a, b = uuid4(), uuid4()
    mock = MockBackend()
    async with Archivist.open(
        journal_path, [registration(mock)], close_timeout=0
    ) as archivist:
        mock.hold()
        await archivist.append_messages(a, [record(a, "a")])
        await archivist.append_messages(b, [record(b, "b")])
        assert [r.content_md for r in await archivist.read_session(b)] == ["b"]


class FailsToClose(MockBackend):
    async def aclose(self) -> None:
        await super().aclose()
        raise OSError("socket already gone")


async def test_shutdown_closes_every_backend_once_and_survives_a_failing_close(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared, failing = MockBackend(), FailsToClose()
    regs = [
        registration(shared, name="a"),
        registration(shared, name="b"),  # one object, two registrations
        registration(failing, name="c"),
    ]
    async with Archivist.open(journal_path, regs):
        assert shared.close_calls == 0
    assert (shared.close_calls, failing.close_calls) == (1, 1)
    assert "backend 'c': aclose failed: OSError('socket already gone')" in caplog.text
    async with Archivist.open(journal_path, regs):  # the journal closed cleanly
        pass


class HangsOnClose(MockBackend):
    async def aclose(self) -> None:
        await super().aclose()
        await anyio.sleep_forever()


async def test_hanging_closes_share_one_deadline(
    journal_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import journal_archivist._lifecycle as lifecycle_module

    monkeypatch.setattr(lifecycle_module, "BACKEND_CLOSE_TIMEOUT", 0.5)
    hung = [HangsOnClose() for _ in range(4)]
    regs = [registration(b, name=f"b{i}") for i, b in enumerate(hung)]
    archivist = await Archivist.open(journal_path, regs)
    started = anyio.current_time()
    await archivist.shutdown(timeout=0)
    # Four closes of 0.5 s each would take 2 s one after another.
    assert anyio.current_time() - started < 1.5
    assert all(b.close_calls == 1 for b in hung)
    assert "did not finish aclose within 0.5s" in caplog.text


async def test_max_append_bytes_follows_a_larger_max_record_bytes(
    journal_path: Path,
) -> None:
    # Raising max_record_bytes alone must not make open() refuse its own default.
    async with Archivist.open(
        journal_path, [registration()], max_record_bytes=100 << 20
    ) as archivist:
        assert archivist._max_append_bytes == 100 << 20


async def test_an_iterator_of_records_is_read_no_further_than_the_limit(
    journal_path: Path,
) -> None:
    session = uuid4()
    taken = 0

    def endless() -> Iterator[MessageRecord]:
        nonlocal taken
        while True:
            taken += 1
            yield record(session, f"m{taken}")

    mock = MockBackend()
    async with Archivist.open(
        journal_path, [registration(mock)], max_append_records=5
    ) as archivist:
        await archivist.append_messages(session, iter(records(session, 3)))
        with pytest.raises(ValidationError, match="6 records in one call exceed"):
            await archivist.append_messages(session, endless())
        assert taken == 6
        await archivist.wait_drained()
    assert [r.content_md for r in mock.records(session)] == ["m0", "m1", "m2"]


async def test_a_failed_read_is_logged_in_one_printable_line(
    journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A backend's error text is foreign: its control characters are escaped.
    down, up = MockBackend(), MockBackend()
    down.go_down("\x1b[31mdown\r\nforged line")
    regs = [
        registration(down, name="down", priority=1),
        registration(up, name="up"),
    ]
    async with Archivist.open(journal_path, regs) as archivist:
        await archivist.read_session(uuid4())
    (line,) = [r.getMessage() for r in caplog.records if "read_session" in r.msg]
    assert "\x1b" not in line
    assert "\n" not in line
    assert "\\x1b[31mdown" in line
