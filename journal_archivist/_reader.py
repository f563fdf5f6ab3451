"""Reading the journal: a read-only connection whose rows are checked on the way.

Every entry read is checked against its stored checksum (and its size); one that
does not match comes back marked ``damage`` so the writer quarantines it rather
than delivering it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._batching import Entry
from ._records import Op
from ._schema import entry_crc

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
    from uuid import UUID

    import aiosqlite

__all__ = ["Reader"]

_ENTRY_COLUMNS: Final = "seq, session, op, payload, size, crc, enqueued_at"


class Reader:
    """A read-only journal connection. Rows are checked against their checksums."""

    def __init__(self, path: str, conn: aiosqlite.Connection) -> None:
        self._path = path
        self._conn = conn
        self._closed = False

    async def close(self) -> None:
        """Close the connection; harmless twice."""
        if not self._closed:
            self._closed = True
            await self._conn.close()

    async def pending(
        self, mask: int, start: int, stop: int, limit: int
    ) -> list[Entry]:
        """Entries owed to ``mask`` with ``start <= seq < stop``, oldest first.

        An entry whose checksum or size does not match comes back with ``damage``
        set; the caller must quarantine it rather than deliver it.
        """
        rows = await self._conn.execute_fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq >= ? AND seq < ?"
            " AND targets & ? ORDER BY seq LIMIT ?",
            (start, stop, mask, limit),
        )
        return _check_rows(rows)

    async def pending_for_session(
        self, session: UUID, mask: int, after: int
    ) -> list[Entry]:
        """Entries of ``session`` owed to ``mask`` after ``after``, oldest first."""
        # No index on session (it would slow every insert and delete), so this
        # scans the backlog: cheap while the backlog is small, as it usually is.
        rows = await self._conn.execute_fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq > ? AND targets & ?"
            " AND session = ? ORDER BY seq",
            (after, mask, session.bytes),
        )
        return _check_rows(rows)

    async def oldest_pending(self, mask: int, after: int) -> float | None:
        """When the oldest entry owed to ``mask`` after ``after`` was journaled."""
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT enqueued_at FROM entries WHERE seq > ? AND targets & ?"
                " ORDER BY seq LIMIT 1",
                (after, mask),
            )
        )
        return float(rows[0][0]) if rows else None


def _check_rows(rows: Iterable[sqlite3.Row]) -> list[Entry]:
    entries: list[Entry] = []
    append = entries.append
    for seq, session, op, payload, size, crc, enqueued_at in rows:
        if (
            type(payload) is bytes
            and type(session) is bytes
            and len(session) == 16
            and size == len(payload)
            and op in _OPS
            and crc == entry_crc(seq, session, op, payload)
        ):
            append(Entry(seq, session, op, payload, size, enqueued_at))
        else:
            # Keep the stored size so the backlog's byte count stays balanced,
            # and the stored op, which says whether DROP_OLDEST could drop it.
            stored = size if isinstance(size, int) else 0
            damage = _damage(seq, session, op, payload, size, crc)
            sid = session if isinstance(session, bytes) else b""
            kind = op if isinstance(op, int) else 0
            append(Entry(seq, sid, kind, b"", stored, enqueued_at, damage=damage))
    return entries


_OPS: Final = frozenset(int(op) for op in Op)


def _damage(
    seq: int, session: object, op: object, payload: object, size: object, crc: object
) -> str:
    """Why a row cannot be trusted."""
    if not isinstance(payload, bytes) or not isinstance(session, bytes):
        return "payload or session is not a blob"
    if len(session) != 16:
        return f"session is {len(session)} bytes, not 16"
    if op not in _OPS:
        return f"unknown operation {op!r}"
    if size != len(payload):
        return f"size {size!r} != payload length {len(payload)}"
    assert isinstance(op, int)
    actual = entry_crc(seq, session, op, payload)
    return f"checksum mismatch (stored {crc!r}, computed {actual})"
