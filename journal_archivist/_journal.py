"""The SQLite journal: its connections, its state, and the SQL of every write.

Rules and theory:
- One owner: ``Journal.open`` checks the folder, takes the lock file, then
  creates the journal file owner-only (0600) before SQLite opens it, so ``-wal``
  and ``-shm`` inherit the mode; every file is checked to be ours first
  (``_private_files``). A file that is not a journal or fails ``PRAGMA
  quick_check`` raises ``JournalCorrupt`` before anything is written to it.
- Writes happen only inside ``Journal.transaction``, used by the committer alone.
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

import functools
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
)
from ._large_values import LargeValues
from ._lockfile import LockFile
from ._policies import Durability
from ._reader import Reader
from ._rows import BACKEND_COLUMNS, BackendRow, decode_text, typed
from ._schema import MAX_BACKENDS

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType

    import aiosqlite

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
        conn = self._durable
        rows = [
            BackendRow.from_stored(tuple(row))
            for row in await conn.execute_fetchall(
                f"SELECT {BACKEND_COLUMNS} FROM backends"
            )
        ]
        meta: dict[str, int] = {}
        damaged_meta: list[bytes | None] = []  # their stored keys, as bytes
        for raw_key, value in await conn.execute_fetchall(
            f"SELECT {typed('key', 'text')}, {typed('value', 'integer')} FROM meta"
        ):
            key = decode_text(raw_key)
            if key is None or type(value) is not int:
                damaged_meta.append(raw_key)
            else:
                meta[key] = value
        self.lost_entries = meta.get("lost_entries", 0)
        self.repaired_rows = meta.get("repaired_rows", 0)
        self.quarantined = {
            seq
            for (seq,) in await conn.execute_fetchall(
                f"SELECT DISTINCT {typed('seq', 'integer')} FROM quarantine"
            )
            if type(seq) is int
        }
        (max_seq,) = next(
            iter(await conn.execute_fetchall("SELECT max(seq) FROM entries"))
        )
        counted = [row.counted_through for row in rows if row.exact]
        self.last_seq = max([int(max_seq or 0), *counted])
        recorded = self._lock.read_high_water()
        lost = 0
        if recorded is not None and recorded > self.last_seq:
            lost = recorded - self.last_seq
            logger.error(
                "journal %s: %d acknowledged entries (seq %d..%d) are missing; the WAL"
                " tail was lost or damaged (health().journal.lost_entries counts them)",
                self.path,
                lost,
                self.last_seq + 1,
                recorded,
            )
            self.last_seq = recorded  # never reuse a seq that was acknowledged
        for row in rows:
            if row.damage is not None and not row.exact:
                await self._derive_position(row)
        self.backends = {row.name: row for row in rows}
        repaired = [row for row in rows if row.damage is not None]
        for row in repaired:
            logger.error(
                "journal %s: the stored state of backend %r (bit %d) was damaged (%s);"
                " repaired%s (health().journal.repaired_rows counts it)",
                self.path,
                row.name,
                row.bit,
                row.damage,
                ""
                if row.exact
                else ": its position was rebuilt from the journal's entries and its"
                " delivered/dropped/dead-lettered/quarantined counts may be off",
            )
        if damaged_meta:
            logger.error(
                "journal %s: %d damaged rows of journal-wide counters were reset",
                self.path,
                len(damaged_meta),
            )
        await self._settle_counters(lost, len(repaired), damaged_meta)
        self._lock.write_high_water(self.last_seq)

    async def _derive_position(self, row: BackendRow) -> None:
        """Rebuild a damaged backend row's position from the entries.

        An entry keeps a backend's bit in ``targets`` until that backend settles
        it, and settling moves the cursor in the same transaction, so the cursor
        is just below the first entry that still has the bit. Above it, an append
        the backend was journaled for (``origin``) that lost the bit was dropped by
        DROP_OLDEST. What is pending is counted again.
        """
        conn = self._durable
        mask = row.mask
        ((first,),) = await conn.execute_fetchall(
            "SELECT min(seq) FROM entries WHERE targets & ?", (mask,)
        )
        row.cursor = self.last_seq if first is None else int(first) - 1
        ((floor,),) = await conn.execute_fetchall(
            "SELECT max(seq) FROM entries WHERE seq > ? AND origin & ?"
            " AND NOT targets & ? AND op = 1",
            (row.cursor, mask, mask),
        )
        row.drop_floor = int(floor or 0)
        row.pending = row.pending_bytes = 0
        row.counted_through = row.cursor

    async def _settle_counters(
        self, lost: int, repaired: int, damaged_meta: list[bytes | None]
    ) -> None:
        """Bring every backend's counters up to ``last_seq`` and persist them, with
        the journal-wide counters and the rows repaired on the way.

        Counters are written lazily, so entries journaled after a backend's
        ``counted_through`` are added here, with one scan of that tail. A repaired
        row whose name cannot be trusted is written by ``reconcile`` once the name
        is known to be registered.
        """
        conn = self._durable
        for row in self.backends.values():
            if row.counted_through < self.last_seq:
                (count, nbytes) = next(
                    iter(
                        await conn.execute_fetchall(
                            f"SELECT count(*), total({typed('size', 'integer')})"
                            " FROM entries"
                            " WHERE seq > ? AND origin & ?"
                            " AND NOT (op = 1 AND seq <= ? AND NOT targets & ?)",
                            (row.counted_through, row.mask, row.drop_floor, row.mask),
                        )
                    )
                )
                row.pending += int(count)
                row.pending_bytes += int(nbytes)
                row.counted_through = self.last_seq
        trusted = [row for row in self.backends.values() if row.exact]
        try:
            await _store_backend_rows(conn, trusted)
            if damaged_meta:
                await conn.execute(
                    "DELETE FROM meta WHERE typeof(key) != 'text'"
                    " OR typeof(value) != 'integer'"
                )
                await conn.executemany(
                    "DELETE FROM meta WHERE CAST(key AS BLOB) = ?",
                    [(key,) for key in damaged_meta if key is not None],
                )
            repaired += len(damaged_meta)
            for key, added in (("lost_entries", lost), ("repaired_rows", repaired)):
                if added:
                    await conn.execute(_ADD_TO_META, (key, added))
            await conn.commit()
        except sqlite3.Error as exc:
            await conn.rollback()
            if is_corruption(exc):  # a damaged page met while writing
                raise JournalCorrupt(self.path, str(exc)) from exc
            raise _write_failed(self.path, str(exc), exc) from exc
        self.lost_entries += lost
        self.repaired_rows += repaired
        for row in trusted:
            row.damage = None

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
        """
        doubtful = [row for row in self.backends.values() if not row.exact]
        for row in doubtful:
            if row.name not in names:
                raise JournalCorrupt(
                    self.path,
                    f"the stored state of backend bit {row.bit} is damaged"
                    f" ({row.damage}) and its name {row.name!r} is not registered;"
                    " register it under its true name to keep its pending entries",
                )
        added = [name for name in names if name not in self.backends]
        removed = {
            name: row for name, row in self.backends.items() if name not in names
        }
        if not added and not removed and not doubtful:
            return [], {}
        free_bits = sorted(
            set(range(MAX_BACKENDS))
            - {row.bit for name, row in self.backends.items() if name not in removed}
        )
        if len(added) > len(free_bits):
            raise ValueError(
                f"a journal holds at most {MAX_BACKENDS} backends,"
                f" {len(names)} registered"
            )
        new_rows = [
            BackendRow(
                free_bits[i], name, self.last_seq, 0, 0, 0, 0, 0, 0, self.last_seq, 0
            )
            for i, name in enumerate(added)
        ]
        conn = self._durable
        try:
            for row in removed.values():
                await conn.execute(
                    "UPDATE entries SET targets = targets & ~? WHERE targets & ?",
                    (row.mask, row.mask),
                )
                await conn.execute("DELETE FROM backends WHERE bit = ?", (row.bit,))
            if removed:
                await conn.execute("DELETE FROM entries WHERE targets = 0")
                await conn.execute(_DELETE_ORPHAN_PAYLOADS, (-1, self.last_seq))
            await _store_backend_rows(conn, [*doubtful, *new_rows])
            await conn.commit()
        except sqlite3.Error as exc:
            await conn.rollback()
            raise _write_failed(self.path, str(exc), exc) from exc
        for row in doubtful:
            row.damage, row.exact = None, True
        for name in removed:
            del self.backends[name]
        for row in new_rows:
            self.backends[row.name] = row
        return added, {name: row.pending for name, row in removed.items()}

    # -- writing -------------------------------------------------------------

    def transaction(self, *, durable: bool) -> Transaction:
        """A write transaction; commit on clean exit, roll back on any error.

        ``durable`` transactions journal appends and honour the configured
        durability; others only settle entries and skip the fsync.
        """
        return Transaction(self, self._durable if durable else self._lazy)

    def record_high_water(self, seq: int) -> None:
        """Note in the lock file that entries up to ``seq`` are committed."""
        self.last_seq = seq
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


#: Rows per INSERT statement (9 parameters each; one SQL text per size, all of
#: which fit sqlite3's statement cache of 128).
INSERT_CHUNK: Final = 64


# An entry with its payload, wherever it is kept (``_schema``).
_ENTRIES: Final = "entries LEFT JOIN payloads USING (seq)"
_INSERT_PAYLOAD: Final = (
    f"INSERT INTO payloads (seq, payload) VALUES (?, {LargeValues().sql()})"
)
# After entries are deleted: the large payloads of those among seqs (?, ?].
_DELETE_ORPHAN_PAYLOADS: Final = (
    "DELETE FROM payloads WHERE seq > ? AND seq <= ?"
    " AND NOT EXISTS (SELECT 1 FROM entries WHERE entries.seq = payloads.seq)"
)


@functools.cache
def _insert_entries(count: int) -> str:
    return (
        "INSERT INTO entries (seq, session, op, payload, size, crc, enqueued_at,"
        " targets, origin) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * count)
    )


class Transaction:
    """One write transaction of the committer. Use as ``async with``."""

    def __init__(self, journal: Journal, conn: aiosqlite.Connection) -> None:
        self._journal = journal
        self._conn = conn
        self._backend_rows: Sequence[BackendRow] = ()
        self._lost = 0

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if exc is None:
            try:
                await conn.commit()
            except sqlite3.Error as commit_exc:
                exc = commit_exc
            else:
                for row in self._backend_rows:
                    self._journal.backends[row.name] = row
                self._journal.lost_entries += self._lost
                return
        try:
            await conn.rollback()
        except sqlite3.Error:
            logger.exception("journal %s: rollback failed", self._journal.path)
        if isinstance(exc, sqlite3.Error):
            raise _write_failed(self._journal.path, str(exc), exc) from exc

    async def insert(
        self, rows: Iterable[tuple[int, bytes, int, bytes, int, int, float, int, int]]
    ) -> None:
        """Insert entries: ``(seq, session, op, payload, size, crc, enqueued_at,
        targets, origin)`` each.

        Up to ``INSERT_CHUNK`` rows go in one multi-row INSERT: one
        ``sqlite3_step``, so aiosqlite's thread gives up and retakes the GIL once
        per chunk rather than once per row, which under load means waiting for
        the event loop's thread each time.
        """
        rows = list(rows)
        small = [row for row in rows if row[4] < LargeValues.THRESHOLD]
        for at in range(0, len(small), INSERT_CHUNK):
            chunk = small[at : at + INSERT_CHUNK]
            await self._conn.execute(
                _insert_entries(len(chunk)), [v for row in chunk for v in row]
            )
        if len(small) < len(rows):
            # One by one: the payload in a row of its own (see ``_schema``),
            # through LargeValues, so no copy of it stays behind.
            large = self._journal.large
            for seq, session, op, payload, *rest in rows:
                if len(payload) >= LargeValues.THRESHOLD:
                    await self._conn.execute(
                        _insert_entries(1), (seq, session, op, b"", *rest)
                    )
                    key = large.put(payload)
                    try:
                        await self._conn.execute(_INSERT_PAYLOAD, (seq, key))
                    finally:
                        large.discard([key])

    async def drop_oldest(
        self, mask: int, after: int, count: int, nbytes: int, *, before: int
    ) -> list[tuple[int, int]]:
        """Untarget the oldest appends owed to ``mask`` with ``after < seq < before``.

        Drops at least ``count`` entries and ``nbytes`` bytes, or all there are.
        Erasures are never dropped. Returns ``(seq, size)`` of each dropped entry,
        oldest first.
        """
        dropped: list[tuple[int, int]] = []
        freed = 0
        position = after
        while len(dropped) < count or freed < nbytes:
            rows = await self._conn.execute_fetchall(
                f"SELECT seq, {typed('size', 'integer')} FROM entries"
                " WHERE seq > ? AND seq < ? AND targets & ? AND op = 1"
                " ORDER BY seq LIMIT ?",
                (position, before, mask, max(count - len(dropped), 64)),
            )
            if not rows:
                break
            for seq, size in rows:
                if len(dropped) >= count and freed >= nbytes:
                    break
                stored = size if type(size) is int else 0  # as the writer counts it
                dropped.append((seq, stored))
                freed += stored
            position = dropped[-1][0]
        if dropped:
            # The dropped entries are consecutive among this backend's appends,
            # so one range covers exactly them.
            first, last = dropped[0][0], dropped[-1][0]
            await self._conn.execute(
                "UPDATE entries SET targets = targets & ~?1 WHERE seq BETWEEN ?2 AND ?3"
                " AND targets & ?1 AND op = 1",
                (mask, first, last),
            )
            await self._conn.execute(
                "DELETE FROM entries WHERE seq BETWEEN ? AND ? AND targets = 0",
                (first, last),
            )
            await self._conn.execute(_DELETE_ORPHAN_PAYLOADS, (first - 1, last))
        return dropped

    async def dead_letter(
        self, backend: str, rows: Sequence[tuple[int, str, int]], failed_at: float
    ) -> None:
        """Copy entries ``(seq, error, attempts)`` to ``backend``'s dead letters."""
        await self._conn.executemany(
            "INSERT INTO dead_letters (backend, seq, session, op, payload, crc,"
            " origin, enqueued_at, error, attempts, failed_at)"
            " SELECT ?, seq, session, op, coalesce(payloads.payload, entries.payload),"
            f" crc, origin, enqueued_at, ?, ?, ? FROM {_ENTRIES} WHERE seq = ?",
            [
                (backend, error, attempts, failed_at, seq)
                for seq, error, attempts in rows
            ],
        )

    async def quarantine(
        self, backend: str, rows: Sequence[tuple[int, str]], at: float
    ) -> None:
        """Copy damaged entries ``(seq, reason)`` to ``quarantine`` for ``backend``."""
        await self._conn.executemany(
            "INSERT INTO quarantine (backend, seq, session, op, payload, size, crc,"
            " origin, reason, quarantined_at)"
            " SELECT ?, seq, session, op, coalesce(payloads.payload, entries.payload),"
            f" size, crc, origin, ?, ? FROM {_ENTRIES} WHERE seq = ?",
            [(backend, reason, at, seq) for seq, reason in rows],
        )

    async def purge_erased(
        self, backend: str, erasures: Sequence[tuple[bytes, int]]
    ) -> None:
        """Delete ``backend``'s dead letters and quarantined copies of each erased
        session ``(session, seq)`` that precede its erasure (``seq``).

        Run when the erasure is settled for ``backend``: by then every earlier
        entry of the session is settled there too, so none can be parked later.
        """
        for table in ("dead_letters", "quarantine"):
            await self._conn.executemany(
                f"DELETE FROM {table} WHERE backend = ? AND session = ? AND seq < ?",
                [(backend, session, seq) for session, seq in erasures],
            )

    async def purge_unregistered(
        self, sessions: Sequence[bytes], registered: Sequence[str]
    ) -> None:
        """Delete dead letters and quarantined copies of ``sessions`` kept for
        backends that are no longer registered (none will settle an erasure)."""
        names = ", ".join("?" * len(registered))
        for table in ("dead_letters", "quarantine"):
            await self._conn.executemany(
                f"DELETE FROM {table} WHERE session = ? AND backend NOT IN ({names})",
                [(session, *registered) for session in sessions],
            )

    async def settle(
        self, ranges: Sequence[tuple[int, int, int]], *, shared: bool
    ) -> None:
        """Mark entries done: for each ``(mask, after, upto)`` clear ``mask`` from the
        entries with ``after < seq <= upto`` and delete those owed to no one.

        ``shared`` says whether any entry may have another target; without it, a
        single range delete is all it takes. With it, bits are cleared first and
        what is left owed to no one is deleted after, since several backends may
        settle the same entries in one transaction.
        """
        if not shared:
            # "owes no one else", not "targets = mask": a row whose targets were
            # damaged is deleted all the same once settled.
            await self._conn.executemany(
                "DELETE FROM entries WHERE seq > ? AND seq <= ?"
                " AND coalesce(targets, 0) & ~? = 0",
                [(after, upto, mask) for mask, after, upto in ranges],
            )
            await self._delete_orphan_payloads(ranges)
            return
        await self._conn.executemany(
            "UPDATE entries SET targets = targets & ~? WHERE seq > ? AND seq <= ?"
            " AND targets & ?",
            [(mask, after, upto, mask) for mask, after, upto in ranges],
        )
        await self._conn.executemany(
            "DELETE FROM entries WHERE seq > ? AND seq <= ?"
            " AND coalesce(targets, 0) = 0",
            [(after, upto) for _, after, upto in ranges],
        )
        await self._delete_orphan_payloads(ranges)

    async def _delete_orphan_payloads(
        self, ranges: Sequence[tuple[int, int, int]]
    ) -> None:
        # Cheap: payloads holds only the few large entries, found by their key.
        await self._conn.executemany(
            _DELETE_ORPHAN_PAYLOADS, [(after, upto) for _, after, upto in ranges]
        )

    async def count_lost(self, count: int) -> None:
        """Add ``count`` owed entries found missing to ``lost_entries``."""
        await self._conn.execute(_ADD_TO_META, ("lost_entries", count))
        self._lost += count

    async def update_backends(self, rows: Sequence[BackendRow]) -> None:
        """Store ``rows`` (whole, with their checksums); once committed they are
        the journal's ``backends``."""
        await _update_backend_rows(self._conn, rows)
        self._backend_rows = rows


_ADD_TO_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value"
)
_BACKEND_FIELDS: Final = (
    "name, cursor, pending, pending_bytes, delivered, dropped, dead_lettered,"
    " quarantined, counted_through, drop_floor, crc"
)


def _backend_values(row: BackendRow) -> tuple[object, ...]:
    return (
        row.name,
        row.cursor,
        row.pending,
        row.pending_bytes,
        row.delivered,
        row.dropped,
        row.dead_lettered,
        row.quarantined,
        row.counted_through,
        row.drop_floor,
        row.crc(),
    )


async def _update_backend_rows(
    conn: aiosqlite.Connection, rows: Iterable[BackendRow]
) -> None:
    assignments = ", ".join(f"{f.strip()} = ?" for f in _BACKEND_FIELDS.split(","))
    await conn.executemany(
        f"UPDATE backends SET {assignments} WHERE bit = ?",
        [(*_backend_values(row), row.bit) for row in rows],
    )


async def _store_backend_rows(
    conn: aiosqlite.Connection, rows: Iterable[BackendRow]
) -> None:
    """Write ``rows`` whole, replacing a stored row of the same bit or name (a row
    repaired at open may have had its bit or name damaged)."""
    await conn.executemany(
        f"INSERT OR REPLACE INTO backends (bit, {_BACKEND_FIELDS})"
        f" VALUES (?, {', '.join('?' * 11)})",
        [(row.bit, *_backend_values(row)) for row in rows],
    )


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


def _write_failed(path: str, detail: str, exc: BaseException) -> JournalWriteFailed:
    """``JournalWriteFailed`` for ``exc``, classified here so that no other module
    reads SQLite's error codes: an I/O error is SQLite's ``SQLITE_IOERR`` (any
    extended code) or an ``OSError`` of our own file work."""
    code = getattr(exc, "sqlite_errorcode", None)
    io_error = isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.Error)
        and code is not None
        and code & 0xFF == sqlite3.SQLITE_IOERR
    )
    return JournalWriteFailed(path, detail, io_error=io_error)


async def _close_quietly(conn: aiosqlite.Connection | Reader, path: str) -> None:
    try:
        await conn.close()
    except Exception:
        logger.exception("journal %s: closing a connection failed", path)
