"""The fan-in oracle's rules, on hand-made op logs (``tools.torture.fanin_oracle``)."""

from __future__ import annotations

from uuid import UUID

from tools.torture.fanin_oracle import SLACK, judge, parse_log

S = UUID(int=1)
R1, R2, R3 = UUID(int=11), UUID(int=12), UUID(int=13)


def log_of(*lines: str) -> list[str]:
    """Op-log lines as a worker writes them."""
    return [line + "\n" for line in lines]


def test_acknowledged_records_must_be_there_and_nothing_else() -> None:
    log = parse_log(log_of(f"A r1 1 {S} 1.0 {R1} {R2}", "K r1 1 1.1"), {"r1": 9.0})
    assert log.acknowledged() == 2
    assert judge("s", log, {S: [R1, R2]}).ok
    lost = judge("s", log, {S: []})
    assert lost.lost == ["r1/1"]
    torn = judge("s", log, {S: [R1]})
    assert torn.torn == ["r1/1"]
    unknown = judge("s", log, {S: [R1, R2, R3]})
    assert unknown.unexpected == [f"{R3} (session {S})"]
    twice = judge("s", log, {S: [R1, R2, R1]})
    assert twice.duplicates == [str(R1)]


def test_an_unanswered_or_refused_append_may_or_may_not_be_there() -> None:
    lines = log_of(
        f"A r1 1 {S} 1.0 {R1}",  # killed mid-call
        f"A r1 2 {S} 1.0 {R2}",
        "F r1 2 1.2 QueueFull",  # refused: nothing journaled
    )
    log = parse_log(lines, {"r1": 2.0})
    assert judge("s", log, {S: [R1]}).ok
    assert judge("s", log, {S: []}).ok
    assert judge("s", log, {S: [R2]}).unexpected


def test_an_erasure_begun_after_an_append_ended_must_remove_it() -> None:
    later = 1.1 + 2 * SLACK
    lines = log_of(
        f"A r1 1 {S} 1.0 {R1}",
        "K r1 1 1.1",
        f"E r2 1 {S} {later}",
        f"K r2 1 {later + 0.1}",
        f"A r2 2 {S} {later + 0.2 + 2 * SLACK} {R2}",
        f"K r2 2 {later + 0.3 + 2 * SLACK}",
    )
    log = parse_log(lines, {"r1": 9.0, "r2": 9.0})
    verdict = judge("s", log, {S: [R2]})
    assert verdict.ok
    assert (verdict.had_to_go, verdict.had_to_stay) == (1, 1)
    assert judge("s", log, {S: [R1, R2]}).resurrected == ["r1/1"]
    assert judge("s", log, {S: []}).lost == ["r2/2"]


def test_an_erasure_overlapping_an_append_may_go_either_way() -> None:
    lines = log_of(
        f"A r1 1 {S} 1.0 {R1}",
        f"E r2 1 {S} 1.01",
        "K r2 1 1.02",
        "K r1 1 1.03",
    )
    log = parse_log(lines, {"r1": 9.0, "r2": 9.0})
    assert judge("s", log, {S: [R1]}).ok
    assert judge("s", log, {S: []}).ok


def test_an_unanswered_erasure_excuses_a_missing_record_until_its_worker_died() -> None:
    lines = log_of(
        f"E r1 1 {S} 1.0",  # never answered: r1 died at 5.0
        f"A r2 1 {S} 3.0 {R1}",
        "K r2 1 3.1",
        f"A r2 2 {S} 6.0 {R2}",
        "K r2 2 6.1",
    )
    log = parse_log(lines, {"r1": 5.0, "r2": 9.0})
    assert judge("s", log, {S: [R2]}).ok  # R1 may have been erased
    assert judge("s", log, {S: [R1, R2]}).ok  # or the erasure never journaled
    assert judge("s", log, {S: [R1]}).lost == ["r2/2"]  # R2 came after its death


def test_a_torn_last_line_is_skipped() -> None:
    lines = [f"A r1 1 {S} 1.0 {R1}\n", "K r1 1 1."]
    log = parse_log(lines, {"r1": 2.0})
    assert judge("s", log, {S: []}).ok  # unanswered, so it may be missing
