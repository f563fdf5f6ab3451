"""Opening a file as a ``SqliteArchive``: recognise it, configure the connection,
create or upgrade the schema.

``sqlite.py`` creates and checks the file on disk first, and is the only
importer; the format (identity, schema, upgrades) is ``_sqlite_sql``'s.

Rules and theory:
- Nothing is written to a file before it is known to be ours or empty: its
  ``application_id``, ``user_version`` and tables are checked first, and again
  inside the ``BEGIN IMMEDIATE`` that creates the schema (another process may
  have created it since).
- Every connection is set to WAL, ``synchronous=FULL`` and ``secure_delete``
  before its first write: the archive's durability and erasure rest on them.
  Several processes may create one archive at once: each waits for the others'
  locks up to the busy timeout, also where SQLite itself would not wait (the
  switch of a new file to WAL).
- An archive of an older schema is upgraded in one transaction, one version at a
  time (``_sqlite_sql.UPGRADES``).
- Opening is shielded from cancellation, and a connection that fails to open is
  closed: a connection half made when its caller gave up would be a thread and
  a file handle nobody closes.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from typing import TYPE_CHECKING, Final

import aiosqlite
import anyio

from .._backoff import Backoff
from .._errors import BackendError
from . import _sqlite_sql as _sql

if TYPE_CHECKING:
    from .._large_values import LargeValues


#: Pauses between tries of the switch to WAL (``_switch_to_wal``), in seconds.
WAL_SWITCH_FIRST_PAUSE: Final = 0.002
WAL_SWITCH_MAX_PAUSE: Final = 0.05


def busy_timeout_ms(busy_timeout: float) -> int:
    """``busy_timeout`` (seconds) checked, as ``PRAGMA busy_timeout`` takes it.

    Raises:
        TypeError: it is not a number.
        ValueError: it is negative or not finite.
    """
    if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int | float):
        raise TypeError(
            f"busy_timeout must be a number of seconds, got {busy_timeout!r}"
        )
    if not math.isfinite(busy_timeout) or busy_timeout < 0:
        raise ValueError(f"busy_timeout must be >= 0 seconds, got {busy_timeout}")
    # SQLite takes a 32-bit count of milliseconds.
    return min(round(busy_timeout * 1000), 2**31 - 1)


async def open_archive(
    path: str, *, busy_timeout_ms: int, large: LargeValues
) -> aiosqlite.Connection:
    """A connection to the archive file ``path``, checked, configured and created.

    ``large`` is registered on it (``LargeValues.register``).

    Raises:
        BackendError: the file is not an archive this version can use
            (``retryable=False``), or cannot be opened (``retryable`` as
            ``_sqlite_sql.classify`` says). No connection is left open.
    """
    # Shielded: a connection half made when its caller gave up would be a
    # thread and a file handle nobody closes.
    with anyio.CancelScope(shield=True):
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise _sql.backend_error(path, "open", exc) from exc
        try:
            await _prepare(conn, path, busy_timeout_ms, large)
        except BaseException:
            # A failure to close must not hide why the file was refused.
            with contextlib.suppress(sqlite3.Error):
                await conn.close()
            raise
    return conn


async def _prepare(
    conn: aiosqlite.Connection, path: str, busy_timeout_ms: int, large: LargeValues
) -> None:
    """Refuse a file that is not an archive, then configure and create it."""
    try:
        await conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        app_id, version, tables = await _identity(conn)
        _sql.check_identity(path, app_id, version, tables)
        mode = await _switch_to_wal(conn, busy_timeout_ms)
        if mode.lower() != "wal":
            raise BackendError(
                f"{path}: cannot switch the archive to WAL (got {mode})",
                retryable=False,
            )
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA secure_delete = ON")
        await large.register(conn)
        if 0 < version < _sql.SCHEMA_VERSION:
            await conn.execute("BEGIN IMMEDIATE")
            (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
            while version < _sql.SCHEMA_VERSION:
                for statement in _sql.UPGRADES[version]:
                    await conn.execute(statement)
                version += 1
            await conn.execute("COMMIT")
        if version == 0:
            await conn.execute("BEGIN IMMEDIATE")
            # Another process may have created it since we looked.
            app_id, version, tables = await _identity(conn)
            _sql.check_identity(path, app_id, version, tables)
            if version == 0:
                for statement in _sql.SCHEMA:
                    await conn.execute(statement)
            await conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            # The caller closes the connection, which rolls back anyway.
            with contextlib.suppress(sqlite3.Error):
                await conn.rollback()
        raise _sql.backend_error(path, "open", exc) from exc


async def _switch_to_wal(conn: aiosqlite.Connection, busy_timeout_ms: int) -> str:
    """``PRAGMA journal_mode=WAL``, tried again while another connection holds
    the write lock, for up to the busy timeout; the mode it reports.

    Switching a new file to WAL turns the statement's read lock into a write
    lock, and SQLite answers SQLITE_BUSY at once rather than wait there (two
    connections waiting to upgrade would wait for each other): two processes
    creating the same archive at the same moment would see one refused. Between
    tries the statement holds no lock, so trying again cannot deadlock; there is
    no signal when the lock goes, so it polls.
    """
    backoff = Backoff(
        busy_timeout_ms / 1000, WAL_SWITCH_FIRST_PAUSE, WAL_SWITCH_MAX_PAUSE
    )
    while True:
        try:
            (mode,) = next(iter(await conn.execute_fetchall("PRAGMA journal_mode=WAL")))
            return str(mode)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if not await backoff.pause():
                raise


async def _identity(conn: aiosqlite.Connection) -> tuple[int, int, list[str]]:
    """``(application_id, user_version, table names)`` of the open file.

    Read in one transaction: another process may be creating the archive, and
    reads on either side of its commit would see its tables without its
    ``application_id`` (a file of something else, refused).
    """
    own = not conn.in_transaction
    if own:
        await conn.execute("BEGIN")
    try:
        (app_id,) = next(iter(await conn.execute_fetchall("PRAGMA application_id")))
        (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
        # As bytes: the names only go into a message, and a damaged name that is
        # not UTF-8 would raise in the driver.
        tables = [
            bytes(row[0] or b"").decode(errors="replace")
            for row in await conn.execute_fetchall(
                "SELECT CAST(name AS BLOB) FROM sqlite_schema WHERE type = 'table'"
            )
        ]
    finally:
        if own and conn.in_transaction:
            await conn.execute("ROLLBACK")
    return int(app_id), int(version), tables
