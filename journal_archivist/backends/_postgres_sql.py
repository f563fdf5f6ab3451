"""What ``PostgresArchive`` says to PostgreSQL, and what its errors mean: pure, no I/O.

The statements (with validated, quoted table names), how a batch becomes their
parameters, and what an error from asyncpg or the OS means; which text of a DSN
is secret is ``_postgres_dsn``'s. ``postgres.py`` holds the behaviour (pool,
transactions, error translation) and imports this module after its own guarded
``import asyncpg``, which names the extra to install.

Rules and theory:
- **Schema** (``<schema>.<prefix>sessions``, ``<prefix>messages`` and
  ``<prefix>erasure_marks``): sessions(session uuid PK, message_count, next_seq,
  first_ts, last_ts, created_at, updated_at); messages(message_id uuid PK,
  session, seq, parent_id, ts timestamptz, role, author, content_md, record
  bytea, archived_at, appended_at), unique on (session, seq);
  erasure_marks(session uuid PK, erased_at). Schema and prefix are checked
  against ``[a-z_][a-z0-9_]{0,40}`` and quoted, so no other text reaches the SQL.
  Tables made before erasure marks are upgraded in place by the DDL: the
  marks table is created, and ``appended_at`` added with default 0 (no table
  rewrite): those rows predate every mark, so any erasure deletes them.
- **Counters move with the rows.** ``message_count``, ``first_ts`` and ``last_ts``
  are updated by the statement that inserts the messages, from the rows it really
  inserted (``RETURNING`` skips conflicts): a redelivered record changes none of
  them. ``first_ts``/``last_ts`` are NULL only while ``message_count`` is 0 (a
  row reserved by a batch whose records were all archived already, or an erased
  session), and such a row is not listed.
- **One lock, then a fresh look.** A batch first upserts the row of every session
  it touches (``reserve``, in one statement, in UUID order, so batches never
  deadlock on each other): that reserves the appended records' positions and
  locks each row until COMMIT, waiting for any other writer of the session (even
  one whose row is not committed yet). Only then do separate statements erase
  and insert: under READ COMMITTED each takes a new snapshot, so it sees every
  batch committed before the lock was granted. (Deleting in the statement that
  waits for the lock would use the snapshot from before the wait and miss
  those rows.)
- **Erasure marks ride on that lock.** An erasure at T raises the session's mark
  to at least T and deletes its messages appended before T; an insert skips a
  record appended before its session's mark. READ COMMITTED alone would let an
  erasure miss a concurrent uncommitted insert and that insert miss the
  uncommitted mark; but every batch, erasing or appending, holds the row lock of
  each session it touches before it reads or writes a mark or a message of it,
  so the two are serialised, and whichever comes second sees the first. The row
  is the lock: exclusive for both, which costs appends nothing, since appends
  of one session already queue on ``next_seq``; and no extra round trip, and no
  advisory-lock key space to share with the application. Marks are kept forever.
- **Erasure keeps the sessions row**, recounted from the messages left (none,
  unless a record appended after the erasure arrived first: then
  ``message_count`` is theirs, else 0 with ``first_ts``/``last_ts`` NULL), and
  ``next_seq`` as it was: positions never restart, so no record ever collides
  with the (session, seq) of an earlier one. An erasure of an unknown session
  leaves such a row too. ``count`` reads 0 and ``list_sessions`` skips an
  emptied session, as if it had never been written.
- **Sessions sort as UUIDs.** PostgreSQL compares ``uuid`` bytewise (big-endian),
  which is the order of the 128-bit values, Python's ``UUID`` order.
- **Failure classification**: whatever repeating may fix is retryable: lost or
  refused connections, timeouts, ``OSError``, serialization failures, deadlocks,
  too many connections, a server starting or shutting down (SQLSTATE classes 08,
  40, 53, 57, 58, lock timeouts), a read-only server (a hot standby during a
  failover, ``default_transaction_read_only``), and configuration or schema
  problems an operator fixes (missing table, schema, database, column or
  function, privilege, authentication), so records are never dead-lettered
  because of them: each of these fails every batch alike. What the server refuses
  about the data itself (data exceptions, constraint violations, anything else)
  is not retryable.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import asyncpg  # type: ignore[import-untyped]
import msgspec

from .._errors import BackendError
from ._base import append_times, erasure_time
from ._codec import encode_record

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from uuid import UUID

    from .._records import MessageRecord
    from ._base import SessionGroup

_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_IDENTIFIER_RULE: Final = "1-41 characters of a-z, 0-9 and _, not starting with a digit"


def check_identifier(what: str, value: object) -> str:
    """Return ``value`` if it is a safe schema or prefix; raise ``ValueError``."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} must be {_IDENTIFIER_RULE}, got {value!r}")
    return value


class Sql(NamedTuple):
    """Every statement, with the validated, quoted table names filled in."""

    sessions: str  # the quoted, schema-qualified names
    messages: str
    marks: str
    ddl: str
    reserve: str
    erase: str
    insert: str
    read: str
    count_session: str
    list_all: str
    list_after: str
    probe: str


def statements(schema: str, prefix: str) -> Sql:
    """The statements for tables ``<prefix>sessions``, ``<prefix>messages`` and
    ``<prefix>erasure_marks``.

    ``schema`` and ``prefix`` must have passed ``check_identifier``.
    """
    qschema = f'"{schema}"'
    sessions = f'{qschema}."{prefix}sessions"'
    messages = f'{qschema}."{prefix}messages"'
    marks = f'{qschema}."{prefix}erasure_marks"'
    # One lock per schema serialises every instance's DDL there (CREATE ... IF NOT
    # EXISTS alone races); the validated name holds no quote.
    lock_key = f"journal_archivist:{schema}"
    ddl = f"""
        SET LOCAL client_min_messages = warning;
        SELECT pg_advisory_xact_lock(hashtext('{lock_key}'));
        CREATE SCHEMA IF NOT EXISTS {qschema};
        CREATE TABLE IF NOT EXISTS {sessions} (
            session uuid PRIMARY KEY,
            message_count bigint NOT NULL DEFAULT 0,
            next_seq bigint NOT NULL DEFAULT 0,
            first_ts timestamptz,  -- earliest and latest ts of its messages;
            last_ts timestamptz,   -- NULL while message_count is 0
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS {messages} (
            message_id uuid PRIMARY KEY,
            session uuid NOT NULL,
            seq bigint NOT NULL,
            parent_id uuid,
            ts timestamptz NOT NULL,
            role text NOT NULL,
            author text,
            content_md text NOT NULL,
            record bytea NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now(),
            appended_at double precision NOT NULL DEFAULT 0,  -- journal time
            UNIQUE (session, seq)
        );
        CREATE TABLE IF NOT EXISTS {marks} (
            session uuid PRIMARY KEY,
            erased_at double precision NOT NULL  -- latest erasure, unix seconds
        );
        -- Upgrade tables made before erasure marks. Checked first: ALTER TABLE
        -- locks the table exclusively even when it changes nothing.
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_attribute
                           WHERE attrelid = '{messages}'::regclass
                           AND attname = 'appended_at' AND NOT attisdropped) THEN
                ALTER TABLE {messages}
                    ADD COLUMN appended_at double precision NOT NULL DEFAULT 0;
            END IF;
        END $$;
    """
    listed = f"SELECT session, message_count, first_ts, last_ts FROM {sessions}"
    return Sql(
        sessions=sessions,
        messages=messages,
        marks=marks,
        ddl=ddl,
        # $1 every session of the batch (sorted), $2 how many records each
        # appends. Runs first: see "One lock".
        reserve=f"""
            INSERT INTO {sessions} AS s (session, next_seq)
            SELECT * FROM unnest($1::uuid[], $2::bigint[])
            ON CONFLICT (session) DO UPDATE SET
                next_seq = s.next_seq + excluded.next_seq,
                updated_at = now()
            RETURNING session, next_seq
        """,
        # $1 the erased sessions, $2 the time of each erasure. The recount runs
        # on the statement's snapshot, from before the DELETE: so it counts the
        # rows the DELETE leaves, those appended at or after the erasure.
        # ``session = ANY($1)`` lets any plan find the rows by index.
        erase=f"""
            WITH e AS (
                SELECT * FROM unnest($1::uuid[], $2::float8[]) AS e(session, t)
            ), marked AS (
                INSERT INTO {marks} AS k (session, erased_at)
                SELECT session, t FROM e
                ON CONFLICT (session) DO UPDATE
                SET erased_at = greatest(k.erased_at, excluded.erased_at)
            ), deleted AS (
                DELETE FROM {messages} AS m USING e
                WHERE m.session = ANY($1::uuid[]) AND m.session = e.session
                AND m.appended_at < e.t
            )
            UPDATE {sessions} AS s SET (message_count, first_ts, last_ts) = (
                SELECT count(*), min(m.ts), max(m.ts) FROM {messages} AS m
                WHERE m.session = s.session AND m.appended_at >= e.t
            )
            FROM e WHERE s.session = e.session
        """,
        # least/greatest ignore NULL: the first rows of a session set both. A
        # record appended before its session's mark was erased: skipped. (The
        # marks are read once, in ``m``: checked row by row instead, the check's
        # cost grows with the rows planned, so PostgreSQL kept planning the
        # statement anew at every call rather than reuse its generic plan.)
        insert=f"""
            WITH m AS MATERIALIZED (
                SELECT session, erased_at FROM {marks}
                WHERE session = ANY($2::uuid[])
            ), inserted AS (
                INSERT INTO {messages} (message_id, session, seq, parent_id, ts,
                                        role, author, content_md, record,
                                        appended_at)
                SELECT r.* FROM unnest($1::uuid[], $2::uuid[], $3::bigint[],
                                       $4::uuid[], $5::timestamptz[], $6::text[],
                                       $7::text[], $8::text[], $9::bytea[],
                                       $10::float8[])
                    AS r(message_id, session, seq, parent_id, ts, role, author,
                         content_md, record, appended_at)
                WHERE NOT EXISTS (SELECT 1 FROM m WHERE m.session = r.session
                                  AND m.erased_at > r.appended_at)
                ON CONFLICT (message_id) DO NOTHING
                RETURNING session, ts
            )
            UPDATE {sessions} AS s SET
                message_count = s.message_count + c.n,
                first_ts = least(s.first_ts, c.first_ts),
                last_ts = greatest(s.last_ts, c.last_ts)
            FROM (
                SELECT session, count(*) AS n, min(ts) AS first_ts,
                       max(ts) AS last_ts
                FROM inserted GROUP BY session
            ) AS c
            WHERE s.session = c.session
        """,
        read=f"SELECT record FROM {messages} WHERE session = $1 ORDER BY seq",
        count_session=f"SELECT message_count FROM {sessions} WHERE session = $1",
        list_all=f"""
            {listed} WHERE message_count > 0 ORDER BY session LIMIT $1
        """,
        list_after=f"""
            {listed} WHERE session > $2 AND message_count > 0
            ORDER BY session LIMIT $1
        """,
        # Each table, and the column that tables made before marks lack.
        probe="""
            SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,
                   to_regclass($3) IS NOT NULL,
                   EXISTS (SELECT 1 FROM pg_attribute
                           WHERE attrelid = to_regclass($2)
                           AND attname = 'appended_at' AND NOT attisdropped)
        """,
    )


# -- batch planning -----------------------------------------------------------------


class Plan(NamedTuple):
    """What a batch does: erase these sessions (at these times), then append
    these records (each with its journal time)."""

    erased: dict[UUID, float]
    appended: dict[UUID, list[tuple[MessageRecord, float]]]


def plan(groups: Sequence[SessionGroup], now: float) -> Plan:
    """Reduce a batch to what it does per session: maybe erase, then append.

    Times missing from a group (a direct call) are ``now``. An erasing group
    discards the records of earlier groups of its session: group order is
    journal order, so they were appended before it and would be erased anyway.
    Two erasures of one session erase at the later time. A record repeated
    within the batch is kept once, where it first appears, as ``ON CONFLICT DO
    NOTHING`` keeps it across batches.
    """
    erased: dict[UUID, float] = {}
    appended: dict[UUID, list[tuple[MessageRecord, float]]] = {}
    for group in groups:
        if group.erase:
            at = erasure_time(group, now)
            erased[group.session] = max(at, erased.get(group.session, at))
            appended.pop(group.session, None)
        if group.records:
            times = append_times(group, now)
            pairs = zip(group.records, times, strict=True)
            appended.setdefault(group.session, []).extend(pairs)
    seen: set[UUID] = set()
    for session, both in appended.items():
        kept = []
        for record, at in both:
            if record.message_id not in seen:
                seen.add(record.message_id)
                kept.append((record, at))
        appended[session] = kept
    return Plan(erased, appended)


def columns(
    sessions: list[UUID], appended: dict[UUID, list[tuple[MessageRecord, float]]]
) -> list[list[Any]]:
    """The insert's column arrays, all but ``seq`` (known once reserved), the
    journal times last.

    Raises:
        BackendError: ``retryable=False``, for a record of another session or one
            that cannot be encoded.
    """
    ids: list[UUID] = []
    owners: list[UUID] = []
    parents: list[UUID | None] = []
    stamps: list[datetime] = []
    roles: list[str] = []
    authors: list[str | None] = []
    contents: list[str] = []
    blobs: list[bytes] = []
    times: list[float] = []
    for session in sessions:
        for record, at in appended[session]:
            if record.session != session:
                raise BackendError(
                    f"record {record.message_id} belongs to session"
                    f" {record.session}, not {session}",
                    retryable=False,
                )
            try:
                blobs.append(encode_record(record))
            except (msgspec.EncodeError, OverflowError, UnicodeEncodeError) as exc:
                raise BackendError(
                    f"record {record.message_id} cannot be encoded: {exc}",
                    retryable=False,
                ) from exc
            ids.append(record.message_id)
            owners.append(session)
            parents.append(record.parent_id)
            stamps.append(record.ts)
            roles.append(_text(record.role))
            author = record.author
            authors.append(None if author is None else _text(author))
            contents.append(_text(record.content_md))
            times.append(at)
    return [ids, owners, parents, stamps, roles, authors, contents, blobs, times]


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; the bytea record keeps the exact value.
    return value.replace("\x00", "") if "\x00" in value else value


# -- failure classification ---------------------------------------------------------

#: SQLSTATE classes that repeating may fix: connection exceptions, transaction
#: rollback (serialization failure, deadlock), insufficient resources (too many
#: connections, disk full), operator intervention (admin shutdown, cannot connect
#: now, query canceled by a timeout), system errors.
RETRYABLE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
#: Single SQLSTATEs that repeating may fix, or that an operator fixes without
#: touching the records: lock not available, a plan invalidated by a schema change,
#: a read-only transaction (a standby), a missing database, schema, table, column
#: or function (an outdated table layout), a missing privilege, failed
#: authentication.
RETRYABLE_STATES: Final = frozenset(
    {
        *("55P03", "0A000", "25006", "3D000", "3F000"),
        *("42P01", "42703", "42883", "42501", "28000", "28P01"),
    }
)
#: What to tell the operator, by SQLSTATE.
HINTS: Final = {
    "42P01": "the archive tables are missing: pass create_schema=True or create"
    " them (see docs/backends.md)",
    "3F000": "the archive schema is missing: pass create_schema=True or create it",
    "25006": "the server is read-only (a hot standby, or"
    " default_transaction_read_only): retrying until it takes writes",
    "42703": "the archive tables have an outdated layout: compare them with"
    " docs/backends.md",
    "42883": "the archive tables have an outdated layout: compare them with"
    " docs/backends.md",
}
#: SQLSTATEs after which ``create_schema=True`` creates the tables again.
MISSING_SCHEMA_STATES: Final = frozenset({"42P01", "3F000"})
#: SQLSTATEs worth a pause before the retry: too many connections, starting up,
#: read-only (a failover takes seconds).
BACKOFF_STATES: Final = frozenset({"53300", "57P03", "25006"})
#: SQLSTATEs after which pooled connections are replaced: after a failover they
#: may still be connected to the old primary, now a standby.
RECONNECT_STATES: Final = frozenset({"25006"})


def is_retryable_state(state: str) -> bool:
    """Whether an error with SQLSTATE ``state`` may pass if the call is repeated."""
    return state[:2] in RETRYABLE_CLASSES or state in RETRYABLE_STATES


def classify(exc: BaseException) -> tuple[bool, str]:
    """Return ``(retryable, what happened)`` for an error from asyncpg or the OS.

    An asyncpg ``InterfaceError`` raised while handling another error (a rollback
    on a connection the server just closed) reports that error first; it is
    retryable if either is.
    """
    retryable, what = _classify_one(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(cause, Exception):
        cause_retryable, cause_what = _classify_one(cause)
        return retryable or cause_retryable, f"{cause_what}; then {what}"
    return retryable, what


#: The start of asyncpg's text for a value it cannot encode, up to the value.
_BAD_ARGUMENT: Final = re.compile(
    r"invalid input for query argument \$\d+( in element #\d+ of executemany\(\)"
    r" sequence)?"
)


def _message(exc: BaseException) -> str:
    """The message of an asyncpg error (its first argument), without the value
    asyncpg quotes when it cannot encode one: record content, which must stay
    out of logs and dead-letter rows."""
    message = str(exc.args[0]) if exc.args else ""
    found = _BAD_ARGUMENT.match(message)
    return f"{found.group()}: value withheld" if found else message


def _classify_one(exc: BaseException) -> tuple[bool, str]:
    if isinstance(exc, TimeoutError):
        return True, "timed out"
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        retryable = is_retryable_state(state)
        what = f"{type(exc).__name__} (SQLSTATE {state}): {_message(exc)}"
        hint = HINTS.get(state)
        return retryable, f"{what}; {hint}" if hint else what
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False, f"the server cannot take a value: {_message(exc)}"
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # Connection closed or released under us, a stale schema cache, a bad
        # client setting: not about the records.
        return True, f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}"
    if isinstance(exc, OSError):
        return True, f"cannot reach the server: {type(exc).__name__}: {exc}"
    return False, f"{type(exc).__name__}: {exc}"
