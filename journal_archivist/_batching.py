"""Sans-IO batching: cut a batch, coalesce it by session, bisect a poison batch.

Rules:
- A batch is a prefix of a backend's pending entries in journal (= append) order.
- Coalescing keeps append order within each session; groups of different sessions
  may interleave differently from the journal, which the contract allows (order is
  per backend and session).
- An erasure (``Op.ERASE``) in a batch makes its session's group an erasing one
  and discards that session's records coalesced before it: they would be erased
  anyway, and erased data is better never sent. Records after it follow the
  erasure in the same group. So each session has one group per batch.
- Bisecting splits a batch into two contiguous halves; delivering the left half
  before the right keeps per-session order.
No anyio, no aiosqlite here.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final
from uuid import UUID

from ._records import Op
from .backends._base import SessionGroup

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from ._records import MessageRecord

_ERASE: Final = int(Op.ERASE)

__all__ = ["Entry", "bisect", "coalesce", "cut"]


class Entry:
    """One journal entry as a writer sees it.

    ``session`` is the 16 bytes of the session UUID, as stored. ``records`` is
    filled in once the payload is decoded (entries handed over in memory by the
    committer arrive with it already set). ``damage`` says why an entry read from
    the journal cannot be trusted (checksum mismatch); such an entry is quarantined
    instead of delivered.
    """

    __slots__ = (
        "damage",
        "enqueued_at",
        "op",
        "payload",
        "records",
        "seq",
        "session",
        "size",
    )

    def __init__(
        self,
        seq: int,
        session: bytes,
        op: int,
        payload: bytes,
        size: int,
        enqueued_at: float,
        records: list[MessageRecord] | None = None,
        damage: str | None = None,
    ) -> None:
        self.seq = seq
        self.session = session
        self.op = op
        self.payload = payload
        self.size = size
        self.enqueued_at = enqueued_at
        self.records = records
        self.damage = damage

    def __repr__(self) -> str:
        return f"Entry(seq={self.seq}, size={self.size}, damage={self.damage!r})"


def cut(entries: Collection[Entry], *, max_rows: int, max_bytes: int) -> int:
    """How many entries from the head of ``entries`` make the next batch.

    At most ``max_rows`` entries and ``max_bytes`` payload bytes, but never zero
    while ``entries`` is non-empty: one entry larger than ``max_bytes`` is a batch
    of its own.
    """
    total = 0
    for count, entry in enumerate(itertools.islice(entries, max_rows)):
        total += entry.size
        if total > max_bytes and count > 0:
            return count
    return min(len(entries), max_rows)


def coalesce(entries: Sequence[Entry]) -> list[SessionGroup]:
    """Group a batch by session, in order of each session's first entry.

    Damaged entries are left out; every other entry's ``records`` must be decoded.
    Records of one session keep their append order; a group that neither erases
    nor holds records is never returned. Each group carries its records' journal
    times and its erasure's (``SessionGroup``'s erasure marks).
    """
    merged: dict[bytes, tuple[list[MessageRecord], list[float]]] = {}
    erased_at: dict[bytes, float] = {}
    get = merged.get
    for entry in entries:
        records = entry.records
        if entry.damage is not None or records is None:
            continue
        if entry.op == _ERASE:
            erased_at[entry.session] = entry.enqueued_at
            merged[entry.session] = ([], [])
            continue
        group = get(entry.session)
        if group is None:
            merged[entry.session] = (
                list(records),
                [entry.enqueued_at] * len(records),
            )
        else:
            group[0].extend(records)
            group[1].extend([entry.enqueued_at] * len(records))
    return [
        SessionGroup(
            UUID(bytes=session),
            tuple(records),
            session in erased_at,
            erased_at.get(session),
            tuple(times),
        )
        for session, (records, times) in merged.items()
        if records or session in erased_at
    ]


def bisect(entries: Sequence[Entry]) -> tuple[Sequence[Entry], Sequence[Entry]]:
    """Split a batch of two or more entries into a left and a right half."""
    if len(entries) < 2:
        raise ValueError(f"cannot bisect a batch of {len(entries)} entries")
    middle = len(entries) // 2
    return entries[:middle], entries[middle:]
