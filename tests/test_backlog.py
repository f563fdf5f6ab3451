"""The book of one backend (``_backlog``), tested directly: no event loop, no journal.

The journal is a list in the test; reading it is what ``Reader.pending`` would
return. The writer and committer tests check that the drivers call the book at
the right moments; here the book's own rules hold for every sequence of calls.
"""

from __future__ import annotations

from uuid import UUID

import pytest
from hypothesis import given, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from journal_archivist._admission import Backlog
from journal_archivist._backlog import (
    MEM_MAX_BYTES,
    MEM_MAX_ENTRIES,
    Book,
    Settlement,
    Tally,
)
from journal_archivist._batching import Entry
from journal_archivist._policies import OverflowPolicy, Queued
from journal_archivist._records import Op
from journal_archivist._rows import BackendRow

APPEND = int(Op.APPEND)
ERASE = int(Op.ERASE)
SESSION = UUID(int=0xA).bytes
POLICY = Queued(overflow=OverflowPolicy.DROP_OLDEST, capacity=50, capacity_bytes=999)


def entry(
    seq: int, size: int = 1, op: int = APPEND, *, damage: str | None = None
) -> Entry:
    """An entry of one session; its ``enqueued_at`` is its seq."""
    return Entry(seq, SESSION, op, b"", size, float(seq), damage=damage)


def backend_row(
    *,
    cursor: int = 0,
    pending: int = 0,
    pending_bytes: int = 0,
    dropped: int = 0,
    drop_floor: int = 0,
    bit: int = 2,
) -> BackendRow:
    """A sound stored row, counted through ``cursor`` unless told otherwise."""
    return BackendRow(
        bit=bit,
        name="a",
        cursor=cursor,
        pending=pending,
        pending_bytes=pending_bytes,
        delivered=0,
        dropped=dropped,
        dead_lettered=0,
        quarantined=0,
        counted_through=cursor,
        drop_floor=drop_floor,
    )


def fresh_book(**row: int) -> Book:
    """A book over an empty journal: everything it gets is handed over in memory."""
    stored = backend_row(**row)
    return Book("a", POLICY, stored, tail=stored.cursor)


def hand_over(book: Book, entries: list[Entry]) -> None:
    """Journal ``entries`` for ``book``, the newest being the journal's tail."""
    book.journaled(entries, entries[-1].seq, sum(e.size for e in entries))


def seqs(entries: list[Entry]) -> list[int]:
    return [e.seq for e in entries]


# --- Tally and Settlement -------------------------------------------------------------


def test_a_tally_adds_every_counter() -> None:
    tally = Tally(1, 2, 3, 4, 5, 6)
    tally.add(Tally(10, 20, 30, 40, 50, 60))
    assert tally == Tally(11, 22, 33, 44, 55, 66)


def test_a_settlement_counts_dead_and_quarantined_entries_apart_from_delivered() -> (
    None
):
    settlement = Settlement(
        upto=9,
        count=4,
        nbytes=40,
        delivered=1,
        dead=[(7, "rejected", 3), (8, "rejected", 3)],
        damaged=[(9, "checksum mismatch")],
    )
    assert settlement.tally() == Tally(
        pending=-4, pending_bytes=-40, delivered=1, dead_lettered=2, quarantined=1
    )


# --- opening --------------------------------------------------------------------------


def test_a_book_opens_on_its_stored_row_with_the_journal_range_unread() -> None:
    stored = backend_row(cursor=5, pending=3, pending_bytes=30, drop_floor=4)
    book = Book("a", POLICY, stored, tail=9, oldest_pending_at=1.5)
    assert book.tally == Tally(pending=3, pending_bytes=30)
    assert (book.cursor, book.last_taken, book.settled_upto) == (5, 5, 5)
    assert book.mask == 1 << 2
    assert book.drop_floor == 4
    assert book.oldest_hint == 1.5
    assert book.unread
    assert not book.exhausted
    assert book.read_range() == (6, 10)
    # Nothing may be claimed from memory before the journal range is read.
    assert book.claim(10, 1000) == []
    assert book.head() is None


def test_a_book_gives_admission_a_working_copy_of_its_backlog() -> None:
    book = fresh_book(pending=3, pending_bytes=30)
    backlog = book.backlog()
    assert backlog == Backlog(
        name="a",
        mask=1 << 2,
        overflow=OverflowPolicy.DROP_OLDEST,
        capacity=50,
        capacity_bytes=999,
        pending=3,
        pending_bytes=30,
    )
    backlog.pending += 10
    assert book.pending == 3


# --- reading the journal --------------------------------------------------------------


def test_a_short_read_covers_the_whole_range() -> None:
    book = Book("a", POLICY, backend_row(pending=2, pending_bytes=2), tail=6)
    start, stop = book.read_range()
    assert (start, stop) == (1, 7)
    book.read_done([entry(2), entry(5)], stop, 10)
    assert not book.unread
    assert book.db_pos == 7
    assert seqs(book.claim(10, 1000)) == [2, 5]
    assert book.exhausted


def test_a_full_read_resumes_after_its_last_row() -> None:
    book = Book("a", POLICY, backend_row(pending=4, pending_bytes=4), tail=8)
    book.read_done([entry(2), entry(3)], 9, 2)
    assert book.db_pos == 4
    assert seqs(book.claim(10, 1000)) == [2, 3]
    assert book.unread
    assert book.read_range() == (4, 9)
    book.read_done([entry(6), entry(8)], 9, 2)
    assert book.db_pos == 9
    assert seqs(book.claim(10, 1000)) == [6, 8]


def test_the_next_read_starts_after_the_last_entry_taken() -> None:
    # The in-memory copies were forgotten after entries 1..3 were taken from
    # them: the journal range starts at the cursor, but 1..3 are not read again.
    book = fresh_book()
    hand_over(book, [entry(1), entry(2), entry(3), entry(4)])
    assert seqs(book.claim(3, 1000)) == [1, 2, 3]
    book.forget_memory(4)
    assert book.mem_from == 5
    assert book.read_range() == (4, 5)


# --- claiming -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "max_rows", "max_bytes", "batches"),
    [
        # max_rows cuts.
        ([1, 1, 1, 1, 1], 2, 1000, [[1, 2], [3, 4], [5]]),
        # max_bytes cuts: 4 + 4 fits 8, a third does not.
        ([4, 4, 4], 10, 8, [[1, 2], [3]]),
        # An entry larger than max_bytes is a batch of its own.
        ([1, 50, 1], 10, 8, [[1], [2], [3]]),
        # ... also at the head of a batch.
        ([50, 1, 1], 10, 8, [[1], [2, 3]]),
    ],
)
def test_a_batch_respects_max_rows_and_max_bytes(
    sizes: list[int], max_rows: int, max_bytes: int, batches: list[list[int]]
) -> None:
    book = fresh_book()
    hand_over(book, [entry(seq, size) for seq, size in enumerate(sizes, 1)])
    taken = []
    while batch := book.claim(max_rows, max_bytes):
        taken.append(seqs(batch))
        book.settle(batch, [])
    assert taken == batches
    assert book.tally == Tally(delivered=len(sizes))
    assert book.mem_bytes == 0


def test_a_claimed_batch_is_in_flight_until_settled() -> None:
    book = fresh_book()
    hand_over(book, [entry(1, 10), entry(2, 20)])
    batch = book.claim(1, 1000)
    assert book.in_flight == batch
    assert book.undispatched == 1
    assert book.head() is batch[0]
    settlement, drifted = book.settle(batch, [])
    assert drifted is None
    assert settlement == Settlement(upto=1, count=1, nbytes=10, delivered=1)
    assert not book.in_flight
    assert (book.settled_upto, book.last_taken) == (1, 1)
    assert book.oldest_hint == 1.0  # the settled entry's enqueued_at
    assert book.tally == Tally(pending=1, pending_bytes=20, delivered=1)


# --- DROP_OLDEST ----------------------------------------------------------------------


def test_appends_at_or_below_the_drop_floor_are_never_claimed_erasures_are() -> None:
    book = fresh_book()
    hand_over(
        book, [entry(1), entry(2, op=ERASE), entry(3), entry(4, op=ERASE), entry(5)]
    )
    book.dropped_oldest([(1, 1), (3, 1)])
    assert book.drop_floor == 3
    assert book.tally == Tally(pending=3, pending_bytes=3, dropped=2)
    head = book.head()
    assert head is not None
    assert head.seq == 2
    # 3 is cut into the batch with 2 (max_rows counts it) but left out.
    batch = book.claim(2, 1000)
    assert seqs(batch) == [2]
    assert book.last_taken == 3
    assert book.in_flight == batch
    book.settle(batch, [])
    assert seqs(book.claim(10, 1000)) == [4, 5]


def test_the_drop_floor_passes_entries_already_taken() -> None:
    book = fresh_book()
    hand_over(book, [entry(1), entry(2), entry(3)])
    batch = book.claim(1, 1000)
    # 1 is in flight: DROP_OLDEST drops the untaken 2 only; 1 stays owed.
    book.dropped_oldest([(2, 1)])
    assert book.undispatched == 1
    settlement, _ = book.settle(batch, [])
    assert settlement.delivered == 1
    assert seqs(book.claim(10, 1000)) == [3]
    assert book.pending == 1


def test_the_drop_floor_is_the_stored_one_or_any_higher_drop() -> None:
    book = fresh_book(drop_floor=7)
    book.dropped_oldest([])
    assert book.drop_floor == 7
    book.dropped_oldest([(3, 1)])
    assert book.drop_floor == 7
    book.dropped_oldest([(8, 1), (9, 1)])
    assert book.drop_floor == 9


def test_drops_of_new_entries_are_counted_and_owe_nothing() -> None:
    book = fresh_book(dropped=1)
    book.dropped_new(3)
    assert book.tally == Tally(dropped=4)


def test_head_skips_dropped_appends_in_every_source() -> None:
    book = Book("a", POLICY, backend_row(pending=2, pending_bytes=2), tail=2)
    book.read_done([entry(1), entry(2)], 3, 10)
    hand_over(book, [entry(3), entry(4)])
    book.dropped_oldest([(1, 1), (2, 1), (3, 1)])
    head = book.head()
    assert head is not None
    assert head.seq == 4


def test_claim_falls_through_to_memory_when_prefetch_holds_only_dropped_appends() -> (
    None
):
    book = Book("a", POLICY, backend_row(pending=3, pending_bytes=3), tail=3)
    book.read_done([entry(1), entry(2), entry(3)], 4, 10)
    hand_over(book, [entry(4)])
    book.dropped_oldest([(1, 1), (2, 1), (3, 1)])
    assert not book.unread  # no read is needed
    head = book.head()
    assert head is not None
    assert head.seq == 4
    assert seqs(book.claim(10, 1000)) == [4]


# --- the in-memory bound --------------------------------------------------------------


def test_a_full_mem_is_forgotten_by_bytes_and_the_journal_read_instead() -> None:
    book = fresh_book()
    first = [entry(1, MEM_MAX_BYTES // 2), entry(2, MEM_MAX_BYTES // 2)]
    hand_over(book, first)
    assert len(book.mem) == 2
    assert book.mem_bytes == MEM_MAX_BYTES
    # One more byte would outgrow the bound; tail 5 is another backend's entry.
    book.journaled([entry(3)], 5, 1)
    assert not book.mem
    assert book.mem_bytes == 0
    assert book.mem_from == 6
    assert book.tally == Tally(pending=3, pending_bytes=MEM_MAX_BYTES + 1)
    assert book.unread
    assert book.claim(10, MEM_MAX_BYTES) == []
    start, stop = book.read_range()
    assert (start, stop) == (1, 6)
    book.read_done([entry(1, MEM_MAX_BYTES // 2), entry(2, MEM_MAX_BYTES // 2)], 6, 2)
    assert seqs(book.claim(10, MEM_MAX_BYTES)) == [1, 2]
    assert book.unread
    book.read_done([entry(3)], 6, 2)
    assert seqs(book.claim(10, MEM_MAX_BYTES)) == [3]
    assert book.exhausted


def test_a_full_mem_is_forgotten_by_entries() -> None:
    book = fresh_book()
    hand_over(book, [entry(seq, 0) for seq in range(1, MEM_MAX_ENTRIES + 1)])
    assert len(book.mem) == MEM_MAX_ENTRIES
    book.journaled([entry(MEM_MAX_ENTRIES + 1, 0)], MEM_MAX_ENTRIES + 1, 0)
    assert not book.mem
    assert book.mem_from == MEM_MAX_ENTRIES + 2
    assert book.claim(10, 1000) == []
    assert book.read_range() == (1, MEM_MAX_ENTRIES + 2)


def test_an_empty_mem_takes_an_oversized_handover_whole() -> None:
    book = fresh_book()
    huge = [entry(1, MEM_MAX_BYTES), entry(2, MEM_MAX_BYTES)]
    hand_over(book, huge)
    assert list(book.mem) == huge
    assert book.mem_bytes == 2 * MEM_MAX_BYTES
    assert not book.unread
    assert seqs(book.claim(10, 1)) == [1]


def test_forgetting_memory_moves_mem_from_past_the_tail() -> None:
    book = fresh_book()
    hand_over(book, [entry(1), entry(2)])
    book.forget_memory(4)
    assert not book.mem
    assert book.mem_bytes == 0
    assert book.mem_from == 5
    assert book.unread
    assert book.head() is None


# --- settling -------------------------------------------------------------------------


def test_a_settlement_reports_dead_damaged_and_applied_erasures() -> None:
    book = Book("a", POLICY, backend_row(pending=5, pending_bytes=5), tail=5)
    rows = [
        entry(1),
        entry(2, op=ERASE),
        entry(3, op=ERASE, damage="checksum mismatch"),
        entry(4, damage="checksum mismatch"),
        entry(5),
    ]
    book.read_done(rows, 6, 10)
    batch = book.claim(10, 1000)
    settlement, drifted = book.settle(batch, [(rows[4], "rejected", 3)])
    assert drifted is None
    assert settlement == Settlement(
        upto=5,
        count=5,
        nbytes=5,
        delivered=2,
        dead=[(5, "rejected", 3)],
        damaged=[(3, "checksum mismatch"), (4, "checksum mismatch")],
        # A damaged erasure was not applied: it purges nothing.
        erased=[(SESSION, 2)],
    )
    assert book.tally == Tally(delivered=2, dead_lettered=1, quarantined=2)


def test_settling_a_drift_settles_the_missing_entries() -> None:
    # The count says two entries are owed; the journal has none of them.
    book = fresh_book(cursor=4, pending=2, pending_bytes=20)
    assert book.exhausted
    settlement, drifted = book.settle([], [], drift=(2, 20))
    assert drifted is None
    assert settlement == Settlement(upto=4, count=2, nbytes=20, delivered=0, missing=2)
    assert book.tally == Tally()
    assert book.settled_upto == 4


@pytest.mark.parametrize(
    ("pending", "pending_bytes", "batch", "drift", "drifted"),
    [
        # A damaged row's stored size was larger than what was counted.
        (1, 5, [entry(1, 10)], None, (0, -5)),
        # More entries settled than counted.
        (1, 5, [entry(1, 1), entry(2, 4)], None, (-1, 0)),
        # A drift larger than the count.
        (1, 5, [], (3, 5), (-2, 0)),
        # No entry left, yet bytes counted.
        (1, 5, [entry(1, 2)], None, (0, 3)),
    ],
)
def test_counters_that_drift_below_zero_are_reset_and_reported(
    pending: int,
    pending_bytes: int,
    batch: list[Entry],
    drift: tuple[int, int] | None,
    drifted: tuple[int, int],
) -> None:
    book = fresh_book(pending=pending, pending_bytes=pending_bytes)
    _, reported = book.settle(batch, [], drift=drift)
    assert reported == drifted
    assert (book.tally.pending, book.tally.pending_bytes) == (0, 0)


def test_bytes_that_drift_below_zero_with_entries_owed_are_reset_and_reported() -> None:
    # A damaged row's size larger than counted, with another entry still owed.
    book = fresh_book(pending=2, pending_bytes=5)
    _, reported = book.settle([entry(1, 10)], [])
    assert reported == (1, -5)
    assert (book.tally.pending, book.tally.pending_bytes) == (1, 0)


def test_the_oldest_pending_entry_is_the_head_or_else_the_hint() -> None:
    book = fresh_book()
    assert book.oldest_pending_at() is None
    hand_over(book, [entry(1), entry(2), entry(3)])
    assert book.oldest_pending_at() == 1.0
    book.settle(book.claim(1, 1000), [])
    assert book.oldest_pending_at() == 2.0
    book.forget_memory(3)
    # Not in memory: at most as old as the last entry settled.
    assert book.head() is None
    assert book.oldest_pending_at() == 1.0
    book.settle(book.claim(10, 1000), [], drift=(2, 2))
    assert book.oldest_pending_at() is None


def test_the_oldest_pending_entry_is_known_as_soon_as_it_is_owed() -> None:
    # Seq 1 is another backend's entry: the range [1, 2) is still to be read.
    book = Book("a", POLICY, backend_row(), tail=1)
    hand_over(book, [entry(2)])
    assert book.pending == 1
    assert book.oldest_pending_at() == 2.0


def test_the_cursor_only_moves_up() -> None:
    book = fresh_book(cursor=5)
    book.persisted(3)
    assert book.cursor == 5
    book.persisted(8)
    assert book.cursor == 8


# --- properties -----------------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30),
    max_rows=st.integers(min_value=1, max_value=8),
    max_bytes=st.integers(min_value=1, max_value=60),
)
def test_claims_take_every_entry_once_in_order_within_the_limits(
    sizes: list[int], max_rows: int, max_bytes: int
) -> None:
    book = fresh_book()
    entries = [entry(seq, size) for seq, size in enumerate(sizes, 1)]
    hand_over(book, entries)
    taken: list[Entry] = []
    while batch := book.claim(max_rows, max_bytes):
        assert len(batch) <= max_rows
        assert len(batch) == 1 or sum(e.size for e in batch) <= max_bytes
        taken += batch
        book.settle(batch, [])
    assert taken == entries
    assert book.exhausted
    assert book.tally == Tally(delivered=len(sizes))


gaps = st.integers(min_value=0, max_value=2)
ops = st.sampled_from([APPEND, APPEND, ERASE])
# Sizes that make mem outgrow MEM_MAX_BYTES now and then, and batches of one.
sizes = st.sampled_from([0, 1, 7, 100, MEM_MAX_BYTES // 2, MEM_MAX_BYTES + 1])


class BookMatchesModel(RuleBasedStateMachine):
    """The committer and a writer drive a book over a journal kept as a list.

    The model: ``journal`` maps each seq owed to this backend to its op and size
    (gaps are other backends' entries); ``dropped`` is what DROP_OLDEST dropped
    (always the oldest untaken appends); ``last_taken`` is how far claims went.
    An entry is *claimable* if owed, above ``last_taken`` and not dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.journal: dict[int, tuple[int, int]] = {}
        self.dropped: set[int] = set()
        self.settled: set[int] = set()
        self.in_flight: list[Entry] = []
        # A read started (range, rows as read), not yet finished.
        self.reading: tuple[int, int, list[Entry]] | None = None
        self.last_taken = 0
        self.tail = 0
        self.floor = 0
        self.cursor = 0
        self.counts = Tally()

    # -- the model ----------------------------------------------------------------

    def claimable(self) -> list[int]:
        return sorted(
            seq
            for seq in self.journal
            if seq > self.last_taken and seq not in self.dropped
        )

    def read(self, seq: int) -> Entry:
        """A fresh copy of the journal's entry ``seq``."""
        op, size = self.journal[seq]
        return entry(seq, size, op)

    def add(self, count: int, nbytes: int) -> None:
        self.counts.pending += count
        self.counts.pending_bytes += nbytes

    # -- rules --------------------------------------------------------------------

    @initialize(
        cursor=st.integers(min_value=0, max_value=5),
        existing=st.lists(st.tuples(gaps, ops, sizes), max_size=6),
        trailing=gaps,
        stored_drops=st.integers(min_value=0, max_value=3),
    )
    def open(
        self,
        cursor: int,
        existing: list[tuple[int, int, int]],
        trailing: int,
        stored_drops: int,
    ) -> None:
        seq = self.last_taken = self.cursor = cursor
        for gap, op, size in existing:
            seq += gap + 1
            self.journal[seq] = (op, size)
        self.tail = seq + trailing
        # Appends DROP_OLDEST dropped before this open: the reader leaves them out.
        appends = [s for s in sorted(self.journal) if self.journal[s][0] == APPEND]
        self.dropped = set(appends[:stored_drops])
        stored_floor = max(self.dropped, default=0)
        owed = [s for s in self.journal if s not in self.dropped]
        self.add(len(owed), sum(self.journal[s][1] for s in owed))
        self.counts.dropped = len(self.dropped)
        self.floor = stored_floor
        stored = backend_row(
            cursor=cursor,
            pending=self.counts.pending,
            pending_bytes=self.counts.pending_bytes,
            dropped=self.counts.dropped,
            drop_floor=stored_floor,
        )
        # What the reader finds at open: when the oldest owed entry was journaled.
        oldest = float(min(owed)) if owed else None
        self.book = Book("a", POLICY, stored, tail=self.tail, oldest_pending_at=oldest)

    @rule(new=st.lists(st.tuples(gaps, ops, sizes), max_size=4), trailing=gaps)
    def journal_entries(self, new: list[tuple[int, int, int]], trailing: int) -> None:
        book = self.book
        entries = []
        seq = self.tail
        for gap, op, size in new:
            seq += gap + 1
            self.journal[seq] = (op, size)
            entries.append(entry(seq, size, op))
        self.tail = seq + trailing
        nbytes = sum(e.size for e in entries)
        outgrows = bool(book.mem) and (
            len(book.mem) + len(entries) > MEM_MAX_ENTRIES
            or book.mem_bytes + nbytes > MEM_MAX_BYTES
        )
        before = list(book.mem)
        book.journaled(entries, self.tail, nbytes)
        self.add(len(entries), nbytes)
        if not entries:
            assert list(book.mem) == before
        elif outgrows:
            assert not book.mem
            assert book.mem_from == self.tail + 1
        else:
            assert list(book.mem) == before + entries

    @precondition(lambda self: self.reading is None)
    @rule(limit=st.integers(min_value=1, max_value=4))
    def start_read(self, limit: int) -> None:
        self.begin_read(limit)

    def begin_read(self, limit: int) -> None:
        book = self.book
        if not book.unread:
            return
        start, stop = book.read_range()
        assert start > self.last_taken
        assert stop == book.mem_from
        rows = [
            self.read(seq)
            for seq in sorted(self.journal)
            if start <= seq < stop and seq not in self.dropped
        ][:limit]
        self.reading = (stop, limit, rows)

    @precondition(lambda self: self.reading is not None)
    @rule(data=st.data())
    def finish_read(self, data: st.DataObject) -> None:
        assert self.reading is not None
        rows = self.reading[2]
        # Some rows come back damaged: quarantined instead of delivered.
        damaged = data.draw(st.lists(st.booleans(), min_size=len(rows)))
        for row, damage in zip(rows, damaged, strict=False):
            if damage:
                row.damage = "checksum mismatch"
        self.end_read()

    def end_read(self) -> None:
        if self.reading is not None:
            stop, limit, rows = self.reading
            self.reading = None
            self.book.read_done(rows, stop, limit)

    @precondition(lambda self: self.reading is None and not self.in_flight)
    @rule(
        max_rows=st.integers(min_value=1, max_value=4),
        max_bytes=st.sampled_from([1, 8, 200, MEM_MAX_BYTES]),
    )
    def claim(self, max_rows: int, max_bytes: int) -> None:
        self.take(max_rows, max_bytes)

    def take(self, max_rows: int, max_bytes: int) -> None:
        book = self.book
        claimable = self.claimable()
        batch = book.claim(max_rows, max_bytes)
        if not batch:
            # Nothing claimable, or the journal range must be read first.
            assert not claimable or book.unread
            assert book.last_taken == self.last_taken
            return
        # The next claimable entries in seq order: none skipped, none twice, no
        # dropped append, nothing at or below last_taken.
        assert seqs(batch) == claimable[: len(batch)]
        for e in batch:
            assert (e.op, e.size) == self.journal[e.seq]
        assert len(batch) <= max_rows
        assert len(batch) == 1 or sum(e.size for e in batch) <= max_bytes
        # last_taken may pass dropped appends after the batch, nothing claimable.
        assert book.last_taken >= batch[-1].seq
        assert all(seq > book.last_taken for seq in claimable[len(batch) :])
        assert list(book.in_flight) == batch
        self.last_taken = book.last_taken
        self.in_flight = batch

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        batch = self.in_flight
        live = [e for e in batch if e.damage is None]
        dead = data.draw(st.lists(st.sampled_from(live), unique=True)) if live else []
        dead.sort(key=lambda e: e.seq)
        settlement, drifted = self.book.settle(
            batch, [(e, "rejected", 2) for e in dead]
        )
        assert drifted is None
        damaged = [e for e in batch if e.damage is not None]
        assert settlement.upto == batch[-1].seq
        assert settlement.count == len(batch)
        assert settlement.nbytes == sum(e.size for e in batch)
        assert settlement.missing == 0
        assert settlement.dead == [(e.seq, "rejected", 2) for e in dead]
        assert settlement.damaged == [(e.seq, "checksum mismatch") for e in damaged]
        assert settlement.erased == [
            (SESSION, e.seq) for e in batch if e.op == ERASE and e.damage is None
        ]
        assert self.book.settled_upto == batch[-1].seq
        assert self.book.oldest_hint == batch[-1].enqueued_at
        assert not self.settled & set(seqs(batch))
        self.settled |= set(seqs(batch))
        self.add(-len(batch), -settlement.nbytes)
        self.counts.delivered += len(batch) - len(dead) - len(damaged)
        self.counts.dead_lettered += len(dead)
        self.counts.quarantined += len(damaged)
        self.in_flight = []

    @rule(data=st.data())
    def drop_oldest(self, data: st.DataObject) -> None:
        # The journal drops the oldest untaken appends (never an erasure).
        candidates = [s for s in self.claimable() if self.journal[s][0] == APPEND]
        if not candidates:
            return
        count = data.draw(st.integers(min_value=1, max_value=len(candidates)))
        drops = [(s, self.journal[s][1]) for s in candidates[:count]]
        self.book.gate_closed = True
        self.book.dropped_oldest(drops)
        self.book.gate_closed = False
        self.dropped |= {s for s, _ in drops}
        self.add(-count, -sum(size for _, size in drops))
        self.counts.dropped += count
        self.floor = max(self.floor, drops[-1][0])

    @rule(count=st.integers(min_value=0, max_value=3))
    def drop_new(self, count: int) -> None:
        self.book.dropped_new(count)
        self.counts.dropped += count

    @rule()
    def forget_memory(self) -> None:
        self.book.forget_memory(self.tail)
        assert not self.book.mem
        assert self.book.mem_from == self.tail + 1

    @rule(data=st.data())
    def persist(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(min_value=0, max_value=self.book.settled_upto))
        self.book.persisted(upto)
        self.cursor = max(self.cursor, upto)

    @precondition(lambda self: self.reading is None)
    @rule()
    def drain(self) -> None:
        """The writer's loop until nothing is left: every owed entry comes out."""
        book = self.book
        for _ in range(4 * len(self.journal) + 8):
            if self.in_flight:
                self.settle_all()
            if book.unread:
                self.begin_read(limit=3)
                self.end_read()
            claimable = self.claimable()
            self.take(max_rows=3, max_bytes=200)
            if not self.in_flight and book.exhausted:
                break
            assert self.in_flight or claimable == [] or book.unread
        assert not self.in_flight
        assert self.claimable() == []
        assert (book.pending, book.tally.pending_bytes) == (0, 0)

    def settle_all(self) -> None:
        batch, self.in_flight = self.in_flight, []
        damaged = [e for e in batch if e.damage is not None]
        self.book.settle(batch, [])
        self.settled |= set(seqs(batch))
        self.add(-len(batch), -sum(e.size for e in batch))
        self.counts.delivered += len(batch) - len(damaged)
        self.counts.quarantined += len(damaged)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def counters_match(self) -> None:
        book = self.book
        assert book.tally == self.counts
        assert book.undispatched == self.counts.pending - len(self.in_flight)
        assert book.backlog().pending == self.counts.pending
        assert book.backlog().pending_bytes == self.counts.pending_bytes
        assert book.drop_floor == self.floor
        assert book.cursor == self.cursor
        assert book.last_taken == self.last_taken

    @invariant()
    def sources_cover_every_claimable_entry(self) -> None:
        book = self.book
        prefetch = seqs(list(book.prefetch))
        mem = seqs(list(book.mem))
        assert prefetch == sorted(set(prefetch))
        assert mem == sorted(set(mem))
        assert book.mem_bytes == sum(e.size for e in book.mem)
        for source in (book.prefetch, book.mem):
            for e in source:
                assert e.seq > self.last_taken
                assert (e.op, e.size) == self.journal[e.seq]
        assert all(seq < book.mem_from for seq in prefetch)
        assert all(seq >= book.mem_from for seq in mem)
        claimable = self.claimable()
        for seq in claimable:
            if seq < book.db_pos:
                assert seq in prefetch
            elif seq >= book.mem_from:
                assert seq in mem
        if book.exhausted:
            assert claimable == []

    @invariant()
    def head_is_the_oldest_entry_owed_in_memory(self) -> None:
        book = self.book
        head = book.head()
        if self.in_flight:
            assert head is self.in_flight[0]
            return
        visible = set(seqs(list(book.prefetch)))
        if book.db_pos >= book.mem_from:
            visible |= set(seqs(list(book.mem)))
        owed = visible & set(self.claimable())
        if owed:
            assert head is not None
            assert head.seq == min(owed)
        else:
            assert head is None

    @invariant()
    def oldest_pending_at_is_never_later_than_the_oldest_owed_entry(self) -> None:
        # An entry's enqueued_at is its seq here.
        oldest = self.book.oldest_pending_at()
        owed = seqs(self.in_flight) + self.claimable()
        if not owed:
            assert oldest is None
        elif oldest is not None:  # None only while the time is unreadable
            assert oldest <= min(owed)
            head = self.book.head()
            if head is not None:
                assert oldest == head.enqueued_at


TestBookMatchesModel = BookMatchesModel.TestCase
