"""Marking entries done (``Transaction.settle``): what it leaves, and what it writes.

A row settled by its last backend is deleted without being rewritten first:
rewriting it would cost its whole size again in the WAL (a ``targets`` of 0 or 1
is stored in fewer bytes, and SQLite rewrites a row that changes size).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import anyio
from hypothesis import given, strategies as st

from journal_archivist import Durability
from journal_archivist._journal import Journal
from journal_archivist._journal_types import EntryRow, SettledRange, overlaid

SEQS = 12
MASKS = (1, 2, 4)

ranges_strategy = st.lists(
    st.builds(
        lambda mask, a, b: SettledRange(mask, min(a, b), max(a, b)),
        st.sampled_from(MASKS),
        st.integers(0, SEQS),
        st.integers(0, SEQS),
    ),
    max_size=5,
)


def union_at(ranges: list[SettledRange], seq: int) -> int:
    mask = 0
    for r in ranges:
        if r.after < seq <= r.upto:
            mask |= r.mask
    return mask


@given(ranges=ranges_strategy)
def test_overlaid_pieces_carry_the_union_of_the_masks_over_each_seq(
    ranges: list[SettledRange],
) -> None:
    pieces = overlaid(ranges)
    for before, after in itertools.pairwise(pieces):
        assert before.upto <= after.after
    assert all(p.after < p.upto and p.mask for p in pieces)
    for seq in range(SEQS + 2):
        assert union_at(pieces, seq) == union_at(ranges, seq)


#: A damaged ``targets`` (a flipped type byte makes it text): settled, the row
#: goes all the same.
DAMAGED = "x"


def row(seq: int, targets: int | str, size: int) -> EntryRow:
    payload = bytes([seq]) * size
    return EntryRow(seq, b"s" * 16, 0, payload, size, 0, 0.0, targets, 7)  # type: ignore[arg-type]


def value_of(targets: int | str) -> int:
    return 0 if isinstance(targets, str) else targets


async def settle_and_count(
    directory: str, targets: list[int | str], ranges: list[SettledRange], size: int
) -> tuple[dict[int, int | str], int]:
    """Journal one row per ``targets`` (seq 1, 2, ...), settle ``ranges`` in one
    shared transaction; the rows left (seq: targets) and the rows it changed."""
    journal = await Journal.open(Path(directory, "journal.db"), Durability.FULL)
    try:
        async with journal.transaction(durable=True) as tx:
            await tx.insert([row(i + 1, t, size) for i, t in enumerate(targets)])
        conn = journal._lazy  # the connection settling transactions use
        before = conn.total_changes
        async with journal.transaction(durable=False) as tx:
            await tx.settle(ranges, shared=True)
        changed = conn.total_changes - before
        left = await conn.execute_fetchall("SELECT seq, targets FROM entries")
        return {int(seq): t for seq, t in left}, changed
    finally:
        await journal.close()


@given(
    targets=st.lists(st.one_of(st.just(DAMAGED), st.integers(0, 7)), max_size=SEQS),
    ranges=ranges_strategy,
)
def test_settling_deletes_what_no_one_owes_and_never_rewrites_it_first(
    targets: list[int | str], ranges: list[SettledRange]
) -> None:
    expected: dict[int, int | str] = {}
    deleted = 0
    for seq, value in enumerate(targets, start=1):
        settling = union_at(ranges, seq)
        owed = value_of(value) & ~settling
        if not settling:
            expected[seq] = value  # no range covers it: untouched
        elif owed:
            expected[seq] = owed
        else:
            deleted += 1
    # What the UPDATEs change: a kept row once per range that clears a bit of it.
    updated = 0
    current = {seq: value_of(targets[seq - 1]) for seq in expected}
    for r in ranges:
        for seq, value in current.items():
            if r.after < seq <= r.upto and value & r.mask:
                current[seq] = value & ~r.mask
                updated += 1

    with tempfile.TemporaryDirectory() as directory:
        left, changed = anyio.run(settle_and_count, directory, targets, ranges, 100)
    assert left == expected
    assert changed == deleted + updated


async def test_rows_settled_by_both_backends_at_once_are_only_deleted(
    tmp_path: Path,
) -> None:
    # Half a MiB each, on overflow pages: a rewrite would cost all of it again.
    both = [SettledRange(1, 0, 8), SettledRange(2, 0, 8)]
    left, changed = await settle_and_count(str(tmp_path), [3] * 8, both, 500_000)
    assert left == {}
    assert changed == 8
