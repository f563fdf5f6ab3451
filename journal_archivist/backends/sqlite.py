"""``SqliteArchive``: the embedded default archive, a SQLite file of its own.

Guarantees:
- **Idempotent on ``message_id``.** A record is inserted with ``ON CONFLICT DO
  NOTHING``: a redelivered record changes nothing, and the per-session count (kept
  by a trigger that fires only for rows really inserted) counts it once.
- **Append order.** ``messages.seq`` is an ``AUTOINCREMENT`` rowid, so rows get
  increasing numbers in the order they are applied, and a session reads back by
  ``seq``: never by ``ts`` or ``message_id``. Numbers are never reused, even after
  an erasure.
- **Durability.** Every write is one ``BEGIN IMMEDIATE`` transaction in WAL mode
  with ``synchronous=FULL``; a call returns only after that commit, so what it
  acknowledged survives a crash or power loss. A failed transaction is rolled back
  explicitly and leaves nothing of its batch.

Rules and theory:
- One aiosqlite connection, opened lazily on first use and guarded by one lock:
  a write transaction, a read and (re)opening never interleave, so a read never
  sees another call's uncommitted rows. After any failure other than one caused by
  the records themselves the connection is dropped, and the next call reopens it
  (and re-checks the file).
- Nothing is written to a file before it is known to be ours or empty:
  ``application_id`` marks an archive, ``user_version`` is its schema version.
- Encoding happens before ``BEGIN``, so a transaction holds the write lock only
  for SQL.
- ``secure_delete`` is on, and an erasure is followed by a
  ``wal_checkpoint(TRUNCATE)``, so erased content leaves both the database file
  and its WAL.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, final
from uuid import UUID

import aiosqlite
import anyio
import msgspec

from .._errors import BackendError
from ._base import ArchiveBackend, SessionGroup
from ._codec import decode_record, encode_record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._records import MessageRecord

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "SessionInfo",
    "SqliteArchive",
]

logger = logging.getLogger(__name__)

#: "JARC" in ASCII: marks a SQLite file as a journal_archivist archive.
APPLICATION_ID: Final = 0x4A415243
#: The archive schema this version writes (``PRAGMA user_version``).
SCHEMA_VERSION: Final = 1
#: Seconds a statement waits for another connection's lock before SQLITE_BUSY.
DEFAULT_BUSY_TIMEOUT: Final = 5.0

# The journal's application_id ("JRNL", journal_archivist._schema): named here so
# that pointing an archive at the journal says so (backends never import it).
_JOURNAL_APPLICATION_ID: Final = 0x4A524E4C

# Run one statement at a time, inside the transaction that also re-checks the
# file (executescript would commit first).
_SCHEMA: Final = (
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
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- append order, never reused
        message_id TEXT NOT NULL UNIQUE,
        session    TEXT NOT NULL,
        parent_id  TEXT,
        ts         TEXT NOT NULL,  -- UTC, fixed width: 2026-11-27T12:00:00.123456Z
        role       TEXT NOT NULL,
        author     TEXT,
        content_md TEXT NOT NULL,  -- may hold NUL characters
        record     TEXT NOT NULL   -- the whole record as JSON (backends._codec)
    )
    """,
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

_INSERT: Final = """
INSERT INTO messages
    (message_id, session, parent_id, ts, role, author, content_md, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (message_id) DO NOTHING
"""
_ERASE_MESSAGES: Final = "DELETE FROM messages WHERE session = ?"
_ERASE_SESSION: Final = "DELETE FROM sessions WHERE session = ?"
_READ: Final = "SELECT record FROM messages WHERE session = ? ORDER BY seq"
_COUNT: Final = "SELECT message_count FROM sessions WHERE session = ?"
_LIST: Final = """
SELECT session, message_count, first_ts, last_ts FROM sessions
ORDER BY first_ts, session
"""

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

# One row of ``messages`` without ``seq``, as bound to ``_INSERT``.
_Row = tuple[str, str, str | None, str, str, str | None, str, str]
# One step of a write: ("insert", rows) or ("erase", session).
_Step = tuple[str, Any]


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One archived session, as ``SqliteArchive.list_sessions`` reports it.

    ``message_count`` counts distinct records; ``first_ts`` and ``last_ts`` are the
    earliest and latest ``ts`` among them, in UTC. A session with no records (never
    written, or erased) is not listed.
    """

    session: UUID
    message_count: int
    first_ts: datetime
    last_ts: datetime


def _utc_text(ts: datetime) -> str:
    """``ts`` as fixed-width UTC text, which sorts as the instants do."""
    if ts.tzinfo is not UTC:
        if ts.utcoffset() is None:
            raise ValueError(f"timestamp must be timezone-aware, got {ts!r}")
        ts = ts.astimezone(UTC)
    # Always 26 characters and "+00:00" here; a quarter of the cost of strftime.
    return ts.isoformat(timespec="microseconds")[:26] + "Z"


def _row(record: MessageRecord, session: UUID) -> _Row:
    """The ``messages`` row of one record; raise ``ValueError`` if it has none."""
    if record.session.int != session.int:
        raise ValueError(f"record belongs to session {record.session}, not {session}")
    return (
        str(record.message_id),
        str(session),
        None if record.parent_id is None else str(record.parent_id),
        _utc_text(record.ts),
        record.role,
        record.author,
        record.content_md,
        encode_record(record).decode(),
    )


def _rows(session: UUID, records: Sequence[MessageRecord]) -> list[_Row]:
    rows: list[_Row] = []
    for record in records:
        try:
            rows.append(_row(record, session))
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # msgspec.EncodeError is a ValueError. Records that reach a backend
            # through the journal were validated there; this guards direct callers.
            which = getattr(record, "message_id", "?")
            raise BackendError(
                f"cannot archive record {which} of session {session}: {exc}",
                retryable=False,
            ) from exc
    return rows


def _classify(exc: BaseException) -> tuple[bool, bool]:
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


@final
class SqliteArchive(ArchiveBackend):
    """An archive in a SQLite file of its own: idempotent, ordered, durable.

    Each session's records read back in append order; a redelivered record
    (same ``message_id``) is archived once; a call returns only after its
    ``synchronous=FULL`` commit. The file is created owner-only (0600) on first
    use; it must not be the journal's file, and a SQLite file that is not an
    archive is refused, never modified.

    Constructing does no I/O: the file is opened on first use (any call, including
    ``health_check``) and after a failure that dropped the connection. ``aclose``
    closes it; a later call opens it again. Calls on one instance are serialised
    (one connection): a read waits for a batch in flight.

    Failures raise ``BackendError``, and nothing of the failed call is applied.
    ``retryable=True`` for what may pass by itself or an operator can fix: a
    missing or unwritable directory or file, a lock held too long by another
    connection (SQLITE_BUSY / LOCKED), a full disk, an I/O error; the connection is
    dropped and the next call reopens it. ``retryable=False`` for what repeating
    cannot fix: the file is the journal, another application's database, an archive
    of a newer schema, not a database or corrupt; or a record cannot be stored (of
    another session, a naive ``ts``, not encodable, refused by a constraint).

    Args:
        path: the archive file (``str`` or ``os.PathLike[str]``), made absolute now.
            Its directory must exist; it is not created.
        busy_timeout: seconds a statement waits while another connection (say, an
            operator's ``sqlite3`` shell) holds a lock, before failing retryably.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike[str]``, or
            ``busy_timeout`` is not a number.
        ValueError: ``path`` is empty, ``":memory:"`` or holds a NUL character, or
            ``busy_timeout`` is negative or not finite.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"path must be a str or os.PathLike, got {type(path).__name__}"
                f" {path!r:.80}"
            )
        raw = os.fspath(path)
        if not isinstance(raw, str):
            raise TypeError(f"path must be a text path, got {raw!r:.80}")
        if not raw or raw == ":memory:" or "\x00" in raw:
            raise ValueError(f"path must name a file, got {raw!r:.80}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int | float):
            raise TypeError(
                f"busy_timeout must be a number of seconds, got {busy_timeout!r}"
            )
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout}")
        self._path = os.path.abspath(raw)
        # SQLite takes a 32-bit count of milliseconds.
        self._busy_timeout_ms = min(round(busy_timeout * 1000), 2**31 - 1)
        self._conn: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    @property
    def path(self) -> str:
        """The absolute path of the archive file."""
        return self._path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_conn", None) is not None:
            _warn(
                f"{self!r} was never closed; await aclose()",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    # -- writing -------------------------------------------------------------------

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records`` of ``session`` in one transaction, in order.

        Records already archived (by ``message_id``) are skipped.

        Raises:
            BackendError: ``retryable=False`` for a record that cannot be archived
                (wrong session, naive ``ts``, not encodable); otherwise as the
                class docstring says. Nothing of the call was archived.
        """
        if records:
            await self._write([("insert", _rows(session, records))], erases=False)

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply a whole coalesced batch in one transaction.

        Groups run in the order given: an erasing group deletes its session's rows
        first, then its records are inserted. Either the whole batch is committed
        (durably) or nothing of it is.

        Raises:
            BackendError: as ``append_messages``; nothing of the batch was applied.
        """
        steps: list[_Step] = []
        pending: list[_Row] = []
        erases = False
        for group in groups:
            if group.erase:
                if pending:
                    steps.append(("insert", pending))
                    pending = []
                steps.append(("erase", str(group.session)))
                erases = True
            pending.extend(_rows(group.session, group.records))
        if pending:
            steps.append(("insert", pending))
        if steps:
            await self._write(steps, erases=erases)

    async def delete_session(self, session: UUID) -> None:
        """Erase ``session`` durably: its messages and its session row.

        A no-op for a session with no records. ``secure_delete`` overwrites the
        erased content in the database file, and a ``wal_checkpoint(TRUNCATE)``
        after the commit empties the WAL. What may remain: the WAL's old frames if
        another connection holds a read transaction through the checkpoint (they
        go at the next checkpoint), blocks the filesystem or an SSD has not reused
        yet, and any backup or snapshot taken before.
        """
        await self._write([("erase", str(_check_uuid(session)))], erases=True)

    async def _write(self, steps: Sequence[_Step], *, erases: bool) -> None:
        async with self._lock:
            conn = await self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for kind, arg in steps:
                    if kind == "insert":
                        await conn.executemany(_INSERT, arg)
                    else:
                        await conn.execute(_ERASE_MESSAGES, (arg,))
                        await conn.execute(_ERASE_SESSION, (arg,))
                await conn.execute("COMMIT")
            except BaseException as exc:
                await self._abort(conn, exc)
                if isinstance(exc, sqlite3.Error):
                    raise self._error("write", exc) from exc
                raise
            if erases:
                await self._checkpoint(conn)

    async def _abort(self, conn: aiosqlite.Connection, exc: BaseException) -> None:
        """Roll back after ``exc``; drop the connection unless it is known good.

        Shielded: a cancelled call (an attempt timeout) must still not leave a
        transaction open. aiosqlite runs calls in order, so the rollback runs after
        whatever statement was in flight, and is a no-op if that was the COMMIT.
        """
        _, keep = _classify(exc)
        with anyio.CancelScope(shield=True):
            try:
                await conn.rollback()
            except Exception:
                keep = False
            if not keep:
                await self._drop()

    async def _checkpoint(self, conn: aiosqlite.Connection) -> None:
        # The erasure is committed: a failed checkpoint only delays the WAL's
        # cleanup to the next one, so it is logged, not raised.
        try:
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            logger.warning("%r: checkpoint after an erasure failed: %s", self, exc)
            await self._drop()

    # -- reading -------------------------------------------------------------------

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """The archived records of ``session`` in append order (empty if none).

        Raises:
            BackendError: the archive cannot be read (``retryable`` as the class
                docstring says), or a stored record no longer decodes
                (``retryable=False``).
        """
        rows = await self._read(_READ, (str(_check_uuid(session)),))
        try:
            return [decode_record(row[0]) for row in rows]
        except msgspec.DecodeError as exc:
            raise BackendError(
                f"{self._path}: a stored record of session {session} does not"
                f" decode: {exc}",
                retryable=False,
            ) from exc

    async def count(self, session: UUID) -> int:
        """How many distinct records of ``session`` are archived (0 if none)."""
        rows = await self._read(_COUNT, (str(_check_uuid(session)),))
        return int(rows[0][0]) if rows else 0

    async def list_sessions(self) -> list[SessionInfo]:
        """Every session with archived records, by ``first_ts`` then session id."""
        rows = await self._read(_LIST, ())
        return [
            SessionInfo(
                session=UUID(session),
                message_count=count,
                first_ts=datetime.fromisoformat(first),
                last_ts=datetime.fromisoformat(last),
            )
            for session, count, first, last in rows
        ]

    async def health_check(self) -> None:
        """Open the archive if needed and run a trivial query against it.

        Raises:
            BackendError: the file cannot be opened or read; see the class
                docstring for which failures are retryable.
        """
        await self._read("SELECT 1 FROM sessions LIMIT 1", ())

    async def _read(self, sql: str, params: tuple[str, ...]) -> list[Any]:
        async with self._lock:
            conn = await self._connection()
            try:
                return list(await conn.execute_fetchall(sql, params))
            except BaseException as exc:
                _, keep = _classify(exc)
                if not keep:
                    with anyio.CancelScope(shield=True):
                        await self._drop()
                if isinstance(exc, sqlite3.Error):
                    raise self._error("read", exc) from exc
                raise

    # -- the connection ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection, if open. Idempotent; a later call reopens it."""
        async with self._lock:
            with anyio.CancelScope(shield=True):
                await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:
                logger.debug("%r: closing the connection failed: %r", self, exc)

    async def _connection(self) -> aiosqlite.Connection:
        """The open connection; open and check the file first if there is none.

        The caller holds the lock.
        """
        if self._conn is None:
            _create_file(self._path)
            # Shielded: a connection half made when its caller gave up would be a
            # thread and a file handle nobody closes.
            with anyio.CancelScope(shield=True):
                try:
                    conn = await aiosqlite.connect(self._path, isolation_level=None)
                except sqlite3.Error as exc:
                    raise self._error("open", exc) from exc
                try:
                    await self._prepare(conn)
                except BaseException:
                    await conn.close()
                    raise
            self._conn = conn
        return self._conn

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        """Refuse a file that is not an archive, then configure and create it."""
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            app_id, version, tables = await _identity(conn)
            self._check_identity(app_id, version, tables)
            (mode,) = next(iter(await conn.execute_fetchall("PRAGMA journal_mode=WAL")))
            if str(mode).lower() != "wal":
                raise BackendError(
                    f"{self._path}: cannot switch the archive to WAL (got {mode})",
                    retryable=False,
                )
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA secure_delete = ON")
            if version == 0:
                await conn.execute("BEGIN IMMEDIATE")
                # Another process may have created it since we looked.
                app_id, version, tables = await _identity(conn)
                self._check_identity(app_id, version, tables)
                if version == 0:
                    for statement in _SCHEMA:
                        await conn.execute(statement)
                await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.rollback()
            raise self._error("open", exc) from exc

    def _check_identity(self, app_id: int, version: int, tables: list[str]) -> None:
        if app_id == _JOURNAL_APPLICATION_ID:
            raise BackendError(
                f"{self._path} is a journal_archivist journal, not an archive: give"
                " SqliteArchive a file of its own",
                retryable=False,
            )
        if app_id != APPLICATION_ID and (app_id != 0 or version or tables):
            raise BackendError(
                f"{self._path} is a SQLite database of something else, not a"
                f" journal_archivist archive (application_id {app_id:#x}, tables"
                f" {tables[:5]}); refusing to touch it",
                retryable=False,
            )
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"{self._path}: archive schema version {version} is newer than the"
                f" supported {SCHEMA_VERSION}; open it with the version that wrote it",
                retryable=False,
            )

    def _error(self, doing: str, exc: sqlite3.Error) -> BackendError:
        retryable, _ = _classify(exc)
        if doing == "open" and not retryable:
            return BackendError(
                f"{self._path} is not a usable SQLite archive (corrupt, or not a"
                f" database): {exc}",
                retryable=False,
            )
        return BackendError(f"{self._path}: {doing} failed: {exc}", retryable=retryable)


async def _identity(conn: aiosqlite.Connection) -> tuple[int, int, list[str]]:
    """``(application_id, user_version, table names)`` of the open file."""
    (app_id,) = next(iter(await conn.execute_fetchall("PRAGMA application_id")))
    (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
    tables = [
        str(row[0])
        for row in await conn.execute_fetchall(
            "SELECT name FROM sqlite_schema WHERE type = 'table'"
        )
    ]
    return int(app_id), int(version), tables


def _create_file(path: str) -> None:
    """Create ``path`` empty and owner-only (0600) unless it exists.

    SQLite gives the ``-wal`` and ``-shm`` files the mode of the database file, so
    they are owner-only too. The directory is not created: a missing one is a
    deployment mistake (or a volume not mounted yet) that an operator fixes.

    Raises:
        BackendError: retryable, naming the file and what is wrong.
    """
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise BackendError(
            f"{path}: the archive directory {directory!r} does not exist",
            retryable=True,
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if os.path.isdir(path):
            raise BackendError(
                f"{path}: the archive path is a directory", retryable=False
            ) from None
        if not os.access(path, os.R_OK | os.W_OK):
            raise BackendError(
                f"{path}: the archive file is not readable and writable",
                retryable=True,
            ) from None
        return
    except OSError as exc:
        raise BackendError(
            f"{path}: cannot create the archive file ({exc.strerror})",
            retryable=True,
        ) from exc
    os.close(fd)


def _check_uuid(session: object) -> UUID:
    if not isinstance(session, UUID):
        raise TypeError(f"session must be a UUID, got {type(session).__name__}")
    return session
