"""Reading the journal: a read-only connection whose rows are checked on the way.

Every entry is read as its raw values on a connection that never decodes text
(``_rows.StoredText``) and checked against its stored types and checksum; an
entry that fails comes back marked ``damage`` so the writer quarantines it rather
than delivering it. Who is owed an entry is read from its ``origin`` (under the
checksum), not from ``targets``; the caller passes the backend's position
(``after``: its cursor, ``floor``: its DROP_OLDEST floor). A large payload is
fetched from ``payloads`` only for the rows that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._journal_types import StoredEntry
from ._records import Op
from ._rows import (
    DEAD_LETTER_COLUMNS,
    ENTRY_COLUMNS,
    StoredText,
    check_entries,
    decode_text,
    typed,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from uuid import UUID

    import aiosqlite

    from ._batching import Entry

__all__ = ["DeadLetter", "Reader"]

# An append under a backend's DROP_OLDEST floor that lost its bit in ``targets``
# was dropped for it (one that kept it was taken before the drop: still owed).
# Parameters: the floor, the backend's mask.
_NOT_DROPPED: Final = "NOT (op = 1 AND seq <= ? AND NOT targets & ?)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of ``dead_letters``: the entry (``damage`` set if it is damaged)
    and why its backend gave up on it. Unreadable text reads as None."""

    id: int
    backend: str | None
    entry: Entry
    error: str | None
    attempts: int | None
    failed_at: float | None


class Reader:
    """A read-only journal connection. Rows are checked against their checksums."""

    def __init__(self, path: str, conn: aiosqlite.Connection) -> None:
        self._path = path
        self._conn = conn
        conn.text_factory = StoredText  # text is never decoded: see _rows
        self._closed = False

    async def close(self) -> None:
        """Close the connection; harmless twice."""
        if not self._closed:
            self._closed = True
            await self._conn.close()

    async def pending(
        self, mask: int, start: int, stop: int, limit: int, floor: int
    ) -> list[Entry]:
        """Entries journaled for ``mask`` with ``start <= seq < stop``, oldest first,
        at most ``limit`` (appends dropped under the DROP_OLDEST ``floor`` left
        out; one dropped after this read is the caller's to skip).

        An entry whose checksum, size or stored types do not match comes back with
        ``damage`` set; the caller must quarantine it, not deliver it.
        """
        rows = await self._conn.execute_fetchall(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE seq >= ? AND seq < ?"
            f" AND origin & ? AND {_NOT_DROPPED} ORDER BY seq LIMIT ?",
            (start, stop, mask, floor, mask, limit),
        )
        return await self._checked(rows)

    async def pending_for_session(
        self, session: UUID, mask: int, after: int, floor: int
    ) -> list[Entry]:
        """Entries of ``session`` still owed to ``mask`` after ``after``, oldest
        first (appends under the DROP_OLDEST ``floor`` left out)."""
        # No index on session (it would slow every insert and delete), so this
        # scans the backlog: cheap while the backlog is small, as it usually is.
        rows = await self._conn.execute_fetchall(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE seq > ? AND origin & ?"
            f" AND session = ? AND {_NOT_DROPPED} ORDER BY seq",
            (after, mask, session.bytes, floor, mask),
        )
        return await self._checked(rows)

    async def _checked(self, rows: Iterable[Sequence[object]]) -> list[Entry]:
        """``rows`` checked, with the payloads kept in ``payloads`` put in place
        (a row whose payload row is missing stays damaged)."""
        rows = list(rows)
        elsewhere: list[int] = []
        entries = check_entries(rows, elsewhere)
        if elsewhere:  # rare: only entries from LargeValues.THRESHOLD bytes
            large = [StoredEntry._make(rows[i]) for i in elsewhere]
            seqs = [row.seq for row in large]
            found = {
                int(seq): payload
                for seq, payload in await self._conn.execute_fetchall(
                    f"SELECT seq, payload FROM payloads WHERE seq IN"
                    f" ({', '.join('?' * len(seqs))})",
                    seqs,
                )
            }
            for i, row in zip(elsewhere, large, strict=True):
                if row.seq in found:
                    [entries[i]] = check_entries([row._replace(payload=found[row.seq])])
        return entries

    async def oldest_pending(self, mask: int, after: int, floor: int) -> float | None:
        """When the oldest entry still owed to ``mask`` after ``after`` was
        journaled (None if none is, or its time is unreadable)."""
        rows = list(
            await self._conn.execute_fetchall(
                f"SELECT {typed('enqueued_at', 'real')} FROM entries"
                f" WHERE seq > ? AND origin & ? AND {_NOT_DROPPED}"
                " ORDER BY seq LIMIT 1",
                (after, mask, floor, mask),
            )
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def dead_letters(
        self, after: int = 0, limit: int = 1000, *, backend: str | None = None
    ) -> list[DeadLetter]:
        """Dead letters with ``id > after`` (of ``backend`` only, if given), oldest
        first, checked like entries."""
        params: list[object] = [after, limit]
        where = "id > ?"
        if backend is not None:
            where, params = "id > ? AND backend = ?", [after, backend, limit]
        rows = await self._conn.execute_fetchall(
            f"SELECT id, {typed('backend', 'text')}, {DEAD_LETTER_COLUMNS},"
            f" {typed('error', 'text')}, {typed('attempts', 'integer')},"
            f" {typed('failed_at', 'real')}"
            f" FROM dead_letters WHERE {where} ORDER BY id LIMIT ?",
            params,
        )
        letters = []
        for row_id, backend, *entry, error, attempts, failed_at in rows:
            letters.append(
                DeadLetter(
                    row_id,
                    decode_text(backend),
                    check_entries([StoredEntry._make(entry)])[0],
                    decode_text(error),
                    attempts,
                    failed_at,
                )
            )
        return letters

    async def pending_erasures(self, mask: int) -> dict[bytes, int]:
        """The sessions with an erasure still owed to ``mask`` (not yet settled
        there), each with the seq of its latest one."""
        rows = await self._conn.execute_fetchall(
            "SELECT session, max(seq) FROM entries WHERE op = ? AND targets & ?"
            " GROUP BY session",
            (int(Op.ERASE), mask),
        )
        # A damaged row's session may be anything: only a real one can match.
        return {session: seq for session, seq in rows if isinstance(session, bytes)}
