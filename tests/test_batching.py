"""Tests for journal_archivist._batching: cutting, coalescing and bisecting batches."""

from __future__ import annotations

import collections
import itertools
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from hypothesis import given, strategies as st

from journal_archivist._batching import Entry, bisect, coalesce, cut
from journal_archivist._records import MessageRecord, Op
from journal_archivist.backends._base import SessionGroup
from tests.helpers import record

A = UUID(int=0xA)
B = UUID(int=0xB)
C = UUID(int=0xC)
TS = datetime(2024, 5, 1, tzinfo=UTC)
_seq = itertools.count(1)


def entry(
    session: UUID = A,
    count: int = 1,
    *,
    size: int = 10,
    damage: str | None = None,
    decoded: bool = True,
) -> Entry:
    """An entry of ``session`` holding ``count`` records with unique ids."""
    seq = next(_seq)
    # Explicit ids and timestamps: uuid7() draws from ``random``, which Hypothesis
    # forbids inside strategies.
    records = [
        MessageRecord(
            session=session,
            role="user",
            message_id=UUID(int=seq << 16 | i),
            ts=TS,
            content_md=f"{seq}.{i}",
        )
        for i in range(count)
    ]
    return Entry(
        seq=seq,
        session=session.bytes,
        op=Op.APPEND,
        payload=b"",
        size=size,
        enqueued_at=float(seq),  # its journal time: distinct, in seq order
        records=records if decoded else None,
        damage=damage,
    )


def sized(*sizes: int) -> list[Entry]:
    """Entries of the given payload sizes."""
    return [entry(size=size) for size in sizes]


# --- cut ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "max_rows", "max_bytes", "expected"),
    [
        # Nothing to cut.
        ((), 10, 100, 0),
        # Everything fits.
        ((10, 10, 10), 10, 100, 3),
        # The row limit cuts first.
        ((1, 1, 1, 1), 2, 100, 2),
        # The byte limit cuts first; reaching it exactly still fits.
        ((3, 3, 3), 10, 6, 2),
        # One byte short of the second entry.
        ((3, 3, 3), 10, 5, 1),
        # A single entry larger than max_bytes is a batch of its own.
        ((50,), 10, 5, 1),
        # An oversized entry at the head does not take the next one with it.
        ((50, 1), 10, 5, 1),
        # An oversized entry after others ends the batch before it.
        ((1, 1, 50, 1), 10, 5, 2),
        # Empty payloads cost no bytes.
        ((0, 0, 0), 10, 1, 3),
        # One row at a time.
        ((1, 1), 1, 100, 1),
    ],
)
def test_cut_takes_the_longest_prefix_within_the_limits(
    sizes: tuple[int, ...], max_rows: int, max_bytes: int, expected: int
) -> None:
    assert cut(sized(*sizes), max_rows=max_rows, max_bytes=max_bytes) == expected


def test_cut_accepts_a_deque() -> None:
    entries = collections.deque(sized(2, 2, 2))
    assert cut(entries, max_rows=5, max_bytes=4) == 2


@given(
    st.lists(st.integers(min_value=0, max_value=100), max_size=20),
    st.integers(min_value=1, max_value=25),
    st.integers(min_value=1, max_value=300),
)
def test_cut_never_returns_zero_and_respects_both_limits(
    sizes: list[int], max_rows: int, max_bytes: int
) -> None:
    count = cut(sized(*sizes), max_rows=max_rows, max_bytes=max_bytes)
    if not sizes:
        assert count == 0
        return
    assert 1 <= count <= min(len(sizes), max_rows)
    # Within max_bytes, unless the batch is a single oversized entry.
    assert sum(sizes[:count]) <= max_bytes or count == 1
    # And as long as it may be: one more entry would break a limit.
    if count < min(len(sizes), max_rows):
        assert sum(sizes[: count + 1]) > max_bytes


# --- coalesce -----------------------------------------------------------------------


def _records_of(entries: list[Entry]) -> tuple[MessageRecord, ...]:
    return tuple(r for e in entries for r in e.records or ())


def _times_of(entries: list[Entry]) -> tuple[float, ...]:
    return tuple(e.enqueued_at for e in entries for _ in e.records or ())


def _group(session: UUID, entries: list[Entry]) -> SessionGroup:
    """The group ``coalesce`` makes of ``entries`` of ``session``: their records,
    each with its entry's journal time."""
    return SessionGroup(session, _records_of(entries), appended_at=_times_of(entries))


def test_coalesce_groups_by_session_in_order_of_first_appearance() -> None:
    a1, b1, a2, c1, b2 = entry(A, 2), entry(B), entry(A, 3), entry(C), entry(B, 2)
    groups = coalesce([a1, b1, a2, c1, b2])
    assert groups == [
        _group(A, [a1, a2]),
        _group(B, [b1, b2]),
        _group(C, [c1]),
    ]
    assert all(isinstance(g.session, UUID) for g in groups)


def test_coalesce_leaves_out_damaged_entries() -> None:
    a1, a2, b1 = entry(A), entry(A, damage="checksum mismatch"), entry(B)
    groups = coalesce([entry(C, damage="checksum mismatch"), a1, a2, b1])
    # C's only entry is damaged, so C has no group at all.
    assert groups == [
        _group(A, [a1]),
        _group(B, [b1]),
    ]


def test_coalesce_never_returns_an_empty_group() -> None:
    b1 = entry(B)
    assert coalesce([entry(A, 0), b1, entry(C, 0)]) == [_group(B, [b1])]


def test_coalesce_orders_groups_by_each_session_s_first_entry_even_if_empty() -> None:
    a_empty, b1, a1 = entry(A, 0), entry(B), entry(A)
    assert coalesce([a_empty, b1, a1]) == [
        _group(A, [a1]),
        _group(B, [b1]),
    ]


def test_coalesce_of_nothing_is_no_groups() -> None:
    assert coalesce([]) == []


def test_coalesce_does_not_change_the_entries_records() -> None:
    a1, a2 = entry(A), entry(A)
    before = list(a1.records or ())
    coalesce([a1, a2])
    assert a1.records == before


@st.composite
def batches(draw: st.DrawFn) -> list[Entry]:
    """Entries of up to three sessions, some damaged, some without records."""
    return [
        entry(
            draw(st.sampled_from([A, B, C])),
            draw(st.integers(min_value=0, max_value=3)),
            damage=draw(st.none() | st.just("checksum mismatch")),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=12)))
    ]


@given(batches())
def test_coalesce_keeps_each_session_s_records_in_append_order(
    entries: list[Entry],
) -> None:
    groups = coalesce(entries)
    good = [e for e in entries if e.damage is None]
    # One group per session with records, ordered by its first undamaged entry.
    first_seen = list(dict.fromkeys(UUID(bytes=e.session) for e in good))
    with_records = {UUID(bytes=e.session) for e in good if e.records}
    assert [g.session for g in groups] == [s for s in first_seen if s in with_records]
    for group in groups:
        own = [e for e in good if e.session == group.session.bytes]
        assert group.records == _records_of(own)
        assert group.appended_at == _times_of(own)
        assert group.records
    # Nothing but the damaged entries is lost.
    assert sum(len(g.records) for g in groups) == len(_records_of(good))


# --- bisect -------------------------------------------------------------------------


@given(st.integers(min_value=2, max_value=50))
def test_bisect_splits_into_two_non_empty_contiguous_halves(count: int) -> None:
    entries = sized(*range(count))
    left, right = bisect(entries)
    assert left
    assert right
    assert [*left, *right] == entries
    assert abs(len(left) - len(right)) <= 1


@pytest.mark.parametrize(
    "count",
    [
        # An empty batch.
        0,
        # A single entry is the poison itself; there is nothing to split.
        1,
    ],
)
def test_bisect_refuses_fewer_than_two_entries(count: int) -> None:
    with pytest.raises(ValueError, match=f"cannot bisect a batch of {count} entries"):
        bisect(sized(*range(count)))


def test_an_erasure_discards_the_sessions_earlier_records_in_the_batch() -> None:
    a, b = uuid4(), uuid4()
    a0, a1, b0 = record(a, "a0"), record(a, "a1"), record(b, "b0")
    batch = [
        Entry(1, a.bytes, Op.APPEND, b"", 1, 1.0, [a0]),
        Entry(2, b.bytes, Op.APPEND, b"", 1, 2.0, [b0]),
        Entry(3, a.bytes, Op.ERASE, b"", 0, 3.0, []),
        Entry(4, a.bytes, Op.APPEND, b"", 1, 4.0, [a1]),
        Entry(5, b.bytes, Op.ERASE, b"", 0, 5.0, []),
    ]
    # Each erasure carries its journal time, each record its own.
    assert coalesce(batch) == [
        SessionGroup(a, (a1,), erase=True, erased_at=3.0, appended_at=(4.0,)),
        SessionGroup(b, (), erase=True, erased_at=5.0),
    ]
