"""The torture oracle on hand-made op logs and archives.

Each kind of violation must be found, and each case the guarantees allow must be
accepted: an oracle that passes everything proves nothing, and one that fails an
allowed case makes every torture run a false alarm.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest

from journal_archivist.backends import SessionGroup, SqliteArchive
from tools.torture import oracle
from tools.torture.workload import make_record

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from journal_archivist import MessageRecord

SESSION = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)


class Script:
    """Writes an op log the way the workload does, and remembers the records."""

    def __init__(self, cycle: int = 1) -> None:
        self.cycle = cycle
        self.op = 0
        self.lines: list[str] = []

    def append(
        self, session: uuid.UUID = SESSION, count: int = 1, answer: str | None = "A"
    ) -> list[MessageRecord]:
        """``answer``: "A", an error class name for an F line, None: in flight."""
        self.op += 1
        records = [make_record(session, self.cycle, self.op, i) for i in range(count)]
        ids = ",".join(str(r.message_id) for r in records)
        self.lines.append(f"B {self.cycle} {self.op} {session} a {ids}")
        self._answer(answer)
        return records

    def erase(self, session: uuid.UUID = SESSION, answer: str | None = "A") -> None:
        self.op += 1
        self.lines.append(f"B {self.cycle} {self.op} {session} e -")
        self._answer(answer)

    def _answer(self, answer: str | None) -> None:
        if answer == "A":
            self.lines.append(f"A {self.cycle} {self.op}")
        elif answer is not None:
            self.lines.append(f"F {self.cycle} {self.op} {answer}")

    def judge(
        self, held: dict[uuid.UUID, Sequence[MessageRecord]]
    ) -> oracle.ArchiveVerdict:
        log = oracle.parse_op_log(self.lines)
        return oracle.judge_archive(log, "test", held.items())


def violations(verdict: oracle.ArchiveVerdict) -> dict[str, int]:
    return {k: getattr(verdict, k) for k in verdict.KINDS if getattr(verdict, k)}


# -- each violation is found ----------------------------------------------------------


def test_an_acknowledged_record_missing_is_lost() -> None:
    script = Script()
    first = script.append(count=2)
    second = script.append()
    verdict = script.judge({SESSION: [first[0], *second]})
    assert violations(verdict) == {"lost": 1}
    assert verdict.acknowledged == 3
    assert verdict.delivered == 2


def test_an_acknowledged_session_that_is_not_there_at_all_is_lost() -> None:
    script = Script()
    script.append(count=3)
    assert violations(script.judge({})) == {"lost": 3}


def test_an_uncertain_append_delivered_in_part_is_lost_in_part() -> None:
    script = Script()
    records = script.append(count=3, answer=None)
    assert violations(script.judge({SESSION: records[:2]})) == {"lost": 1}


def test_a_second_copy_is_a_duplicate() -> None:
    script = Script()
    records = script.append(count=2)
    verdict = script.judge({SESSION: [records[0], records[1], records[0]]})
    assert violations(verdict) == {"duplicates": 1}


def test_appends_read_back_out_of_append_order() -> None:
    script = Script()
    first = script.append()
    second = script.append()
    verdict = script.judge({SESSION: [*second, *first]})
    assert violations(verdict) == {"out_of_order": 1}


def test_records_of_one_append_read_back_out_of_order() -> None:
    script = Script()
    records = script.append(count=3)
    verdict = script.judge({SESSION: [records[0], records[2], records[1]]})
    assert violations(verdict) == {"out_of_order": 1}


@pytest.mark.parametrize(
    "change",
    [
        {"content_md": "something else"},
        {"role": "system"},
        {"metadata": {"cycle": 1, "op": 1, "index": 7}},
    ],
)
def test_a_changed_field_is_corruption(change: dict[str, object]) -> None:
    script = Script()
    (record,) = script.append()
    verdict = script.judge({SESSION: [msgspec.structs.replace(record, **change)]})
    assert violations(verdict) == {"corrupted": 1}


def test_one_flipped_character_deep_in_a_large_record_is_corruption() -> None:
    script = Script()
    (record,) = script.append()
    content = record.content_md
    flipped = content[:-1] + ("0" if content[-1] != "0" else "1")
    verdict = script.judge(
        {SESSION: [msgspec.structs.replace(record, content_md=flipped)]}
    )
    assert violations(verdict) == {"corrupted": 1}


def test_a_record_in_another_sessions_place_is_corrupt_and_missing() -> None:
    script = Script()
    (record,) = script.append(SESSION)
    verdict = script.judge({OTHER: [record]})
    assert violations(verdict) == {"corrupted": 1, "lost": 1}


def test_a_record_never_begun_is_unexpected() -> None:
    script = Script()
    script.append(answer="QueueFull")
    stranger = make_record(SESSION, 1, 99, 0)
    assert violations(script.judge({SESSION: [stranger]})) == {"unexpected": 1}


@pytest.mark.parametrize(
    "error", ["QueueFull", "JournalFull", "ValidationError", "ArchivistFailed"]
)
def test_a_record_of_a_refused_append_is_unexpected(error: str) -> None:
    script = Script()
    records = script.append(answer=error)
    assert violations(script.judge({SESSION: records})) == {"unexpected": 1}


def test_a_record_from_before_an_acknowledged_erasure_breaks_it() -> None:
    script = Script()
    before = script.append()
    script.erase()
    after = script.append()
    verdict = script.judge({SESSION: [*before, *after]})
    assert violations(verdict) == {"erasures_broken": 1}


def test_a_record_from_before_an_acknowledged_erasure_breaks_it_even_alone() -> None:
    script = Script()
    before = script.append()
    script.erase()
    assert violations(script.judge({SESSION: before})) == {"erasures_broken": 1}


def test_an_acknowledged_append_after_an_erasure_must_be_there() -> None:
    script = Script()
    script.append()
    script.erase()
    script.append()
    assert violations(script.judge({})) == {"lost": 1}


# -- what the guarantees allow is accepted --------------------------------------------


@pytest.mark.parametrize("answer", [None, "JournalWriteFailed", "SomethingNew"])
@pytest.mark.parametrize("delivered", [True, False])
def test_an_uncertain_append_may_or_may_not_be_there(
    answer: str | None, delivered: bool
) -> None:
    script = Script()
    acknowledged = script.append()
    uncertain = script.append(count=2, answer=answer)
    held = [*acknowledged, *(uncertain if delivered else [])]
    verdict = script.judge({SESSION: held})
    assert violations(verdict) == {}
    assert verdict.uncertain_present == (2 if delivered else 0)


def test_an_erasure_in_flight_may_have_happened() -> None:
    script = Script()
    script.append()
    script.erase(answer=None)
    assert violations(script.judge({})) == {}


def test_an_erasure_in_flight_may_not_have_happened() -> None:
    script = Script()
    records = script.append()
    script.erase(answer=None)
    assert violations(script.judge({SESSION: records})) == {}


def test_a_failed_erasure_that_took_effect_excuses_what_it_erased() -> None:
    script = Script()
    script.append()
    script.erase(answer="JournalWriteFailed")  # the commit may still have landed
    between = script.append()
    script.erase(answer="JournalWriteFailed")
    after = script.append()
    # The second erasure took effect: what came between is gone, rightly.
    assert violations(script.judge({SESSION: after})) == {}
    # Only the first did: what came between must be there.
    assert violations(script.judge({SESSION: [*between, *after]})) == {}


def test_a_refused_erasure_did_not_happen() -> None:
    script = Script()
    records = script.append()
    script.erase(answer="ArchivistClosed")
    assert violations(script.judge({SESSION: records})) == {}
    assert violations(script.judge({})) == {"lost": 1}


def test_only_what_came_after_the_last_acknowledged_erasure_is_kept() -> None:
    script = Script()
    script.append(count=2)
    script.erase()
    script.append()
    script.erase()
    kept = script.append(count=2)
    other = script.append(OTHER)
    verdict = script.judge({SESSION: kept, OTHER: other})
    assert violations(verdict) == {}
    assert verdict.delivered == 3


def test_sessions_are_judged_apart() -> None:
    script = Script()
    first = script.append(SESSION)
    second = script.append(OTHER)
    third = script.append(SESSION)
    # Interleaved sessions: order only matters within each.
    verdict = script.judge({OTHER: second, SESSION: [*first, *third]})
    assert violations(verdict) == {}


def test_cycles_appended_together_are_one_log() -> None:
    first, second = Script(cycle=1), Script(cycle=2)
    a = first.append(SESSION, answer=None)
    b = second.append(OTHER)
    log = oracle.parse_op_log([*first.lines, "O 2 opened", *second.lines])
    verdict = oracle.judge_archive(log, "test", {SESSION: a, OTHER: b}.items())
    assert violations(verdict) == {}
    assert log.cycles == {1, 2}


# -- the op log itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        ["B 1 1 {s} e -", "B 1 1 {s} e -"],
        ["A 1 1"],
        ["B 1 1 {s} e -", "A 1 1", "F 1 1 QueueFull"],
        ["B 1 1 {s} x -"],
        ["B 1 one {s} e -"],
    ],
)
def test_a_malformed_op_log_is_refused(lines: list[str]) -> None:
    with pytest.raises(oracle.OpLogError):
        oracle.parse_op_log([line.format(s=SESSION) for line in lines])


def test_other_lines_are_ignored_and_failures_kept() -> None:
    log = oracle.parse_op_log(
        ["O 1 opened", "REFUSED JournalLocked: x", "", "X 1 the archivist has failed"]
    )
    assert log.ops == {}
    assert log.failures == ["the archivist has failed"]


# -- reading the archives from disk ---------------------------------------------------


def write_jsonl(
    path: Path, records: Sequence[MessageRecord], tail: bytes = b""
) -> None:
    lines = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
    path.write_bytes(lines + tail)


def test_jsonl_files_are_read_raw_with_duplicates_and_torn_tails(
    tmp_path: Path,
) -> None:
    script = Script()
    records = script.append(count=2)
    other = script.append(OTHER)
    write_jsonl(tmp_path / f"{SESSION}.jsonl", [*records, records[0]], b'{"vers')
    write_jsonl(tmp_path / f"{OTHER}.jsonl", other, b"not json\n")
    (tmp_path / ".jsonl-archive-health-probe").write_bytes(b"")
    contents = oracle.read_jsonl_archive(tmp_path)
    assert contents.torn_tails == 2
    assert contents.corrupted_lines == []
    log = oracle.parse_op_log(script.lines)
    verdict = oracle.judge_archive(log, "jsonl", contents.sessions.items())
    assert violations(verdict) == {"duplicates": 1}


def test_a_jsonl_line_that_does_not_decode_before_the_end_is_corruption(
    tmp_path: Path,
) -> None:
    script = Script()
    records = script.append(count=2)
    path = tmp_path / f"{SESSION}.jsonl"
    first, second = (msgspec.json.encode(r) + b"\n" for r in records)
    path.write_bytes(first + b"\x00\x00garbage\n" + second)
    contents = oracle.read_jsonl_archive(tmp_path)
    assert len(contents.corrupted_lines) == 1
    verdict = oracle.judge_archive(
        oracle.parse_op_log(script.lines),
        "jsonl",
        contents.sessions.items(),
        corrupted_lines=contents.corrupted_lines,
    )
    assert violations(verdict) == {"corrupted": 1}


async def test_the_sqlite_archive_is_read_through_its_public_api(
    tmp_path: Path,
) -> None:
    script = Script()
    records = script.append(count=3)
    lost = script.append(OTHER)
    path = tmp_path / "archive.db"
    archive = SqliteArchive(path)
    await archive.write_batch([SessionGroup(SESSION, tuple(records))])
    await archive.aclose()
    held = await oracle.read_sqlite_archive(path, [SESSION, OTHER])
    assert held == {SESSION: records, OTHER: []}
    log = oracle.parse_op_log(script.lines)
    verdict = oracle.judge_archive(log, "sqlite", held.items())
    assert violations(verdict) == {"lost": len(lost)}
