"""Sans-IO batching: cut a batch, coalesce it by session, bisect a poison batch.

Rules:
- A batch is a prefix of a backend's pending entries in journal (= append) order.
- Coalescing keeps append order within each session; groups of different sessions
  may interleave differently from the journal, which the contract allows (order is
  per backend and session).
- Bisecting splits a batch into two contiguous halves; delivering the left half
  before the right keeps per-session order.
No anyio, no aiosqlite here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .backends._base import SessionGroup

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from uuid import UUID

    from ._records import MessageRecord, Op

__all__ = ["Entry", "bisect", "coalesce", "cut"]


@dataclass(slots=True)
class Entry:
    """One journal entry as a writer sees it.

    ``records`` is filled in once the payload is decoded (entries handed over in
    memory by the committer arrive with it already set). ``damage`` says why an
    entry read from the journal cannot be trusted (checksum mismatch); such an
    entry is quarantined instead of delivered.
    """

    seq: int
    session: UUID
    op: Op
    payload: bytes
    size: int
    enqueued_at: float
    records: list[MessageRecord] | None = None
    damage: str | None = None


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
    Records of one session keep their append order; empty groups are never
    returned.
    """
    merged: dict[UUID, list[MessageRecord]] = {}
    for entry in entries:
        if entry.damage is not None:
            continue
        assert entry.records is not None, "coalesce needs decoded entries"
        records = merged.get(entry.session)
        if records is None:
            merged[entry.session] = list(entry.records)
        else:
            records.extend(entry.records)
    return [
        SessionGroup(session, tuple(records))
        for session, records in merged.items()
        if records
    ]


def bisect(entries: Sequence[Entry]) -> tuple[Sequence[Entry], Sequence[Entry]]:
    """Split a batch of two or more entries into a left and a right half."""
    if len(entries) < 2:
        raise ValueError(f"cannot bisect a batch of {len(entries)} entries")
    middle = len(entries) // 2
    return entries[:middle], entries[middle:]
