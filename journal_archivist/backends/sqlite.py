"""``SqliteArchive``: the embedded default archive, a SQLite file of its own.

Guarantees:
- **Idempotent on ``message_id``.** A record is inserted with ``ON CONFLICT DO
  NOTHING``: a redelivered record changes nothing, and the per-session count (kept
  by a trigger that fires only for rows really inserted) counts it once.
- **Append order.** ``messages.seq`` is the rowid: a new row gets a number above
  every row in the table, so rows are numbered in the order they are applied, and
  a session reads back by ``seq``: never by ``ts`` or ``message_id``. (Without
  ``AUTOINCREMENT`` a number freed by an erasure may be given again, still above
  every existing row; that keeps the order and costs less per insert.)
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
- The file, its ``-wal`` and ``-shm`` and their folder are checked before every
  (re)open, as the journal's are (``_private_files``): no symlink, one link, our
  owner, no loose mode on content, a folder others cannot write.
- Nothing is written to a file before it is known to be ours or empty:
  ``application_id`` marks an archive, ``user_version`` is its schema version.
- Encoding happens before ``BEGIN``, so a transaction holds the write lock only
  for SQL.
- ``secure_delete`` is on, and an erasure is followed by a
  ``wal_checkpoint(TRUNCATE)``, so erased content leaves both the database file
  and its WAL.
- The file format (schema, statements, the row a record becomes) and the meaning
  of each ``sqlite3`` error code live in ``_sqlite_sql``; this module is the
  behaviour around them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import warnings
from typing import TYPE_CHECKING, Any, Final, final

import aiosqlite
import anyio

from .._errors import BackendError
from .._large_values import LargeValues
from .._private_files import UnsafePath, check_file, check_folder, create_file
from . import _sqlite_sql as _sql
from ._base import (
    ArchiveBackend,
    SessionGroup,
    SessionInfo,
    checked_page,
    checked_uuid,
    text_path,
)
from ._sqlite_sql import APPLICATION_ID, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from .._records import MessageRecord

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "SqliteArchive",
]

logger = logging.getLogger(__name__)

#: Seconds a statement waits for another connection's lock before SQLITE_BUSY.
DEFAULT_BUSY_TIMEOUT: Final = 5.0


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
        raw = text_path(path, "path")
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
        self._large = LargeValues()

    @property
    def path(self) -> str:
        """The absolute path of the archive file."""
        return self._path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    def owned_paths(self) -> tuple[str, ...]:
        """The archive file and its ``-wal`` and ``-shm``, absolute, with symlinks
        resolved as they are now."""
        path = os.path.realpath(self._path)
        return (path, path + "-wal", path + "-shm")

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
            await self._write([("insert", _sql.rows(session, records))], erases=False)

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply a whole coalesced batch in one transaction.

        Groups run in the order given: an erasing group deletes its session's rows
        first, then its records are inserted. Either the whole batch is committed
        (durably) or nothing of it is.

        Raises:
            BackendError: as ``append_messages``; nothing of the batch was applied.
        """
        steps: list[_sql.Step] = []
        pending: list[_sql.Row] = []
        erases = False
        for group in groups:
            if group.erase:
                if pending:
                    steps.append(("insert", pending))
                    pending = []
                steps.append(("erase", str(group.session)))
                erases = True
            pending.extend(_sql.rows(group.session, group.records))
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
        await self._write([("erase", str(checked_uuid(session)))], erases=True)

    async def _write(self, steps: Sequence[_sql.Step], *, erases: bool) -> None:
        async with self._lock:
            conn = await self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for kind, arg in steps:
                    if kind == "insert":
                        for statement, params in _sql.insert_statements(
                            arg, self._large
                        ):
                            await conn.execute(statement, params)
                    else:
                        await conn.execute(_sql.ERASE_MESSAGES, (arg,))
                        await conn.execute(_sql.ERASE_SESSION, (arg,))
                await conn.execute("COMMIT")
            except BaseException as exc:
                await self._abort(conn, exc)
                if isinstance(exc, sqlite3.Error):
                    raise self._error("write", exc) from exc
                raise
            finally:
                self._large.clear()  # what a failed statement never took
            if erases:
                await self._checkpoint(conn)

    async def _abort(self, conn: aiosqlite.Connection, exc: BaseException) -> None:
        """Roll back after ``exc``; drop the connection unless it is known good.

        Shielded: a cancelled call (an attempt timeout) must still not leave a
        transaction open. aiosqlite runs calls in order, so the rollback runs after
        whatever statement was in flight, and is a no-op if that was the COMMIT.
        """
        _, keep = _sql.classify(exc)
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

        Every record is decoded and must be of ``session``: a damaged row is never
        returned as a record.

        Raises:
            BackendError: the archive cannot be read (``retryable`` as the class
                docstring says), or a stored record is damaged (``retryable=False``;
                the message names the file, the row's ``seq`` and what is wrong).
        """
        key = (str(checked_uuid(session)),)
        found = _sql.records(session, await self._read(_sql.READ, key))
        if found is None:
            # Rare: read again with each row's seq, to say which row and why.
            rows = await self._read(_sql.READ_CHECKED, key)
            found = _sql.checked_records(self._path, session, rows)
        return found

    async def count(self, session: UUID) -> int:
        """How many distinct records of ``session`` are archived (0 if none).

        Raises:
            BackendError: the archive cannot be read, or the session's count row
                is damaged (``retryable=False``).
        """
        rows = await self._read(_sql.COUNT, (str(checked_uuid(session)),))
        return _sql.message_count(self._path, session, rows[0][0]) if rows else 0

    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        """The sessions with archived records, ordered by session id.

        The order is ``UUID`` order (the 128-bit value), the same in every
        readable backend. A session with no records (never written, or erased) is
        not listed. ``first_ts`` and ``last_ts`` are the earliest and latest
        record ``ts``, in UTC.

        Args:
            limit: at most this many (all if ``None``); at least 1.
            after: only sessions with a greater id: pass the last session of a
                page to get the next page.

        Raises:
            TypeError: ``limit`` is not an int or ``after`` not a UUID.
            ValueError: ``limit`` is less than 1.
            BackendError: the archive cannot be read, as the class docstring says,
                or a session row is damaged (``retryable=False``, naming it).
        """
        limit, after = checked_page(limit, after)
        bound = -1 if limit is None else limit  # -1: no limit, to SQLite
        if after is None:
            rows = await self._read(_sql.LIST_ALL, (bound,))
        else:
            rows = await self._read(_sql.LIST_AFTER, (str(after), bound))
        return [_sql.session_info(self._path, row) for row in rows]

    async def health_check(self) -> None:
        """Open the archive if needed and run a trivial query against it.

        Raises:
            BackendError: the file cannot be opened or read; see the class
                docstring for which failures are retryable.
        """
        await self._read(_sql.PROBE, ())

    async def _read(self, sql: str, params: tuple[str | int, ...]) -> list[Any]:
        async with self._lock:
            conn = await self._connection()
            try:
                return list(await conn.execute_fetchall(sql, params))
            except BaseException as exc:
                _, keep = _sql.classify(exc)
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
                    # A failure to close must not hide why the file was refused.
                    with contextlib.suppress(sqlite3.Error):
                        await conn.close()
                    raise
            self._conn = conn
        return self._conn

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        """Refuse a file that is not an archive, then configure and create it."""
        try:
            await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            app_id, version, tables = await _identity(conn)
            _sql.check_identity(self._path, app_id, version, tables)
            (mode,) = next(iter(await conn.execute_fetchall("PRAGMA journal_mode=WAL")))
            if str(mode).lower() != "wal":
                raise BackendError(
                    f"{self._path}: cannot switch the archive to WAL (got {mode})",
                    retryable=False,
                )
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA secure_delete = ON")
            await self._large.register(conn)
            if 0 < version < SCHEMA_VERSION:
                await conn.execute("BEGIN IMMEDIATE")
                (version,) = next(
                    iter(await conn.execute_fetchall("PRAGMA user_version"))
                )
                while version < SCHEMA_VERSION:
                    for statement in _sql.UPGRADES[version]:
                        await conn.execute(statement)
                    version += 1
                await conn.execute("COMMIT")
            if version == 0:
                await conn.execute("BEGIN IMMEDIATE")
                # Another process may have created it since we looked.
                app_id, version, tables = await _identity(conn)
                _sql.check_identity(self._path, app_id, version, tables)
                if version == 0:
                    for statement in _sql.SCHEMA:
                        await conn.execute(statement)
                await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                # The caller closes the connection, which rolls back anyway.
                with contextlib.suppress(sqlite3.Error):
                    await conn.rollback()
            raise self._error("open", exc) from exc

    def _error(self, doing: str, exc: sqlite3.Error) -> BackendError:
        if doing == "write":
            damaged = _sql.damaged_session_row(self._path, exc)
            if damaged is not None:
                return damaged
        retryable, _ = _sql.classify(exc)
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
    # As bytes: the names only go into a message, and a damaged name that is not
    # UTF-8 would raise in the driver.
    tables = [
        bytes(row[0] or b"").decode(errors="replace")
        for row in await conn.execute_fetchall(
            "SELECT CAST(name AS BLOB) FROM sqlite_schema WHERE type = 'table'"
        )
    ]
    return int(app_id), int(version), tables


def _create_file(path: str) -> None:
    """Create ``path`` empty and owner-only (0600) unless it exists, and check the
    file, its ``-wal`` and ``-shm`` and its folder are ours (``_private_files``).

    SQLite gives the ``-wal`` and ``-shm`` files the mode of the database file, so
    they are owner-only too. The directory is not created: a missing one is a
    deployment mistake (or a volume not mounted yet) that an operator fixes.

    Raises:
        BackendError: naming the file and what is wrong; retryable if an operator
            may fix it without a decision about the file's content.
    """
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise BackendError(
            f"{path}: the archive directory {directory!r} does not exist",
            retryable=True,
        )
    try:
        check_folder(directory, "the archive directory")
        if not create_file(path):
            if os.path.isdir(path):
                raise BackendError(
                    f"{path}: the archive path is a directory", retryable=False
                )
            # Checked by lstat, not opened: closing a descriptor would drop the
            # POSIX locks another connection of this process holds on it.
            check_file(path, "the archive file")
            if not os.access(path, os.R_OK | os.W_OK):
                raise BackendError(
                    f"{path}: the archive file is not readable and writable",
                    retryable=True,
                )
        for suffix in ("-wal", "-shm"):
            check_file(path + suffix, f"the archive's {suffix} file")
    except UnsafePath as exc:
        raise BackendError(str(exc), retryable=False) from exc
    except PermissionError:
        raise BackendError(
            f"{path}: the archive file is not readable and writable",
            retryable=True,
        ) from None
    except OSError as exc:
        raise BackendError(
            f"{path}: cannot create the archive file ({exc.strerror})",
            retryable=True,
        ) from exc
