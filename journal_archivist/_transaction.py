"""One write transaction on the journal, and the SQL of every write.

Rules and theory:
- ``Journal.transaction`` makes a ``Transaction``; the committer alone uses one.
  It commits on a clean exit and rolls back, explicitly, on any error; a SQLite
  error comes out as ``JournalWriteFailed`` (classified by
  ``_journal_file.write_failed``).
- Only after its commit does a transaction touch the ``Journal``'s memory: the
  backend rows it stored become ``Journal.backends`` and the entries it counted
  lost are added to ``Journal.lost_entries``.
- Each aiosqlite call is a thread round trip, so the SQL is shaped to need few:
  one ``executemany`` per kind of change, and appends in multi-row INSERTs.
- Rows come in and go out as the named tuples of ``_journal_types`` (read by
  name).
- Backend rows are always written whole, with their checksum
  (``store_backend_rows``, ``update_backend_rows``; open uses them too).
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
from fractions import Fraction
from typing import TYPE_CHECKING, Final

from ._journal_file import write_failed
from ._journal_types import Dropped, EntryRow, overlaid
from ._large_values import LargeValues
from ._rows import typed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType

    import aiosqlite

    from ._journal import Journal
    from ._journal_types import Damaged, DeadLettered, Erasure, SettledRange
    from ._rows import BackendRow

__all__ = [
    "ADD_TO_META",
    "DELETE_ORPHAN_PAYLOADS",
    "INSERT_CHUNK",
    "LAST_ERASURE_US",
    "Transaction",
    "from_micros",
    "store_backend_rows",
    "to_micros",
    "update_backend_rows",
]

logger = logging.getLogger("journal_archivist.journal")


#: Rows per INSERT statement (9 parameters each; one SQL text per size, all of
#: which fit sqlite3's statement cache of 128).
INSERT_CHUNK: Final = 64


# An entry with its payload, wherever it is kept (``_schema``).
_ENTRIES: Final = "entries LEFT JOIN payloads USING (seq)"
_INSERT_PAYLOAD: Final = (
    f"INSERT INTO payloads (seq, payload) VALUES (?, {LargeValues().sql()})"
)
# After entries are deleted: the large payloads of those among seqs (?, ?].
DELETE_ORPHAN_PAYLOADS: Final = (
    "DELETE FROM payloads WHERE seq > ? AND seq <= ?"
    " AND NOT EXISTS (SELECT 1 FROM entries WHERE entries.seq = payloads.seq)"
)
#: The ``meta`` key of the newest erasure's journal time, in whole microseconds
#: rounded up (``to_micros``): journal times never go back past it, even if the
#: clock does.
LAST_ERASURE_US: Final = "last_erasure_us"


def to_micros(stamp: float) -> int:
    """``stamp`` in whole microseconds, rounded up exactly: ``from_micros`` of it
    is never before ``stamp``. (``math.ceil(stamp * 1e6)`` is not: the product
    may round down to a whole number first.)"""
    return math.ceil(Fraction(stamp) * 1_000_000)


def from_micros(micros: int) -> float:
    """The time (seconds) of ``micros`` microseconds."""
    return micros / 1_000_000


# Entries in (?, ?] owed to no one but the backends of mask ?. "Owes no one
# else", not "targets = mask": a row whose targets were damaged (NULL or text,
# which count as 0) is deleted all the same once settled; origin, not targets,
# says who was owed it, so a backend that was still owed it counts it as lost.
_DELETE_SETTLED: Final = (
    "DELETE FROM entries WHERE seq > ? AND seq <= ? AND coalesce(targets, 0) & ~? = 0"
)
# Raise the journal-wide (key, value) to at least value.
RAISE_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)"
)
# Add (key, value) to a journal-wide counter.
ADD_TO_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value"
)


@functools.cache
def _insert_entries(count: int) -> str:
    return (
        "INSERT INTO entries (seq, session, op, payload, size, crc, enqueued_at,"
        " targets, origin) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * count)
    )


def _insert_chunks(db: sqlite3.Connection, rows: Sequence[EntryRow]) -> None:
    for at in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[at : at + INSERT_CHUNK]
        db.execute(_insert_entries(len(chunk)), [v for row in chunk for v in row])


def _insert_and_commit(db: sqlite3.Connection, rows: Sequence[EntryRow]) -> None:
    _insert_chunks(db, rows)
    db.commit()


async def _on_thread(
    conn: aiosqlite.Connection,
    fn: Callable[[sqlite3.Connection, Sequence[EntryRow]], None],
    rows: Sequence[EntryRow],
) -> None:
    """Run ``fn(db, rows)`` on the connection's own thread: one hop for all of
    its statements.

    aiosqlite runs each call in one hop and has no public call for several
    statements; ``_execute`` is the method its public ones are built on (a test
    checks it is still there). Each hop costs the loop a thread switch and the
    thread a wait for the GIL, so a round of INSERT and COMMIT is one hop, not
    two.
    """
    await conn._execute(lambda: fn(conn._conn, rows))  # type: ignore[no-untyped-call]


class Transaction:
    """One write transaction of the committer. Use as ``async with``.

    Inserted entries (but large ones) are held back and sent with the next
    statement, or with the COMMIT, in one thread hop: a round that only journals
    entries costs one hop.
    """

    def __init__(self, journal: Journal, conn: aiosqlite.Connection) -> None:
        self._journal = journal
        self._conn = conn
        self._backend_rows: Sequence[BackendRow] = ()
        self._lost = 0
        self._deferred: list[EntryRow] = []

    async def _flush(self) -> None:
        """Send the held-back inserts now: a statement that follows must see them."""
        if self._deferred:
            rows, self._deferred = self._deferred, []
            await _on_thread(self._conn, _insert_chunks, rows)

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
                rows, self._deferred = self._deferred, []
                if rows:
                    await _on_thread(conn, _insert_and_commit, rows)
                else:
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
            raise write_failed(self._journal.path, str(exc), exc) from exc

    async def insert(self, rows: Iterable[EntryRow]) -> None:
        """Insert entries (``EntryRow`` each).

        Up to ``INSERT_CHUNK`` rows go in one multi-row INSERT: one
        ``sqlite3_step``, so the thread gives up and retakes the GIL once per
        chunk rather than once per row, which under load means waiting for the
        event loop's thread each time. They are sent with the next statement or
        the COMMIT (see the class).
        """
        rows = list(rows)
        small = [row for row in rows if row.size < LargeValues.THRESHOLD]
        self._deferred += small
        if len(small) < len(rows):
            await self._flush()
            # One by one: the payload in a row of its own (see ``_schema``),
            # through LargeValues, so no copy of it stays behind.
            large = self._journal.large
            for row in rows:
                if len(row.payload) >= LargeValues.THRESHOLD:
                    await self._conn.execute(
                        _insert_entries(1), row._replace(payload=b"")
                    )
                    key = large.put(row.payload)
                    try:
                        await self._conn.execute(_INSERT_PAYLOAD, (row.seq, key))
                    finally:
                        large.discard([key])

    async def drop_oldest(
        self, mask: int, after: int, count: int, nbytes: int, *, before: int
    ) -> list[Dropped]:
        """Untarget the oldest appends owed to ``mask`` with ``after < seq < before``.

        Drops at least ``count`` entries and ``nbytes`` bytes, or all there are.
        Erasures are never dropped. Returns each dropped entry (a ``Dropped``),
        oldest first.
        """
        await self._flush()
        dropped: list[Dropped] = []
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
                dropped.append(Dropped(seq, stored))
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
            await self._conn.execute(DELETE_ORPHAN_PAYLOADS, (first - 1, last))
        return dropped

    async def dead_letter(
        self, backend: str, rows: Sequence[DeadLettered], failed_at: float
    ) -> None:
        """Copy entries (``DeadLettered`` each) to ``backend``'s dead letters."""
        await self._flush()
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
        self, backend: str, rows: Sequence[Damaged], at: float
    ) -> None:
        """Copy damaged entries (``Damaged`` each) to ``quarantine`` for ``backend``."""
        await self._flush()
        await self._conn.executemany(
            "INSERT INTO quarantine (backend, seq, session, op, payload, size, crc,"
            " origin, reason, quarantined_at)"
            " SELECT ?, seq, session, op, coalesce(payloads.payload, entries.payload),"
            f" size, crc, origin, ?, ? FROM {_ENTRIES} WHERE seq = ?",
            [(backend, reason, at, seq) for seq, reason in rows],
        )

    async def purge_erased(self, backend: str, erasures: Sequence[Erasure]) -> None:
        """Delete ``backend``'s dead letters and quarantined copies of each erased
        session (an ``Erasure``) that precede its erasure (its ``seq``).

        Run when the erasure is settled for ``backend``: by then every earlier
        entry of the session is settled there too, so none can be parked later.
        """
        await self._flush()
        for table in ("dead_letters", "quarantine"):
            await self._conn.executemany(
                f"DELETE FROM {table} WHERE backend = ? AND session = ? AND seq < ?",
                [(backend, session, seq) for session, seq in erasures],
            )

    async def discard(self, table: str, backend: str, ids: Iterable[int] | None) -> int:
        """Delete ``backend``'s rows of ``table`` (``dead_letters`` or
        ``quarantine``), only those of ``ids`` if given; how many went."""
        assert table in ("dead_letters", "quarantine")
        await self._flush()
        sql = f"DELETE FROM {table} WHERE backend = ?"
        if ids is None:
            cursor = await self._conn.execute(sql, (backend,))
            return cursor.rowcount
        wanted, deleted = list(ids), 0
        for start in range(0, len(wanted), INSERT_CHUNK):
            chunk = wanted[start : start + INSERT_CHUNK]
            marks = ", ".join("?" * len(chunk))
            cursor = await self._conn.execute(
                f"{sql} AND id IN ({marks})", (backend, *chunk)
            )
            deleted += cursor.rowcount
        return deleted

    async def journal_erasures(
        self, sessions: Sequence[bytes], registered: Sequence[str], stamp: float
    ) -> None:
        """After erasures of ``sessions`` journaled up to time ``stamp``: keep
        ``stamp`` (journal times never go back past an erasure, whatever the
        clock does) and delete dead letters and quarantined copies of ``sessions``
        kept for backends that are no longer registered (none will settle an
        erasure)."""
        await self._flush()
        await self._conn.execute(RAISE_META, (LAST_ERASURE_US, to_micros(stamp)))
        names = ", ".join("?" * len(registered))
        for table in ("dead_letters", "quarantine"):
            await self._conn.executemany(
                f"DELETE FROM {table} WHERE session = ? AND backend NOT IN ({names})",
                [(session, *registered) for session in sessions],
            )

    async def settle(self, ranges: Sequence[SettledRange], *, shared: bool) -> None:
        """Mark entries done: for each ``SettledRange`` clear its ``mask`` from the
        entries with ``after < seq <= upto`` and delete those owed to no one.

        ``shared`` says whether any entry may have another target; without it, a
        single range delete is all it takes. With it, what these ranges leave
        owed to no one is deleted first (several backends may settle the same
        entries in one transaction, so per piece of ``overlaid`` ranges), and
        the bits are cleared from the rest after. The other order would rewrite
        each of those rows whole just before deleting it: a ``targets`` of 0 or
        1 is stored in fewer bytes, and SQLite rewrites a row that changes size,
        overflow pages and all.
        """
        await self._flush()
        if not shared:
            await self._conn.executemany(
                _DELETE_SETTLED, [(after, upto, mask) for mask, after, upto in ranges]
            )
            await self._delete_orphan_payloads(ranges)
            return
        await self._conn.executemany(
            _DELETE_SETTLED,
            [(after, upto, mask) for mask, after, upto in overlaid(ranges)],
        )
        await self._conn.executemany(
            "UPDATE entries SET targets = targets & ~? WHERE seq > ? AND seq <= ?"
            " AND targets & ?",
            [(mask, after, upto, mask) for mask, after, upto in ranges],
        )
        await self._delete_orphan_payloads(ranges)

    async def _delete_orphan_payloads(self, ranges: Sequence[SettledRange]) -> None:
        # Cheap: payloads holds only the few large entries, found by their key.
        await self._conn.executemany(
            DELETE_ORPHAN_PAYLOADS, [(after, upto) for _, after, upto in ranges]
        )

    async def count_lost(self, count: int) -> None:
        """Add ``count`` owed entries found missing to ``lost_entries``."""
        await self._flush()
        await self._conn.execute(ADD_TO_META, ("lost_entries", count))
        self._lost += count

    async def update_backends(self, rows: Sequence[BackendRow]) -> None:
        """Store ``rows`` (whole, with their checksums); once committed they are
        the journal's ``backends``."""
        await self._flush()
        await update_backend_rows(self._conn, rows)
        self._backend_rows = rows


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


async def update_backend_rows(
    conn: aiosqlite.Connection, rows: Iterable[BackendRow]
) -> None:
    """Write ``rows`` whole over the stored rows of their bits."""
    assignments = ", ".join(f"{f.strip()} = ?" for f in _BACKEND_FIELDS.split(","))
    await conn.executemany(
        f"UPDATE backends SET {assignments} WHERE bit = ?",
        [(*_backend_values(row), row.bit) for row in rows],
    )


async def store_backend_rows(
    conn: aiosqlite.Connection, rows: Iterable[BackendRow]
) -> None:
    """Write ``rows`` whole, replacing a stored row of the same bit or name (a row
    repaired at open may have had its bit or name damaged)."""
    await conn.executemany(
        f"INSERT OR REPLACE INTO backends (bit, {_BACKEND_FIELDS})"
        f" VALUES (?, {', '.join('?' * 11)})",
        [(row.bit, *_backend_values(row)) for row in rows],
    )
