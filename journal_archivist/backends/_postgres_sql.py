"""What ``PostgresArchive`` says to PostgreSQL, and what its errors mean: pure, no I/O.

The statements (with validated, quoted table names), how a batch becomes their
parameters, what an error from asyncpg or the OS means, and which text of a DSN
is secret. ``postgres.py`` holds
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
  row reserved by a batch whose records were all archived already, or an erased
  session), and such a row is not listed.
- **One lock, then a fresh look.** A batch first upserts the row of every session
  it touches (``reserve``, in one statement, in UUID order, so batches never
  deadlock on each other): that reserves the appended records' positions, resets
  the counters of erased sessions, and locks each row until COMMIT, waiting for
  any other writer of the session (even one whose row is not committed yet).
  Only then does a separate statement delete the erased sessions' messages: under
  READ COMMITTED it takes a new snapshot, so it sees every batch committed before
  the lock was granted. (Deleting in the statement that waits for the lock would
  use the snapshot from before the wait and miss those rows.)
- **Erasure keeps the sessions row** with ``message_count`` 0, ``first_ts`` and
  ``last_ts`` NULL, and ``next_seq`` as it was: positions never restart, so no
  record ever collides with the (session, seq) of an earlier one. An erasure of
  an unknown session leaves such a row too. ``count`` reads 0 and
  ``list_sessions`` skips the session, as if it had never been written.
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
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import asyncpg  # type: ignore[import-untyped]
import msgspec

from .._errors import BackendError
from ._codec import encode_record

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
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
    reserve: str
    erase: str
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
        # $1 every session of the batch (sorted), $2 how many records each
        # appends, $3 the erased ones. Runs before ``erase``: see "One lock".
        reserve=f"""
            INSERT INTO {sessions} AS s (session, next_seq)
            SELECT * FROM unnest($1::uuid[], $2::bigint[])
            ON CONFLICT (session) DO UPDATE SET
                next_seq = s.next_seq + excluded.next_seq,
                message_count = CASE WHEN s.session = ANY($3::uuid[]) THEN 0
                                     ELSE s.message_count END,
                first_ts = CASE WHEN s.session = ANY($3::uuid[]) THEN NULL
                                ELSE s.first_ts END,
                last_ts = CASE WHEN s.session = ANY($3::uuid[]) THEN NULL
                               ELSE s.last_ts END,
                updated_at = now()
            RETURNING session, next_seq
        """,
        erase=f"DELETE FROM {messages} WHERE session = ANY($1::uuid[])",
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


# -- secrets ------------------------------------------------------------------------

#: ``password=`` (and ``sslpassword=``) in a URL's query: the value runs to the
#: next ``&``, a ``#`` included.
_QUERY_PASSWORD: Final = re.compile(r"(?i)([?&][a-z_]*password=)([^&]*)")
#: ``password = value`` in a libpq keyword/value string, the value maybe quoted.
_KEYWORD_PASSWORD: Final = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def _secret_forms(secret: str) -> set[str]:
    """``secret`` as written and as decoded (percent, plus, libpq quoting)."""
    unquoted = (
        secret[1:-1] if len(secret) > 1 and secret[0] == secret[-1] == "'" else secret
    )
    return {
        secret,
        unquoted,
        re.sub(r"\\(.)", r"\1", unquoted),
        urllib.parse.unquote(secret),
        urllib.parse.unquote_plus(secret),
    }


def _url_userinfo(dsn: str) -> str | None:
    """The user info a URL parser (asyncpg's) reads from ``dsn``, if any."""
    try:
        netloc = urllib.parse.urlsplit(dsn).netloc
    except ValueError:  # an unbalanced "[": no parser agrees on anything
        return None
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo if at else None


def mask_dsn(dsn: str) -> tuple[str, frozenset[str]]:
    """Return ``dsn`` with its passwords replaced by ``***``, and the secrets.

    Parses nothing the way a URL parser would, so a password with an unescaped
    ``/``, ``?``, ``#`` or ``@`` is masked whole: in a URL, everything between
    ``://`` and the last ``@`` after a ``:`` is user info (more than a password,
    if a query value holds an ``@``: masking too much is the safe side). A libpq
    keyword/value string has its ``password=`` value masked.
    """
    secrets: set[str] = set()

    def hide(match: re.Match[str]) -> str:
        secrets.update(_secret_forms(match[2]))
        return f"{match[1]}***"

    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return _KEYWORD_PASSWORD.sub(hide, dsn), frozenset(s for s in secrets if s)
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        user, _, password = userinfo.partition(":")
        secrets.update(_secret_forms(password))
        rest = f"{user}:***@{tail}"
    parsed = _url_userinfo(dsn)  # what the driver will read, if it differs
    if parsed is not None and ":" in parsed:
        secrets.update(_secret_forms(parsed.partition(":")[2]))
    masked = f"{scheme}{sep}{_QUERY_PASSWORD.sub(hide, rest)}"
    return masked, frozenset(s for s in secrets if s)


def misread_dsn(dsn: str) -> bool:
    """Whether a URL parser reads ``dsn``'s user info differently from the mask.

    Then the driver may quote pieces of the password (``invalid literal for
    int(): 'pa'`` for ``u:pa/ss@host``), which no scrub list can recognise: a
    password with an unescaped ``/``, ``?``, ``#`` or ``@``.
    """
    _, sep, rest = dsn.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return False
    # asyncpg splits the netloc at its first "@", urlsplit at its last.
    return "@" in userinfo or _url_userinfo(dsn) != userinfo


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception chained to it (cause or context)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e)
