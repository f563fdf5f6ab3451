"""The SQLite journal: its connections, its state, and its lifecycle.

Its parts: ``_journal_file`` (the file: creating, checking, migrating, and
classifying SQLite's errors), ``_journal_load`` (the state at open: loading,
repairing, reconciling the backends), ``_transaction`` (one write transaction and
the SQL of every write), ``_reader`` (read-only connections) and
``_journal_types`` (the named rows that cross the boundary).

Rules and theory:
- One owner: ``Journal.open`` checks the folder, takes the lock file, then
  creates the journal file owner-only (0600) before SQLite opens it, so ``-wal``
  and ``-shm`` inherit the mode; every file is checked to be ours first
  (``_private_files``). A file that is not a journal or fails ``PRAGMA
  quick_check`` raises ``JournalCorrupt`` before anything is written to it.
- Writes happen only inside ``Journal.transaction``, used by the committer alone
  (and at open, by ``_journal_load``).
  Every write transaction begins with ``BEGIN IMMEDIATE`` (issued by sqlite3 before
  the first statement, as ``isolation_level="IMMEDIATE"`` asks) and is rolled back
  explicitly on any error.
- Two write connections, never used at the same time: ``durable`` transactions
  (ones that journal appends) use ``synchronous=FULL`` under ``Durability.FULL``;
  settle-only transactions (done-marks) use ``synchronous=NORMAL``, because a lost
  done-mark only means an idempotent redelivery. A later FULL commit fsyncs the
  shared WAL, covering the NORMAL commits before it.
- Reads use ``Reader`` connections (``_reader``, ``query_only``), one per writer
  loop, so reads run in parallel with commits.
- Each aiosqlite call is a thread round trip, so the SQL is shaped to need few:
  one ``executemany`` per kind of change per transaction.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import (
    JournalCorrupt,
    JournalError,
    JournalWriteFailed,
)
from ._journal_file import (
    check_and_migrate,
    connect,
    is_corruption,
    prepare_file,
    prepare_folder,
    write_failed as _write_failed,
)
from ._journal_load import load, reconcile
from ._large_values import LargeValues
from ._lockfile import LockFile
from ._policies import Durability
from ._reader import Reader
from ._rows import BackendRow
from ._transaction import Transaction

if TYPE_CHECKING:
    from collections.abc import Sequence

    import aiosqlite

# Tests import ``_write_failed`` from here too.
__all__ = ["BackendRow", "Journal", "Transaction"]

logger = logging.getLogger("journal_archivist.journal")


class Journal:
    """An open, locked journal. Create with ``await Journal.open(path, ...)``."""

    def __init__(
        self,
        path: str,
        lock: LockFile,
        durability: Durability,
        durable_conn: aiosqlite.Connection,
        lazy_conn: aiosqlite.Connection,
        large: LargeValues,
    ) -> None:
        self.path = path
        self.large = large
        self.durability = durability
        self._lock = lock
        self._durable = durable_conn
        self._lazy = lazy_conn
        self._readers: list[Reader] = []
        self.backends: dict[str, BackendRow] = {}
        self.last_seq = 0
        #: The newest journal time handed out (``_intake.number``).
        self.last_stamp = 0.0
        self.lost_entries = 0
        self.repaired_rows = 0
        #: A write or fsync failed: ``rewrite`` before anything is acknowledged.
        self.rewrite_needed = False
        #: Seqs of entries quarantined (by any backend), to count each once.
        self.quarantined: set[int] = set()
        self.closed = False

    # -- opening -------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], durability: Durability
    ) -> Journal:
        """Lock, check, migrate and load the journal at ``path``.

        Raises:
            JournalLocked: another owner holds it; nothing was touched.
            JournalCorrupt: not a journal, or damaged; the file was not changed.
            JournalIncompatible: written by a newer schema; nothing was changed.
            JournalError: the directory or file cannot be created or written, or
                is not safely ours (a symlink, a loose mode, another owner).
        """
        # Path arithmetic and one readlink: not worth a thread.
        given = os.path.abspath(os.fspath(path))  # noqa: ASYNC240
        full = prepare_folder(given)
        lock = LockFile(full + ".lock", given)
        conns: list[aiosqlite.Connection] = []
        try:
            prepare_file(full, given)
            sync = "FULL" if durability is Durability.FULL else "NORMAL"
            durable = await connect(full, synchronous=sync)
            conns.append(durable)
            await check_and_migrate(durable, full)
            large = LargeValues()
            await large.register(durable)  # appends are inserted here only
            lazy = durable
            if durability is Durability.FULL:
                lazy = await connect(full, synchronous="NORMAL")
                conns.append(lazy)
            journal = cls(full, lock, durability, durable, lazy, large)
            await journal._load()
        except BaseException as exc:
            # Cancellation must not stop the cleanup: a leaked connection or
            # lock would keep the journal locked until the process exits.
            with anyio.CancelScope(shield=True):
                for conn in conns:
                    await _close_quietly(conn, full)
            lock.release()
            if isinstance(exc, sqlite3.Error):
                if is_corruption(exc):
                    raise JournalCorrupt(full, str(exc)) from exc
                raise JournalError(full, f"cannot open the journal ({exc})") from exc
            raise
        return journal

    async def _load(self) -> None:
        """Take the state ``_journal_load.load`` reads and repairs at open."""
        loaded = await load(self._durable, self.path, self._lock)
        self.backends = loaded.backends
        self.last_seq = loaded.last_seq
        self.last_stamp = loaded.last_stamp
        self.lost_entries = loaded.lost_entries
        self.repaired_rows = loaded.repaired_rows
        self.quarantined = loaded.quarantined

    async def reconcile(self, names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
        """Make the ``backends`` table match the registered ``names``.

        A new name gets a free bit and starts at the current tail (it owes nothing
        journaled before it was registered). A name no longer registered is
        removed: its pending entries are released. Returns the added names and the
        count of entries released per removed name.

        Raises:
            JournalCorrupt: a backend row repaired at open has a name that may be
                damaged and is not registered: its entries are not released on the
                word of a damaged row. Nothing was changed.
            JournalWriteFailed: writing the change failed; nothing was changed.
        """
        return await reconcile(
            self._durable, self.path, self.backends, self.last_seq, names
        )

    # -- writing -------------------------------------------------------------

    def transaction(self, *, durable: bool) -> Transaction:
        """A write transaction; commit on clean exit, roll back on any error.

        ``durable`` transactions journal appends and honour the configured
        durability; others only settle entries and skip the fsync.
        """
        return Transaction(self, self._durable if durable else self._lazy)

    def record_high_water(self, seq: int, stamp: float) -> None:
        """Note in the lock file that entries up to ``seq`` are committed, the
        newest journaled at time ``stamp``."""
        self.last_seq = seq
        self.last_stamp = stamp
        self._lock.write_high_water(seq)

    async def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file (a passive checkpoint).

        Raises:
            JournalWriteFailed: it failed (a write or fsync of the file).
        """
        try:
            await self._durable.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise _write_failed(self.path, f"checkpoint failed: {exc}", exc) from exc

    async def rewrite(self) -> None:
        """Make the WAL on disk what this process reads again, after a failed
        write or fsync: write every byte of it back in place, and sync it.

        After a failed fsync, Linux may drop the pages it did not write and report
        success to the next fsync. Frames SQLite published without an fsync of
        their own (the lazy done-marks) are then a hole in the WAL on disk: its
        frames chain their checksums, so recovery stops at the hole, and every
        later commit, acknowledged or not, is lost with it. Worse, a checkpoint
        would copy frames from past the hole into the database file, and after a
        power cut recovery would replay the WAL up to the hole over those newer
        pages: a corrupt file. So until the WAL has been written back (what this
        process reads, the kernel still caches) and synced, nothing is
        acknowledged and nothing is checkpointed.

        Raises:
            JournalWriteFailed: it failed; retry (nothing was lost meanwhile).
        """
        try:
            await anyio.to_thread.run_sync(_write_back, self.path + "-wal")
        except OSError as exc:
            raise _write_failed(self.path, f"rewrite failed: {exc}", exc) from exc

    async def compact(self, max_pages: int) -> tuple[int, int]:
        """Return up to ``max_pages`` free pages to the filesystem.

        Returns the pages freed and the pages still free. ``PRAGMA
        incremental_vacuum`` frees one page per result row, so every row is
        fetched. Once no free page is left, the WAL is truncated as well. A journal
        created without incremental auto-vacuum frees nothing.

        Raises:
            JournalWriteFailed: it failed writing (an I/O error).
        """
        conn = self._lazy
        try:
            (before,) = next(iter(await conn.execute_fetchall("PRAGMA freelist_count")))
            await conn.execute_fetchall(f"PRAGMA incremental_vacuum({int(max_pages)})")
            await conn.commit()
            (left,) = next(iter(await conn.execute_fetchall("PRAGMA freelist_count")))
            if not left:
                await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.rollback()
            logger.warning("journal %s: compaction failed: %s", self.path, exc)
            failed = _write_failed(self.path, f"compaction: {exc}", exc)
            if failed.io_error:
                raise failed from exc
            return 0, 0
        return int(before) - int(left), int(left)

    async def free_page_bytes(self) -> int:
        """Bytes held by free pages (what ``compact`` would give back); 0 if the
        journal cannot tell."""
        conn = self._lazy
        try:
            (count,) = next(iter(await conn.execute_fetchall("PRAGMA freelist_count")))
            (size,) = next(iter(await conn.execute_fetchall("PRAGMA page_size")))
        except sqlite3.Error as exc:
            logger.warning("journal %s: cannot read free pages: %s", self.path, exc)
            return 0
        return int(count) * int(size)

    # -- reading -------------------------------------------------------------

    async def open_reader(self) -> Reader:
        """A new read-only connection, closed with the journal."""
        conn = await connect(self.path, synchronous="NORMAL", query_only=True)
        reader = Reader(self.path, conn)
        self._readers.append(reader)
        return reader

    async def close(self, *, rewrite_within: float = math.inf) -> None:
        """Close every connection and release the lock; harmless twice.

        A journal that must be rewritten (after a failed write or fsync) is
        rewritten first if that takes at most ``rewrite_within`` seconds, else its
        WAL is kept for the next open. A connection that fails to close is logged;
        the others are still closed and the lock is released.
        """
        if self.closed:
            return
        self.closed = True
        guard: aiosqlite.Connection | None = None
        try:
            with anyio.CancelScope(shield=True):
                if self.rewrite_needed:
                    guard = await self._keep_the_wal(rewrite_within)
                for reader in self._readers:
                    await _close_quietly(reader, self.path)
                if self._lazy is not self._durable:
                    await _close_quietly(self._lazy, self.path)
                await _close_quietly(self._durable, self.path)
                if guard is not None:
                    await _close_quietly(guard, self.path)
        finally:
            self._lock.release()

    async def _keep_the_wal(self, within: float) -> aiosqlite.Connection | None:
        """Rewrite the journal before closing it; if that fails or takes longer
        than ``within`` seconds, open a read-only connection to close last, so no
        closing connection checkpoints the WAL into the file and deletes it on top
        of pages a failed fsync may have dropped. The next open replays the whole
        WAL."""
        problem = f"the rewrite took longer than {within:.1f}s"
        with anyio.move_on_after(within):
            try:
                await self.rewrite()
            except JournalWriteFailed as exc:
                problem = exc.detail
            else:
                self.rewrite_needed = False
                return None
        logger.error(
            "journal %s: closing with the WAL kept (%s); the next open replays it",
            self.path,
            problem,
        )
        try:
            return await connect(self.path, synchronous="NORMAL", read_only=True)
        except (sqlite3.Error, OSError) as exc:
            logger.error("journal %s: cannot keep the WAL: %s", self.path, exc)
            return None


#: Bytes ``_write_back`` reads and writes at a time.
_WRITE_BACK_CHUNK: Final = 1 << 20


def _write_back(path: str) -> None:
    """Write every byte of ``path`` back where it is, then fsync it (if it exists)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(_WRITE_BACK_CHUNK, size - offset), offset)
            if not chunk:
                break
            done = 0
            while done < len(chunk):
                done += os.pwrite(fd, chunk[done:], offset + done)
            offset += len(chunk)
        # The next commit's fsync would cover it too; synced here, a failure
        # says so before anything else is tried.
        os.fsync(fd)
    finally:
        os.close(fd)


async def _close_quietly(conn: aiosqlite.Connection | Reader, path: str) -> None:
    try:
        await conn.close()
    except Exception:
        logger.exception("journal %s: closing a connection failed", path)
