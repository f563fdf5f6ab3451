"""Sans-IO ledger: the bookkeeping the committer owes the journal, and when.

Rules and theory:
- Bookkeeping is written lazily. Settlements (done-marks, dead letters,
  quarantines) and counter changes accumulate per backend in a ``Delta`` and are
  written by a *persisting* round at most every ``PERSIST_INTERVAL`` seconds, at
  once when something waits for them (``flush``) or when a round drops entries
  (drop counts must survive a crash). Other rounds are just INSERT + COMMIT. A
  lost done-mark only means an idempotent redelivery; counters stay exact because
  open adds the entries journaled after ``counted_through``.
- A persisting round ``take``s the deltas; if its transaction fails they are
  ``restore``d in front of the newer ones, so nothing is lost or counted twice.
- ``stored_row`` is the one place a backend's stored counters are computed: the
  stored row plus its delta plus what the round itself journals and drops.
- ``Handover`` says, per backend, what one committed round means for its book:
  which new entries it now owes, which older ones DROP_OLDEST dropped, and which
  of the round's own entries were dropped before they were ever queued.
Nothing here awaits or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from ._backlog import Tally

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._backlog import Settlement
    from ._batching import Entry
    from ._journal_types import Damaged, DeadLettered, Dropped, Erasure
    from ._rows import BackendRow

__all__ = [
    "PERSIST_INTERVAL",
    "Delta",
    "Handover",
    "Ledger",
    "added_by_backend",
    "handover",
    "stored_row",
]

#: Seconds between persisting rounds while there is bookkeeping to write.
PERSIST_INTERVAL: Final = 0.05


@dataclass(slots=True)
class Delta:
    """A backend's bookkeeping not yet written to the journal."""

    tally: Tally = field(default_factory=Tally)
    upto: int = 0  # settled through this seq
    missing: int = 0  # owed entries found missing from the journal
    dead: list[DeadLettered] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    erased: list[Erasure] = field(default_factory=list)

    def settle(self, settlement: Settlement) -> None:
        """Add a settled batch."""
        self.tally.add(settlement.tally())
        self.upto = max(self.upto, settlement.upto)
        self.missing += settlement.missing
        self.dead.extend(settlement.dead)
        self.damaged.extend(settlement.damaged)
        self.erased.extend(settlement.erased)

    def merge(self, newer: Delta) -> None:
        """Add ``newer``, which came after this one."""
        self.tally.add(newer.tally)
        self.upto = max(self.upto, newer.upto)
        self.missing += newer.missing
        self.dead.extend(newer.dead)
        self.damaged.extend(newer.damaged)
        self.erased.extend(newer.erased)


class Ledger:
    """The unwritten deltas of every backend and the persist schedule."""

    __slots__ = ("deltas", "flush_wanted", "flushed_gen", "persist_at", "settle_gen")

    def __init__(self) -> None:
        self.deltas: dict[int, Delta] = {}
        #: Persist at the next round regardless of ``persist_at``.
        self.flush_wanted = False
        #: Time (``time.monotonic()``) of the next persisting round.
        self.persist_at = 0.0
        #: Counts settlements (and flush requests); ``flushed_gen`` is the last
        #: one written.
        self.settle_gen = 0
        self.flushed_gen = 0

    def delta(self, bit: int) -> Delta:
        """The unwritten delta of the backend with ``bit``."""
        delta = self.deltas.get(bit)
        if delta is None:
            delta = self.deltas[bit] = Delta()
        return delta

    def settled(self, bit: int, settlement: Settlement) -> None:
        """Record a settled batch of the backend with ``bit``."""
        self.delta(bit).settle(settlement)
        self.settle_gen += 1

    def journaled(self, bit: int, count: int, nbytes: int) -> None:
        """A round that did not persist journaled entries for ``bit``."""
        tally = self.delta(bit).tally
        tally.pending += count
        tally.pending_bytes += nbytes

    def want_flush(self, *, counters: bool) -> int:
        """Ask for a persisting round; the generation that answers it."""
        if counters and self.deltas:
            self.settle_gen += 1
        return self.settle_gen

    def due(self, now: float, *, dropping: bool) -> bool:
        """Whether this round must persist."""
        return dropping or bool(
            self.deltas and (self.flush_wanted or now >= self.persist_at)
        )

    def take(self) -> tuple[dict[int, Delta], int]:
        """Hand the deltas to a persisting round, with the generation it covers."""
        self.flush_wanted = False
        deltas, self.deltas = self.deltas, {}
        return deltas, self.settle_gen

    def restore(self, deltas: dict[int, Delta], now: float, backoff: float) -> None:
        """A persisting round failed: keep its ``deltas`` before the newer ones,
        and try again after ``backoff`` seconds."""
        for bit, delta in deltas.items():
            newer = self.deltas.get(bit)
            if newer is not None:
                delta.merge(newer)
            self.deltas[bit] = delta
        self.persist_at = now + backoff

    def persisted(self, now: float, gen: int) -> None:
        """A persisting round covering generation ``gen`` committed."""
        self.persist_at = now + PERSIST_INTERVAL
        self.flushed_gen = max(self.flushed_gen, gen)


def stored_row(
    stored: BackendRow,
    delta: Delta | None,
    added: tuple[int, int],
    drops: Sequence[Dropped],
    dropped_newest: int,
    tail: int,
) -> BackendRow:
    """The row to store for a backend after a persisting round.

    ``stored`` is the row in the journal, ``delta`` its unwritten changes,
    ``added`` the ``(entries, bytes)`` the round journals for it, ``drops`` the
    ``(seq, size)`` DROP_OLDEST dropped in the round, ``dropped_newest`` the new
    entries DROP_NEWEST left out, ``tail`` the newest seq journaled.
    """
    change = Tally(
        pending=added[0] - len(drops),
        pending_bytes=added[1] - sum([size for _, size in drops]),
        dropped=len(drops) + dropped_newest,
    )
    upto = 0
    if delta is not None:
        change.add(delta.tally)
        upto = delta.upto
    total = Tally.of(stored)
    total.add(change)
    return replace(
        stored,
        # Never below 0, even if damaged rows made the sums drift.
        pending=max(0, total.pending),
        pending_bytes=max(0, total.pending_bytes),
        delivered=total.delivered,
        dropped=total.dropped,
        dead_lettered=total.dead_lettered,
        quarantined=total.quarantined,
        cursor=max(stored.cursor, upto),
        counted_through=max(stored.counted_through, tail),
        drop_floor=max(stored.drop_floor, drops[-1][0]) if drops else stored.drop_floor,
    )


def added_by_backend(
    entries: Sequence[tuple[Entry, int]],
    nbytes: int,
    uniform: Sequence[int] | None,
    backends: Sequence[tuple[int, int]],
) -> dict[int, tuple[int, int]]:
    """``(entries, bytes)`` a round journals for each backend bit, from its
    ``entries`` (each with its targets; ``nbytes`` in all). ``uniform``: the
    bits of the enabled backends if every entry targets each of them (the
    common case, O(1)); else ``backends`` (each ``(bit, mask)``) are counted
    one by one (a disabled one gets erasures only)."""
    if uniform is not None and entries:
        total = (len(entries), nbytes)
        return dict.fromkeys(uniform, total)
    added: dict[int, tuple[int, int]] = {}
    for bit, mask in backends:
        mine = [e.size for e, targets in entries if targets & mask]
        if mine:
            added[bit] = (len(mine), sum(mine))
    return added


@dataclass(slots=True)
class Handover:
    """What one committed round means for one backend's book."""

    #: New entries it owes, in seq order, and their bytes.
    entries: Sequence[Entry]
    nbytes: int
    #: Older untaken entries ``(seq, size)`` DROP_OLDEST dropped.
    dropped_oldest: Sequence[Dropped]
    #: The round's own entries dropped before they were queued (either policy).
    dropped_new: int
    #: Seqs of the round's own entries DROP_OLDEST dropped.
    lost: set[int]


def handover(
    mask: int,
    entries: Sequence[tuple[Entry, int]],
    *,
    uniform: bool,
    added: tuple[int, int],
    drops: Sequence[Dropped],
    dropped_newest: int,
    tail: int,
) -> Handover:
    """What a round that journaled ``entries`` (each with its targets; ``tail``
    the newest seq) means for the backend with ``mask``; ``uniform``: every
    entry targets it; ``added`` its ``(entries, bytes)``; ``drops`` what
    DROP_OLDEST dropped for it; ``dropped_newest`` what DROP_NEWEST left out."""
    first_new = tail - len(entries) + 1 if entries else tail + 1
    lost = {seq for seq, _ in drops if seq >= first_new}
    older = [d for d in drops if d[0] not in lost] if lost else drops
    if uniform and not lost:
        mine: Sequence[Entry] = [e for e, _ in entries]
        nbytes = added[1]
    else:
        mine = [e for e, t in entries if t & mask and e.seq not in lost]
        nbytes = sum([e.size for e in mine])
    return Handover(mine, nbytes, older, dropped_newest + len(lost), lost)
