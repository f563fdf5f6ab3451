"""What ``SqliteArchive`` reads back, and the checks on every value: pure, no I/O.

The statements a read runs (a session's records, its count, the sessions) and how
each row they return becomes a record, a count or a ``SessionInfo``. ``sqlite.py``
runs them and is the only importer; the schema and the writes are
``_sqlite_sql``'s.

Rules and theory:
- A value read back is never trusted to have the type the schema gave it: a
  damaged row header can change it. A damaged value is a non-retryable
  ``BackendError`` naming the file, the row and the column
  (``_sqlite_sql.damaged``), never a wrong record.
- A bit flip in a row header can change the type of a stored value (TEXT to BLOB,
  INTEGER, REAL or NULL) or leave TEXT that is not UTF-8, and PRAGMA quick_check
  misses some of it (a BLOB for TEXT, bytes that are not UTF-8). Python's sqlite3
  raises while *fetching* TEXT that is not UTF-8, so no statement here fetches a
  column as it is stored: ``record`` comes back as a BLOB (below), another TEXT
  column as ``_text(column)``, its bytes if it holds TEXT and otherwise the name
  of its type, and an INTEGER column as ``_integer(column)``, its value or the
  name of its type. Nothing stored can then raise in the driver, and Python
  decodes and checks every value (``records``/``checked_records``,
  ``message_count``, ``session_info``). Those columns must hold exactly their
  type: SQLite compares and sorts them, and a BLOB sorts after every TEXT.
- Sessions are listed in the text order of their canonical id, which is their
  ``UUID`` order (``_sqlite_sql``): a ``session`` value that is not canonical is
  damage, not a session.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import msgspec

from ._base import SessionInfo
from ._codec import DECODE_ERRORS, decode_record
from ._sqlite_sql import damaged

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._records import MessageRecord


def _text(column: str) -> str:
    # CAST to BLOB keeps the bytes (the file is UTF-8) and costs no copy.
    return (
        f"CASE typeof({column}) WHEN 'text' THEN CAST({column} AS BLOB)"
        f" ELSE typeof({column}) END"
    )


def _integer(column: str) -> str:
    return (
        f"CASE typeof({column}) WHEN 'integer' THEN {column} ELSE typeof({column}) END"
    )


# ``record`` and ``content_md`` are the columns taken as TEXT or BLOB: they are
# only ever read back whole, never compared or indexed, so a BLOB of the same
# bytes (one flipped bit of the header's serial type) is the same value. An
# INTEGER, REAL or NULL ``record`` cast to a BLOB never decodes as a record, so the
# hot path (READ) needs no typeof() for it; ``content_md`` is any text, so READ
# gives NULL for one that is not TEXT or BLOB. ``records`` notices either, and
# READ_CHECKED then says which row and why.
READ: Final = (
    "SELECT CAST(record AS BLOB), CASE typeof(content_md) WHEN 'text'"
    " THEN CAST(content_md AS BLOB) WHEN 'blob' THEN content_md END"
    " FROM messages WHERE session = ? ORDER BY seq"
)
READ_CHECKED: Final = (
    "SELECT seq, typeof(record), CAST(record AS BLOB), typeof(content_md),"
    " CAST(content_md AS BLOB) FROM messages WHERE session = ? ORDER BY seq"
)
COUNT: Final = f"SELECT {_integer('message_count')} FROM sessions WHERE session = ?"
_SESSION_COLUMNS: Final = (
    f"{_text('session')}, {_integer('message_count')}, {_text('first_ts')},"
    f" {_text('last_ts')}"
)
# By session id (see the theory above). Parameters: [after,] limit (-1: none).
LIST_ALL: Final = f"""
SELECT {_SESSION_COLUMNS} FROM sessions
ORDER BY session LIMIT ?
"""
LIST_AFTER: Final = f"""
SELECT {_SESSION_COLUMNS} FROM sessions
WHERE session > ? ORDER BY session LIMIT ?
"""
# What _sqlite_sql.utc_text writes: 2026-11-27T12:00:00.123456Z
_UTC_TEXT_LENGTH: Final = 27
_CANONICAL_UUID: Final = re.compile(
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
# TypeError and AttributeError: READ gives None for a NULL (or content_md of
# another type), which is not bytes at all; UnicodeDecodeError: content_md bytes
# that are not UTF-8.
_DECODE_ERRORS: Final = (*DECODE_ERRORS, TypeError, AttributeError, UnicodeDecodeError)


def records(session: UUID, rows: Sequence[Any]) -> list[MessageRecord] | None:
    """The records in READ's ``rows``; ``None`` if any is not one of ``session``.

    The hot path: it checks that each row decodes as a record of ``session`` and
    nothing more. On ``None`` the caller reads again with READ_CHECKED, and
    ``checked_records`` names the row and what is wrong with it.
    """
    want = session.int
    try:
        # A record of another session (an index entry pointing at the wrong row, a
        # flipped digit in its JSON) must not be returned as this one's. Filtered
        # here and noticed by the length: cheaper than a second loop.
        result = [
            _with_content(record, content)
            for value, content in rows
            if (record := decode_record(value)).session.int == want
        ]
    except _DECODE_ERRORS:
        return None
    return result if len(result) == len(rows) else None


def _with_content(record: MessageRecord, content: bytes) -> MessageRecord:
    """``record`` with its content from the ``content_md`` column (a version 1
    record carries it in its JSON too)."""
    if record.content_md:
        return record
    return msgspec.structs.replace(record, content_md=content.decode())


def checked_records(
    path: str, session: UUID, rows: Sequence[Any]
) -> list[MessageRecord]:
    """The records in READ_CHECKED's ``rows``, each checked.

    Raises:
        BackendError: ``retryable=False``, naming the first damaged row (its
            ``seq``), the column and what is wrong with it.
    """
    result = []
    for seq, kind, data, content_kind, content in rows:
        row = f"messages row {seq} of session {session}"
        for column, stored in (("record", kind), ("content_md", content_kind)):
            if stored not in ("text", "blob"):
                raise damaged(
                    path, row, f"column {column} is {stored.upper()}, expected TEXT"
                )
        text = _utf8(path, row, "record", kind.upper(), data)
        content_md = _utf8(path, row, "content_md", content_kind.upper(), content)
        try:
            record = decode_record(text)
        except _DECODE_ERRORS as exc:
            raise damaged(
                path, row, f"column record does not decode as a record ({exc})"
            ) from exc
        if record.session.int != session.int:
            raise damaged(
                path, row, f"column record holds a record of session {record.session}"
            )
        if record.content_md and record.content_md != content_md:
            raise damaged(path, row, "columns record and content_md disagree")
        result.append(
            record
            if record.content_md
            else msgspec.structs.replace(record, content_md=content_md)
        )
    return result


def message_count(path: str, session: UUID, value: object) -> int:
    """The ``message_count`` COUNT read, checked; ``BackendError`` if damaged."""
    return _count(path, f"sessions row of session {session}", value)


def session_info(path: str, row: Sequence[Any]) -> SessionInfo:
    """One row of LIST_ALL / LIST_AFTER as a ``SessionInfo``, every value checked.

    Raises:
        BackendError: ``retryable=False``, naming the row, the column and what is
            wrong with it.
    """
    session_value, count, first, last = row
    text = _stored_text(path, "a sessions row", "session", session_value)
    if _CANONICAL_UUID.fullmatch(text) is None:
        # Not canonical: its text order would not be the UUID order paging needs.
        raise damaged(
            path,
            "a sessions row",
            f"column session is {text!r:.80}, expected a canonical session id",
        )
    where = "sessions row of session " + text
    message_count = _count(path, where, count)
    first_ts = _utc(path, where, "first_ts", first)
    last_ts = _utc(path, where, "last_ts", last)
    if first_ts > last_ts:
        raise damaged(path, where, f"first_ts {first_ts} is after last_ts {last_ts}")
    return SessionInfo(
        session=UUID(text),
        message_count=message_count,
        first_ts=first_ts,
        last_ts=last_ts,
    )


def _stored_text(path: str, row: str, column: str, value: object) -> str:
    """The text of a ``_text(column)`` value; ``BackendError`` if it is not TEXT."""
    if not isinstance(value, bytes):
        raise damaged(path, row, f"column {column} is {_type(value)}, expected TEXT")
    return _utf8(path, row, column, "TEXT", value)


def _utf8(path: str, row: str, column: str, kind: str, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise damaged(
            path,
            row,
            f"column {column} is {kind} but not UTF-8 (byte {data[exc.start]:#04x}"
            f" at offset {exc.start})",
        ) from None


def _count(path: str, row: str, value: object) -> int:
    if type(value) is not int:
        raise damaged(
            path, row, f"column message_count is {_type(value)}, expected INTEGER"
        )
    if value < 1:
        # A session row exists only while the session has records.
        raise damaged(path, row, f"column message_count is {value}, expected >= 1")
    return value


def _utc(path: str, row: str, column: str, value: object) -> datetime:
    text = _stored_text(path, row, column, value)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        ts = None
    if ts is None or ts.tzinfo is not UTC or len(text) != _UTC_TEXT_LENGTH:
        raise damaged(
            path, row, f"column {column} is {text!r:.80}, expected a UTC time as text"
        )
    return ts


def _type(value: object) -> str:
    """The SQL type named by a ``_text`` / ``_integer`` value that is not the data."""
    return value.upper() if isinstance(value, str) else type(value).__name__
