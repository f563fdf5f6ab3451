"""Sans-IO book of one backend's delivery state: counters, cursor, drop floor and
where its untaken entries are.

Rules and theory:
- The committer and the backend's writer share one ``Book``; neither keeps a copy
  of its numbers. Every change is a method here, called between awaits, so the
  book never holds a half-made change. Nothing here awaits or does I/O.
- ``Tally`` is the one counter arithmetic: the book's counters, the ledger's
  unwritten changes and the stored row are all tallies added together.
- A writer takes its entries strictly in journal order. Everything it owed with
  ``seq <= last_taken`` is taken or settled; ``tally.pending`` counts what it owes
  and has not settled (taken or not).
- Untaken entries come from three places, in seq order: ``prefetch`` (rows read
  from the journal), the unread journal range ``[db_pos, mem_from)``, and ``mem``
  (entries the committer handed over in memory right after committing them --
  the fast path, which needs no read and no decode). ``mem`` holds every entry
  owed to this backend with ``seq >= mem_from``; when it would outgrow its bound
  it is emptied and ``mem_from`` moves past the newest entry, so the writer reads
  the rest from the journal. An empty ``mem`` takes what it is handed whatever
  its size. Entries keep their records, not their encoded payload.
- ``DROP_OLDEST`` drops the oldest *untaken* appends. The committer closes the
  claim gate before its transaction and opens it after; entries are claimed only
  while the gate is open, skipping appends at or below the drop floor: exactly
  the rows the journal's ``drop_oldest`` picks (stored ``op`` 1), so an erasure,
  or a damaged row with another stored op, is kept, and an entry is never both
  dropped and delivered. The floor passes entries taken before the drop, which
  stay owed: in the journal, an append is dropped if it is under the floor *and*
  has lost its bit in ``targets``, so a batch in flight at a crash or shutdown is
  read again at the next open.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ._admission import Backlog
from ._batching import Entry, cut
from ._journal_types import Damaged, DeadLettered, Erasure
from ._records import Op

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._journal_types import Dropped
    from ._policies import WritePolicy
    from ._rows import BackendRow

__all__ = ["MEM_MAX_BYTES", "MEM_MAX_ENTRIES", "Book", "Settlement", "Tally"]

_APPEND: Final = int(Op.APPEND)
_ERASE: Final = int(Op.ERASE)

#: Entries a writer keeps in memory beyond what it has taken, at most.
MEM_MAX_ENTRIES: Final = 16_384
MEM_MAX_BYTES: Final = 32 * 1024 * 1024


@dataclass(slots=True)
class Tally:
    """A backend's counters, or a change to them."""

    pending: int = 0
    pending_bytes: int = 0
    delivered: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    quarantined: int = 0

    @classmethod
    def of(cls, row: BackendRow) -> Tally:
        """The counters stored in ``row``."""
        return cls(
            row.pending,
            row.pending_bytes,
            row.delivered,
            row.dropped,
            row.dead_lettered,
            row.quarantined,
        )

    def add(self, change: Tally) -> None:
        """Add ``change`` to these counters."""
        self.pending += change.pending
        self.pending_bytes += change.pending_bytes
        self.delivered += change.delivered
        self.dropped += change.dropped
        self.dead_lettered += change.dead_lettered
        self.quarantined += change.quarantined


@dataclass(slots=True)
class Settlement:
    """A settled batch, for the committer to mark done in the journal."""

    upto: int
    count: int
    nbytes: int
    delivered: int
    #: Entries the backlog count said were owed that are not in the journal.
    missing: int = 0
    dead: list[DeadLettered] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    #: ``(session, seq)`` of each erasure settled (its session's parked copies
    #: from before it are purged with this settlement).
    erased: list[Erasure] = field(default_factory=list)

    def tally(self) -> Tally:
        """The change this settlement makes to the counters."""
        return Tally(
            pending=-self.count,
            pending_bytes=-self.nbytes,
            delivered=self.delivered,
            dead_lettered=len(self.dead),
            quarantined=len(self.damaged),
        )


class Book:
    """One backend's delivery state (see the module docstring)."""

    __slots__ = (
        "_drop_floor",
        "_stored_floor",
        "bit",
        "cursor",
        "db_pos",
        "gate_closed",
        "in_flight",
        "last_taken",
        "mask",
        "mem",
        "mem_bytes",
        "mem_from",
        "name",
        "oldest_hint",
        "policy",
        "prefetch",
        "settled_upto",
        "tally",
    )

    def __init__(
        self,
        name: str,
        policy: WritePolicy,
        row: BackendRow,
        *,
        tail: int,
        oldest_pending_at: float | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.mask = row.mask
        self.bit = row.bit
        self.tally = Tally.of(row)
        #: Settled through this seq, as last committed to the journal.
        self.cursor = row.cursor
        self.last_taken = row.cursor
        self.settled_upto = row.cursor
        self.prefetch: deque[Entry] = deque()
        self.db_pos = row.cursor + 1
        self.mem: deque[Entry] = deque()
        self.mem_bytes = 0
        self.mem_from = tail + 1
        # DROP_OLDEST: the floor stored at open (the reader leaves out what was
        # dropped under it), and the floor of the drops since, for entries read
        # or handed over before a drop.
        self._stored_floor = row.drop_floor
        self._drop_floor = 0
        self.in_flight: Sequence[Entry] = ()
        self.gate_closed = False
        #: When the oldest pending entry was journaled, at most (until it is seen).
        self.oldest_hint = oldest_pending_at

    # -- what the committer asks ---------------------------------------------

    @property
    def pending(self) -> int:
        """Entries owed and not settled (taken or not)."""
        return self.tally.pending

    @property
    def drop_floor(self) -> int:
        """DROP_OLDEST dropped every append owed here up to this seq that is no
        longer in this backend's ``targets``."""
        return max(self._stored_floor, self._drop_floor)

    @property
    def undispatched(self) -> int:
        """Entries owed and not yet taken (the ones DROP_OLDEST may drop)."""
        return self.tally.pending - len(self.in_flight)

    def backlog(self) -> Backlog:
        """A working copy of the backlog, for admission."""
        policy = self.policy
        return Backlog(
            self.name,
            self.mask,
            policy.overflow,
            policy.capacity,
            policy.capacity_bytes,
            self.tally.pending,
            self.tally.pending_bytes,
            policy.block_timeout,
        )

    # -- what the committer tells --------------------------------------------

    def journaled(self, entries: Sequence[Entry], tail: int, nbytes: int) -> None:
        """Entries newly journaled for this backend (in seq order, ``nbytes`` in
        all) are committed; ``tail`` is the newest seq in the journal."""
        if not entries:
            return
        self.tally.pending += len(entries)
        self.tally.pending_bytes += nbytes
        mem = self.mem
        if mem and (
            len(mem) + len(entries) > MEM_MAX_ENTRIES
            or self.mem_bytes + nbytes > MEM_MAX_BYTES
        ):
            # Fallen behind: forget the in-memory copies and read from the journal.
            # (Into an empty buffer entries always go, however large: their
            # records are in memory already, and reading them back would make a
            # second copy.)
            self.forget_memory(tail)
        else:
            mem.extend(entries)
            self.mem_bytes += nbytes

    def dropped_new(self, count: int) -> None:
        """``count`` new entries were dropped before they were ever queued here."""
        self.tally.dropped += count

    def dropped_oldest(self, dropped: Sequence[Dropped]) -> None:
        """Untaken entries ``(seq, size)`` were dropped (DROP_OLDEST), oldest first."""
        if not dropped:
            return
        self.tally.add(
            Tally(
                pending=-len(dropped),
                pending_bytes=-sum([size for _, size in dropped]),
                dropped=len(dropped),
            )
        )
        self._drop_floor = max(self._drop_floor, dropped[-1][0])

    def hold_claims(self, held: bool) -> None:
        """Close (``held``) or open the claim gate: while a transaction that may
        drop entries (DROP_OLDEST) runs, nothing is claimed."""
        self.gate_closed = held

    def persisted(self, upto: int) -> None:
        """The journal now has this backend settled through ``upto``."""
        self.cursor = max(self.cursor, upto)

    # -- what the writer asks and tells --------------------------------------

    @property
    def unread(self) -> bool:
        """Whether untaken entries remain to be read from the journal."""
        return not self.prefetch and self.db_pos < self.mem_from

    @property
    def exhausted(self) -> bool:
        """Whether no untaken entry is left anywhere."""
        return not (self.prefetch or self.mem or self.db_pos < self.mem_from)

    def read_range(self) -> tuple[int, int]:
        """The journal range ``[start, stop)`` to read next (when ``unread``)."""
        return max(self.db_pos, self.last_taken + 1), self.mem_from

    def read_done(self, rows: Sequence[Entry], stop: int, limit: int) -> None:
        """``rows`` were read from ``read_range``'s range, ``limit`` at most."""
        self.prefetch.extend(rows)
        self.db_pos = rows[-1].seq + 1 if len(rows) == limit else stop

    def claim(self, max_rows: int, max_bytes: int) -> list[Entry]:
        """Take the next batch of untaken entries, in seq order (empty if there is
        none, or if the journal range must be read first). The gate must be open.
        """
        assert not self.gate_closed
        floor = self._drop_floor
        last = self.last_taken
        source = self.prefetch
        if not self._skip_settled(source, floor, last):
            # Read rows all taken or dropped: go on to the entries in memory,
            # once the journal range before them is read.
            source = self.mem
            if self.db_pos < self.mem_from:
                return []
            self._skip_settled(source, floor, last)
        count = cut(source, max_rows=max_rows, max_bytes=max_bytes)
        if not count:
            return []
        pop = source.popleft
        batch = [pop() for _ in range(count)]
        self.last_taken = batch[-1].seq
        if source is self.mem:
            self.mem_bytes -= sum([e.size for e in batch])
        if batch[0].seq <= floor:
            # An erasure (or a row whose op is damaged) kept among dropped
            # appends: leave those out.
            batch = [e for e in batch if e.seq > floor or e.op != _APPEND]
        self.in_flight = batch
        return batch

    def _skip_settled(self, source: deque[Entry], floor: int, last: int) -> bool:
        """Drop from the head of ``source`` what was taken or dropped already;
        whether anything is left in it."""
        while source and (
            source[0].seq <= last
            or (source[0].seq <= floor and source[0].op == _APPEND)
        ):
            skipped = source.popleft()
            if source is self.mem:
                self.mem_bytes -= skipped.size
        return bool(source)

    def settle(
        self,
        batch: Sequence[Entry],
        dead: Sequence[tuple[Entry, str, int]],
        *,
        drift: tuple[int, int] | None = None,
    ) -> tuple[Settlement, tuple[int, int] | None]:
        """Settle ``batch`` (``dead``: those given up on), or with ``drift``
        ``(count, bytes)`` settle owed entries found missing. Returns the
        settlement and, if the counters drifted below zero and were reset to
        zero, the ``(entries, bytes)`` they drifted to."""
        damaged = [Damaged(e.seq, e.damage) for e in batch if e.damage is not None]
        count, nbytes = drift or (len(batch), sum([e.size for e in batch]))
        settlement = Settlement(
            upto=batch[-1].seq if batch else self.last_taken,
            count=count,
            nbytes=nbytes,
            delivered=len(batch) - len(dead) - len(damaged),
            missing=drift[0] if drift else 0,
            dead=[DeadLettered(entry.seq, error, n) for entry, error, n in dead],
            damaged=damaged,
            # A damaged (quarantined) erasure was not applied: it purges nothing.
            erased=[
                Erasure(e.session, e.seq)
                for e in batch
                if e.op == _ERASE and e.damage is None
            ],
        )
        tally = self.tally
        tally.add(settlement.tally())
        drifted = None
        if tally.pending <= 0 and (tally.pending or tally.pending_bytes):
            drifted = tally.pending, tally.pending_bytes
            # More was settled than counted (a damaged row's size, say): a
            # negative count would keep the writer asleep with entries owed.
            tally.pending = tally.pending_bytes = 0
        elif tally.pending_bytes < 0:
            # Entries still owed, their bytes drifted below zero: a negative
            # byte count would let a byte capacity admit too much.
            drifted = tally.pending, tally.pending_bytes
            tally.pending_bytes = 0
        self.settled_upto = settlement.upto
        self.in_flight = ()
        if batch:
            # What is pending now was journaled after this: an upper bound on
            # its age until the writer sees it.
            self.oldest_hint = batch[-1].enqueued_at
        return settlement, drifted

    def oldest_pending_at(self) -> float | None:
        """When the oldest entry owed here was journaled, if anything is owed
        (an upper bound until the writer sees it)."""
        if self.tally.pending <= 0:
            return None
        head = self.head()
        if head is not None:
            return head.enqueued_at
        hint = self.oldest_hint
        if self.mem:
            # Behind an unread journal range: what is there is older still.
            newest_bound = self.mem[0].enqueued_at
            return newest_bound if hint is None else min(hint, newest_bound)
        return hint

    def head(self) -> Entry | None:
        """The oldest entry owed and in memory, if any."""
        if self.in_flight:
            return self.in_flight[0]
        floor = self._drop_floor
        for entry in self.prefetch:
            if entry.seq > floor or entry.op != _APPEND:
                return entry
        if self.db_pos >= self.mem_from:
            for entry in self.mem:
                if entry.seq > floor or entry.op != _APPEND:
                    return entry
        return None

    def forget_memory(self, tail: int) -> None:
        """Drop the in-memory copies: the writer reads from the journal instead."""
        if self.mem:
            # The oldest of them may now be the oldest entry owed: keep its time
            # as the bound on the backlog's age until the writer reads it.
            first = self.mem[0].enqueued_at
            hint = self.oldest_hint
            self.oldest_hint = first if hint is None else min(hint, first)
        self.mem.clear()
        self.mem_bytes = 0
        self.mem_from = tail + 1
