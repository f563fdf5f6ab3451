"""Opening a journal file: create it owner-only, connect, refuse what is not a
healthy journal, and migrate its schema.

Nothing here writes to a file before it is known to be a journal (or empty): a file
that is not one, or is damaged, raises ``JournalCorrupt`` and is left untouched.
SQLite's error codes are read here only: ``is_corruption`` and ``write_failed``
classify them for the rest of the journal.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sqlite3
from typing import Final

import aiosqlite
import anyio

from ._errors import (
    JournalCorrupt,
    JournalError,
    JournalIncompatible,
    JournalWriteFailed,
)
from ._private_files import (
    UnsafePath,
    check_file,
    check_folder,
    create_file,
    make_folders,
    sync_folder,
)
from ._rows import BACKEND_COLUMNS, BackendRow, typed
from ._schema import (
    APPLICATION_ID,
    MAX_BACKENDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    entry_crc,
    entry_crc_v1,
)

logger = logging.getLogger("journal_archivist.journal")

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "check_and_migrate",
    "connect",
    "is_corruption",
    "is_row_damage",
    "prepare_file",
    "prepare_folder",
    "write_failed",
]

#: The WAL is truncated back to this size after a checkpoint that outgrew it.
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
#: Findings ``PRAGMA quick_check`` lists at most; a file with as many is refused.
QUICK_CHECK_LIMIT: Final = 100

_NULL_IN_ROW: Final = re.compile(
    r"NULL value in (entries|backends|payloads|meta|dead_letters|quarantine)\.\w+$"
)


def is_row_damage(problem: str) -> bool:
    """Whether a finding of ``PRAGMA quick_check`` is one row's damage (a NULL
    where NOT NULL belongs: a flipped type byte, which every reader handles),
    not damage to the file's structure."""
    return _NULL_IN_ROW.match(problem) is not None


def is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or (
        "malformed" in str(exc) or "not a database" in str(exc)
    )


def write_failed(path: str, detail: str, exc: BaseException) -> JournalWriteFailed:
    """``JournalWriteFailed`` for ``exc``, classified here so that no module
    outside the journal reads SQLite's error codes: an I/O error is SQLite's
    ``SQLITE_IOERR`` (any extended code) or an ``OSError`` of our own file work."""
    code = getattr(exc, "sqlite_errorcode", None)
    io_error = isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.Error)
        and code is not None
        and code & 0xFF == sqlite3.SQLITE_IOERR
    )
    return JournalWriteFailed(path, detail, io_error=io_error)


def prepare_folder(path: str) -> str:
    """Make the journal's folder if missing (0700, durably) and check it is safe
    (``_private_files``); return the path to open.

    The returned path is the file's name in the folder's real path: symlinked
    folders on the way are the deployment's choice and resolved once, here; the
    file itself, and its ``-wal`` and ``-shm``, must not be symlinks.
    """
    folder = os.path.dirname(path)
    try:
        make_folders(folder)
    except OSError as exc:
        raise JournalError(
            path, f"cannot create the journal directory {folder!r} ({exc})"
        ) from exc
    real = os.path.join(os.path.realpath(folder), os.path.basename(path))
    try:
        check_folder(os.path.dirname(real), "the journal directory")
    except UnsafePath as exc:
        raise JournalError(path, str(exc)) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JournalError(path, f"the journal directory {folder!r} is not writable")
    return real


def prepare_file(real: str, path: str) -> None:
    """Create the journal file ``real`` empty and owner-only if missing, durably,
    and check it and its ``-wal`` and ``-shm`` are ours (``_private_files``).

    Called under the journal's lock (``path`` names it in errors): the checks open
    an existing file only to set its mode, which drops this process's POSIX locks
    on it, so never while a connection of ours holds them.
    """
    try:
        created = create_file(real)
        if not created:
            check_file(real, "the journal file")
            if not os.access(real, os.R_OK | os.W_OK):
                raise JournalError(
                    path, "the journal file is not readable and writable"
                )
        for suffix in ("-wal", "-shm"):
            check_file(real + suffix, f"the journal's {suffix} file")
    except UnsafePath as exc:
        raise JournalError(path, str(exc)) from exc
    except OSError as exc:
        raise JournalError(path, f"cannot create the journal file ({exc})") from exc
    if created:
        # The new name must survive a power loss too, not only what is written
        # to it.
        try:
            sync_folder(os.path.dirname(real))
        except OSError as exc:
            raise JournalError(
                path, f"cannot sync the journal directory ({exc})"
            ) from exc


async def connect(
    path: str, *, synchronous: str, query_only: bool = False, read_only: bool = False
) -> aiosqlite.Connection:
    """A configured aiosqlite connection to ``path``.

    ``read_only`` opens the file read-only, which SQLite honours even when the
    connection closes last: it never checkpoints or deletes the WAL then.
    Shielded from cancellation: a connection half made when its caller gave up
    would be a thread and a file handle nobody closes.
    """
    with anyio.CancelScope(shield=True):
        if read_only:
            uri = pathlib.Path(path).as_uri() + "?mode=ro"
            conn = await aiosqlite.connect(uri, uri=True)
        else:
            conn = await aiosqlite.connect(path, isolation_level="IMMEDIATE")
        try:
            if read_only:
                # A read takes the shared lock a closing writer must not get.
                await conn.execute_fetchall("SELECT count(*) FROM sqlite_schema")
            # Another connection of ours may be checkpointing; wait, don't fail.
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute(f"PRAGMA synchronous = {synchronous}")
            if query_only or read_only:
                await conn.execute("PRAGMA query_only = 1")
            else:
                # The committer checkpoints itself (Journal.checkpoint): an
                # automatic checkpoint's failed fsync would go unreported.
                await conn.execute("PRAGMA wal_autocheckpoint = 0")
                # Not the build's default: with SECURE_DELETE (Debian's build)
                # marking an entry done zeroes every page it frees, writing its
                # whole size to the WAL, so a 64 MiB entry's done-mark needs
                # the whole reserve. FAST zeroes what is rewritten anyway.
                await conn.execute("PRAGMA secure_delete = FAST")
        except BaseException:
            await conn.close()
            raise
    return conn


async def check_and_migrate(conn: aiosqlite.Connection, path: str) -> None:
    """Refuse files that are not healthy journals, then bring the schema up to date.

    Reads first and writes only once the file is known to be ours (or empty).
    """
    try:
        (app_id,) = next(iter(await conn.execute_fetchall("PRAGMA application_id")))
        (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
        tables = await _table_names(conn)
        if app_id != APPLICATION_ID and (app_id != 0 or tables or version):
            raise JournalCorrupt(
                path,
                f"not a journal: application_id {app_id:#x}, tables {tables[:5]}",
            )
        if version > SCHEMA_VERSION:
            raise JournalIncompatible(path, version, SCHEMA_VERSION)
        problems = [
            str(row[0])
            for row in await conn.execute_fetchall(
                f"PRAGMA quick_check({QUICK_CHECK_LIMIT})"
            )
        ]
        # A NULL where NOT NULL belongs is one row's damage (a flipped type
        # byte), which every reader handles; damage to the file's structure, or
        # more findings than were listed, refuses the file.
        structural = [p for p in problems if p != "ok" and not is_row_damage(p)]
        if structural or len(problems) >= QUICK_CHECK_LIMIT:
            raise JournalCorrupt(path, "; ".join(structural[:5] or problems[:5]))
        if problems != ["ok"]:
            logger.warning(
                "journal %s: %d stored values are NULL where none belong (%s);"
                " those rows are quarantined or repaired when read",
                path,
                len(problems),
                "; ".join(problems[:3]),
            )
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise JournalCorrupt(path, str(exc)) from exc
        raise JournalError(path, f"cannot read the journal ({exc})") from exc

    try:
        if version == 0:
            # auto_vacuum takes effect only before the first table is created and
            # before WAL mode writes the header, so it comes first.
            await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        (mode,) = next(iter(await conn.execute_fetchall("PRAGMA journal_mode = WAL")))
        if str(mode).lower() != "wal":
            raise JournalError(path, f"cannot switch the journal to WAL (got {mode})")
        await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        while version < SCHEMA_VERSION:
            migration = MIGRATIONS[version]
            # The script's BEGIN stays open: the reseal and the version bump
            # commit with it, or none of it does.
            await conn.executescript("BEGIN IMMEDIATE;" + migration.sql)
            if migration.reseal:
                await _reseal(conn)
            await conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            await conn.execute(f"PRAGMA user_version = {version + 1}")
            await conn.commit()
            version += 1
        missing = TABLES - set(await _table_names(conn))
        if missing:
            raise JournalCorrupt(path, f"tables missing: {sorted(missing)}")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            await conn.rollback()
        if is_corruption(exc):
            raise JournalCorrupt(path, str(exc)) from exc
        raise JournalError(path, f"cannot prepare the journal ({exc})") from exc


#: Rows resealed per statement while migrating.
_RESEAL_CHUNK: Final = 1024


async def _reseal(conn: aiosqlite.Connection) -> None:
    """Recompute checksums under the current rules, in the open transaction.

    An entry or dead letter is resealed only if its old checksum still matches,
    so a row damaged before the migration stays damaged (and is quarantined when
    read). Backend rows get their first checksum. Reads every value through
    ``typed``, so no stored value can raise here.
    """
    for table in ("entries", "dead_letters"):
        key = "seq" if table == "entries" else "id"
        position = -1
        while True:
            rows = list(
                await conn.execute_fetchall(
                    f"SELECT {key}, {typed('seq', 'integer')},"
                    f" {typed('session', 'blob')}, {typed('op', 'integer')},"
                    f" {typed('payload', 'blob')},"
                    f" {typed('crc', 'integer')}, {typed('origin', 'integer')}"
                    f" FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                    (position, _RESEAL_CHUNK),
                )
            )
            if not rows:
                break
            position = rows[-1][0]
            await conn.executemany(
                f"UPDATE {table} SET crc = ? WHERE {key} = ?",
                [
                    (entry_crc(seq, session, op, origin, payload), row_id)
                    for row_id, seq, session, op, payload, crc, origin in rows
                    if type(seq) is int
                    and seq >= 0
                    and type(session) is bytes
                    and len(session) == 16
                    and type(op) is int
                    and 0 <= op < 256
                    and type(payload) is bytes
                    and type(origin) is int
                    and 0 <= origin < 1 << MAX_BACKENDS
                    and crc == entry_crc_v1(seq, session, op, payload)
                ],
            )
    backends = [
        BackendRow.from_stored(tuple(row), sealed=False)
        for row in await conn.execute_fetchall(
            f"SELECT {BACKEND_COLUMNS} FROM backends"
        )
    ]
    await conn.executemany(
        "UPDATE backends SET crc = ? WHERE bit = ?",
        [(row.crc(), row.bit) for row in backends if row.damage is None],
    )


async def _table_names(conn: aiosqlite.Connection) -> list[str]:
    # As bytes: a damaged name that is not UTF-8 would raise in the driver.
    rows = await conn.execute_fetchall(
        "SELECT CAST(name AS BLOB) FROM sqlite_schema WHERE type = 'table'"
    )
    return [bytes(name or b"").decode(errors="replace") for (name,) in rows]
