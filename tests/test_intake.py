"""The intake queue (``_intake``), tested directly: no event loop, no journal.

The committer tests check that rounds run at the right moments; here the queue's
own rules hold for every round: each append is decided once (admitted, refused,
or left queued in order), erasures pass a blocked head only behind no undecided
append of their session, and a round's appends are numbered and answered.
"""

from __future__ import annotations

import dataclasses
import time
from unittest import mock
from uuid import UUID

import pytest
from hypothesis import event, given, strategies as st

from journal_archivist import _intake
from journal_archivist._admission import Backlog, Plan
from journal_archivist._errors import JournalFull, JournalWriteFailed, QueueFull
from journal_archivist._intake import (
    ACKED,
    Intake,
    PendingAppend,
    acknowledge,
    number,
    refuse_failed,
)
from journal_archivist._journal_types import EntryRow
from journal_archivist._policies import OverflowPolicy
from journal_archivist._records import Op
from journal_archivist._schema import entry_crc
from tests.helpers import backlog

BLOCK = OverflowPolicy.BLOCK
REJECT = OverflowPolicy.REJECT
DROP_NEWEST = OverflowPolicy.DROP_NEWEST
DROP_OLDEST = OverflowPolicy.DROP_OLDEST
APPEND = int(Op.APPEND)
ERASE = int(Op.ERASE)
S1, S2, S3 = UUID(int=1), UUID(int=2), UUID(int=3)
PATH = "/var/lib/journal.db"
NOW = 100.0


def append(session: UUID = S1, payload: bytes = b"record") -> PendingAppend:
    """An ``append_messages`` call of ``session``."""
    return PendingAppend(session, payload, [])


def erasure(session: UUID = S1) -> PendingAppend:
    """A ``delete_session`` call of ``session``."""
    return PendingAppend(session, b"", [], Op.ERASE)


def full(
    name: str = "a",
    overflow: OverflowPolicy = BLOCK,
    *,
    mask: int = 1,
    block_timeout: float | None = None,
) -> Backlog:
    """A backlog with no room for another entry."""
    return backlog(
        name,
        overflow,
        mask=mask,
        capacity=1,
        pending=1,
        pending_bytes=1,
        block_timeout=block_timeout,
    )


def room(nbytes: int) -> None:
    """Free space for any group."""
    return None


def no_room(nbytes: int) -> JournalFull:
    """Free space below the reserve."""
    return JournalFull(PATH, 10, 100)


def intake_of(*appends: PendingAppend) -> Intake:
    """An intake with ``appends`` queued in order."""
    intake = Intake()
    for a in appends:
        intake.push(a)
    return intake


def queued(intake: Intake) -> list[PendingAppend]:
    """The queue, in order (read from the private deque: there is no public view)."""
    queue = list(intake._queue)
    assert len(queue) == len(intake)
    return queue


# --- PendingAppend --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        # The default, an append.
        (None, APPEND),
        # The enum members are stored as the plain ints the journal holds.
        (Op.APPEND, APPEND),
        (Op.ERASE, ERASE),
        # A plain int stays one.
        (ERASE, ERASE),
    ],
)
def test_a_pending_append_stores_its_op_as_a_plain_int(
    op: int | None, expected: int
) -> None:
    made = (
        PendingAppend(S2, b"abc", [])
        if op is None
        else PendingAppend(S2, b"abc", [], op)
    )
    assert type(made.op) is int
    assert made.op == expected
    assert (made.seq, made.session, made.payload, made.size) == (0, S2.bytes, b"abc", 3)
    assert made.outcome is None
    assert made.queued
    assert made.blocked_on is None


def test_finish_keeps_the_first_outcome() -> None:
    refused = append()
    first = QueueFull("a", 1)
    refused.finish(first)
    refused.finish(QueueFull("b", 2))
    refused.finish()
    assert refused.outcome is first
    assert not refused.queued

    acked = append()
    acked.finish()
    acked.finish(first)
    assert acked.outcome is ACKED


# --- the queue itself -----------------------------------------------------------------


def test_push_queues_in_order_and_counts_the_erasures() -> None:
    intake = Intake()
    assert (len(intake), intake.head, intake.erasures) == (0, None, 0)
    appends = [append(S1), erasure(S2), append(S3), erasure(S1)]
    for a in appends:
        intake.push(a)
    assert queued(intake) == appends
    assert intake.head is appends[0]
    assert intake.erasures == 2


def test_deciding_an_empty_queue_decides_nothing() -> None:
    intake = Intake()
    called: list[int] = []

    def space(nbytes: int) -> None:
        called.append(nbytes)

    decision = intake.decide(NOW, [full()], space=space)
    assert decision == _intake.Decision()
    assert called == []  # free space is not even asked about
    assert intake.deadline() is None


def test_withdraw_takes_back_a_queued_append_only_once() -> None:
    first, erasing, last = append(S1), erasure(S2), append(S3)
    intake = intake_of(first, erasing, last)
    assert intake.withdraw(erasing)
    assert not erasing.queued
    assert erasing.outcome is None  # the caller gave up; nobody answers it
    assert intake.erasures == 0
    assert queued(intake) == [first, last]
    assert not intake.withdraw(erasing)
    assert intake.withdraw(first)
    assert intake.head is last
    assert intake.erasures == 0


def test_an_append_a_round_took_cannot_be_withdrawn() -> None:
    taken, refused = append(S1), append(S2)
    intake = intake_of(taken, refused)
    decision = intake.decide(NOW, [backlog("r", REJECT, capacity=1)], space=room)
    assert decision.admitted == [(taken, 1)]
    assert decision.refused == [refused]
    assert not intake.withdraw(taken)
    assert not intake.withdraw(refused)
    assert len(intake) == 0


def test_refuse_all_refuses_every_queued_append_with_its_own_error() -> None:
    appends = [append(S1), erasure(S2), append(S3)]
    intake = intake_of(*appends)
    made: list[BaseException] = []

    def make() -> BaseException:
        made.append(RuntimeError("closed"))
        return made[-1]

    intake.refuse_all(make)
    assert [a.outcome for a in appends] == made
    assert len({id(e) for e in made}) == 3
    assert not any(a.queued for a in appends)
    assert (len(intake), intake.erasures) == (0, 0)


# --- the common case: everything fits -------------------------------------------------


def test_when_everything_fits_every_queued_append_is_admitted_for_every_backend() -> (
    None
):
    appends = [append(S1, b"a" * 10), erasure(S2), append(S3, b"c" * 5)]
    intake = intake_of(*appends)
    backlogs = [
        backlog("a", BLOCK, mask=1, capacity=5, pending=2),
        backlog("b", REJECT, mask=2, capacity=3),
        backlog("c", DROP_OLDEST, mask=8, capacity=3, capacity_bytes=15),
    ]
    asked: list[int] = []

    def space(nbytes: int) -> None:
        asked.append(nbytes)

    decision = intake.decide(NOW, backlogs, space=space)
    assert asked == [15]  # the whole group's bytes
    assert decision.admitted == [(a, 11) for a in appends]
    assert decision.refused == []
    assert not decision.more
    assert decision.plan.uniform
    assert decision.plan == Plan(admitted=[(0, 11), (1, 11), (2, 11)])
    assert not any(a.queued for a in appends)
    # Taken, not yet answered: the transaction answers them (``acknowledge``).
    assert all(a.outcome is None for a in appends)
    assert (len(intake), intake.erasures) == (0, 0)
    assert [b.pending for b in backlogs] == [5, 3, 3]


def test_max_group_bounds_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_intake, "MAX_GROUP", 2)
    appends = [append(S1, b"x" * n) for n in (1, 2, 3, 4, 5)]
    intake = intake_of(*appends)
    asked: list[int] = []

    def space(nbytes: int) -> None:
        asked.append(nbytes)

    rounds = []
    while len(intake):
        decision = intake.decide(NOW, [backlog()], space=space)
        rounds.append([a for a, _ in decision.admitted])
        assert decision.refused == []
        assert queued(intake) == appends[2 * len(rounds) :]
    assert rounds == [appends[0:2], appends[2:4], appends[4:]]
    assert asked == [3, 7, 5]


def test_a_round_cut_short_by_max_group_says_more_are_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_intake, "MAX_GROUP", 2)
    intake = intake_of(append(), append(), append())
    decision = intake.decide(NOW, [backlog()], space=room)
    assert len(decision.admitted) == 2
    assert len(intake) == 1
    assert decision.more


def test_disabled_backends_are_added_to_the_erasures_targets_only() -> None:
    first, erasing, last = append(S1), erasure(S2), append(S3)
    intake = intake_of(first, erasing, last)
    backlogs = [backlog("a", mask=1), backlog("b", mask=2)]
    decision = intake.decide(NOW, backlogs, space=room, disabled=4)
    assert decision.admitted == [(first, 3), (erasing, 7), (last, 3)]
    assert not decision.plan.uniform


# --- free space -----------------------------------------------------------------------


def test_without_free_space_the_whole_group_is_refused_each_with_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_intake, "MAX_GROUP", 3)
    appends = [append(S1), erasure(S2), append(S3), erasure(S1), append(S2)]
    intake = intake_of(*appends)
    refusal = no_room(0)
    backlogs = [full("b", BLOCK)]  # space is judged first: nothing blocks

    decision = intake.decide(NOW, backlogs, space=lambda nbytes: refusal)
    group = appends[:3]
    assert decision.refused == group
    assert decision.admitted == []
    assert decision.plan == Plan()
    assert decision.more  # two are left for the next round
    errors = [a.outcome for a in group]
    assert all(isinstance(e, JournalFull) for e in errors)
    assert len({id(e) for e in errors} | {id(refusal)}) == 4
    for e in errors:
        assert isinstance(e, JournalFull)
        assert (e.path, e.free, e.reserve) == (PATH, 10, 100)
    assert not any(a.queued for a in group)
    assert queued(intake) == appends[3:]
    assert intake.erasures == 1
    assert backlogs == [full("b", BLOCK)]  # no plan: no backlog counted

    decision = intake.decide(NOW, backlogs, space=lambda nbytes: refusal)
    assert decision.refused == appends[3:]
    assert not decision.more
    assert (len(intake), intake.erasures) == (0, 0)


def test_a_journal_full_message_names_the_reserve() -> None:
    refused = append()
    intake_of(refused).decide(NOW, [], space=no_room)
    assert isinstance(refused.outcome, JournalFull)
    with pytest.raises(JournalFull, match="below the reserve of 100 bytes"):
        raise refused.outcome


# --- REJECT ---------------------------------------------------------------------------


def test_reject_refuses_what_does_not_fit_with_queue_full_naming_the_backend() -> None:
    fits, refused, also_refused = append(S1), append(S2), erasure(S3)
    late = append(S3)
    intake = intake_of(fits, refused, also_refused, late)
    backlogs = [
        backlog("ok", mask=1),
        backlog("r", REJECT, mask=2, capacity=2, pending=1),
    ]
    decision = intake.decide(NOW, backlogs, space=room)
    # The erasure is admitted whatever the backlog, and counts in it.
    assert decision.admitted == [(fits, 3), (also_refused, 3)]
    assert decision.refused == [refused, late]
    assert not decision.more
    assert (len(intake), intake.erasures) == (0, 0)
    for a in (refused, late):
        assert isinstance(a.outcome, QueueFull)
        assert (a.outcome.backend, a.outcome.capacity) == ("r", 2)
        assert not a.queued
    assert refused.outcome is not late.outcome
    assert isinstance(refused.outcome, QueueFull)
    with pytest.raises(QueueFull, match=r"backend 'r' is full \(2 entries\)$"):
        raise refused.outcome


# --- BLOCK ----------------------------------------------------------------------------


def test_block_holds_the_head_and_everything_behind_it_in_order() -> None:
    fits, head, behind, last = append(S1), append(S2), append(S3), append(S1)
    intake = intake_of(fits, head, behind, last)
    blocking = backlog("b", BLOCK, capacity=2, pending=1)
    decision = intake.decide(NOW, [blocking], space=room)
    assert decision.admitted == [(fits, 1)]
    assert decision.refused == []
    assert not decision.more
    assert decision.plan.blocked == (1, "b")
    assert queued(intake) == [head, behind, last]
    assert all(a.queued and a.outcome is None for a in (head, behind, last))
    assert head.blocked_on is blocking
    assert head.blocked_since == NOW
    assert behind.blocked_on is None
    assert intake.deadline() is None  # no block_timeout: it waits for good


def test_a_blocked_head_times_out_after_its_block_timeout() -> None:
    head, behind = append(S1), append(S2)
    intake = intake_of(head, behind)
    decision = intake.decide(NOW, [full("b", block_timeout=5.0)], space=room)
    assert decision.refused == []
    assert intake.deadline() == NOW + 5.0

    # Still waiting just before the deadline; the wait counts from the first round.
    decision = intake.decide(NOW + 4.5, [full("b", block_timeout=5.0)], space=room)
    assert (decision.admitted, decision.refused, decision.more) == ([], [], False)
    assert head.blocked_since == NOW
    assert intake.deadline() == NOW + 5.0

    decision = intake.decide(NOW + 5.0, [full("b", block_timeout=5.0)], space=room)
    assert decision.admitted == []
    assert decision.refused == [head]
    assert decision.more  # the append behind it gets its turn
    assert not head.queued
    assert isinstance(head.outcome, QueueFull)
    assert (head.outcome.backend, head.outcome.capacity) == ("b", 1)
    assert head.outcome.waited == 5.0
    with pytest.raises(QueueFull, match=r"is full \(1 entries\) after waiting 5\.000s"):
        raise head.outcome
    assert queued(intake) == [behind]
    assert behind.blocked_on is None
    assert intake.deadline() is None


def test_a_block_timeout_of_zero_refuses_in_the_first_round() -> None:
    head, behind = append(S1), append(S2)
    intake = intake_of(head, behind)
    decision = intake.decide(NOW, [full("b", block_timeout=0.0)], space=room)
    assert decision.refused == [head]
    assert decision.more
    assert queued(intake) == [behind]


def test_expiry_is_judged_after_planning_so_an_append_with_room_is_admitted() -> None:
    head, behind = append(S1), append(S2)
    intake = intake_of(head, behind)
    intake.decide(NOW, [full("b", block_timeout=1.0)], space=room)
    # Long past the deadline, but the backlog has room now.
    roomy = backlog("b", block_timeout=1.0)
    decision = intake.decide(NOW + 60.0, [roomy], space=room)
    assert decision.admitted == [(head, 1), (behind, 1)]
    assert decision.refused == []
    assert head.outcome is None
    assert len(intake) == 0


def test_blocking_on_another_backend_starts_the_wait_again() -> None:
    head = append(S1)
    intake = intake_of(head)
    intake.decide(
        NOW,
        [full("a", mask=1, block_timeout=5.0), backlog("b", mask=2)],
        space=room,
    )
    assert head.blocked_on is not None
    assert (head.blocked_on.name, head.blocked_since) == ("a", NOW)
    decision = intake.decide(
        NOW + 4.0,
        [backlog("a", mask=1), full("b", mask=2, block_timeout=2.0)],
        space=room,
    )
    assert decision.refused == []
    assert head.blocked_on is not None
    assert (head.blocked_on.name, head.blocked_since) == ("b", NOW + 4.0)
    assert intake.deadline() == NOW + 6.0


# --- erasures -------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", list(OverflowPolicy))
def test_an_erasure_is_admitted_whatever_the_backlog(overflow: OverflowPolicy) -> None:
    erasing = erasure()
    intake = intake_of(erasing)
    decision = intake.decide(
        NOW, [full("f", overflow, mask=1), backlog("ok", mask=2)], space=room
    )
    assert decision.admitted == [(erasing, 3)]
    assert decision.refused == []
    assert (len(intake), intake.erasures) == (0, 0)


@pytest.mark.parametrize(
    ("sessions", "erasing", "passing"),
    [
        # Another session's erasure passes the blocked append.
        ([S1, S2], {1}, [1]),
        # Its own session's blocked append holds it back.
        ([S1, S1], {1}, []),
        # An undecided append of its session is ahead of it: held back.
        ([S1, S2, S2], {2}, []),
        # Appends of other sessions ahead of it do not hold it back.
        ([S1, S3, S2], {2}, [2]),
        # Two erasures of one session pass in order.
        ([S1, S2, S2], {1, 2}, [1, 2]),
        # One passes; the one behind an append of its session does not.
        ([S1, S2, S3, S3], {1, 3}, [1]),
    ],
)
def test_an_erasure_passes_a_blocked_append_unless_its_session_is_ahead(
    sessions: list[UUID], erasing: set[int], passing: list[int]
) -> None:
    # The first is the blocked append.
    appends = [
        erasure(s) if i in erasing else append(s) for i, s in enumerate(sessions)
    ]
    intake = intake_of(*appends)
    decision = intake.decide(NOW, [full("b", mask=1)], space=room, disabled=4)
    # Passing erasures target the disabled backends too.
    assert decision.admitted == [(appends[i], 5) for i in passing]
    assert decision.refused == []
    assert not decision.plan.uniform
    assert queued(intake) == [a for i, a in enumerate(appends) if i not in passing]
    assert all(not appends[i].queued for i in passing)
    assert intake.erasures == len(erasing) - len(passing)
    assert appends[0].blocked_on is not None


@pytest.mark.parametrize(
    ("sessions", "erasing", "passing"),
    [
        # An erasure beyond the group passes the blocked head.
        ([S1, S2, S3], {2}, [2]),
        # Its session's append inside the group holds it back.
        ([S1, S3, S3], {2}, []),
        # Its session's append beyond the group, ahead of it, holds it back.
        ([S1, S2, S3, S3], {3}, []),
        # Erasures inside and beyond the group pass together, in order.
        ([S1, S2, S3, S3], {1, 2, 3}, [1, 2, 3]),
        # The one in the group passes; beyond, one waits behind its session.
        ([S1, S2, S3, S3, S3], {1, 4}, [1]),
    ],
)
def test_erasures_beyond_the_group_pass_a_blocked_head_too(
    monkeypatch: pytest.MonkeyPatch,
    sessions: list[UUID],
    erasing: set[int],
    passing: list[int],
) -> None:
    monkeypatch.setattr(_intake, "MAX_GROUP", 2)
    appends = [
        erasure(s) if i in erasing else append(s) for i, s in enumerate(sessions)
    ]
    intake = intake_of(*appends)
    decision = intake.decide(NOW, [full("b")], space=room)
    assert [a for a, _ in decision.admitted] == [appends[i] for i in passing]
    assert queued(intake) == [a for i, a in enumerate(appends) if i not in passing]
    assert intake.erasures == len(erasing) - len(passing)


def test_an_erasure_admitted_before_the_blocked_append_is_counted_once() -> None:
    erasing, fits, head, passing = erasure(S1), append(S2), append(S3), erasure(S2)
    intake = intake_of(erasing, fits, head, passing)
    # Room for two entries: the erasure and the first append take it.
    decision = intake.decide(NOW, [backlog("b", capacity=2)], space=room)
    assert decision.admitted == [(erasing, 1), (fits, 1), (passing, 1)]
    assert decision.plan.blocked == (2, "b")
    assert queued(intake) == [head]
    assert intake.erasures == 0


def test_erasure_count_follows_withdrawals_and_rounds() -> None:
    head, first, second = append(S1), erasure(S2), erasure(S1)
    intake = intake_of(head, first, second)
    assert intake.erasures == 2
    intake.decide(NOW, [full("b")], space=room)  # first passes; second waits
    assert intake.erasures == 1
    assert intake.withdraw(head)
    assert intake.erasures == 1
    decision = intake.decide(NOW, [full("b")], space=room)
    assert decision.admitted == [(second, 1)]
    assert (len(intake), intake.erasures) == (0, 0)


# --- number, acknowledge, refuse_failed -----------------------------------------------


def test_number_gives_consecutive_seqs_to_the_appends_someone_is_owed() -> None:
    first, dropped, erasing, last = (
        append(S1, b"one"),
        append(S2, b"dropped"),
        erasure(S3),
        append(S1, b"three"),
    )
    admitted = [(first, 3), (dropped, 0), (erasing, 7), (last, 1)]
    numbered = number(admitted, last_seq=41, last_stamp=0.0)
    assert [a.seq for a, _ in admitted] == [42, 0, 43, 44]
    expected = [
        EntryRow(
            seq,
            a.session,
            a.op,
            a.payload,
            a.size,
            entry_crc(seq, a.session, a.op, targets, a.payload),
            a.enqueued_at,
            targets,
            targets,
        )
        for seq, (a, targets) in zip(
            [42, 43, 44], [(first, 3), (erasing, 7), (last, 1)], strict=True
        )
    ]
    assert numbered.rows == expected
    assert all(row.origin == row.targets for row in numbered.rows)
    assert numbered.entries == [(first, 3), (erasing, 7), (last, 1)]
    assert numbered.nbytes == len(b"one") + len(b"three")
    assert numbered.tail == 44
    assert numbered.erased == [S3.bytes]
    # Journal times in seq order; the dropped append got none.
    assert first.enqueued_at < erasing.enqueued_at < last.enqueued_at
    assert (dropped.enqueued_at, numbered.stamp) == (0.0, last.enqueued_at)


def test_journal_times_increase_strictly_even_if_the_clock_steps_back() -> None:
    future = time.time() + 3600.0  # the last time handed out, an hour ahead
    appends = [append(S1, b"a"), append(S2, b"b"), append(S1, b"c")]
    numbered = number([(a, 1) for a in appends], last_seq=0, last_stamp=future)
    times = [a.enqueued_at for a in appends]
    assert future < times[0] < times[1] < times[2] == numbered.stamp
    assert times[2] - future < 1e-6  # the next representable floats, not a jump


def test_a_replayed_dead_letter_keeps_its_first_journal_time() -> None:
    replayed = append(S1, b"again")
    replayed.enqueued_at = 1000.0
    fresh = append(S1, b"new")
    number([(replayed, 1), (fresh, 1)], last_seq=0, last_stamp=2000.0)
    assert replayed.enqueued_at == 1000.0
    assert fresh.enqueued_at > 2000.0


def test_number_of_appends_no_one_is_owed_journals_nothing() -> None:
    nobody = [(append(), 0), (erasure(), 0)]
    numbered = number(nobody, last_seq=7, last_stamp=5.0)
    assert (numbered.rows, numbered.entries, numbered.nbytes) == ([], [], 0)
    assert (numbered.tail, numbered.erased, numbered.stamp) == (7, [], 5.0)
    assert number([], last_seq=7, last_stamp=5.0).tail == 7


def test_acknowledge_answers_the_round_and_forgets_the_payloads() -> None:
    first, decided, last = append(S1, b"a"), append(S2, b"b"), append(S3, b"c")
    refusal = QueueFull("a", 1)
    decided.finish(refusal)  # answered already (its caller gave up, or refused)
    admitted = [(first, 1), (decided, 1), (last, 1)]
    acknowledge(admitted)
    assert [a.outcome for a, _ in admitted] == [ACKED, refusal, ACKED]
    assert [a.payload for a, _ in admitted] == [b"", b"", b""]
    assert [a.size for a, _ in admitted] == [1, 1, 1]
    assert not any(a.queued for a, _ in admitted)


def test_refuse_failed_gives_each_append_its_own_copy_of_the_failure() -> None:
    cause = OSError(5, "Input/output error")
    failure = JournalWriteFailed(PATH, "disk I/O error", io_error=True)
    failure.__cause__ = cause
    first, decided, last = append(S1), append(S2), append(S3)
    earlier = QueueFull("a", 1)
    decided.finish(earlier)
    refuse_failed(failure, [(first, 1), (decided, 1), (last, 1)])
    assert decided.outcome is earlier
    errors = [first.outcome, last.outcome]
    assert errors[0] is not errors[1]
    for error in errors:
        assert isinstance(error, JournalWriteFailed)
        assert error is not failure
        assert (error.path, error.detail, error.io_error) == (
            PATH,
            "disk I/O error",
            True,
        )
        assert error.__cause__ is cause
        assert str(error) == str(failure)


# --- properties -----------------------------------------------------------------------

SESSIONS = [S1, S2, S3]


@st.composite
def arrivals(draw: st.DrawFn) -> list[PendingAppend]:
    """Up to five appends of three sessions, about one in four an erasure."""
    result = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        session = draw(st.sampled_from(SESSIONS))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            result.append(erasure(session))
        else:
            size = draw(st.integers(min_value=0, max_value=30))
            result.append(append(session, b"x" * size))
    return result


@st.composite
def backlog_lists(draw: st.DrawFn) -> list[Backlog]:
    """Up to three backlogs within their limits, of mixed overflow policies."""
    result = []
    for i in range(draw(st.integers(min_value=0, max_value=3))):
        capacity = draw(st.integers(min_value=1, max_value=4))
        capacity_bytes = draw(st.none() | st.integers(min_value=1, max_value=50))
        pending = draw(st.integers(min_value=0, max_value=capacity))
        pending_bytes = 0 if pending == 0 else draw(st.integers(0, 40))
        if capacity_bytes is not None and pending > 1:
            pending_bytes = min(pending_bytes, capacity_bytes)
        result.append(
            backlog(
                f"b{i}",
                draw(st.sampled_from([BLOCK, *OverflowPolicy])),  # BLOCK more often
                mask=1 << i,
                capacity=capacity,
                capacity_bytes=capacity_bytes,
                pending=pending,
                pending_bytes=pending_bytes,
                block_timeout=draw(st.sampled_from([None, 0.0, 1.0, 3.0])),
            )
        )
    return result


@dataclasses.dataclass
class Round:
    """What happens before one round: arrivals, a withdrawal, time, deliveries."""

    arriving: list[PendingAppend]
    withdraw: int | None  # index into the queue, if any is withdrawn
    elapsed: float
    delivered: bool  # every backlog emptied before the round
    space: bool  # free space above the reserve


rounds = st.lists(
    st.builds(
        Round,
        arriving=arrivals(),
        withdraw=st.none() | st.integers(min_value=0, max_value=20),
        elapsed=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        delivered=st.integers(min_value=0, max_value=3).map(lambda n: n == 0),
        space=st.integers(min_value=0, max_value=7).map(bool),
    ),
    min_size=1,
    max_size=6,
)


@given(
    arrivals(),
    rounds,
    backlog_lists(),
    st.integers(min_value=1, max_value=4),
    st.sampled_from([0, 16]),
)
def test_decide_never_loses_duplicates_or_reorders_an_append(
    first: list[PendingAppend],
    plan: list[Round],
    backlogs: list[Backlog],
    max_group: int,
    disabled: int,
) -> None:
    intake = Intake()
    pushed: list[PendingAppend] = []  # arrival order
    admitted: list[PendingAppend] = []  # across rounds, in journal order
    refused: list[PendingAppend] = []
    withdrawn: list[PendingAppend] = []
    every = disabled
    for b in backlogs:
        every |= b.mask
    now = NOW

    def push(appends: list[PendingAppend]) -> None:
        for a in appends:
            intake.push(a)
            pushed.append(a)

    def run_round(space: bool) -> None:
        decision = intake.decide(
            now, backlogs, space=room if space else no_room, disabled=disabled
        )
        taken = [a for a, _ in decision.admitted]
        for a, targets in decision.admitted:
            assert not a.queued
            assert a.outcome is None
            assert targets & ~every == 0
            if a.op == ERASE:
                assert targets == every  # for every backend, disabled ones too
                # No append of its session ahead of it is still undecided.
                ahead = pushed[: pushed.index(a)]
                assert not any(p.queued for p in ahead if p.session == a.session), (
                    "an erasure passed an undecided append of its session"
                )
        for a in decision.refused:
            assert not a.queued
            assert isinstance(a.outcome, QueueFull | JournalFull)
            if a.op == ERASE:
                assert isinstance(a.outcome, JournalFull)
        blocked = decision.plan.blocked
        if blocked is not None:
            event("a round blocked")
            if any(index > blocked[0] for index, _ in decision.plan.admitted):
                event("an erasure passed a blocked append")
            # The blocked append waits at the head, or has just timed out.
            if any(
                isinstance(a.outcome, QueueFull) and a.outcome.waited is not None
                for a in decision.refused
            ):
                event("a blocked head timed out")
            else:
                assert intake.head is not None
                assert intake.head.blocked_on is not None
        for a in decision.refused:
            event(f"refused with {type(a.outcome).__name__}")
        admitted.extend(taken)
        refused.extend(decision.refused)
        acknowledge(decision.admitted)
        check()

    def check() -> None:
        queue = queued(intake)
        decided = admitted + refused + withdrawn
        ids = [id(a) for a in decided + queue]
        assert len(ids) == len(set(ids)), "an append was decided twice"
        assert sorted(ids) == sorted(id(a) for a in pushed), "an append was lost"
        assert queue == [a for a in pushed if a in queue]  # arrival order
        assert all(a.queued and a.outcome is None for a in queue)
        assert all(a.outcome is ACKED for a in admitted)
        assert intake.erasures == sum(a.op == ERASE for a in queue)
        for session in SESSIONS:
            ours = [pushed.index(a) for a in admitted if a.session == session.bytes]
            assert ours == sorted(ours), "per-session order broken"

    with mock.patch.object(_intake, "MAX_GROUP", max_group):
        push(first)
        for step in plan:
            push(step.arriving)
            queue = queued(intake)
            if step.withdraw is not None and queue:
                chosen = queue[step.withdraw % len(queue)]
                assert intake.withdraw(chosen)
                withdrawn.append(chosen)
            now += step.elapsed
            if step.delivered:
                for b in backlogs:
                    b.pending = b.pending_bytes = 0
            run_round(step.space)
        # With room everywhere, the rest are all admitted, MAX_GROUP at a time.
        for b in backlogs:
            b.pending = b.pending_bytes = 0
            b.capacity, b.capacity_bytes = 10_000, None
        for _ in range(len(pushed)):
            if not len(intake):
                break
            run_round(space=True)
        assert len(intake) == 0
