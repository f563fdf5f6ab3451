"""What ``PostgresArchive`` says to PostgreSQL, and what its errors mean: pure, no I/O.

The statements (with validated, quoted table names), how a batch becomes their
parameters, and what an error from asyncpg or the OS means. ``postgres.py`` holds
the behaviour (pool, transactions, error translation) and is the only importer:
it imports this module after its own guarded ``import asyncpg``, which names the
extra to install.

Rules and theory:
- **Schema** (``<schema>.<prefix>sessions`` and ``<prefix>messages``):
  sessions(session uuid PK, message_count, next_seq, first_ts, last_ts,
  created_at, updated_at); messages(message_id uuid PK, session, seq, parent_id,
  ts timestamptz, role, author, content_md, record bytea, archived_at), unique on
  (session, seq). Schema and prefix are checked against ``[a-z_][a-z0-9_]{0,40}``
  and quoted, so no other text reaches the SQL.
- **Counters move with the rows.** ``message_count``, ``first_ts`` and ``last_ts``
  are updated by the statement that inserts the messages, from the rows it really
  inserted (``RETURNING`` skips conflicts): a redelivered record changes none of
  them. ``first_ts``/``last_ts`` are NULL only while ``message_count`` is 0 (a
  row reserved by a batch whose records were all archived already), and such a
  row is not listed.
- **Sessions sort as UUIDs.** PostgreSQL compares ``uuid`` bytewise (big-endian),
  which is the order of the 128-bit values, Python's ``UUID`` order.
- **Failure classification**: whatever repeating may fix is retryable: lost or
  refused connections, timeouts, ``OSError``, serialization failures, deadlocks,
  too many connections, a server starting or shutting down (SQLSTATE classes 08,
  40, 53, 57, 58, lock timeouts), and configuration or schema problems an
  operator fixes (missing table, schema or database, privilege, authentication),
  so records are never dead-lettered because of them. What the server refuses
  about the data itself (data exceptions, constraint violations, anything else)
  is not retryable.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import asyncpg  # type: ignore[import-untyped]
import msgspec

from .._errors import BackendError
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
    ddl: str
    erase: str
    reserve: str
    insert: str
    read: str
    count_session: str
    list_all: str
    list_after: str
    probe: str


def statements(schema: str, prefix: str) -> Sql:
    """The statements for tables ``<prefix>sessions`` and ``<prefix>messages``.

    ``schema`` and ``prefix`` must have passed ``check_identifier``.
    """
    qschema = f'"{schema}"'
    sessions = f'{qschema}."{prefix}sessions"'
    messages = f'{qschema}."{prefix}messages"'
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
            UNIQUE (session, seq)
        );
    """
    listed = f"SELECT session, message_count, first_ts, last_ts FROM {sessions}"
    return Sql(
        sessions=sessions,
        messages=messages,
        ddl=ddl,
        erase=f"""
            WITH gone AS (DELETE FROM {messages} WHERE session = ANY($1::uuid[]))
            DELETE FROM {sessions} WHERE session = ANY($1::uuid[])
        """,
        reserve=f"""
            INSERT INTO {sessions} AS s (session, next_seq)
            SELECT * FROM unnest($1::uuid[], $2::bigint[])
            ON CONFLICT (session) DO UPDATE
                SET next_seq = s.next_seq + excluded.next_seq, updated_at = now()
            RETURNING session, next_seq
        """,
        # least/greatest ignore NULL: the first rows of a session set both.
        insert=f"""
            WITH inserted AS (
                INSERT INTO {messages} (message_id, session, seq, parent_id, ts,
                                        role, author, content_md, record)
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[],
                                     $4::uuid[], $5::timestamptz[], $6::text[],
                                     $7::text[], $8::text[], $9::bytea[])
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
        probe="SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
    )


# -- batch planning -----------------------------------------------------------------


class Plan(NamedTuple):
    """What a batch does: erase these sessions, then append these records."""

    erased: list[UUID]
    appended: dict[UUID, list[MessageRecord]]


def plan(groups: Sequence[SessionGroup]) -> Plan:
    """Reduce a batch to what it does per session: maybe erase, then append.

    An erasing group discards the records of earlier groups of its session (they
    would be erased anyway). A record repeated within the batch is kept once, where
    it first appears, as ``ON CONFLICT DO NOTHING`` keeps it across batches.
    """
    erased: dict[UUID, None] = {}
    appended: dict[UUID, list[MessageRecord]] = {}
    for group in groups:
        if group.erase:
            erased[group.session] = None
            appended.pop(group.session, None)
        if group.records:
            appended.setdefault(group.session, []).extend(group.records)
    seen: set[UUID] = set()
    for session, records in appended.items():
        kept = []
        for record in records:
            if record.message_id not in seen:
                seen.add(record.message_id)
                kept.append(record)
        appended[session] = kept
    return Plan(list(erased), appended)


def columns(
    sessions: list[UUID], appended: dict[UUID, list[MessageRecord]]
) -> list[list[Any]]:
    """The insert's column arrays, all but ``seq`` (known once reserved).

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
    for session in sessions:
        for record in appended[session]:
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
    return [ids, owners, parents, stamps, roles, authors, contents, blobs]


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
#: a missing database, schema or table, a missing privilege, failed authentication.
RETRYABLE_STATES: Final = frozenset(
    {"55P03", "0A000", "3D000", "3F000", "42P01", "42501", "28000", "28P01"}
)
#: What to tell the operator, by SQLSTATE.
HINTS: Final = {
    "42P01": "the archive tables are missing: pass create_schema=True or create"
    " them (see docs/backends.md)",
    "3F000": "the archive schema is missing: pass create_schema=True or create it",
}
#: SQLSTATEs after which ``create_schema=True`` creates the tables again.
MISSING_SCHEMA_STATES: Final = frozenset({"42P01", "3F000"})
#: SQLSTATEs worth a pause before the retry: too many connections, starting up.
BACKOFF_STATES: Final = frozenset({"53300", "57P03"})


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


def _classify_one(exc: BaseException) -> tuple[bool, str]:
    if isinstance(exc, TimeoutError):
        return True, "timed out"
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        retryable = is_retryable_state(state)
        message = exc.args[0] if exc.args else ""
        what = f"{type(exc).__name__} (SQLSTATE {state}): {message}"
        hint = HINTS.get(state)
        return retryable, f"{what}; {hint}" if hint else what
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False, f"the server cannot take a value: {exc.args[0]}"
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        # Connection closed or released under us, a stale schema cache, a bad
        # client setting: not about the records.
        return True, f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}"
    if isinstance(exc, OSError):
        return True, f"cannot reach the server: {type(exc).__name__}: {exc}"
    return False, f"{type(exc).__name__}: {exc}"
