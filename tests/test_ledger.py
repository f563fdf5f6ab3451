"""The ledger (``_ledger``), tested directly: no event loop, no journal.

The committer tests check that rounds persist and hand over at the right
moments; here the schedule and the arithmetic hold for every input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeAlias
from uuid import UUID

import pytest
from hypothesis import given, strategies as st

from journal_archivist._backlog import Settlement, Tally
from journal_archivist._batching import Entry
from journal_archivist._ledger import (
    PERSIST_INTERVAL,
    Delta,
    Handover,
    Ledger,
    added_by_backend,
    handover,
    stored_row,
)
from journal_archivist._records import Op
from journal_archivist._rows import BackendRow

APPEND = int(Op.APPEND)
SESSION = UUID(int=0xA).bytes


def entry(seq: int, size: int = 1) -> Entry:
    return Entry(seq, SESSION, APPEND, b"", size, 0.0)


def settlement(
    upto: int = 1,
    count: int = 1,
    *,
    dead: list[tuple[int, str, int]] | None = None,
) -> Settlement:
    """A batch of ``count`` entries of 10 bytes, delivered unless dead."""
    dead = dead or []
    return Settlement(
        upto=upto,
        count=count,
        nbytes=10 * count,
        delivered=count - len(dead),
        dead=dead,
    )


# --- Delta ----------------------------------------------------------------------------


def test_a_delta_adds_up_settlements() -> None:
    delta = Delta()
    delta.settle(
        Settlement(
            upto=5,
            count=3,
            nbytes=30,
            delivered=1,
            missing=1,
            dead=[(4, "rejected", 3)],
            damaged=[(5, "checksum mismatch")],
            erased=[(SESSION, 3)],
        )
    )
    delta.settle(settlement(upto=2))  # an older upto never moves it back
    assert delta == Delta(
        tally=Tally(
            pending=-4, pending_bytes=-40, delivered=2, dead_lettered=1, quarantined=1
        ),
        upto=5,
        missing=1,
        dead=[(4, "rejected", 3)],
        damaged=[(5, "checksum mismatch")],
        erased=[(SESSION, 3)],
    )


def test_a_restored_delta_goes_before_the_newer_one() -> None:
    ledger = Ledger()
    ledger.settled(1, settlement(upto=3, dead=[(3, "old", 1)]))
    taken, _ = ledger.take()
    ledger.settled(1, settlement(upto=2, dead=[(2, "new", 1)]))
    ledger.restore(taken, 10.0, 0.5)
    assert ledger.deltas[1].dead == [(3, "old", 1), (2, "new", 1)]
    assert ledger.deltas[1].upto == 3
    assert ledger.persist_at == 10.5


# --- when to persist ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("has_deltas", "flush_wanted", "now", "dropping", "due"),
    [
        # A round that drops entries persists, even with nothing else to write.
        (False, False, 0.0, True, True),
        (True, False, 0.0, True, True),
        # Nothing to write: never, even if a flush is wanted.
        (False, True, 5.0, False, False),
        (False, False, 5.0, False, False),
        # Deltas, and a flush is wanted: at once.
        (True, True, 0.0, False, True),
        # Deltas: once persist_at (1.0) is reached, not before.
        (True, False, 0.5, False, False),
        (True, False, 1.0, False, True),
        (True, False, 5.0, False, True),
    ],
)
def test_a_round_persists_when_dropping_flushing_or_after_persist_at_with_deltas(
    has_deltas: bool, flush_wanted: bool, now: float, dropping: bool, due: bool
) -> None:
    ledger = Ledger()
    ledger.persist_at = 1.0
    ledger.flush_wanted = flush_wanted
    if has_deltas:
        ledger.journaled(1, 1, 10)
    assert ledger.due(now, dropping=dropping) is due


def test_a_persisting_round_takes_every_delta_and_the_flush_request() -> None:
    ledger = Ledger()
    ledger.settled(1, settlement())
    ledger.journaled(2, 3, 30)
    ledger.flush_wanted = True
    deltas, gen = ledger.take()
    assert set(deltas) == {1, 2}
    assert deltas[2].tally == Tally(pending=3, pending_bytes=30)
    assert gen == 1
    assert ledger.deltas == {}
    assert not ledger.flush_wanted
    assert not ledger.due(100.0, dropping=False)


def test_a_committed_round_schedules_the_next_one() -> None:
    ledger = Ledger()
    ledger.persisted(7.0, 3)
    assert ledger.persist_at == 7.0 + PERSIST_INTERVAL
    assert ledger.flushed_gen == 3
    ledger.persisted(8.0, 2)  # an older generation never lowers it
    assert ledger.flushed_gen == 3


# --- generations ----------------------------------------------------------------------


def test_each_settlement_is_a_generation_and_journaling_is_not() -> None:
    ledger = Ledger()
    ledger.journaled(1, 2, 20)
    assert ledger.settle_gen == 0
    ledger.settled(1, settlement())
    ledger.settled(2, settlement())
    assert ledger.settle_gen == 2


def test_a_flush_of_settlements_waits_for_the_last_one_only() -> None:
    ledger = Ledger()
    ledger.settled(1, settlement())
    assert ledger.want_flush(counters=False) == 1
    assert ledger.want_flush(counters=False) == 1
    assert ledger.settle_gen == 1


def test_a_flush_of_counters_needs_a_new_generation_only_with_deltas() -> None:
    ledger = Ledger()
    assert ledger.want_flush(counters=True) == 0  # nothing unwritten
    ledger.journaled(1, 2, 20)
    assert ledger.want_flush(counters=True) == 1
    assert ledger.want_flush(counters=True) == 2
    _, gen = ledger.take()
    ledger.persisted(0.0, gen)
    assert ledger.want_flush(counters=True) == ledger.flushed_gen == 2


# --- properties of the schedule -------------------------------------------------------

bits = st.integers(min_value=0, max_value=3)
settlements = st.builds(
    Settlement,
    upto=st.integers(min_value=0, max_value=50),
    count=st.integers(min_value=0, max_value=5),
    nbytes=st.integers(min_value=0, max_value=100),
    delivered=st.integers(min_value=0, max_value=5),
    missing=st.integers(min_value=0, max_value=2),
    dead=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=50),
            st.sampled_from(["rejected", "timeout"]),
            st.integers(min_value=1, max_value=3),
        ),
        max_size=2,
    ),
    damaged=st.lists(
        st.tuples(st.integers(min_value=1, max_value=50), st.just("bad crc")),
        max_size=2,
    ),
    erased=st.lists(
        st.tuples(st.just(SESSION), st.integers(min_value=1, max_value=50)),
        max_size=2,
    ),
)
LedgerOp: TypeAlias = tuple[int, Settlement | tuple[int, int]]
ledger_ops = st.lists(
    st.tuples(
        bits,
        settlements
        | st.tuples(
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=99),
        ),
    ),
    max_size=6,
)


def apply(ledger: Ledger, ops: list[LedgerOp]) -> None:
    """Settle, or journal ``(count, bytes)`` without persisting."""
    for bit, op in ops:
        if isinstance(op, Settlement):
            ledger.settled(bit, op)
        else:
            ledger.journaled(bit, *op)


@given(
    phases=st.lists(st.tuples(ledger_ops, st.none() | ledger_ops), max_size=5),
    now=st.floats(min_value=0, max_value=1e6),
    backoff=st.floats(min_value=0, max_value=10),
)
def test_failed_rounds_restored_then_taken_give_the_totals_of_no_round(
    phases: list[tuple[list[LedgerOp], list[LedgerOp] | None]],
    now: float,
    backoff: float,
) -> None:
    # Each phase: some bookkeeping, then maybe a persisting round that fails
    # while more bookkeeping arrives (``during``).
    ledger, reference = Ledger(), Ledger()
    for ops, during in phases:
        apply(ledger, ops)
        apply(reference, ops)
        if during is not None:
            deltas, gen = ledger.take()
            assert gen == ledger.settle_gen
            apply(ledger, during)
            apply(reference, during)
            ledger.restore(deltas, now, backoff)
            assert ledger.persist_at == now + backoff
    assert ledger.settle_gen == reference.settle_gen
    # Same totals, and lists in the order things happened (older first).
    assert ledger.take() == reference.take()


@given(
    older=ledger_ops,
    newer=ledger_ops,
    counters=st.booleans(),
)
def test_a_flush_is_answered_by_the_next_persisting_round_and_no_earlier_one(
    older: list[LedgerOp], newer: list[LedgerOp], counters: bool
) -> None:
    ledger = Ledger()
    apply(ledger, older)
    pending = bool(ledger.deltas)
    target = ledger.want_flush(counters=counters)
    if counters and pending:
        # Unwritten counters: a round already written cannot answer.
        assert target > ledger.flushed_gen
    apply(ledger, newer)
    _, gen = ledger.take()
    ledger.persisted(0.0, gen)
    assert ledger.flushed_gen >= target


# --- stored_row -----------------------------------------------------------------------

naturals = st.integers(min_value=0, max_value=1_000)
stored_rows = st.builds(
    BackendRow,
    bit=st.integers(min_value=0, max_value=7),
    name=st.just("a"),
    cursor=naturals,
    pending=naturals,
    pending_bytes=naturals,
    delivered=naturals,
    dropped=naturals,
    dead_lettered=naturals,
    quarantined=naturals,
    counted_through=naturals,
    drop_floor=naturals,
)
# Settlements make a delta's pending counts negative.
signed = st.integers(min_value=-1_000, max_value=1_000)
deltas = st.builds(
    Delta,
    tally=st.builds(
        Tally,
        pending=signed,
        pending_bytes=signed,
        delivered=naturals,
        dropped=naturals,
        dead_lettered=naturals,
        quarantined=naturals,
    ),
    upto=naturals,
)
# DROP_OLDEST drops, oldest first.
drop_lists = st.lists(
    st.tuples(st.integers(min_value=1, max_value=2_000), naturals),
    unique_by=lambda d: d[0],
    max_size=5,
).map(sorted)


@given(
    stored=stored_rows,
    delta=st.none() | deltas,
    added=st.tuples(naturals, naturals),
    drops=drop_lists,
    dropped_newest=naturals,
    tail=naturals,
)
def test_a_stored_row_adds_the_delta_the_round_and_its_drops(
    stored: BackendRow,
    delta: Delta | None,
    added: tuple[int, int],
    drops: list[tuple[int, int]],
    dropped_newest: int,
    tail: int,
) -> None:
    before = replace(stored)
    row = stored_row(stored, delta, added, drops, dropped_newest, tail)
    change = delta.tally if delta is not None else Tally()
    pending = stored.pending + change.pending + added[0] - len(drops)
    pending_bytes = (
        stored.pending_bytes
        + change.pending_bytes
        + added[1]
        - sum(size for _, size in drops)
    )
    assert row.pending == max(0, pending)
    assert row.pending_bytes == max(0, pending_bytes)
    assert row.delivered == stored.delivered + change.delivered
    assert row.dropped == stored.dropped + change.dropped + len(drops) + dropped_newest
    assert row.dead_lettered == stored.dead_lettered + change.dead_lettered
    assert row.quarantined == stored.quarantined + change.quarantined
    # Positions only move up.
    upto = delta.upto if delta is not None else 0
    assert row.cursor == max(stored.cursor, upto)
    assert row.counted_through == max(stored.counted_through, tail)
    assert row.drop_floor == max([stored.drop_floor, *(seq for seq, _ in drops)])
    assert (row.bit, row.name) == (stored.bit, stored.name)
    assert stored == before  # a new row; the stored one is left alone


def test_a_stored_row_never_goes_below_zero() -> None:
    stored = BackendRow.of("a", [0, 4, 2, 20, 0, 0, 0, 0, 4, 0])
    delta = Delta(tally=Tally(pending=-3, pending_bytes=-25, delivered=3), upto=7)
    row = stored_row(stored, delta, (0, 0), [], 0, 4)
    assert (row.pending, row.pending_bytes, row.delivered) == (0, 0, 3)
    assert row.cursor == 7


# --- handover -------------------------------------------------------------------------


@st.composite
def rounds(
    draw: st.DrawFn,
) -> tuple[int, list[tuple[Entry, int]], list[tuple[int, int]], set[int], int]:
    """A committed round for the backend of ``mask``: its entries with their
    targets, the DROP_OLDEST drops (older ones, then its own lost ones) and its
    tail."""
    mask = 1 << draw(st.integers(min_value=0, max_value=2))
    before = draw(st.integers(min_value=0, max_value=20))
    targets = draw(st.lists(st.integers(min_value=0, max_value=7), max_size=6))
    sizes = draw(st.lists(naturals, min_size=len(targets), max_size=len(targets)))
    entries = [
        (entry(before + i, size), t)
        for i, (t, size) in enumerate(zip(targets, sizes, strict=True), 1)
    ]
    tail = before + len(entries)
    older = draw(
        st.lists(st.integers(min_value=1, max_value=before), unique=True)
        if before
        else st.just([])
    )
    mine = [e.seq for e, t in entries if t & mask]
    lost = draw(st.sets(st.sampled_from(mine)) if mine else st.just(set()))
    drops = [(seq, seq % 5) for seq in sorted(older)]
    drops += [(seq, seq % 5) for seq in sorted(lost)]
    return mask, entries, drops, lost, tail


@given(round_=rounds(), dropped_newest=st.integers(min_value=0, max_value=5))
def test_a_handover_owes_the_new_entries_for_the_backend_minus_its_own_drops(
    round_: tuple[int, list[tuple[Entry, int]], list[tuple[int, int]], set[int], int],
    dropped_newest: int,
) -> None:
    mask, entries, drops, lost, tail = round_
    mine = [e for e, t in entries if t & mask]
    share = handover(
        mask,
        entries,
        uniform=False,
        added=(len(mine), sum(e.size for e in mine)),
        drops=drops,
        dropped_newest=dropped_newest,
        tail=tail,
    )
    assert share.lost == lost
    assert list(share.dropped_oldest) == [d for d in drops if d[0] not in lost]
    assert list(share.entries) == [e for e in mine if e.seq not in lost]
    assert share.nbytes == sum(e.size for e in share.entries)
    assert share.dropped_new == dropped_newest + len(lost)


@given(round_=rounds(), dropped_newest=st.integers(min_value=0, max_value=5))
def test_the_uniform_fast_path_agrees_with_the_general_one(
    round_: tuple[int, list[tuple[Entry, int]], list[tuple[int, int]], set[int], int],
    dropped_newest: int,
) -> None:
    mask, entries, drops, _, tail = round_
    # Uniform: every entry targets this backend.
    entries = [(e, t | mask) for e, t in entries]
    added = (len(entries), sum(e.size for e, _ in entries))

    def share(uniform: bool) -> Handover:
        return handover(
            mask,
            entries,
            uniform=uniform,
            added=added,
            drops=drops,
            dropped_newest=dropped_newest,
            tail=tail,
        )

    fast, general = share(True), share(False)
    assert list(fast.entries) == list(general.entries)
    assert list(fast.dropped_oldest) == list(general.dropped_oldest)
    assert (fast.nbytes, fast.dropped_new, fast.lost) == (
        general.nbytes,
        general.dropped_new,
        general.lost,
    )


def test_a_round_with_no_entries_hands_over_its_drops_only() -> None:
    share = handover(
        1, [], uniform=True, added=(0, 0), drops=[(2, 5), (4, 6)], dropped_newest=1,
        tail=9,
    )  # fmt: skip
    assert share == Handover([], 0, [(2, 5), (4, 6)], 1, set())


# --- added_by_backend -----------------------------------------------------------------


@given(
    enabled=st.sets(st.integers(min_value=0, max_value=4), min_size=1),
    extra=st.lists(st.integers(min_value=0, max_value=255), max_size=6),
    sizes=st.lists(naturals, max_size=6),
)
def test_added_by_backend_fast_path_agrees_when_every_entry_targets_every_backend(
    enabled: set[int], extra: list[int], sizes: list[int]
) -> None:
    everyone = sum(1 << bit for bit in enabled)
    entries = [
        (entry(seq, size), everyone | (more << 5))
        for seq, (size, more) in enumerate(zip(sizes, extra, strict=False), 1)
    ]
    nbytes = sum(e.size for e, _ in entries)
    backends = [(bit, 1 << bit) for bit in sorted(enabled)]
    fast = added_by_backend(entries, nbytes, sorted(enabled), backends)
    general = added_by_backend(entries, nbytes, None, backends)
    assert fast == general
    if entries:
        assert fast == dict.fromkeys(enabled, (len(entries), nbytes))


def test_added_by_backend_counts_each_backend_by_its_targets() -> None:
    entries = [(entry(1, 10), 0b01), (entry(2, 20), 0b11), (entry(3, 40), 0b10)]
    added = added_by_backend(entries, 70, None, [(0, 0b01), (1, 0b10), (2, 0b100)])
    assert added == {0: (2, 30), 1: (2, 60)}
