"""What ``SqliteArchive`` says to SQLite, and what SQLite's answers mean: pure, no I/O.

The archive file's format (how a file is recognised, the schema, the statements
that write, the row a record is stored as) and the classification of ``sqlite3``
errors. ``sqlite.py`` holds the behaviour (connection, transactions, the file on
disk), ``_sqlite_open`` the opening of a file and ``_sqlite_read`` what is read
back; they are the only importers.

Rules and theory:
- ``sessions.session`` and ``messages.session`` hold the canonical UUID string
  (``str(uuid)``: lowercase, fixed width), so SQLite's BINARY text order is the
  order of the 128-bit values, which is Python's ``UUID`` order. ``list_sessions``
  relies on it for ordering and for ``after``.
- ``ts`` is fixed-width UTC text, so text order is time order and ``min``/``max``
  in the count trigger give the earliest and latest instant.
- The per-session count and time range are kept by a trigger that fires only for
  rows really inserted: ``ON CONFLICT DO NOTHING`` fires no trigger, so a
  redelivered record changes nothing.
- A value read back is never trusted to have the type the schema gave it
  (``_sqlite_read``). A damaged value is a non-retryable ``BackendError``
  (``damaged``) naming the file, the row and the column, never a wrong record.
- **Erasure marks** (``SessionGroup``): every row keeps its journal time
  (``appended_at``), and ``erasure_marks`` the latest erasure time of each
  erased session, kept forever. An erasure at T deletes the session's rows
  appended before T and raises its mark to at least T; an insert skips a row
  appended before its session's mark (``NOT EXISTS`` in the INSERT itself).
  Every write is one ``BEGIN IMMEDIATE`` transaction, which holds the database's
  write lock from its first statement, so a mark and the rows it judges are
  read and written by one writer at a time, whichever process it is.
- Within one batch, group order is journal order: an erasing group drops the
  batch's earlier records of its session (``write_steps``) whatever their
  times, and a direct call's groups all take one time, "now".
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._errors import BackendError
from .._large_values import LargeValues
from ._base import append_times, erasure_time
from ._codec import encode_record

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from uuid import UUID

    from .._records import MessageRecord
    from ._base import SessionGroup

#: "JARC" in ASCII: marks a SQLite file as a journal_archivist archive.
APPLICATION_ID: Final = 0x4A415243
#: The archive schema this version writes (``PRAGMA user_version``). Version 2
#: stores a record's ``content_md`` once, in its column, and its JSON without it
#: (version 1 stored it in both); version 1 files are read as they are and
#: upgraded by a version bump (UPGRADES), so an older library, which would read
#: version 2 records without their content, refuses them.
#: Version 3 adds erasure marks: ``messages.appended_at`` and the table
#: ``erasure_marks``. Rows of a version 2 file get ``appended_at`` 0: they predate
#: any mark, so any later erasure deletes them (the privacy-safe side), and the
#: column is added without rewriting the table (a record's ``ts`` is the
#: application's time, not the journal's, and cannot stand in for it).
SCHEMA_VERSION: Final = 3
_MARKS_TABLE: Final = """
    CREATE TABLE erasure_marks (
        session   TEXT PRIMARY KEY,  -- canonical UUID string
        erased_at REAL NOT NULL      -- the latest erasure time (unix seconds)
    ) WITHOUT ROWID
"""
#: What takes an archive from version ``n`` (the key) to ``n + 1``.
UPGRADES: Final = {
    1: ("PRAGMA user_version = 2",),
    2: (
        "ALTER TABLE messages ADD COLUMN appended_at REAL NOT NULL DEFAULT 0",
        _MARKS_TABLE,
        "PRAGMA user_version = 3",
    ),
}
# The journal's application_id ("JRNL", journal_archivist._schema): named here so
# that pointing an archive at the journal says so (backends never import it).
JOURNAL_APPLICATION_ID: Final = 0x4A524E4C

# Run one statement at a time, inside the transaction that also re-checks the
# file (executescript would commit first).
SCHEMA: Final = (
    """
    CREATE TABLE sessions (
        session       TEXT PRIMARY KEY,  -- canonical UUID string
        message_count INTEGER NOT NULL,  -- distinct messages
        first_ts      TEXT NOT NULL,     -- earliest and latest ts of its
        last_ts       TEXT NOT NULL      -- messages, as messages.ts
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE messages (
        seq        INTEGER PRIMARY KEY,  -- append order: above every existing row
        message_id TEXT NOT NULL UNIQUE,
        session    TEXT NOT NULL,
        parent_id  TEXT,
        ts         TEXT NOT NULL,  -- UTC, fixed width: 2026-11-27T12:00:00.123456Z
        role       TEXT NOT NULL,
        author     TEXT,
        content_md TEXT NOT NULL,  -- may hold NUL characters
        record     TEXT NOT NULL,  -- the record as JSON (backends._codec), with
                                   -- content_md "" (the column above holds it)
        appended_at REAL NOT NULL DEFAULT 0  -- journal time, unix seconds
    )
    """,
    _MARKS_TABLE,
    # Every index entry ends with the rowid (seq), so this one also orders by seq.
    "CREATE INDEX messages_by_session ON messages (session)",
    # Counts only rows really inserted: ON CONFLICT DO NOTHING fires no trigger.
    """
    CREATE TRIGGER messages_count_session AFTER INSERT ON messages BEGIN
        INSERT INTO sessions (session, message_count, first_ts, last_ts)
        VALUES (NEW.session, 1, NEW.ts, NEW.ts)
        ON CONFLICT (session) DO UPDATE SET
            message_count = message_count + 1,
            first_ts = min(first_ts, excluded.first_ts),
            last_ts = max(last_ts, excluded.last_ts);
    END
    """,
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_INSERT_COLUMNS: Final = (
    "INSERT INTO messages (message_id, session, parent_id, ts, role, author,"
    " content_md, record, appended_at) SELECT * FROM (VALUES "
)
_ROW_PLACEHOLDERS: Final = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Rows per multi-row INSERT, largest first; any count is a sum of these.
INSERT_CHUNKS: Final = (64, 16, 4, 1)
# A row appended before its session's erasure mark was erased: skipped. (The
# WHERE also settles the INSERT ... SELECT ... ON CONFLICT parsing ambiguity.)
_SKIP_ERASED: Final = (
    ") AS v WHERE NOT EXISTS (SELECT 1 FROM erasure_marks AS m"
    " WHERE m.session = v.column2 AND m.erased_at > v.column9)"
)
_ON_CONFLICT: Final = " ON CONFLICT (message_id) DO NOTHING"
_INSERT_MANY: Final = {
    k: _INSERT_COLUMNS
    + ", ".join([_ROW_PLACEHOLDERS] * k)
    + _SKIP_ERASED
    + _ON_CONFLICT
    for k in INSERT_CHUNKS
}


def insert_statements(
    rows: Sequence[Row], large: LargeValues
) -> list[tuple[str, list[Any]]]:
    """``rows`` as a few multi-row INSERTs (one SQL text per chunk size).

    One statement inserts up to 64 rows in one ``sqlite3_step``, which releases
    the GIL once instead of once per row: under load, every reacquisition makes
    the archive's thread wait for the event loop's. A row whose content reaches
    ``LargeValues.THRESHOLD`` goes alone, its content through ``large`` (no copy
    of it stays with the cached statement); its keys are ``large``'s to discard.
    """
    statements: list[tuple[str, list[Any]]] = []
    small: list[Row] = []
    for row in rows:  # in order: the rowid is the append order
        if len(row[6]) < LargeValues.THRESHOLD:
            small.append(row)
            continue
        _insert_small(small, statements)
        small = []
        values: list[Any] = list(row)
        values[6] = large.put(row[6])
        statements.append((_insert_large(large), values))
    _insert_small(small, statements)
    return statements


def _insert_small(rows: list[Row], statements: list[tuple[str, list[Any]]]) -> None:
    at = 0
    for size in INSERT_CHUNKS:
        while len(rows) - at >= size:
            chunk = rows[at : at + size]
            statements.append((_INSERT_MANY[size], [v for row in chunk for v in row]))
            at += size


def _insert_large(large: LargeValues) -> str:
    content = large.sql()
    row = f"(?, ?, ?, ?, ?, ?, {content}, ?, ?)"
    return _INSERT_COLUMNS + row + _SKIP_ERASED + _ON_CONFLICT


# An erasure at ?2 of session ?1: raise the mark, delete what was appended before
# ?2, then drop the session's count row if nothing is left, else recount it. A
# row whose appended_at is no longer a number (damaged) is deleted too: erasing
# a session removes its damaged rows.
ERASE_MARK: Final = (
    "INSERT INTO erasure_marks (session, erased_at) VALUES (?1, ?2)"
    " ON CONFLICT (session) DO UPDATE SET"
    " erased_at = max(erased_at, excluded.erased_at)"
)
ERASE_MESSAGES: Final = (
    "DELETE FROM messages WHERE session = ?1 AND NOT"
    " (typeof(appended_at) IN ('real', 'integer') AND appended_at >= ?2)"
)
ERASE_SESSION: Final = (
    "DELETE FROM sessions WHERE session = ?1"
    " AND NOT EXISTS (SELECT 1 FROM messages WHERE session = ?1)"
)
RECOUNT_SESSION: Final = (
    "UPDATE sessions SET (message_count, first_ts, last_ts) ="
    " (SELECT count(*), min(ts), max(ts) FROM messages WHERE session = ?1)"
    " WHERE session = ?1"
)
PROBE: Final = "SELECT 1 FROM sessions LIMIT 1"


def step_statements(
    steps: Sequence[Step], large: LargeValues
) -> Iterator[tuple[str, Sequence[Any]]]:
    """The statements of ``steps`` in order, as ``(sql, parameters)``.

    An ``insert`` step's statements are made (``insert_statements``) when the
    step is reached, so ``large`` holds one step's contents at a time.
    """
    for kind, arg in steps:
        if kind == "insert":
            yield from insert_statements(arg, large)
        else:
            yield ERASE_MARK, arg
            yield ERASE_MESSAGES, arg
            yield ERASE_SESSION, arg[:1]
            yield RECOUNT_SESSION, arg[:1]


# One row of ``messages`` without ``seq``, as bound to ``INSERT``.
Row = tuple[str, str, str | None, str, str, str | None, str, str, float]
# One step of a write: ("insert", rows) or ("erase", (session, erased_at)).
Step = tuple[str, Any]


def utc_text(ts: datetime) -> str:
    """``ts`` as fixed-width UTC text, which sorts as the instants do."""
    if ts.tzinfo is not UTC:
        if ts.utcoffset() is None:
            raise ValueError(f"timestamp must be timezone-aware, got {ts!r}")
        ts = ts.astimezone(UTC)
    # Always 26 characters and "+00:00" here; a quarter of the cost of strftime.
    return ts.isoformat(timespec="microseconds")[:26] + "Z"


def _row(
    record: MessageRecord, session: UUID, session_text: str, appended_at: float
) -> Row:
    """The ``messages`` row of one record; raise ``ValueError`` if it has none."""
    if record.session.int != session.int:
        raise ValueError(f"record belongs to session {record.session}, not {session}")
    return (
        str(record.message_id),
        session_text,
        None if record.parent_id is None else str(record.parent_id),
        utc_text(record.ts),
        record.role,
        record.author,
        record.content_md,
        # Without its content, which the row holds once, in content_md.
        encode_record(msgspec.structs.replace(record, content_md="")).decode(),
        appended_at,
    )


def rows(
    session: UUID, records: Sequence[MessageRecord], times: Sequence[float]
) -> list[Row]:
    """The ``messages`` rows of ``records``, all of ``session``, appended at
    ``times`` (one each).

    Raises:
        BackendError: ``retryable=False``, naming the first record that cannot be
            archived (of another session, a naive ``ts``, not encodable).
    """
    result: list[Row] = []
    session_text = str(session)
    for record, appended_at in zip(records, times, strict=True):
        try:
            result.append(_row(record, session, session_text, appended_at))
        except (
            msgspec.EncodeError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
            RecursionError,  # nested deeper than msgspec encodes
        ) as exc:
            # Records that reach a backend through the journal were validated
            # there; this guards direct callers.
            which = getattr(record, "message_id", "?")
            raise BackendError(
                f"cannot archive record {which} of session {session}: {exc}",
                retryable=False,
            ) from exc
    return result


def write_steps(groups: Sequence[SessionGroup], now: float) -> tuple[list[Step], bool]:
    """The steps of a coalesced batch, in order, and whether any of them erases.

    An erasing group erases its session at its ``erased_at`` (``now`` if None),
    then its records are inserted at their ``appended_at`` (``now`` if none);
    the records of groups in a row share one ``insert`` step. An erasing group
    drops the batch's earlier records of its session: they were appended before
    it (group order is journal order) and would be erased anyway.

    Raises:
        BackendError: as ``rows``, for the first record that cannot be archived.
    """
    last_erase = {g.session: i for i, g in enumerate(groups) if g.erase}
    steps: list[Step] = []
    pending: list[Row] = []
    erases = False
    for index, group in enumerate(groups):
        if group.erase:
            if pending:
                steps.append(("insert", pending))
                pending = []
            steps.append(("erase", (str(group.session), erasure_time(group, now))))
            erases = True
        made = rows(group.session, group.records, append_times(group, now))
        if index >= last_erase.get(group.session, index):
            pending.extend(made)
    if pending:
        steps.append(("insert", pending))
    return steps, erases


def check_identity(path: str, app_id: int, version: int, tables: list[str]) -> None:
    """Return if the file at ``path`` is empty or an archive this version can use.

    Args:
        app_id, version, tables: its ``application_id``, ``user_version`` and
            table names.

    Raises:
        BackendError: ``retryable=False``, saying what the file is instead.
    """
    if app_id == JOURNAL_APPLICATION_ID:
        raise BackendError(
            f"{path} is a journal_archivist journal, not an archive: give"
            " SqliteArchive a file of its own",
            retryable=False,
        )
    if app_id != APPLICATION_ID and (app_id != 0 or version or tables):
        raise BackendError(
            f"{path} is a SQLite database of something else, not a"
            f" journal_archivist archive (application_id {app_id:#x}, tables"
            f" {tables[:5]}); refusing to touch it",
            retryable=False,
        )
    if version > SCHEMA_VERSION:
        raise BackendError(
            f"{path}: archive schema version {version} is newer than the"
            f" supported {SCHEMA_VERSION}; open it with the version that wrote it",
            retryable=False,
        )


# -- failure classification ---------------------------------------------------------

# sqlite3 primary result codes that repeating a call cannot fix. Every other code
# is retryable: BUSY, LOCKED, FULL, IOERR, CANTOPEN, READONLY, NOMEM are transient
# or fixable by an operator (space, permissions, a mount), and SQLITE_ERROR or an
# unknown code is retried on a fresh connection, which re-checks the file.
# Caused by the records themselves: permanent, and the connection is fine.
_RECORD_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_TOOBIG,
        sqlite3.SQLITE_CONSTRAINT,
        sqlite3.SQLITE_MISMATCH,
        sqlite3.SQLITE_RANGE,
    }
)
# Not a healthy archive: permanent until someone repairs or replaces the file.
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def classify(exc: BaseException) -> tuple[bool, bool]:
    """``(retryable, keep_connection)`` for an error raised by a call."""
    if not isinstance(exc, sqlite3.Error):
        return True, False
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _RECORD_CODES:
        return False, True
    if primary in _DAMAGE_CODES or "malformed" in str(exc):
        return False, False
    return True, False


def damaged(path: str, row: str, problem: str) -> BackendError:
    """The error for a stored value this module never writes, found in ``row``.

    Not retryable: the value is on disk, so every later read (and any retry)
    meets the same bytes until someone restores or repairs the file.
    """
    return BackendError(f"{path}: damaged archive: {row}: {problem}", retryable=False)


def damaged_session_row(path: str, exc: sqlite3.Error) -> BackendError | None:
    """The error for a write that met a damaged ``sessions`` row, if ``exc`` is one.

    The count trigger stores no NULL there, so a NOT NULL failure on ``sessions``
    means a stored value became NULL (``message_count + 1`` and ``min(first_ts,
    ...)`` are then NULL too): the row is damaged, the records are fine. Other
    damaged types raise nothing on the write path (SQLite converts them), and
    the reads report them.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if code != sqlite3.SQLITE_CONSTRAINT_NOTNULL or "sessions." not in str(exc):
        return None
    # Not retryable, like the record errors classify() gives for this code: a
    # retry reads the same stored NULL, so repeating can never help; only
    # restoring or repairing the file (or erasing the session) does. Under
    # BEST_EFFORT that dead-letters the session's records at once (replayable
    # after the repair); under REQUIRED the batch is retried regardless.
    return damaged(
        path,
        "the sessions row of a session this batch writes",
        f"a column holds NULL ({exc}); list_sessions() names the row",
    )


def backend_error(path: str, doing: str, exc: sqlite3.Error) -> BackendError:
    """The ``BackendError`` for ``exc``, raised while ``doing`` ("open", "read" or
    "write") the archive at ``path``."""
    if doing == "write":
        found = damaged_session_row(path, exc)
        if found is not None:
            return found
    retryable, _ = classify(exc)
    if doing == "open" and not retryable:
        return BackendError(
            f"{path} is not a usable SQLite archive (corrupt, or not a"
            f" database): {exc}",
            retryable=False,
        )
    return BackendError(f"{path}: {doing} failed: {exc}", retryable=retryable)
