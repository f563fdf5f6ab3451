"""What a commit round writes besides its entries, and what it tells the writers.

``write_bookkeeping`` runs inside a persisting round's transaction;
``hand_over`` runs once the round committed.

Rules and theory:
- The ``Ledger`` (pure) decides what is owed and when; this carries it out in
  one transaction: dead letters, quarantined copies and purges of erased
  sessions first, then the done-marks of every settled range, then DROP_OLDEST
  trimming, then every backend's row (``stored_row``: one arithmetic).
- DROP_OLDEST's excess is measured here, inside the transaction, not when the
  round was planned: deliveries may have made room meanwhile. Only untaken
  entries are dropped (after ``last_taken``; the writer's claim gate is closed),
  and with nothing in flight the round's newest entry stays, however large:
  alone, it fits, as an oversized entry fits an empty backlog.
- After the commit every writer is told, before any appender resumes, what the
  round journaled for it and what it dropped (``handover``, pure); the claim
  gate opens again. A round that did not persist leaves the new entries'
  counts to the ledger, so the next persisting round writes them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._journal_types import SettledRange
from ._ledger import handover, stored_row

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._admission import Plan
    from ._intake import Numbered, PendingAppend
    from ._journal_types import Dropped
    from ._ledger import Delta, Ledger
    from ._rows import BackendRow
    from ._transaction import Transaction
    from ._writer import Writer

__all__ = ["hand_over", "write_bookkeeping"]


async def write_bookkeeping(
    tx: Transaction,
    writers: Sequence[Writer],
    stored: Mapping[str, BackendRow],
    deltas: Mapping[int, Delta],
    added: Mapping[int, tuple[int, int]],
    dropped_newest: Mapping[str, int],
    trimming: Sequence[Writer],
    tail: int,
    *,
    shared: bool,
) -> tuple[dict[str, list[Dropped]], int]:
    """Write settlements, drops and counters in ``tx`` (``stored``: the rows in
    the journal; ``tail``: the newest seq; ``shared``: an entry may owe several
    backends). Returns the DROP_OLDEST drops by backend name, and how many seqs
    the done-marks covered."""
    by_bit = {w.bit: w for w in writers}
    at = time.time()
    missing = 0
    for bit, delta in deltas.items():
        name = by_bit[bit].name
        if delta.dead:
            await tx.dead_letter(name, delta.dead, at)
        if delta.damaged:
            await tx.quarantine(name, delta.damaged, at)
        if delta.erased:
            await tx.purge_erased(name, delta.erased)
        missing += delta.missing
    ranges = [
        SettledRange(by_bit[bit].mask, by_bit[bit].book.cursor, delta.upto)
        for bit, delta in deltas.items()
        if delta.upto > by_bit[bit].book.cursor
    ]
    settled = 0
    if ranges:
        await tx.settle(ranges, shared=shared)
        settled = sum(upto - after for _, after, upto in ranges)
    dropped: dict[str, list[Dropped]] = {}
    for writer in trimming:
        book = writer.book
        backlog = book.backlog()
        count, nbytes = added.get(writer.bit, (0, 0))
        backlog.pending += count
        backlog.pending_bytes += nbytes
        excess_count, excess_bytes = backlog.excess()
        if excess_count or excess_bytes:
            keep = tail if not book.in_flight else tail + 1
            dropped[writer.name] = await tx.drop_oldest(
                writer.mask, book.last_taken, excess_count, excess_bytes, before=keep
            )
    rows = [
        stored_row(
            stored[writer.name],
            deltas.get(writer.bit),
            added.get(writer.bit, (0, 0)),
            dropped.get(writer.name, ()),
            dropped_newest.get(writer.name, 0),
            tail,
        )
        for writer in writers
    ]
    if missing:
        await tx.count_lost(missing)
    await tx.update_backends(rows)
    return dropped, settled


def hand_over(
    writers: Sequence[Writer],
    ledger: Ledger,
    numbered: Numbered,
    added: dict[int, tuple[int, int]],
    dropped: dict[str, list[Dropped]],
    plan: Plan,
    persisted: dict[int, Delta] | None,
    *,
    sync: Sequence[Writer],
    admitted: Sequence[tuple[PendingAppend, int]],
) -> None:
    """Tell every writer what the committed round (``numbered``) journaled and
    dropped for it (``persisted``: the deltas the round wrote, if it persisted),
    and register each admitted append's waiter with every ``sync`` writer."""
    tail = numbered.tail
    lost: dict[str, set[int]] = {}
    for writer in writers:
        bit = writer.bit
        if not writer.enabled and bit not in added:
            continue  # a disabled backend takes erasures only
        share = handover(
            writer.mask,
            numbered.entries,
            uniform=plan.uniform,
            added=added.get(bit, (0, 0)),
            drops=dropped.get(writer.name, ()),
            dropped_newest=plan.dropped_newest.get(writer.name, 0),
            tail=tail,
        )
        writer.take(share, tail)
        lost[writer.name] = share.lost
        if persisted is not None:
            delta = persisted.get(bit)
            if delta is not None:
                writer.book.persisted(delta.upto)
        elif bit in added:
            # Not written yet (a round that drops entries always persists).
            ledger.journaled(bit, *added[bit])
        writer.open_gate()
    for append, targets in admitted if sync else ():
        seq = append.seq
        append.waiters = [
            (w, w.waiters.for_entry(seq, targets, lost[w.name])) for w in sync
        ]
