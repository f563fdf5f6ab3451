"""PostgresArchive against a real PostgreSQL server.

The server comes from ``JOURNAL_ARCHIVIST_TEST_PG_DSN`` (default: the local trust-auth
test server). Without one the tests skip, except in CI, where they fail. Each test
works in a schema of its own, dropped afterwards, and finds its pool's connections
by a unique ``application_name``, so it never touches another test's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from journal_archivist import (
    Archivist,
    Attachment,
    BackendError,
    MessageRecord,
)
from journal_archivist.backends import SessionGroup, SessionInfo
from journal_archivist.backends._postgres_dsn import mask_dsn
from journal_archivist.backends._postgres_sql import classify
from journal_archivist.backends.postgres import PostgresArchive
from journal_archivist.testing import check_backend
from tests.helpers import (
    BAD_PAGES,
    check_session_paging,
    record,
    records,
    registration,
)
from tests.services import DEFAULT_DSN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path
    from typing import Any

PASSWORD = "hunter2-Sekr3t-pw"


@pytest.fixture
async def schema(admin: Any) -> AsyncIterator[str]:
    """A fresh schema name (not created), dropped with everything in it afterwards."""
    name = f"ja_test_{uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def app_name() -> str:
    """An application_name that marks this test's connections."""
    return f"ja-test-{uuid4().hex[:12]}"


@pytest.fixture
async def make_archive(
    pg_dsn: str, schema: str, app_name: str
) -> AsyncIterator[Callable[..., PostgresArchive]]:
    """Build archives in this test's schema; closes every one at the end."""
    made: list[PostgresArchive] = []

    def make(**options: Any) -> PostgresArchive:
        options.setdefault("schema", schema)
        options.setdefault("create_schema", True)
        options.setdefault("application_name", app_name)
        archive = PostgresArchive(options.pop("dsn", pg_dsn), **options)
        made.append(archive)
        return archive

    try:
        yield make
    finally:
        for archive in made:
            await archive.aclose()


def _with_password(dsn: str, password: str = PASSWORD) -> str:
    scheme, _, rest = dsn.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    user = userinfo.partition(":")[0] if at else "postgres"
    return f"{scheme}://{user}:{password}@{hosts if at else rest}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def _error_texts(exc: BaseException) -> Iterator[str]:
    """str and repr of ``exc`` and of every exception chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        current = current.__cause__ or current.__context__


async def _wait_for_lock_wait(admin: Any, app_name: str) -> list[int]:
    """Wait until a connection of ``app_name`` waits on a lock; return their pids.

    Each probe is a round trip on its own transaction (pg_stat_activity is a
    per-transaction snapshot), so no sleep is needed between probes.
    """
    with anyio.fail_after(10):
        while True:
            pids: list[int] = [
                row[0]
                for row in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    app_name,
                )
            ]
            if pids:
                return pids


# -- packaging -------------------------------------------------------------------------


def test_the_package_imports_without_asyncpg_and_the_module_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import journal_archivist, journal_archivist.backends\n"
        "import journal_archivist.testing\n"
        "assert 'asyncpg' not in sys.modules, 'journal_archivist imported asyncpg'\n"
        "sys.modules['asyncpg'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import journal_archivist.backends.postgres\n"
        "except ImportError as exc:\n"
        "    assert isinstance(exc.__cause__, ImportError)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without asyncpg')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'journal-archivist[postgres]'" in result.stdout


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("schema", "Public"),  # upper case would need case-sensitive quoting
        ("schema", 'x"; DROP TABLE users; --'),  # an injection attempt
        ("schema", "a b"),  # whitespace
        ("schema", "1abc"),  # starts with a digit
        ("schema", ""),  # empty
        ("schema", "a" * 42),  # longer than 41 characters
        ("schema", "pg_archive"),  # pg_ schemas are reserved by PostgreSQL
        ("schema", "pg_catalog"),  # the system catalog itself
        ("schema", "information_schema"),  # the SQL-standard catalog views
        ("table_prefix", "ja-"),  # a hyphen
        ("table_prefix", "ja_\x00"),  # a NUL character
        ("table_prefix", "é_"),  # not ASCII
    ],
)
def test_identifiers_are_checked_against_a_strict_pattern(
    option: str, value: str
) -> None:
    with pytest.raises(ValueError, match=rf"{option}"):
        PostgresArchive(DEFAULT_DSN, **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"pool_min_size": 3, "pool_max_size": 2}, "pool sizes"),  # min above max
        ({"pool_max_size": 0}, "pool sizes"),  # no connection at all
        ({"timeout": 0}, "timeout must be > 0"),  # no time at all
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        PostgresArchive(DEFAULT_DSN, **options)


def test_repr_masks_the_password_in_the_url_and_in_the_query() -> None:
    archive = PostgresArchive(
        f"postgresql://alice:{PASSWORD}@db.invalid:5432/app?password={PASSWORD}x"
        "&sslmode=disable"
    )
    text = repr(archive)
    assert PASSWORD not in text
    assert "alice:***@db.invalid:5432/app" in text
    assert "password=***" in text
    with pytest.raises(ValueError, match=r"postgresql:// URL") as raised:
        PostgresArchive(f"mysql://alice:{PASSWORD}@db.invalid/app")
    assert PASSWORD not in str(raised.value)


# -- schema ----------------------------------------------------------------------------


async def test_create_schema_is_idempotent_under_concurrent_callers(
    make_archive: Callable[..., PostgresArchive], admin: Any, schema: str
) -> None:
    archives = [make_archive(table_prefix="cc_") for _ in range(4)]
    async with anyio.create_task_group() as group:
        for archive in archives:
            group.start_soon(archive.health_check)
    tables = await admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
        " ORDER BY table_name",
        schema,
    )
    assert [row[0] for row in tables] == [
        "cc_erasure_marks",
        "cc_messages",
        "cc_sessions",
    ]
    await make_archive(table_prefix="cc_").health_check()  # once more, later


def version_2_ddl(schema: str) -> str:
    """The tables as the versions before erasure marks made them."""
    return f"""
        CREATE SCHEMA "{schema}";
        CREATE TABLE "{schema}".journal_archivist_sessions (
            session uuid PRIMARY KEY,
            message_count bigint NOT NULL DEFAULT 0,
            next_seq bigint NOT NULL DEFAULT 0,
            first_ts timestamptz, last_ts timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE "{schema}".journal_archivist_messages (
            message_id uuid PRIMARY KEY, session uuid NOT NULL,
            seq bigint NOT NULL, parent_id uuid, ts timestamptz NOT NULL,
            role text NOT NULL, author text, content_md text NOT NULL,
            record bytea NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (session, seq)
        );
    """


async def test_tables_made_before_erasure_marks_are_upgraded_in_place(
    make_archive: Callable[..., PostgresArchive], admin: Any, schema: str
) -> None:
    session = uuid4()
    old, new = record(session, "before marks"), record(session, "after marks")
    await admin.execute(version_2_ddl(schema))
    await admin.execute(
        f'INSERT INTO "{schema}".journal_archivist_messages'
        " (message_id, session, seq, ts, role, content_md, record)"
        " VALUES ($1, $2, 0, $3, 'user', $4, $5)",
        old.message_id,
        session,
        old.ts,
        old.content_md,
        msgspec.json.encode(old),
    )
    await admin.execute(
        f'INSERT INTO "{schema}".journal_archivist_sessions'
        " (session, message_count, next_seq, first_ts, last_ts)"
        " VALUES ($1, 1, 1, $2, $2)",
        session,
        old.ts,
    )
    # Without create_schema, the health check names what is missing, and writes
    # fail retryably (the writer keeps the records) until an operator upgrades.
    stale = make_archive(create_schema=False)
    with pytest.raises(BackendError, match=r"erasure_marks.*does not exist") as raised:
        await stale.health_check()
    assert raised.value.retryable
    await admin.execute(
        f'CREATE TABLE "{schema}".journal_archivist_erasure_marks'
        " (session uuid PRIMARY KEY, erased_at double precision NOT NULL)"
    )
    with pytest.raises(BackendError, match="no column appended_at") as raised:
        await stale.health_check()
    assert raised.value.retryable
    with pytest.raises(BackendError, match="appended_at") as raised:
        await stale.write_batch([SessionGroup(session, (new,), appended_at=(5.0,))])
    assert raised.value.retryable
    # create_schema=True upgrades in place: old rows get appended_at 0, so they
    # predate every mark and any erasure deletes them.
    archive = make_archive()
    await archive.write_batch([SessionGroup(session, (new,), appended_at=(5.0,))])
    assert await archive.read_session(session) == [old, new]
    assert await archive.count(session) == 2
    times = await admin.fetch(
        f"SELECT appended_at FROM {archive._sql.messages} ORDER BY seq"
    )
    assert [row[0] for row in times] == [0.0, 5.0]
    await archive.write_batch([SessionGroup(session, (), erase=True, erased_at=1.0)])
    assert await archive.read_session(session) == [new]
    assert await archive.count(session) == 1
    await stale.health_check()  # upgraded behind its back: fine now


async def test_without_create_schema_missing_tables_are_named_and_retryable(
    make_archive: Callable[..., PostgresArchive], admin: Any, schema: str
) -> None:
    archive = make_archive(create_schema=False)
    with pytest.raises(
        BackendError, match=r"journal_archivist_sessions.*create_schema=True"
    ) as raised:
        await archive.health_check()
    assert raised.value.retryable
    # A write meanwhile fails retryably too: the writer keeps the records.
    session = uuid4()
    with pytest.raises(BackendError, match="create_schema=True") as raised:
        await archive.append_messages(session, records(session, 2))
    assert raised.value.retryable
    await admin.execute(f'CREATE SCHEMA "{schema}"')  # the schema alone is not enough
    with pytest.raises(BackendError, match="does not exist"):
        await archive.health_check()
    await make_archive(create_schema=True).health_check()  # an operator creates them
    await archive.health_check()
    await archive.append_messages(session, records(session, 2))
    assert await archive.count(session) == 2


# -- writing and reading ---------------------------------------------------------------


async def test_a_batch_delivered_twice_and_again_after_a_restart_is_archived_once(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    a, b = uuid4(), uuid4()
    batch = [
        SessionGroup(a, tuple(records(a, 3))),
        SessionGroup(b, tuple(records(b, 2))),
    ]
    archive = make_archive()
    await archive.write_batch(batch)
    await archive.write_batch(batch)
    await archive.aclose()
    again = make_archive()
    await again.write_batch(batch)
    await again.write_batch([*batch, SessionGroup(a, (record(a, "new"),))])
    assert [r.content_md for r in await again.read_session(a)] == [
        "m0",
        "m1",
        "m2",
        "new",
    ]
    assert await again.read_session(b) == list(batch[1].records)
    assert (await again.count(a), await again.count(b)) == (4, 2)


async def test_records_read_in_append_order_not_by_id_or_time(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    session, other = uuid4(), uuid4()
    start = datetime(2030, 1, 1, tzinfo=UTC)
    # Ids and timestamps both run backwards against append order.
    ids = sorted((uuid4() for _ in range(9)), reverse=True)
    appended = [
        record(session, f"r{i}", message_id=ids[i], ts=start - timedelta(seconds=i))
        for i in range(9)
    ]
    archive = make_archive()
    await archive.append_messages(session, appended[:2])
    await archive.write_batch(
        [
            SessionGroup(other, (record(other, "o1"),)),
            SessionGroup(session, tuple(appended[2:5])),
            SessionGroup(other, (record(other, "o2"),)),
            SessionGroup(session, tuple(appended[5:7])),
        ]
    )
    await make_archive().append_messages(session, appended[7:])
    got = await archive.read_session(session)
    assert [r.content_md for r in got] == [f"r{i}" for i in range(9)]
    assert [r.content_md for r in await archive.read_session(other)] == ["o1", "o2"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"}", b""),  # cut short
        # nested deeper than msgspec decodes (RecursionError, not a DecodeError)
        (b'"metadata":null', b'"metadata":' + b"[" * 5000 + b"]" * 5000),
    ],
)
async def test_a_stored_record_that_does_not_decode_fails_the_read_not_retryably(
    make_archive: Callable[..., PostgresArchive],
    admin: Any,
    schema: str,
    old: bytes,
    new: bytes,
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.append_messages(session, [record(session, "a"), record(session, "b")])
    table = f'"{schema}".journal_archivist_messages'
    seq, stored = await admin.fetchrow(
        f"SELECT seq, record FROM {table} ORDER BY seq DESC LIMIT 1"
    )
    assert old in stored
    damaged = stored.replace(old, new)
    await admin.execute(f"UPDATE {table} SET record = $1 WHERE seq = $2", damaged, seq)
    with pytest.raises(BackendError, match="does not decode") as info:
        await archive.read_session(session)
    assert info.value.retryable is False


async def test_erasing_groups_erase_then_append_in_the_order_given(
    make_archive: Callable[..., PostgresArchive], admin: Any
) -> None:
    session, kept, unknown = uuid4(), uuid4(), uuid4()
    first, later = records(session, 3, "a"), records(session, 2, "b")
    archive = make_archive()
    await archive.append_messages(session, first)
    await archive.append_messages(kept, records(kept, 1))
    # Erase and records in one group; an erasure of an unknown session is a no-op.
    await archive.write_batch(
        [
            SessionGroup(session, tuple(later), erase=True),
            SessionGroup(unknown, (), erase=True),
        ]
    )
    assert await archive.read_session(session) == later
    assert await archive.count(session) == 2
    assert await archive.read_session(unknown) == []
    # Same-session groups around an erase: only what follows the erase survives,
    # and an erased record appended again is new (its id was forgotten).
    await archive.write_batch(
        [
            SessionGroup(session, tuple(first[:1])),
            SessionGroup(session, (), erase=True),
            SessionGroup(session, (*first[1:], first[0])),
        ]
    )
    assert await archive.read_session(session) == [*first[1:], first[0]]
    assert await archive.count(session) == 3
    await archive.delete_session(session)
    await archive.delete_session(session)  # a redelivered erasure
    assert await archive.read_session(session) == []
    assert await archive.count(session) == 0
    assert [s.session for s in await archive.list_sessions()] == [kept]
    table = archive._sql.messages  # nothing of the session is left behind
    assert (
        await admin.fetchval(
            f"SELECT count(*) FROM {table} WHERE session = $1", session
        )
        == 0
    )


async def test_nul_unicode_and_large_records_round_trip_exactly(
    make_archive: Callable[..., PostgresArchive], admin: Any
) -> None:
    session = uuid4()
    parent = uuid4()
    odd = [
        record(
            session, "nul\x00inside\x00", author="a\x00b", metadata={"k\x00": "v\x00"}
        ),
        record(session, "héllo ✓ 你好 مرحبا 🙂👍🏽 e\u0301 \u200b\t\n\r"),
        record(session, "x" * (2 * 1024 * 1024)),
        MessageRecord(
            session=session,
            role="tool\x00",
            metadata={"f": 0.1, "big": 2**63 - 1, "z": 1, "a": 2},
        ),
        MessageRecord(
            session=session,
            parent_id=parent,
            role="assistant",
            ts=datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC).astimezone(
                timezone(timedelta(hours=-3, minutes=-30))
            ),
            content_parts=[{"type": "text", "text": "\x00"}],
            attachments=(
                Attachment(
                    name="b.bin",
                    media_type="application/octet-stream",
                    size=256,
                    data=bytes(range(256)),
                ),
            ),
        ),
    ]
    archive = make_archive()
    await archive.append_messages(session, odd)
    got = await make_archive().read_session(session)
    assert got == odd
    assert [r.ts.utcoffset() for r in got] == [r.ts.utcoffset() for r in odd]
    # The derived text columns hold the text without its NUL characters.
    row = await admin.fetchrow(
        f"SELECT content_md, author, parent_id FROM {archive._sql.messages}"
        " WHERE message_id = $1",
        odd[0].message_id,
    )
    assert (row[0], row[1]) == ("nulinside", "ab")
    role = await admin.fetchval(
        f"SELECT role FROM {archive._sql.messages} WHERE message_id = $1",
        odd[3].message_id,
    )
    assert role == "tool"


async def test_counts_and_list_sessions(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    a, b = sorted((uuid4(), uuid4()))
    plus_two = timezone(timedelta(hours=2))
    early = datetime(2026, 1, 1, 12, 0, tzinfo=plus_two)  # 10:00 UTC
    late = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    archive = make_archive()
    await archive.append_messages(a, [record(a, "1", ts=late)])
    await archive.write_batch(
        [
            SessionGroup(a, (record(a, "2", ts=early),)),  # earlier, in a later batch
            SessionGroup(b, tuple(records(b, 3))),
        ]
    )
    first = (await archive.read_session(a))[0]
    # Redelivered, even with another ts: neither counted again nor moving first_ts.
    moved = msgspec.structs.replace(first, ts=datetime(2020, 1, 1, tzinfo=UTC))
    await archive.append_messages(a, [first, moved])
    assert await archive.count(a) == 2
    assert await archive.count(b) == 3
    assert await archive.count(uuid4()) == 0
    listed = await archive.list_sessions()
    assert [s.session for s in listed] == [a, b]
    assert all(type(s.session) is UUID for s in listed)
    assert listed[0] == SessionInfo(
        session=a,
        message_count=2,
        first_ts=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
        last_ts=datetime(2026, 1, 1, 11, 0, tzinfo=UTC),
    )
    assert listed[0].first_ts.utcoffset() == timedelta(0)
    assert listed[1].message_count == 3
    await archive.delete_session(a)
    assert [s.session for s in await archive.list_sessions()] == [b]
    assert await archive.count(a) == 0


async def test_a_session_whose_records_were_all_archived_already_is_not_listed(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    # A direct caller reusing another session's message_id: the batch reserves a
    # sessions row for the new session, and inserts nothing into it.
    owner, other = uuid4(), uuid4()
    archive = make_archive()
    original = record(owner)
    await archive.append_messages(owner, [original])
    await archive.append_messages(
        other, [msgspec.structs.replace(original, session=other)]
    )
    assert await archive.count(other) == 0
    assert [s.session for s in await archive.list_sessions()] == [owner]


async def test_list_sessions_orders_and_pages_by_uuid_value(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    await check_session_paging(make_archive())


@pytest.mark.parametrize(("options", "error", "complaint"), BAD_PAGES)
async def test_list_sessions_rejects_bad_arguments(
    options: dict[str, object], error: type[Exception], complaint: str
) -> None:
    # Checked before any I/O: no server needed.
    archive = PostgresArchive("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(error, match=complaint):
        await archive.list_sessions(**options)  # type: ignore[arg-type]


# -- failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (asyncpg.exceptions.SerializationError("x"), True),  # 40001
        (asyncpg.exceptions.DeadlockDetectedError("x"), True),  # 40P01
        (asyncpg.exceptions.TooManyConnectionsError("x"), True),  # 53300
        (asyncpg.exceptions.CannotConnectNowError("x"), True),  # 57P03
        (asyncpg.exceptions.AdminShutdownError("x"), True),  # 57P01
        (asyncpg.exceptions.QueryCanceledError("x"), True),  # 57014: statement_timeout
        (asyncpg.exceptions.ConnectionDoesNotExistError("x"), True),  # 08003
        (asyncpg.exceptions.UndefinedTableError("x"), True),  # 42P01: operator fixes
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        (ConnectionRefusedError(111, "refused"), True),  # an OSError
        (TimeoutError(), True),
        (asyncpg.exceptions.CheckViolationError("x"), False),  # 23514
        (asyncpg.exceptions.NumericValueOutOfRangeError("x"), False),  # 22003
        (asyncpg.exceptions.DataError("x"), False),  # a value asyncpg cannot encode
        (asyncpg.exceptions.PostgresSyntaxError("x"), False),  # 42601
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
def test_failure_classification(exc: BaseException, retryable: bool) -> None:
    assert classify(exc)[0] is retryable


async def test_an_unreachable_server_is_retryable_and_keeps_the_password_secret(
    make_archive: Callable[..., PostgresArchive],
    pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_closed_port()}/test"
    archive = make_archive(dsn=dead, timeout=5)
    assert PASSWORD not in repr(archive)
    session = uuid4()
    for call in (archive.health_check(), archive.read_session(session)):
        with pytest.raises(BackendError, match="cannot reach the server") as raised:
            await call
        assert raised.value.retryable
        assert not any(PASSWORD in text for text in _error_texts(raised.value))
    # With a reachable server (trust auth ignores the password): logs and errors.
    live = make_archive(dsn=_with_password(pg_dsn), create_schema=False)
    with pytest.raises(BackendError, match="does not exist") as raised:
        await live.health_check()
    assert not any(PASSWORD in text for text in _error_texts(raised.value))
    assert "***" in str(raised.value)
    await live.aclose()
    assert any("connection pool" in r.getMessage() for r in caplog.records)
    leaked = [r.getMessage() for r in caplog.records if PASSWORD in r.getMessage()]
    assert leaked == []


async def test_a_record_the_server_refuses_fails_the_batch_not_retryably(
    make_archive: Callable[..., PostgresArchive], admin: Any
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.health_check()
    # An operator's constraint, as a real archive may have: the server refuses it.
    await admin.execute(
        f"ALTER TABLE {archive._sql.messages}"
        " ADD CONSTRAINT no_forbidden CHECK (content_md <> 'forbidden')"
    )
    batch = [record(session, "fine"), record(session, "forbidden")]
    with pytest.raises(BackendError, match=r"CheckViolationError.*23514") as raised:
        await archive.append_messages(session, batch)
    assert not raised.value.retryable
    assert await archive.read_session(session) == []  # nothing of the batch was kept
    assert await archive.count(session) == 0
    await archive.append_messages(session, batch[:1])
    assert await archive.read_session(session) == batch[:1]


async def test_a_call_whose_connection_is_terminated_fails_retryably_then_it_reconnects(
    make_archive: Callable[..., PostgresArchive], admin: Any, pg_dsn: str, app_name: str
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.append_messages(session, records(session, 1, "before"))
    # Idle connections killed, as a server restart does: the next call may meet a
    # dead connection (retryable) or reconnect at once; the one after works.
    await admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE application_name = $1",
        app_name,
    )
    try:
        await archive.count(session)
    except BackendError as exc:
        failed_retryably = exc.retryable
        assert failed_retryably
    assert await archive.count(session) == 1
    # A connection killed in the middle of a write: that call fails, retryably.
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with locker.transaction():
            await locker.execute(
                f"LOCK TABLE {archive._sql.sessions} IN EXCLUSIVE MODE"
            )
            failures: list[BackendError] = []

            async def write() -> None:
                try:
                    await archive.append_messages(session, records(session, 2, "lost"))
                except BackendError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(write)
                for pid in await _wait_for_lock_wait(admin, app_name):
                    await admin.execute("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await locker.close()
    assert len(failures) == 1
    assert failures[0].retryable, failures[0]
    # The message names the cause, not only its aftermath (a failed rollback).
    assert re.search("AdminShutdownError|ConnectionDoesNotExistError", str(failures[0]))
    more = records(session, 2, "after")
    await archive.append_messages(session, more)
    got = await archive.read_session(session)
    assert [r.content_md for r in got] == ["before0", "after0", "after1"]


async def test_a_call_past_its_timeout_fails_retryably_and_keeps_nothing(
    make_archive: Callable[..., PostgresArchive], admin: Any, pg_dsn: str, app_name: str
) -> None:
    session = uuid4()
    archive = make_archive(timeout=0.5)
    await archive.health_check()
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with locker.transaction():
            await locker.execute(
                f"LOCK TABLE {archive._sql.sessions} IN EXCLUSIVE MODE"
            )
            with pytest.raises(BackendError, match="timed out") as raised:
                await archive.append_messages(session, records(session, 2))
    finally:
        await locker.close()
    assert raised.value.retryable
    assert await archive.count(session) == 0
    await archive.append_messages(session, records(session, 2))
    assert await archive.count(session) == 2


async def test_aclose_is_idempotent_and_a_later_call_reopens(
    make_archive: Callable[..., PostgresArchive],
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.append_messages(session, records(session, 1))
    await archive.aclose()
    await archive.aclose()
    assert await archive.count(session) == 1
    async with archive:
        await archive.append_messages(session, records(session, 1, "z"))
    assert await make_archive().count(session) == 2


# -- with the library ------------------------------------------------------------------


async def test_an_archivist_delivers_to_postgres_and_reads_back(
    make_archive: Callable[..., PostgresArchive], journal_path: Path
) -> None:
    archive = make_archive()
    sessions = [uuid4() for _ in range(5)]
    appended: dict[UUID, list[MessageRecord]] = {s: [] for s in sessions}
    reg = registration(archive, name="postgres")
    async with Archivist.open(journal_path, [reg]) as archivist:
        for i in range(40):
            session = sessions[i % len(sessions)]
            batch = records(session, 1 + i % 3, f"{i}-")
            appended[session].extend(batch)
            await archivist.append_messages(session, batch)
        await archivist.delete_session(sessions[0])
        with anyio.fail_after(10):
            await archivist.wait_drained()
        for session in sessions[1:]:
            assert await archivist.read_session(session) == appended[session]
        assert await archivist.read_session(sessions[0]) == []
    reader = make_archive()
    for session in sessions[1:]:
        assert await reader.read_session(session) == appended[session]
        assert await reader.count(session) == len(appended[session])


async def test_contract(make_archive: Callable[..., PostgresArchive]) -> None:
    await check_backend(make_archive)


def test_an_archive_used_under_a_new_event_loop_opens_a_new_pool(pg_dsn: str) -> None:
    schema = f"ja_test_{uuid4().hex[:12]}"
    archive = PostgresArchive(pg_dsn, schema=schema, create_schema=True)
    session = uuid4()

    async def append() -> int:
        await archive.append_messages(session, records(session, 1, f"{uuid4()}"))
        return await archive.count(session)

    async def drop_schema() -> None:
        connection = await asyncpg.connect(pg_dsn)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(append()) == 1
        # Another loop: the first loop's pool is terminated and a new one opened.
        assert second.run_until_complete(append()) == 2
        second.run_until_complete(archive.aclose())
        first.run_until_complete(asyncio.sleep(0))  # let it close those sockets
    finally:
        first.close()
        second.close()
        asyncio.run(drop_schema())


# -- review regressions ----------------------------------------------------------------


async def test_an_erasure_waits_for_another_writers_batch_and_erases_it_too(
    make_archive: Callable[..., PostgresArchive],
    admin: Any,
    pg_dsn: str,
    app_name: str,
) -> None:
    # Two writers of one session. Z's batch has reserved its positions (it holds
    # the session's row) and is held before COMMIT: its insert waits on a blocker
    # that inserted one of Z's message ids without committing. X's erasure must
    # wait for Z, then erase Z's records too, and seq must never restart.
    session = uuid4()
    x = make_archive(application_name=f"{app_name}-x")
    z = make_archive(application_name=f"{app_name}-z")
    await x.append_messages(session, records(session, 2, "old"))
    await z.health_check()
    in_flight = records(session, 2, "z")
    blocker = await asyncpg.connect(pg_dsn)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            f"INSERT INTO {x._sql.messages}"
            " (message_id, session, seq, ts, role, content_md, record)"
            " VALUES ($1, $2, 0, now(), 'user', '', '')",
            in_flight[-1].message_id,
            uuid4(),
        )
        async with anyio.create_task_group() as group:
            group.start_soon(z.append_messages, session, in_flight)
            await _wait_for_lock_wait(admin, f"{app_name}-z")  # Z holds the row
            group.start_soon(x.delete_session, session)
            await _wait_for_lock_wait(admin, f"{app_name}-x")  # X waits for Z
            await blocking.rollback()  # Z inserts and commits, then X erases
    finally:
        await blocker.close()
    assert await x.read_session(session) == []
    assert await x.count(session) == 0
    assert session not in [s.session for s in await x.list_sessions()]
    left = await admin.fetchval(
        f"SELECT count(*) FROM {x._sql.messages} WHERE session = $1", session
    )
    assert left == 0
    # The session's row is kept with its counters reset and next_seq kept, so the
    # next batch cannot collide with a position used before the erasure.
    row = await admin.fetchrow(
        f"SELECT message_count, next_seq, first_ts, last_ts FROM {x._sql.sessions}"
        " WHERE session = $1",
        session,
    )
    assert tuple(row) == (0, 4, None, None)
    after = records(session, 3, "new")
    await x.append_messages(session, after)
    assert await x.read_session(session) == after
    assert await x.count(session) == 3
    seqs = await admin.fetch(
        f"SELECT seq FROM {x._sql.messages} WHERE session = $1 ORDER BY seq", session
    )
    assert [r[0] for r in seqs] == [4, 5, 6]


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        # 25006: a hot standby after a failover, or default_transaction_read_only
        (asyncpg.exceptions.ReadOnlySQLTransactionError("x"), True),
        # 42703 / 42883: an outdated table layout, fixed by an operator, never the
        # records' fault (every batch would fail alike)
        (asyncpg.exceptions.UndefinedColumnError("x"), True),
        (asyncpg.exceptions.UndefinedFunctionError("x"), True),
        (asyncpg.exceptions.PostgresSyntaxError("x"), False),  # 42601 stays a bug
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
def test_read_only_and_outdated_layout_errors_are_retryable(
    exc: BaseException, retryable: bool
) -> None:
    assert classify(exc)[0] is retryable


async def test_a_read_only_server_fails_writes_retryably(
    make_archive: Callable[..., PostgresArchive], pg_dsn: str
) -> None:
    session = uuid4()
    await make_archive().health_check()  # the tables exist
    joiner = "&" if "?" in pg_dsn else "?"
    read_only = make_archive(
        dsn=f"{pg_dsn}{joiner}default_transaction_read_only=on", create_schema=False
    )
    with pytest.raises(BackendError, match=r"25006.*read-only") as raised:
        await read_only.append_messages(session, records(session, 1))
    assert raised.value.retryable
    assert raised.value.retry_after is not None
    assert await read_only.count(session) == 0  # reads still work


def _secret_fragments(secret: str) -> list[str]:
    # A misparsed DSN may show a part of the password (between '/', '?', '#', ':').
    return [p for p in re.split(r"[/?#:]", secret) if len(p) >= 4]


@pytest.mark.parametrize(
    ("dsn", "secrets"),
    [
        # unescaped '/', '#' and '?' in the password: urlsplit ends the host early
        ("postgresql://u:Sekr3t/hunter2x@127.0.0.1:{port}/db", ["Sekr3t/hunter2x"]),
        ("postgresql://u:Sekr3t#hunter2x@127.0.0.1:{port}/db", ["Sekr3t#hunter2x"]),
        ("postgresql://u:Sekr3t?hunter2x@127.0.0.1:{port}/db", ["Sekr3t?hunter2x"]),
        # '@' and ':' in the password too
        ("postgresql://u:Se@kr3t:hunter2x@127.0.0.1:{port}/db", ["Se@kr3t:hunter2x"]),
        # percent-encoded, in the query: both forms are secret
        (
            "postgresql://u@127.0.0.1:{port}/db?password=Sekr3t%2Bhun%26ter2x",
            ["Sekr3t%2Bhun%26ter2x", "Sekr3t+hun&ter2x"],
        ),
        # percent-encoded in the user info
        ("postgresql://u:Sekr3t%2Fhunter2x@127.0.0.1:{port}/db", ["Sekr3t/hunter2x"]),
    ],
)
async def test_a_password_the_url_parser_misreads_stays_secret(
    dsn: str,
    secrets: list[str],
    make_archive: Callable[..., PostgresArchive],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = dsn.format(port=_closed_port())
    archive = make_archive(dsn=dsn, timeout=5)
    masked, scrubbed = mask_dsn(dsn)
    hidden = [*secrets, *(f for s in secrets for f in _secret_fragments(s))]
    assert set(secrets) <= scrubbed
    assert "***" in repr(archive)
    with pytest.raises(BackendError) as raised:
        await archive.health_check()
    assert raised.value.retryable
    texts = [repr(archive), masked, *_error_texts(raised.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert [t for t in texts if any(h in t for h in hidden)] == []


def test_a_keyword_dsn_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValueError, match=r"postgresql:// URL.*password=\*\*\*") as e:
        PostgresArchive("host=127.0.0.1 user=u password=topSekr3t dbname=db")
    assert "topSekr3t" not in str(e.value)
    with pytest.raises(ValueError, match=r"password = \*\*\*") as e:
        PostgresArchive("host=127.0.0.1 password = 'top Sekr3t' dbname=db")
    assert "Sekr3t" not in str(e.value)


async def test_aclose_waits_for_a_pool_being_opened_and_closes_it(
    make_archive: Callable[..., PostgresArchive], monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, gate = anyio.Event(), anyio.Event()
    opened: list[Any] = []
    create_pool = asyncpg.create_pool

    async def gated_create_pool(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await gate.wait()
        pool = await create_pool(*args, **kwargs)
        opened.append(pool)
        return pool

    monkeypatch.setattr(asyncpg, "create_pool", gated_create_pool)
    archive = make_archive()
    closed = anyio.Event()

    async def probe() -> None:
        with contextlib.suppress(BackendError):  # its pool may close under it
            await archive.health_check()

    async def close() -> None:
        await archive.aclose()
        closed.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(probe)
            await entered.wait()  # the pool is being opened
            group.start_soon(close)
            await anyio.wait_all_tasks_blocked()
            assert not closed.is_set()  # aclose waits for the opening
            gate.set()
    assert len(opened) == 1
    assert opened[0].is_closing()  # closed by aclose, not leaked
    assert archive._pool is None


async def test_a_secret_in_a_chained_error_is_never_chained(
    make_archive: Callable[..., PostgresArchive],
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def failing_create_pool(*args: Any, **kwargs: Any) -> Any:
        try:
            raise ValueError(f"cannot use password {PASSWORD}")
        except ValueError as exc:
            raise RuntimeError("connecting failed") from exc

    monkeypatch.setattr(asyncpg, "create_pool", failing_create_pool)
    archive = make_archive(dsn=_with_password(pg_dsn))
    with pytest.raises(BackendError, match="connecting failed") as raised:
        await archive.health_check()
    assert raised.value.retryable
    assert not any(PASSWORD in text for text in _error_texts(raised.value))
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)
