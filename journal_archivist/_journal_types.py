"""The values that cross the journal boundary, named.

Rules and theory:
- Each is a ``NamedTuple``: a tuple with names. It goes to SQLite as its
  statement's parameters as it is, and it unpacks by position like the plain
  tuple it names. Its field order is the order of the SQL that takes it: never
  reorder one.
- What the journal stores and reads back is typed as stored: ``op`` is a plain
  ``int`` (an ``Op`` value), never the enum.
- The journal takes and returns only these types (mypy checks the callers).
Nothing here does I/O.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "Damaged",
    "DeadLettered",
    "Dropped",
    "EntryRow",
    "Erasure",
    "SettledRange",
    "StoredEntry",
    "overlaid",
]


class EntryRow(NamedTuple):
    """One entry to journal, in the column order of its INSERT.

    ``origin`` is who the entry was journaled for, kept under the checksum for
    good; ``targets`` is who still owes it (bits cleared as backends settle).
    """

    seq: int
    session: bytes  # the 16 bytes of the session UUID
    op: int  # an ``Op`` value, as stored
    payload: bytes
    size: int  # len(payload)
    crc: int  # _schema.entry_crc(seq, session, op, origin, payload)
    enqueued_at: float
    targets: int
    origin: int


class StoredEntry(NamedTuple):
    """An entry row as read (``_rows.ENTRY_COLUMNS``), before any check.

    Any value may have any type (see ``_rows``); ``_rows.check_entries`` turns
    these into ``Entry`` objects. The driver returns plain tuples of these fields:
    name one with ``StoredEntry._make(row)``.
    """

    seq: object
    session: object
    op: object
    payload: object
    size: object
    crc: object
    enqueued_at: object
    origin: object


class SettledRange(NamedTuple):
    """Entries ``after < seq <= upto`` are settled by the backend(s) of ``mask``."""

    mask: int
    after: int
    upto: int


def overlaid(ranges: Iterable[SettledRange]) -> list[SettledRange]:
    """The seqs ``ranges`` cover, cut where they overlap: each piece with the
    union of the masks settling it, in seq order, none empty or overlapping."""
    ranges = [r for r in ranges if r.upto > r.after]
    cuts = sorted({seq for r in ranges for seq in (r.after, r.upto)})
    pieces: list[SettledRange] = []
    for after, upto in itertools.pairwise(cuts):
        mask = 0
        for r in ranges:
            if r.after <= after and upto <= r.upto:
                mask |= r.mask
        if mask:
            pieces.append(SettledRange(mask, after, upto))
    return pieces


class DeadLettered(NamedTuple):
    """An entry a backend gave up on: copied to its dead letters."""

    seq: int
    error: str
    attempts: int


class Damaged(NamedTuple):
    """An entry found damaged: copied to quarantine instead of delivered."""

    seq: int
    reason: str


class Erasure(NamedTuple):
    """An erasure of ``session`` (the UUID's 16 bytes), journaled at ``seq``."""

    session: bytes
    seq: int


class Dropped(NamedTuple):
    """An entry DROP_OLDEST untargeted, with its stored size (0 if unreadable)."""

    seq: int
    size: int
