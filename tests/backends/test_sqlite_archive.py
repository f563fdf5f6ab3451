"""SqliteArchive: the contract suite, then what only a SQLite file can get wrong.

Every test uses a real archive file under ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import msgspec
import pytest

from journal_archivist import Archivist, MessageRecord
from journal_archivist._schema import APPLICATION_ID as JOURNAL_APPLICATION_ID
from journal_archivist.backends import (
    BackendError,
    SessionGroup,
    SessionInfo,
    _sqlite_sql,
)
from journal_archivist.backends.sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SqliteArchive,
)
from journal_archivist.testing import check_backend
from tests.helpers import (
    BAD_PAGES,
    check_session_paging,
    record,
    records,
    registration,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "archive.db"


@pytest.fixture
async def archive(archive_path: Path) -> AsyncIterator[SqliteArchive]:
    backend = SqliteArchive(archive_path)
    try:
        yield backend
    finally:
        await backend.aclose()


def group(
    session: UUID, recs: list[MessageRecord], *, erase: bool = False
) -> SessionGroup:
    return SessionGroup(session, tuple(recs), erase=erase)


def backwards(session: UUID, count: int, tag: str) -> list[MessageRecord]:
    """Records whose ts and message_id both decrease in append order."""
    ids = sorted((uuid4() for _ in range(count)), reverse=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        record(session, f"{tag}{i}", message_id=ids[i], ts=start - timedelta(hours=i))
        for i in range(count)
    ]


def file_bytes(path: Path) -> bytes:
    """The database file and its WAL, as they are on disk now."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


# -- the contract ----------------------------------------------------------------


async def test_contract(tmp_path: Path) -> None:
    await check_backend(lambda: SqliteArchive(tmp_path / "archive.db"))


# -- construction ----------------------------------------------------------------


def test_constructing_does_no_io_and_repr_shows_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "archive.db"
    backend = SqliteArchive(path)
    assert not path.parent.exists()
    assert repr(backend) == f"SqliteArchive({str(path)!r})"
    assert backend.path == str(path)


def test_a_relative_path_is_made_absolute_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert SqliteArchive("archive.db").path == str(tmp_path / "archive.db")


def test_owned_paths_is_the_archive_file_with_symlinks_resolved(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (real / "named.db").symlink_to(real / "archive.db")
    file = os.path.realpath(real / "archive.db")
    want = (file, file + "-wal", file + "-shm")  # SQLite names them after the file
    # Through a symlinked directory, and a symlink to the file (not there yet).
    assert SqliteArchive(tmp_path / "link" / "archive.db").owned_paths() == want
    assert SqliteArchive(tmp_path / "link" / "named.db").owned_paths() == want
    assert SqliteArchive(real / "archive.db").owned_paths() == want


def test_owned_paths_of_a_relative_path_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = SqliteArchive("archive.db")
    monkeypatch.chdir("/")  # made absolute when constructed, not when asked
    assert backend.owned_paths()[0] == os.path.realpath(tmp_path / "archive.db")


@pytest.mark.parametrize(
    ("path", "kwargs", "error", "match"),
    [
        # not a path at all
        (123, {}, TypeError, "path must be a str or os.PathLike, got int"),
        # bytes paths are not supported
        (b"archive.db", {}, TypeError, "path must be a str or os.PathLike, got bytes"),
        # nothing to open
        ("", {}, ValueError, "path must name a file, got ''"),
        # an in-memory database is not durable
        (":memory:", {}, ValueError, "path must name a file, got ':memory:'"),
        # SQLite would cut the name at the NUL
        ("a\x00b", {}, ValueError, "path must name a file"),
        # a negative wait
        ("a.db", {"busy_timeout": -1}, ValueError, "busy_timeout must be >= 0"),
        # NaN compares false with everything
        ("a.db", {"busy_timeout": float("nan")}, ValueError, "busy_timeout must be"),
        # a bool is not a number of seconds
        ("a.db", {"busy_timeout": True}, TypeError, "busy_timeout must be a number"),
        ("a.db", {"busy_timeout": "5"}, TypeError, "busy_timeout must be a number"),
    ],
)
def test_constructor_rejects_bad_arguments(
    path: object, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SqliteArchive(path, **kwargs)  # type: ignore[arg-type]


# -- idempotence and order ---------------------------------------------------------


async def test_a_redelivered_batch_changes_nothing(
    archive: SqliteArchive, archive_path: Path
) -> None:
    a, b = uuid4(), uuid4()
    batch = [group(a, records(a, 3)), group(b, records(b, 2)), group(a, records(a, 1))]
    want_a = [*batch[0].records, *batch[2].records]
    await archive.write_batch(batch)
    before = file_seqs(archive_path)
    await archive.write_batch(batch)
    await archive.append_messages(a, want_a)
    assert await archive.read_session(a) == want_a
    assert (await archive.count(a), await archive.count(b)) == (4, 2)
    assert file_seqs(archive_path) == before  # no row was rewritten

    await archive.aclose()
    async with SqliteArchive(archive_path) as again:  # a redelivery after a restart
        await again.write_batch(batch)
        assert await again.read_session(a) == want_a
        assert list(await again.read_session(b)) == list(batch[1].records)
        assert (await again.count(a), await again.count(b)) == (4, 2)


def file_seqs(path: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(
            "SELECT seq, message_id FROM messages ORDER BY seq"
        ).fetchall()


async def test_records_read_in_append_order_not_ts_or_id_order(
    archive: SqliteArchive,
) -> None:
    session, other = uuid4(), uuid4()
    first, second = backwards(session, 4, "a"), backwards(session, 3, "b")
    await archive.append_messages(session, first)
    await archive.write_batch([group(other, records(other, 2)), group(session, second)])
    assert await archive.read_session(session) == first + second


@pytest.mark.parametrize("count", [1, 3, 4, 5, 17, 63, 64, 65, 85, 200])
async def test_a_batch_of_any_size_is_inserted_whole_and_in_order(
    archive: SqliteArchive, count: int
) -> None:
    # Rows go in as multi-row INSERTs of 64, 16, 4 and 1: every size must add up.
    session, other = uuid4(), uuid4()
    mine, theirs = records(session, count), records(other, 2)
    await archive.write_batch(
        [
            SessionGroup(session, tuple(mine[: count // 2])),
            SessionGroup(other, tuple(theirs)),
            SessionGroup(session, tuple(mine[count // 2 :])),
        ]
    )
    assert await archive.read_session(session) == mine
    assert await archive.count(session) == count
    assert await archive.read_session(other) == theirs


async def test_a_record_of_another_session_is_refused_and_nothing_archived(
    archive: SqliteArchive,
) -> None:
    session, other = uuid4(), uuid4()
    stray = record(other)
    with pytest.raises(BackendError, match=f"belongs to session {other}") as info:
        await archive.append_messages(session, [record(session), stray])
    assert info.value.retryable is False
    assert await archive.read_session(session) == []


async def test_a_naive_timestamp_is_refused_as_not_retryable(
    archive: SqliteArchive,
) -> None:
    session = uuid4()
    naive = record(session, ts=datetime(2026, 1, 1))
    with pytest.raises(BackendError, match="timezone-aware") as info:
        await archive.append_messages(session, [naive])
    assert info.value.retryable is False


# -- one transaction per batch ------------------------------------------------------


async def test_a_batch_failing_midway_leaves_nothing_of_the_batch(
    archive: SqliteArchive, archive_path: Path
) -> None:
    kept, new = uuid4(), uuid4()
    old = records(kept, 2, "old")
    await archive.append_messages(kept, old)
    # A real SQLite failure in the middle of the batch: the third group's insert
    # aborts, after the erasure and the first insert have run in the transaction.
    with closing(sqlite3.connect(archive_path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON messages"
            " WHEN NEW.content_md = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    batch = [
        group(kept, records(kept, 1, "after-erase"), erase=True),
        group(new, records(new, 3)),
        group(new, [record(new, "boom")]),
    ]
    with pytest.raises(BackendError, match="injected failure") as info:
        await archive.write_batch(batch)
    assert info.value.retryable is False
    assert await archive.read_session(kept) == old
    assert await archive.read_session(new) == []
    assert [s.session for s in await archive.list_sessions()] == [kept]

    with closing(sqlite3.connect(archive_path)) as conn, conn:
        conn.execute("DROP TRIGGER fail")
    await archive.write_batch(batch)  # the writer's retry
    assert await archive.read_session(kept) == list(batch[0].records)
    assert await archive.read_session(new) == [*batch[1].records, *batch[2].records]


async def test_a_locked_archive_fails_retryably_and_the_retry_succeeds(
    archive_path: Path,
) -> None:
    session = uuid4()
    async with SqliteArchive(archive_path, busy_timeout=0) as backend:
        await backend.health_check()
        holder = sqlite3.connect(archive_path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # an operator's shell holding a lock
            with pytest.raises(BackendError, match="locked") as info:
                await backend.append_messages(session, records(session, 2))
            assert info.value.retryable is True
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        recs = records(session, 2)
        await backend.append_messages(session, recs)
        assert await backend.read_session(session) == recs


async def test_a_new_archive_waits_for_another_connection_creating_it(
    archive_path: Path,
) -> None:
    """Switching a new file to WAL is where SQLite would not wait for a lock: the
    open waits there too, up to ``busy_timeout``."""
    session = uuid4()
    os.close(os.open(archive_path, os.O_CREAT | os.O_WRONLY, 0o600))
    with closing(
        sqlite3.connect(archive_path, isolation_level=None, check_same_thread=False)
    ) as holder:
        holder.execute("BEGIN IMMEDIATE")  # another process creating the archive
        release = threading.Timer(0.3, holder.execute, ["ROLLBACK"])
        release.start()
        try:
            started = time.monotonic()
            async with SqliteArchive(archive_path, busy_timeout=30) as backend:
                recs = records(session, 2)
                await backend.append_messages(session, recs)
                waited = time.monotonic() - started
                assert await backend.read_session(session) == recs
        finally:
            release.cancel()
            release.join()
    assert waited >= 0.25  # it waited for the lock instead of failing


async def test_many_instances_creating_one_archive_at_once_all_open(
    tmp_path: Path,
) -> None:
    for attempt in range(10):
        path = tmp_path / f"archive{attempt}.db"
        backends = [SqliteArchive(path) for _ in range(4)]
        sessions = [uuid4() for _ in backends]
        try:
            async with anyio.create_task_group() as group:
                for backend, session in zip(backends, sessions, strict=True):
                    group.start_soon(
                        backend.append_messages, session, records(session, 1)
                    )
            for session in sessions:
                assert await backends[0].count(session) == 1
        finally:
            for backend in backends:
                await backend.aclose()


async def test_a_new_archive_still_locked_after_busy_timeout_fails_retryably(
    archive_path: Path,
) -> None:
    session = uuid4()
    os.close(os.open(archive_path, os.O_CREAT | os.O_WRONLY, 0o600))
    with closing(sqlite3.connect(archive_path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        async with SqliteArchive(archive_path, busy_timeout=0.05) as backend:
            with pytest.raises(
                BackendError, match="open failed: database is locked"
            ) as info:
                await backend.append_messages(session, records(session, 1))
            assert info.value.retryable is True
            holder.execute("ROLLBACK")
            await backend.append_messages(session, records(session, 1))
            assert await backend.count(session) == 1


async def test_a_write_cancelled_in_flight_leaves_no_open_transaction(
    archive: SqliteArchive, archive_path: Path
) -> None:
    session = uuid4()
    await archive.health_check()
    holder = sqlite3.connect(archive_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # so the write waits inside SQLite
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def write() -> None:
                with scope:
                    await archive.append_messages(session, records(session, 2, "x"))

            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()  # blocked in BEGIN IMMEDIATE
            scope.cancel()  # as a writer's attempt timeout would
            holder.execute("ROLLBACK")  # the BEGIN now runs, then the rollback
        assert scope.cancelled_caught
        holder.execute("BEGIN IMMEDIATE")  # the archive holds no write lock
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    recs = records(session, 2)
    await archive.append_messages(session, recs)
    assert await archive.read_session(session) == recs


# -- erasure --------------------------------------------------------------------------


async def test_erasing_groups_apply_in_order_and_erase_only_their_session(
    archive: SqliteArchive,
) -> None:
    a, b, unknown = uuid4(), uuid4(), uuid4()
    await archive.write_batch([group(a, records(a, 3)), group(b, records(b, 2))])
    fresh = records(a, 2, "fresh")
    await archive.write_batch(
        [
            group(a, fresh, erase=True),  # erase, then append, in one group
            group(unknown, [], erase=True),  # nothing to erase
        ]
    )
    assert await archive.read_session(a) == fresh
    assert await archive.count(a) == 2
    assert await archive.count(b) == 2
    await archive.delete_session(unknown)
    await archive.write_batch([group(b, [], erase=True)])
    assert await archive.read_session(b) == []
    assert [info.session for info in await archive.list_sessions()] == [a]


@pytest.mark.parametrize(
    "via",
    [
        "delete_session",  # the protocol's erasure call
        "write_batch",  # an erasing group in a coalesced batch
    ],
)
async def test_erased_content_is_gone_from_the_file_and_its_wal(
    archive: SqliteArchive, archive_path: Path, via: str
) -> None:
    secret, kept = uuid4(), uuid4()
    marker = f"SECRET-{uuid4()}"
    await archive.append_messages(
        secret,
        [
            record(secret, f"{marker} short"),
            record(secret, f"{marker} long " + "x" * 100_000),  # overflow pages
            record(secret, "nothing", author=marker),
        ],
    )
    survivors = records(kept, 3)
    await archive.append_messages(kept, survivors)
    assert marker.encode() in file_bytes(archive_path)

    if via == "delete_session":
        await archive.delete_session(secret)
    else:
        await archive.write_batch([group(secret, [], erase=True)])

    assert marker.encode() not in file_bytes(archive_path)
    wal = archive_path.with_name(archive_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated
    assert await archive.read_session(secret) == []
    assert await archive.read_session(kept) == survivors


# -- counts and listing ------------------------------------------------------------


async def test_counts_and_list_sessions(archive: SqliteArchive) -> None:
    a, b = sorted((uuid4(), uuid4()))
    plus_two = timezone(timedelta(hours=2))
    early = datetime(2026, 1, 1, 12, 0, tzinfo=plus_two)  # 10:00 UTC
    late = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    a_recs = [record(a, "1", ts=late), record(a, "2", ts=early)]
    await archive.write_batch([group(a, a_recs), group(b, records(b, 3))])
    # Redelivered, even with another ts: neither counted again nor moving first_ts.
    moved = msgspec.structs.replace(a_recs[0], ts=datetime(2020, 1, 1, tzinfo=UTC))
    await archive.append_messages(a, [*a_recs, moved])
    assert await archive.count(a) == 2
    assert await archive.count(b) == 3
    assert await archive.count(uuid4()) == 0
    listed = await archive.list_sessions()
    assert [info.session for info in listed] == [a, b]
    assert listed[0] == SessionInfo(
        session=a,
        message_count=2,
        first_ts=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        last_ts=datetime(2026, 1, 1, 11, 0, tzinfo=UTC),
    )
    assert listed[0].first_ts.tzinfo is UTC
    assert listed[1].message_count == 3
    await archive.delete_session(a)
    assert [info.session for info in await archive.list_sessions()] == [b]
    assert await archive.count(a) == 0


async def test_list_sessions_orders_and_pages_by_uuid_value(
    archive: SqliteArchive,
) -> None:
    await check_session_paging(archive)


@pytest.mark.parametrize(("options", "error", "complaint"), BAD_PAGES)
async def test_list_sessions_rejects_bad_arguments(
    archive: SqliteArchive,
    options: dict[str, object],
    error: type[Exception],
    complaint: str,
) -> None:
    with pytest.raises(error, match=complaint):
        await archive.list_sessions(**options)  # type: ignore[arg-type]


async def test_reads_reject_a_session_that_is_not_a_uuid(
    archive: SqliteArchive,
) -> None:
    with pytest.raises(TypeError, match=r"session must be a uuid\.UUID, got str"):
        await archive.count(str(uuid4()))  # type: ignore[arg-type]


async def test_queryable_columns_hold_the_record_fields(
    archive: SqliteArchive, archive_path: Path
) -> None:
    session, parent = uuid4(), uuid4()
    rec = record(
        session,
        "nul\x00inside",
        parent_id=parent,
        author="model ✓",
        ts=datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5))),
    )
    await archive.append_messages(session, [rec])
    with closing(sqlite3.connect(archive_path)) as conn, conn:
        row = conn.execute(
            "SELECT message_id, session, parent_id, ts, role, author, content_md,"
            " json_extract(record, '$.role') FROM messages"
        ).fetchone()
    assert row == (
        str(rec.message_id),
        str(session),
        str(parent),
        "2001-02-02T23:05:06.000007Z",
        "user",
        "model ✓",
        "nul\x00inside",
        "user",
    )


async def test_erasure_marks_are_kept_in_their_table(
    archive: SqliteArchive, archive_path: Path
) -> None:
    session, never = uuid4(), uuid4()
    old, new = record(session, "old"), record(session, "new")
    await archive.write_batch(
        [SessionGroup(session, (old, new), appended_at=(1.0, 3.0))]
    )
    await archive.write_batch([SessionGroup(session, (), True, 2.0)])
    await archive.write_batch([SessionGroup(session, (), True, 1.5)])  # older: kept
    await archive.delete_session(never)  # no records: only a mark
    with closing(sqlite3.connect(archive_path)) as conn:
        marks = dict(conn.execute("SELECT session, erased_at FROM erasure_marks"))
        kept = conn.execute("SELECT content_md, appended_at FROM messages").fetchall()
        counted = conn.execute("SELECT session, message_count FROM sessions")
        assert dict(counted.fetchall()) == {str(session): 1}
    assert marks[str(session)] == 2.0
    assert str(never) in marks
    assert kept == [("new", 3.0)]


@pytest.mark.parametrize(
    "value",
    [
        "'3.0'",  # text, which SQLite orders after every number
        "NULL",  # which compares as neither below nor above
        "x'00'",  # a blob
    ],
)
async def test_an_erasure_deletes_a_row_whose_journal_time_is_damaged(
    archive: SqliteArchive, archive_path: Path, value: str
) -> None:
    session = uuid4()
    damaged, later = record(session, "damaged"), record(session, "later")
    await archive.write_batch(
        [SessionGroup(session, (damaged, later), appended_at=(1.0, 3.0))]
    )
    await archive.aclose()
    damage(archive_path, "messages", "appended_at", value, "content_md = 'damaged'")
    await archive.write_batch([SessionGroup(session, (), True, 2.0)])
    assert await archive.read_session(session) == [later]


async def test_writes_commit_with_a_full_fsync(archive: SqliteArchive) -> None:
    # White box: what each write's commit runs under. (The power-loss torture
    # test is what proves it keeps its promise.)
    session = uuid4()
    await archive.append_messages(session, [record(session)])
    assert archive._conn is not None
    assert await archive._conn.execute_fetchall("PRAGMA synchronous") == [(2,)]


async def test_content_is_stored_once(
    archive: SqliteArchive, archive_path: Path
) -> None:
    # In its column, not again inside the record's JSON: half the file for long
    # messages, and one copy less in memory while a large one is written.
    session = uuid4()
    rec = record(session, "the content " * 100)
    await archive.append_messages(session, [rec])
    with closing(sqlite3.connect(archive_path)) as conn, conn:
        ((content, in_json),) = conn.execute(
            "SELECT content_md, json_extract(record, '$.content_md') FROM messages"
        )
    assert (content, in_json) == (rec.content_md, "")
    assert await archive.read_session(session) == [rec]


async def test_a_content_over_a_mebibyte_round_trips(
    archive: SqliteArchive, archive_path: Path
) -> None:
    # It reaches SQLite through a function (LargeValues), not a binding.
    session = uuid4()
    big = record(session, "".join(chr(0x3B1 + i % 24) for i in range(1_200_000)))
    small = record(session, "small")
    await archive.write_batch([group(session, [small, big, record(session, "after")])])
    assert [r.content_md for r in await archive.read_session(session)] == [
        "small",
        big.content_md,
        "after",
    ]
    assert archive._large._values == {}  # white box: nothing held after the write


async def test_a_failed_write_holds_no_large_value(
    archive: SqliteArchive, archive_path: Path
) -> None:
    session = uuid4()
    big = record(session, "x" * (2 << 20))
    await archive.append_messages(session, [record(session, "first")])
    with (
        closing(sqlite3.connect(archive_path)) as conn,
        conn,
    ):  # the row before the big one fails
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages"
            " WHEN NEW.content_md = 'boom' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(BackendError, match="refused"):
        await archive.append_messages(session, [record(session, "boom"), big])
    assert archive._large._values == {}  # white box: the big one was never taken


#: The schema of versions 1 and 2, as those versions created it (version 1 differs
#: only in the JSON it stores).
VERSION_2_SCHEMA = (
    """CREATE TABLE sessions (
        session TEXT PRIMARY KEY, message_count INTEGER NOT NULL,
        first_ts TEXT NOT NULL, last_ts TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE,
        session TEXT NOT NULL, parent_id TEXT, ts TEXT NOT NULL,
        role TEXT NOT NULL, author TEXT, content_md TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX messages_by_session ON messages (session)",
    """CREATE TRIGGER messages_count_session AFTER INSERT ON messages BEGIN
        INSERT INTO sessions (session, message_count, first_ts, last_ts)
        VALUES (NEW.session, 1, NEW.ts, NEW.ts)
        ON CONFLICT (session) DO UPDATE SET
            message_count = message_count + 1,
            first_ts = min(first_ts, excluded.first_ts),
            last_ts = max(last_ts, excluded.last_ts);
    END""",
    f"PRAGMA application_id = {APPLICATION_ID}",
)


def old_archive(path: Path, version: int, old: MessageRecord) -> None:
    """An archive file of schema ``version`` (1 or 2) holding ``old``."""
    # Version 1 kept the content in the record's JSON too; version 2 left it out.
    stored = old if version == 1 else msgspec.structs.replace(old, content_md="")
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in VERSION_2_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO messages (message_id, session, ts, role, content_md, record)"
            " VALUES (?, ?, '2026-01-01T00:00:00.000000Z', 'user', ?, ?)",
            (
                str(old.message_id),
                str(old.session),
                old.content_md,
                msgspec.json.encode(stored).decode(),
            ),
        )
        conn.execute(f"PRAGMA user_version = {version}")
    path.chmod(0o600)


# Each older schema version is upgraded in place, one version at a time.
@pytest.mark.parametrize("version", [1, 2])
async def test_an_older_archive_reads_and_is_upgraded_in_place(
    archive_path: Path, version: int
) -> None:
    session = uuid4()
    old = record(session, f"from version {version}")
    old_archive(archive_path, version, old)
    async with SqliteArchive(archive_path) as archive:
        assert await archive.read_session(session) == [old]
        new = record(session, "from version 3")
        await archive.write_batch([SessionGroup(session, (new,), appended_at=(5.0,))])
        assert await archive.read_session(session) == [old, new]
        assert await archive.count(session) == 2
    with closing(sqlite3.connect(archive_path)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        # Rows from before marks existed predate every mark: appended_at 0.
        times = conn.execute("SELECT appended_at FROM messages ORDER BY seq")
        assert times.fetchall() == [(0.0,), (5.0,)]
    async with SqliteArchive(archive_path) as archive:
        # So any erasure deletes them, and only what was appended before it.
        await archive.write_batch(
            [SessionGroup(session, (), erase=True, erased_at=1.0)]
        )
        assert await archive.read_session(session) == [new]
        assert await archive.count(session) == 1


# -- damaged rows ----------------------------------------------------------------------
#
# A flipped bit in a row header can change the type of a stored value (TEXT to BLOB,
# INTEGER, REAL or NULL) or leave TEXT that is not UTF-8, which Python's sqlite3
# cannot even fetch. Reads must name the damage; writes must get past it or fail
# as a BackendError.


def damage(path: Path, table: str, column: str, value: str, where: str) -> None:
    """Store ``value`` (SQL) in ``column`` of the rows ``where`` picks, from a second
    connection, as a flipped bit in a row header would: whatever its type.

    The column's declared type (its affinity, and NOT NULL) is relaxed through
    ``writable_schema`` for the one UPDATE and restored after it.
    """
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        (version,) = conn.execute("PRAGMA schema_version").fetchone()
        (schema,) = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
        relaxed, found = re.subn(
            rf"^(\s*{column}) +\w+( NOT NULL)?", r"\1 BLOB", schema, flags=re.M
        )
        assert found == 1, schema
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE name = ?", (relaxed, table)
        )
        conn.execute(f"PRAGMA schema_version = {version + 1}")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"UPDATE {table} SET {column} = {value} WHERE {where}")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (schema, table))
        conn.execute(f"PRAGMA schema_version = {version + 2}")


def damage_message(path: Path, row: str, problem: str) -> str:
    """The pattern of the error naming ``row`` of the archive at ``path``."""
    return re.escape(f"{path}: damaged archive: {row}: ") + problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        # bytes that are not UTF-8 (sqlite3 would raise fetching them)
        (
            "CAST(x'7b22fffe' AS TEXT)",
            r"column record is TEXT but not UTF-8 \(byte 0xff at offset 2\)",
        ),
        # a BLOB that is not UTF-8 either
        (
            "x'7b22fffe'",
            r"column record is BLOB but not UTF-8 \(byte 0xff at offset 2\)",
        ),
        ("12345", "column record is INTEGER, expected TEXT"),
        ("1.5", "column record is REAL, expected TEXT"),
        ("NULL", "column record is NULL, expected TEXT"),
        # JSON, but not a record
        (
            "'[1, 2]'",
            r"column record does not decode as a record \(Expected `object`, got"
            r" `array`\)",
        ),
        # a record with a field of the wrong type
        (
            """replace(record, '"role":"user"', '"role":5')""",
            r"column record does not decode as a record \(Expected `str`, got `int`"
            r" - at `\$.role`\)",
        ),
        # nested deeper than msgspec decodes (RecursionError, not a DecodeError)
        (
            """replace(record, '"metadata":null', '"metadata":'"""
            """ || printf('%.*c', 5000, '[') || printf('%.*c', 5000, ']'))""",
            r"column record does not decode as a record \(maximum recursion depth",
        ),
        # a good record of another session, as a row the index files wrongly
        (
            "(SELECT record FROM messages WHERE session = '{other}' LIMIT 1)",
            "column record holds a record of session {other}",
        ),
    ],
)
async def test_a_damaged_record_fails_the_read_naming_the_row_and_never_returns_it(
    archive: SqliteArchive, archive_path: Path, value: str, problem: str
) -> None:
    session, other = uuid4(), uuid4()
    mine, theirs = records(session, 3), records(other, 2)
    await archive.write_batch([group(session, mine), group(other, theirs)])
    seq = {m: s for s, m in file_seqs(archive_path)}[str(mine[1].message_id)]
    damage(
        archive_path, "messages", "record", value.format(other=other), f"seq = {seq}"
    )

    row = f"messages row {seq} of session {session}"
    match = damage_message(archive_path, row, problem.format(other=other))
    with pytest.raises(BackendError, match=match) as info:
        await archive.read_session(session)
    # A retry reads the same bytes: only restoring the file or erasing helps.
    assert info.value.retryable is False
    # The rest of the archive reads as before.
    assert await archive.read_session(other) == theirs
    assert await archive.count(session) == 3
    assert [i.session for i in await archive.list_sessions()] == sorted(
        [session, other]
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "CAST(x'68c3' AS TEXT)",
            r"column content_md is TEXT but not UTF-8 \(byte 0xc3 at offset 1\)",
        ),
        ("NULL", "column content_md is NULL, expected TEXT"),
        # Cast to text, 5 would read as the content "5": it must not.
        ("5", "column content_md is INTEGER, expected TEXT"),
    ],
)
async def test_a_damaged_content_column_fails_the_read_naming_the_row(
    archive: SqliteArchive, archive_path: Path, value: str, problem: str
) -> None:
    session = uuid4()
    recs = records(session, 3)
    await archive.append_messages(session, recs)
    damage(archive_path, "messages", "content_md", value, "seq = 2")
    match = damage_message(
        archive_path, f"messages row 2 of session {session}", problem
    )
    with pytest.raises(BackendError, match=match) as info:
        await archive.read_session(session)
    assert info.value.retryable is False


async def test_a_record_stored_as_a_blob_of_its_bytes_reads_as_that_record(
    archive: SqliteArchive, archive_path: Path
) -> None:
    # One flipped bit of a serial type turns TEXT into a BLOB of the same bytes:
    # the record column is only read back whole, so it is still the same record.
    session = uuid4()
    recs = records(session, 3)
    await archive.append_messages(session, recs)
    damage(archive_path, "messages", "record", "CAST(record AS BLOB)", "seq = 1")
    assert await archive.read_session(session) == recs
    # A row damaged for real is still named, past the BLOB (the checked re-read).
    damage(archive_path, "messages", "record", "NULL", "seq = 3")
    match = damage_message(
        archive_path,
        f"messages row 3 of session {session}",
        "column record is NULL, expected TEXT",
    )
    with pytest.raises(BackendError, match=match):
        await archive.read_session(session)


# ``count`` reads only message_count; ``list_sessions`` reads every column.
@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        (
            "message_count",
            "CAST(x'fffe' AS TEXT)",
            "column message_count is TEXT, expected INTEGER",
        ),
        ("message_count", "1.5", "column message_count is REAL, expected INTEGER"),
        ("message_count", "NULL", "column message_count is NULL, expected INTEGER"),
        ("message_count", "x'03'", "column message_count is BLOB, expected INTEGER"),
        # well typed, but no session row ever counts less than one record
        ("message_count", "0", "column message_count is 0, expected >= 1"),
        (
            "first_ts",
            "CAST(x'fffe' AS TEXT)",
            r"column first_ts is TEXT but not UTF-8 \(byte 0xff at offset 0\)",
        ),
        ("first_ts", "12345", "column first_ts is INTEGER, expected TEXT"),
        ("first_ts", "NULL", "column first_ts is NULL, expected TEXT"),
        (
            "last_ts",
            "'yesterday'",
            "column last_ts is 'yesterday', expected a UTC time as text",
        ),
        # a time, but not the fixed-width UTC text the archive writes
        (
            "last_ts",
            "'2026-01-01T12:00:00+01:00'",
            "column last_ts is '2026-01-01T12:00:00\\+01:00', expected a UTC time",
        ),
        ("last_ts", "'2000-01-01T00:00:00.000000Z'", "first_ts .* is after last_ts"),
        # the key itself: the row can only be named by what it holds
        ("session", "CAST(session AS BLOB)", "column session is BLOB, expected TEXT"),
        ("session", "CAST(x'fffe' AS TEXT)", "column session is TEXT but not UTF-8"),
        # upper case sorts differently: paging by session id would skip sessions
        (
            "session",
            "upper(session)",
            "column session is '[0-9A-F-]{36}', expected a canonical session id",
        ),
    ],
)
async def test_a_damaged_session_row_fails_count_and_list_sessions_naming_it(
    archive: SqliteArchive, archive_path: Path, column: str, value: str, problem: str
) -> None:
    session = uuid4()
    recs = records(session, 3)
    await archive.append_messages(session, recs)
    damage(archive_path, "sessions", column, value, f"session = '{session}'")

    row = (
        "a sessions row"
        if column == "session"
        else f"sessions row of session {session}"
    )
    match = damage_message(archive_path, row, problem)
    with pytest.raises(BackendError, match=match) as info:
        await archive.list_sessions()
    assert info.value.retryable is False
    if column == "message_count":
        with pytest.raises(BackendError, match=match):
            await archive.count(session)
    elif column != "session":
        assert await archive.count(session) == 3
    assert await archive.read_session(session) == recs  # the records are intact


# A NULL where the count trigger adds or compares fails the insert (NOT NULL);
# every other damaged type is converted by SQLite on the write path, and the
# reads report it.
@pytest.mark.parametrize(
    ("table", "column", "value", "refused"),
    [
        ("messages", "record", "CAST(x'fffe' AS TEXT)", False),
        ("messages", "record", "12345", False),
        ("messages", "record", "NULL", False),
        ("sessions", "message_count", "CAST(x'fffe' AS TEXT)", False),
        ("sessions", "message_count", "1.5", False),
        ("sessions", "message_count", "NULL", True),
        ("sessions", "first_ts", "CAST(x'fffe' AS TEXT)", False),
        ("sessions", "first_ts", "12345", False),
        ("sessions", "first_ts", "NULL", True),
        ("sessions", "last_ts", "NULL", True),
        ("sessions", "session", "CAST(session AS BLOB)", False),
        ("sessions", "session", "CAST(x'fffe' AS TEXT)", False),
    ],
)
async def test_writes_past_a_damaged_row_succeed_or_fail_as_a_backend_error(
    archive: SqliteArchive,
    archive_path: Path,
    table: str,
    column: str,
    value: str,
    refused: bool,
) -> None:
    session, other = uuid4(), uuid4()
    await archive.write_batch(
        [group(session, records(session, 3)), group(other, records(other, 1))]
    )
    where = "seq = 2" if table == "messages" else f"session = '{session}'"
    damage(archive_path, table, column, value, where)

    await archive.health_check()  # a probe of reachability, not of rows
    more = records(session, 2, "more")
    batch = [group(other, records(other, 1, "x")), group(session, more)]
    if refused:
        row = "the sessions row of a session this batch writes"
        problem = re.escape(
            f"a column holds NULL (NOT NULL constraint failed: sessions.{column})"
        )
        with pytest.raises(
            BackendError, match=damage_message(archive_path, row, problem)
        ) as info:
            await archive.write_batch(batch)
        # Not retryable: the retry meets the same NULL; only an erasure or a
        # repair of the file helps.
        assert info.value.retryable is False
        assert await archive.count(other) == 1  # nothing of the batch applied
        # As the message says, list_sessions names the row.
        named = f"sessions row of session {session}: column {column} is NULL"
        with pytest.raises(BackendError, match=named):
            await archive.list_sessions()
    else:
        await archive.write_batch(batch)

    # Erasing the session removes its damaged rows (a damaged key stays: no
    # session id names it), and the session is written to again.
    await archive.delete_session(session)
    await archive.write_batch([group(session, more)])
    assert await archive.read_session(session) == more
    if column == "session":
        with pytest.raises(BackendError, match="damaged archive: a sessions row"):
            await archive.list_sessions()
    else:
        assert await archive.count(session) == 2
        assert len(await archive.list_sessions()) == 2


# -- the file ------------------------------------------------------------------------


async def test_the_archive_and_its_wal_are_owner_only(
    archive: SqliteArchive, archive_path: Path
) -> None:
    old_umask = os.umask(0)  # even a permissive umask gets an owner-only file
    try:
        session = uuid4()
        await archive.append_messages(session, records(session, 2))
    finally:
        os.umask(old_umask)
    for path in (archive_path, archive_path.with_name(archive_path.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_the_file_is_marked_as_an_archive(
    archive: SqliteArchive, archive_path: Path
) -> None:
    await archive.health_check()
    with closing(sqlite3.connect(archive_path)) as conn, conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # The archive names the journal's id to refuse it by name; keep the two equal.
    assert _sqlite_sql.JOURNAL_APPLICATION_ID == JOURNAL_APPLICATION_ID


async def test_the_journal_file_is_refused_and_left_untouched(
    journal_path: Path,
) -> None:
    async with Archivist.open(journal_path, [registration()]):
        pass
    before = journal_path.read_bytes()
    async with SqliteArchive(journal_path) as backend:
        with pytest.raises(
            BackendError, match="is a journal_archivist journal"
        ) as info:
            await backend.health_check()
    assert info.value.retryable is False
    assert str(journal_path) in str(info.value)
    assert journal_path.read_bytes() == before


def make_other_app_db(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA application_id = 305419896")  # 0x12345678


def make_plain_db(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")


def make_newer_archive(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def make_not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not a SQLite file at all " * 200)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        # another application's id, even with no tables yet
        (make_other_app_db, r"SQLite database of something else.*0x12345678"),
        # an ordinary SQLite database with tables of its own
        (make_plain_db, r"something else.*\['customers'\]"),
        # an archive written by a newer schema
        (
            make_newer_archive,
            f"schema version {SCHEMA_VERSION + 1} is newer than the supported"
            f" {SCHEMA_VERSION}",
        ),
        # not SQLite at all
        (make_not_a_database, "not a usable SQLite archive"),
    ],
)
async def test_a_foreign_file_is_refused_untouched_and_not_retryable(
    archive_path: Path, make: Callable[[Path], None], match: str
) -> None:
    make(archive_path)
    archive_path.chmod(0o600)  # else refused for its mode first (test_private_files)
    before = archive_path.read_bytes()
    async with SqliteArchive(archive_path) as backend:
        with pytest.raises(BackendError, match=match) as info:
            await backend.health_check()
        with pytest.raises(BackendError, match=match):  # and again: no state kept
            await backend.read_session(uuid4())
    assert info.value.retryable is False
    assert str(archive_path) in str(info.value)
    assert archive_path.read_bytes() == before


async def test_a_missing_directory_is_retryable_until_an_operator_creates_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "not-yet" / "archive.db"
    async with SqliteArchive(path) as backend:
        with pytest.raises(BackendError, match=r"directory .* does not exist") as info:
            await backend.health_check()
        assert info.value.retryable is True
        assert str(path) in str(info.value)
        path.parent.mkdir()
        await backend.health_check()
    assert path.exists()


async def test_a_directory_as_the_path_is_not_retryable(tmp_path: Path) -> None:
    async with SqliteArchive(tmp_path) as backend:
        with pytest.raises(BackendError, match="is a directory") as info:
            await backend.health_check()
    assert info.value.retryable is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_an_unwritable_directory_is_retryable(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir(mode=0o500)
    try:
        async with SqliteArchive(directory / "archive.db") as backend:
            with pytest.raises(BackendError, match="cannot create") as info:
                await backend.health_check()
        assert info.value.retryable is True
    finally:
        directory.chmod(0o700)


async def test_aclose_is_idempotent_and_a_later_call_reopens(
    archive: SqliteArchive,
) -> None:
    session = uuid4()
    first = records(session, 2)
    await archive.append_messages(session, first)
    await archive.aclose()
    await archive.aclose()
    await archive.health_check()
    await archive.aclose()
    second = records(session, 1, "later")
    await archive.append_messages(session, second)
    assert await archive.read_session(session) == first + second


# -- end to end ---------------------------------------------------------------------


async def test_an_archivist_delivers_to_the_archive_and_reads_it_back(
    journal_path: Path, archive_path: Path
) -> None:
    a, b = uuid4(), uuid4()
    want_a = backwards(a, 5, "a") + records(a, 3, "later")
    want_b = records(b, 4)
    backend = SqliteArchive(archive_path)
    reg = registration(backend, name="archive")
    try:
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(a, want_a[:5])
            await archivist.append_messages(b, want_b)
            await archivist.append_messages(a, want_a[5:])
            with anyio.fail_after(10):
                await archivist.wait_drained()
            assert await archivist.read_session(a) == want_a
            assert await archivist.read_session(b) == want_b
    finally:
        await backend.aclose()
    async with SqliteArchive(archive_path) as reopened:
        assert await reopened.read_session(a) == want_a
        assert await reopened.count(b) == 4
