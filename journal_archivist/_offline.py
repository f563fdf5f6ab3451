"""Reading a journal file offline: no ``Archivist``, no lock, the owner may be running.

Rules and theory:
- Every reader opens the file with ``sqlite3`` read-only (``mode=ro`` and ``PRAGMA
  query_only``) and reads inside one transaction, so it sees one committed
  snapshot, whatever the owning service commits meanwhile, and never writes:
  a read-only connection closing last does not checkpoint or delete the WAL.
- Nothing here opens the journal's files with ``os.open``: closing a descriptor
  drops every POSIX lock this process holds on the file, SQLite's included (an
  ``Archivist`` of this very process may hold them). Sizes come from ``stat``.
- The numbers are computed as open computes them (``_journal_load.read_state``,
  the same queries and sums): stored counters plus the entries journaled after
  each backend's ``counted_through``. While the lock is free, the lock file's
  high-water is read *before* the snapshot (it is written after each commit), and
  what open would add (a lost WAL tail, damaged rows it would repair) is added.
  While the lock is held, the owner has done that already.
- Text is never decoded by the driver (``_rows.StoredText``): a damaged row must
  not raise in a listing. A file that is not a journal raises ``JournalCorrupt``,
  one of a newer schema ``JournalIncompatible``, before any row is read.
- ``check`` lives in ``_offline_check``, ``salvage`` in ``_salvage`` and the
  listings of dead letters and quarantine in ``_offline_tables``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import sqlite3
import time
from typing import TYPE_CHECKING, Final

from ._errors import JournalCorrupt, JournalError, JournalIncompatible
from ._journal_file import is_corruption
from ._journal_load import OWED, State, read_state_sync
from ._lockfile import LockPeek, peek
from ._rows import StoredText, decode_text, typed
from ._schema import APPLICATION_ID, SCHEMA_VERSION, TABLES
from ._stats import BackendStats, JournalStats, Stats

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "check_header",
    "current_state",
    "lock_of",
    "read_only",
    "read_status",
    "translate",
]

#: Seconds a reader waits for a lock SQLite holds briefly (a checkpoint).
BUSY_TIMEOUT: Final = 10.0


# -- opening -------------------------------------------------------------------


@contextlib.contextmanager
def read_only(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the journal at ``path``, its header checked,
    inside one read transaction (rolled back on exit).

    Raises:
        JournalCorrupt: not a journal, or damaged where the header is read.
        JournalIncompatible: written by a newer schema.
        JournalError: missing, cannot be opened, or of an older schema (open
            migrates it).
    """
    full = os.path.abspath(os.fspath(path))
    conn = _connect(full)
    try:
        try:
            conn.execute("BEGIN")
            check_header(conn, full)
            yield conn
        except sqlite3.DatabaseError as exc:
            raise translate(exc, full) from exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
    finally:
        conn.close()


def _connect(full: str) -> sqlite3.Connection:
    if not os.path.isfile(full):
        what = "no such file" if not os.path.lexists(full) else "not a regular file"
        raise JournalError(full, f"cannot read the journal ({what})")
    folder = os.path.dirname(full)
    uri = pathlib.Path(full).as_uri() + "?mode=ro"
    wal = _size(full + "-wal")
    if not os.access(folder, os.W_OK) and not os.path.exists(full + "-shm"):
        # A WAL reader needs the -shm index, which it cannot create in a read-only
        # folder. ``immutable=1`` reads the main file alone, taking no locks and
        # ignoring the WAL: right only if no WAL holds commits, and no owner can
        # be writing (an owner would have made the -shm).
        if wal:
            raise JournalError(
                full,
                "cannot read the journal: its folder is read-only and its WAL holds"
                f" {wal} bytes not yet in the file; copy the journal with its -wal"
                " to a writable folder and read the copy",
            )
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise translate(exc, full) from exc
    conn.text_factory = StoredText  # text is never decoded: see _rows
    try:
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, full) from exc
    return conn


def translate(exc: sqlite3.Error, full: str) -> JournalError:
    """Our error for ``exc``, raised reading the journal at ``full``."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
        return JournalCorrupt(full, f"not a journal: {exc}")
    if is_corruption(exc):
        return JournalCorrupt(full, str(exc))
    return JournalError(full, f"cannot read the journal ({exc})")


def check_header(conn: sqlite3.Connection, full: str) -> int:
    """Refuse a file that is not a journal of the current schema; return its
    schema version.

    Raises:
        JournalCorrupt, JournalIncompatible: see ``read_only``.
    """
    ((app_id,),) = conn.execute("PRAGMA application_id").fetchall()
    ((version,),) = conn.execute("PRAGMA user_version").fetchall()
    if app_id != APPLICATION_ID:
        raise JournalCorrupt(full, f"not a journal: application_id {app_id:#x}")
    if version > SCHEMA_VERSION:
        raise JournalIncompatible(full, version, SCHEMA_VERSION)
    if version < SCHEMA_VERSION:
        # The rows of an older schema have other columns; open migrates them.
        raise JournalError(
            full,
            f"journal schema version {version} is older than {SCHEMA_VERSION}:"
            " open it once with this version (Archivist.open) to migrate it",
        )
    names = {
        bytes(name or b"").decode(errors="replace")
        for (name,) in conn.execute(
            "SELECT CAST(name AS BLOB) FROM sqlite_schema WHERE type = 'table'"
        )
    }
    missing = TABLES - names
    if missing:
        raise JournalCorrupt(full, f"tables missing: {sorted(missing)}")
    return int(version)


def lock_of(full: str) -> LockPeek:
    """The lock file's records; read before the snapshot (see the module)."""
    try:
        return peek(full + ".lock")
    except OSError:
        return LockPeek(False, None, None)  # unreadable: as good as unknown


def current_state(conn: sqlite3.Connection, lock: LockPeek) -> State:
    """The journal's state as open would compute it (see the module)."""
    return read_state_sync(conn, None if lock.held else lock.high_water)


# -- status --------------------------------------------------------------------


def read_status(
    path: str | os.PathLike[str], *, enabled: Mapping[str, bool] | None = None
) -> Stats:
    """The ``Stats`` of the journal at ``path``, read from the file alone.

    Exact for what the journal keeps (pending, the ``*_total`` counters, the side
    tables); None for what only a live archivist knows (``up``, failed attempts,
    the append and commit counters). ``enabled`` maps backend names to whether
    the configuration enables them (a journal does not record it; missing names
    count as enabled).

    Raises:
        JournalCorrupt, JournalIncompatible, JournalError: see ``read_only``.
    """
    full = os.path.abspath(os.fspath(path))
    lock = lock_of(full)
    now = time.time()
    with read_only(full) as conn:
        state = current_state(conn, lock)
        ((entries,),) = conn.execute("SELECT count(*) FROM entries").fetchall()
        dead = _count_by_backend(conn, "dead_letters")
        quarantine = _count_by_backend(conn, "quarantine")
        backends = []
        for row in sorted(state.backends, key=lambda row: row.bit):
            first = conn.execute(
                f"SELECT {typed('enqueued_at', 'real')} FROM entries"
                f" WHERE seq > ? AND {OWED} ORDER BY seq LIMIT 1",
                (row.cursor, row.mask, row.drop_floor, row.mask),
            ).fetchall()
            oldest = first[0][0] if first else None
            backends.append(
                BackendStats(
                    name=row.name,
                    enabled=True if enabled is None else enabled.get(row.name, True),
                    up=None,
                    pending_entries=row.pending,
                    pending_bytes=row.pending_bytes,
                    oldest_pending_age=(
                        None if oldest is None else max(0.0, now - float(oldest))
                    ),
                    delivered_total=row.delivered,
                    dropped_total=row.dropped,
                    dead_lettered_total=row.dead_lettered,
                    quarantined_total=row.quarantined,
                    dead_letters=dead.get(row.name, 0),
                    quarantine=quarantine.get(row.name, 0),
                )
            )
    lost = state.meta.get("lost_entries", 0)
    repaired = state.meta.get("repaired_rows", 0)
    if not lock.held:  # what the next open finds and counts
        lost += state.lost
        repaired += sum(row.damage is not None for row in state.backends)
        repaired += len(state.damaged_meta)
    try:
        free: int | None = shutil.disk_usage(os.path.dirname(full)).free
    except OSError:
        free = None
    return Stats(
        journal=JournalStats(
            path=full,
            size_bytes=_size(full),
            wal_bytes=_size(full + "-wal"),
            free_bytes=free,
            entries_journaled_total=state.last_seq,
            entries=int(entries),
            lost_entries=lost,
            repaired_rows=repaired,
            quarantined=len(state.quarantined),
            lock_holder_pid=lock.pid,
        ),
        backends=tuple(backends),
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _count_by_backend(conn: sqlite3.Connection, table: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for raw, count in conn.execute(
        f"SELECT {typed('backend', 'text')}, count(*) FROM {table} GROUP BY 1"
    ):
        name = decode_text(raw)
        if name is not None:
            counts[name] = int(count)
    return counts
