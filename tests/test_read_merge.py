"""``read_session``'s merge of an archive with the journal (``_read_merge``),
tested directly; tests/test_archivist.py and the contract suite test it in use."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

from hypothesis import given, strategies as st

from journal_archivist._batching import Entry
from journal_archivist._read_merge import merge_read
from journal_archivist._records import Op, encode_append

from .helpers import record

if TYPE_CHECKING:
    from journal_archivist import MessageRecord

SESSION = uuid4()


def append(seq: int, *records: MessageRecord, damage: str | None = None) -> Entry:
    payload = encode_append(SESSION, records, max_record_bytes=1 << 20)
    return Entry(
        seq, SESSION.bytes, Op.APPEND, payload, len(payload), 0.0, None, damage
    )


def erase(seq: int) -> Entry:
    return Entry(seq, SESSION.bytes, Op.ERASE, b"", 0, 0.0)


def texts(records: list[MessageRecord]) -> list[str]:
    return [r.content_md for r in records]


a, b, c, d = (record(SESSION, text) for text in "abcd")


def test_pending_records_follow_the_archived_ones() -> None:
    assert texts(merge_read([a, b], [append(5, c), append(6, d)])) == list("abcd")


def test_a_record_the_archive_has_is_not_repeated() -> None:
    # Delivered between the journal read and the archive read: in both.
    assert texts(merge_read([a, b], [append(5, b, c)])) == list("abc")


def test_a_pending_erasure_drops_the_archive_and_what_came_before_it() -> None:
    merged = merge_read([a, b], [append(5, c), erase(6), append(7, d)])
    assert texts(merged) == ["d"]


def test_a_damaged_entry_is_left_out() -> None:
    assert texts(merge_read([a], [append(5, b, damage="crc"), append(6, c)])) == [
        "a",
        "c",
    ]


def test_nothing_pending_is_the_archive_as_it_is() -> None:
    assert merge_read([a, b], []) == [a, b]


@given(
    archived=st.lists(st.sampled_from([a, b, c, d]), unique=True),
    pending=st.lists(st.sampled_from([a, b, c, d, None]), max_size=8),
)
def test_the_merge_is_the_archive_then_the_new_pending_records(
    archived: list[MessageRecord], pending: list[MessageRecord | None]
) -> None:
    # None stands for an erasure.
    entries = [
        erase(seq) if rec is None else append(seq, rec)
        for seq, rec in enumerate(pending, start=1)
    ]
    merged = merge_read(archived, entries)
    last_erase = max((i for i, rec in enumerate(pending) if rec is None), default=-1)
    base = archived if last_erase < 0 else []
    after = [rec for rec in pending[last_erase + 1 :] if rec is not None]
    ids = {r.message_id for r in base}
    assert merged == base + [r for r in after if r.message_id not in ids]
