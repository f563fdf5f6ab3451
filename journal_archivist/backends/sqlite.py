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
- **Erasure marks** (``erasure_marks = True``): several journals, in several
  processes, may feed one archive file. An erasure at T deletes the session's
  records appended before T and leaves a mark; a record appended before the
  mark is skipped when it arrives (``_sqlite_sql``). The mark is read and
  written inside the ``BEGIN IMMEDIATE`` transaction of the batch, which holds
  the database's write lock from its start: two writers' batches never
  interleave, so no append slips past an erasure running in another process.
  A direct call without times is applied at ``time.time()``.
- ``secure_delete`` is on, and an erasure is followed by a
  ``wal_checkpoint(TRUNCATE)``, so erased content leaves both the database file
  and its WAL.
- The file format (schema, statements, the row a record becomes) and the meaning
  of each ``sqlite3`` error code live in ``_sqlite_sql``, what is read back and
  its checks in ``_sqlite_read``, and opening a file as an archive (identity,
  pragmas, schema, upgrades) in ``_sqlite_open``; this module is the behaviour
  around them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import warnings
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from .._errors import BackendError
from .._large_values import LargeValues
from .._private_files import UnsafePath, check_file, check_folder, create_file
from . import _sqlite_open as _open, _sqlite_read as _reading, _sqlite_sql as _sql
from ._base import (
    ArchiveBackend,
    SessionGroup,
    SessionInfo,
    append_times,
    checked_page,
    checked_uuid,
    text_path,
)
from ._sqlite_sql import APPLICATION_ID, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    import aiosqlite

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
    ``synchronous=FULL`` commit. It keeps erasure marks (``SessionGroup``), so
    several journals, in several processes, may feed one file. The file is
    created owner-only (0600) on first use; it must not be the journal's file,
    and a SQLite file that is not an archive is refused, never modified.

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

    #: Keeps erasure marks: several journals (processes) may feed one file.
    erasure_marks = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        raw = text_path(path, "path")
        if not raw or raw == ":memory:" or "\x00" in raw:
            raise ValueError(f"path must name a file, got {raw!r:.80}")
        self._busy_timeout_ms = _open.busy_timeout_ms(busy_timeout)
        self._path = os.path.abspath(raw)
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
            times = append_times(SessionGroup(session, tuple(records)))
            steps = [("insert", _sql.rows(session, records, times))]
            await self._write(steps, erases=False)

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply a whole coalesced batch in one transaction.

        Groups run in the order given: an erasing group deletes its session's rows
        appended before its ``erased_at`` and raises the session's mark, then its
        records are inserted; a record appended before its session's mark is
        skipped (it was erased). Groups without times are applied at now. Either
        the whole batch is committed (durably) or nothing of it is.

        Raises:
            BackendError: as ``append_messages``; nothing of the batch was applied.
        """
        steps, erases = _sql.write_steps(groups, time.time())
        if steps:
            await self._write(steps, erases=erases)

    async def delete_session(self, session: UUID) -> None:
        """Erase ``session`` durably: its messages and its session row.

        Erases at now: deletes what was appended before now and leaves a mark
        there (records appended before it that arrive later are skipped). A
        session with no records only gets its mark. ``secure_delete`` overwrites the
        erased content in the database file, and a ``wal_checkpoint(TRUNCATE)``
        after the commit empties the WAL. What may remain: the WAL's old frames if
        another connection holds a read transaction through the checkpoint (they
        go at the next checkpoint), blocks the filesystem or an SSD has not reused
        yet, and any backup or snapshot taken before.
        """
        step = ("erase", (str(checked_uuid(session)), time.time()))
        await self._write([step], erases=True)

    async def _write(self, steps: Sequence[_sql.Step], *, erases: bool) -> None:
        async with self._lock:
            conn = await self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for statement, params in _sql.step_statements(steps, self._large):
                    await conn.execute(statement, params)
                await conn.execute("COMMIT")
            except BaseException as exc:
                await self._abort(conn, exc)
                if isinstance(exc, sqlite3.Error):
                    raise _sql.backend_error(self._path, "write", exc) from exc
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
        found = _reading.records(session, await self._read(_reading.READ, key))
        if found is None:
            # Rare: read again with each row's seq, to say which row and why.
            rows = await self._read(_reading.READ_CHECKED, key)
            found = _reading.checked_records(self._path, session, rows)
        return found

    async def count(self, session: UUID) -> int:
        """How many distinct records of ``session`` are archived (0 if none).

        Raises:
            BackendError: the archive cannot be read, or the session's count row
                is damaged (``retryable=False``).
        """
        rows = await self._read(_reading.COUNT, (str(checked_uuid(session)),))
        return _reading.message_count(self._path, session, rows[0][0]) if rows else 0

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
            rows = await self._read(_reading.LIST_ALL, (bound,))
        else:
            rows = await self._read(_reading.LIST_AFTER, (str(after), bound))
        return [_reading.session_info(self._path, row) for row in rows]

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
                    raise _sql.backend_error(self._path, "read", exc) from exc
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
            self._conn = await _open.open_archive(
                self._path, busy_timeout_ms=self._busy_timeout_ms, large=self._large
            )
        return self._conn


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
