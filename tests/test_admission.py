"""Tests for journal_archivist._admission: overflow decisions, tables and properties."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, strategies as st

from journal_archivist._admission import Backlog, Plan, plan_admission
from journal_archivist._policies import OverflowPolicy
from tests.helpers import backlog

BLOCK = OverflowPolicy.BLOCK
REJECT = OverflowPolicy.REJECT
DROP_NEWEST = OverflowPolicy.DROP_NEWEST
DROP_OLDEST = OverflowPolicy.DROP_OLDEST


# --- one backend, each policy -------------------------------------------------------


@pytest.mark.parametrize(
    ("overflow", "expected", "pending"),
    [
        # BLOCK: the first append that does not fit stops admission; 2 is undecided.
        (BLOCK, Plan(admitted=[(0, 1)], blocked=(1, "a")), 2),
        # REJECT: every append that does not fit is refused on its own.
        (REJECT, Plan(admitted=[(0, 1)], rejected=[(1, "a"), (2, "a")]), 2),
        # DROP_NEWEST: the appends are admitted without this backend, and counted.
        (
            DROP_NEWEST,
            Plan(admitted=[(0, 1), (1, 0), (2, 0)], dropped_newest={"a": 2}),
            2,
        ),
        # DROP_OLDEST: everything is admitted and the excess reported.
        (
            DROP_OLDEST,
            Plan(admitted=[(0, 1), (1, 1), (2, 1)], oldest_excess={"a": (2, 0)}),
            4,
        ),
    ],
)
def test_a_full_backlog_applies_its_overflow_policy_by_count(
    overflow: OverflowPolicy, expected: Plan, pending: int
) -> None:
    # Room for one more entry; three arrive.
    only = backlog(overflow=overflow, capacity=2, pending=1, pending_bytes=10)
    assert plan_admission([10, 10, 10], [only]) == expected
    assert only.pending == pending


@pytest.mark.parametrize(
    ("overflow", "expected", "pending_bytes"),
    [
        # BLOCK: 50 bytes do not fit, so 5 bytes may not overtake them.
        (BLOCK, Plan(admitted=[(0, 1)], blocked=(1, "a")), 20),
        # REJECT: only the 50 bytes are refused; the 5 bytes after them fit.
        (REJECT, Plan(admitted=[(0, 1), (2, 1)], rejected=[(1, "a")]), 25),
        # DROP_NEWEST: only the 50 bytes leave this backend out.
        (
            DROP_NEWEST,
            Plan(admitted=[(0, 1), (1, 0), (2, 1)], dropped_newest={"a": 1}),
            25,
        ),
        # DROP_OLDEST: all admitted; 10 + 10 + 50 + 5 is 50 bytes over.
        (
            DROP_OLDEST,
            Plan(admitted=[(0, 1), (1, 1), (2, 1)], oldest_excess={"a": (0, 50)}),
            75,
        ),
    ],
)
def test_a_full_backlog_applies_its_overflow_policy_by_bytes(
    overflow: OverflowPolicy, expected: Plan, pending_bytes: int
) -> None:
    # Plenty of entries left, but only 15 of 25 bytes.
    only = backlog(overflow=overflow, capacity_bytes=25, pending=1, pending_bytes=10)
    assert plan_admission([10, 50, 5], [only]) == expected
    assert only.pending_bytes == pending_bytes


@pytest.mark.parametrize("overflow", [BLOCK, REJECT, DROP_NEWEST])
def test_an_entry_larger_than_capacity_bytes_still_fits_an_empty_backlog(
    overflow: OverflowPolicy,
) -> None:
    only = backlog(overflow=overflow, capacity_bytes=100)
    assert plan_admission([500], [only]) == Plan(admitted=[(0, 1)])
    assert (only.pending, only.pending_bytes) == (1, 500)


@pytest.mark.parametrize(
    ("overflow", "expected"),
    [
        # BLOCK: the second entry waits behind the oversized one.
        (BLOCK, Plan(admitted=[(0, 1)], blocked=(1, "a"))),
        # REJECT: the second entry is refused.
        (REJECT, Plan(admitted=[(0, 1)], rejected=[(1, "a")])),
        # DROP_NEWEST: the second entry is dropped for this backend.
        (DROP_NEWEST, Plan(admitted=[(0, 1), (1, 0)], dropped_newest={"a": 1})),
    ],
)
def test_nothing_more_fits_next_to_an_oversized_entry(
    overflow: OverflowPolicy, expected: Plan
) -> None:
    only = backlog(overflow=overflow, capacity_bytes=100)
    assert plan_admission([500, 1], [only]) == expected


@pytest.mark.parametrize(
    ("overflow", "expected"),
    [
        # BLOCK: it waits for the backlog to empty.
        (BLOCK, Plan(blocked=(0, "a"))),
        # REJECT: it is refused.
        (REJECT, Plan(rejected=[(0, "a")])),
        # DROP_NEWEST: it is dropped for this backend.
        (DROP_NEWEST, Plan(admitted=[(0, 0)], dropped_newest={"a": 1})),
    ],
)
def test_an_oversized_entry_does_not_fit_a_non_empty_backlog(
    overflow: OverflowPolicy, expected: Plan
) -> None:
    only = backlog(overflow=overflow, capacity_bytes=100, pending=1, pending_bytes=1)
    assert plan_admission([500], [only]) == expected
    assert (only.pending, only.pending_bytes) == (1, 1)


def test_an_oversized_entry_in_an_empty_drop_oldest_backlog_is_not_trimmed() -> None:
    only = backlog(overflow=DROP_OLDEST, capacity_bytes=100)
    assert plan_admission([500], [only]) == Plan(admitted=[(0, 1)])


# --- several backends ---------------------------------------------------------------


def _room(name: str, mask: int, overflow: OverflowPolicy = BLOCK) -> Backlog:
    """A backlog with plenty of room."""
    return backlog(name, overflow, mask=mask)


def _full(name: str, mask: int, overflow: OverflowPolicy) -> Backlog:
    """A backlog with no room for another entry."""
    return backlog(name, overflow, mask=mask, capacity=1, pending=1, pending_bytes=1)


@pytest.mark.parametrize(
    ("backlogs", "expected"),
    [
        # A full REJECT backend refuses the append for everyone, even a DROP_NEWEST
        # one that is also full (nothing is counted as dropped).
        (
            [_full("n", 1, DROP_NEWEST), _full("r", 2, REJECT), _room("ok", 4)],
            Plan(rejected=[(0, "r"), (1, "r")]),
        ),
        # REJECT wins over BLOCK: the append is refused rather than held.
        (
            [_full("b", 1, BLOCK), _full("r", 2, REJECT)],
            Plan(rejected=[(0, "r"), (1, "r")]),
        ),
        # A full BLOCK backend holds the append; the full DROP_NEWEST backend does
        # not count a drop for an append that was not decided.
        (
            [_full("n", 1, DROP_NEWEST), _full("b", 2, BLOCK)],
            Plan(blocked=(0, "b")),
        ),
        # A full DROP_NEWEST backend is left out; the others still get the entry.
        (
            [_full("n", 1, DROP_NEWEST), _room("ok", 2), _room("r", 4, REJECT)],
            Plan(admitted=[(0, 6), (1, 6)], dropped_newest={"n": 2}),
        ),
        # Every backend drops the newest: admitted for no one (mask 0).
        (
            [_full("n1", 1, DROP_NEWEST), _full("n2", 2, DROP_NEWEST)],
            Plan(admitted=[(0, 0), (1, 0)], dropped_newest={"n1": 2, "n2": 2}),
        ),
        # A full DROP_OLDEST backend keeps getting entries; its excess is reported.
        (
            [_full("o", 1, DROP_OLDEST), _full("n", 2, DROP_NEWEST)],
            Plan(
                admitted=[(0, 1), (1, 1)],
                dropped_newest={"n": 2},
                oldest_excess={"o": (2, 0)},
            ),
        ),
    ],
)
def test_every_backend_s_policy_applies_to_each_append(
    backlogs: list[Backlog], expected: Plan
) -> None:
    assert plan_admission([1, 1], backlogs) == expected


@pytest.mark.parametrize(
    ("sizes", "backlogs", "expected"),
    [
        # The group adds to a backlog over a lowered capacity: trim it to capacity.
        (
            [1],
            [backlog("o", DROP_OLDEST, capacity=2, pending=5, pending_bytes=5)],
            Plan(admitted=[(0, 1)], oldest_excess={"o": (4, 0)}),
        ),
        # Every append is refused elsewhere: the over-full backlog is left alone.
        (
            [1],
            [
                backlog("o", DROP_OLDEST, capacity=2, pending=5, pending_bytes=5),
                _full("r", 2, REJECT),
            ],
            Plan(rejected=[(0, "r")]),
        ),
        # An empty group trims nothing.
        (
            [],
            [backlog("o", DROP_OLDEST, capacity=2, pending=5, pending_bytes=5)],
            Plan(),
        ),
    ],
)
def test_only_a_drop_oldest_backlog_the_group_adds_to_is_trimmed(
    sizes: list[int], backlogs: list[Backlog], expected: Plan
) -> None:
    assert plan_admission(sizes, backlogs) == expected


def test_a_refused_append_changes_no_backlog() -> None:
    backlogs = [_room("ok", 1), _full("o", 2, DROP_OLDEST), _full("r", 4, REJECT)]
    before = copy.deepcopy(backlogs)
    plan_admission([1, 1, 1], backlogs)
    assert backlogs == before


def test_backlogs_are_updated_per_backend_it_was_admitted_for() -> None:
    ok = _room("ok", 1)
    dropping = backlog("n", DROP_NEWEST, mask=2, capacity=2)
    plan = plan_admission([3, 4, 5], [ok, dropping])
    assert plan == Plan(admitted=[(0, 3), (1, 3), (2, 1)], dropped_newest={"n": 1})
    assert (ok.pending, ok.pending_bytes) == (3, 12)
    assert (dropping.pending, dropping.pending_bytes) == (2, 7)


# --- the fast path ------------------------------------------------------------------


def test_when_everything_fits_every_append_goes_to_every_backend() -> None:
    backlogs = [
        backlog("a", BLOCK, mask=1, capacity=5, pending=2, pending_bytes=20),
        backlog("b", REJECT, mask=2, capacity=3, capacity_bytes=60, pending=0),
        backlog("c", DROP_OLDEST, mask=8, capacity=3, capacity_bytes=30),
    ]
    plan = plan_admission([10, 10, 10], backlogs)
    assert plan == Plan(admitted=[(0, 11), (1, 11), (2, 11)])
    assert plan.uniform
    assert [(b.pending, b.pending_bytes) for b in backlogs] == [
        (5, 50),
        (3, 30),
        (3, 30),
    ]


def test_an_empty_group_admits_nothing_and_changes_nothing() -> None:
    only = backlog(capacity=1, pending=1, pending_bytes=5)
    assert plan_admission([], [only]) == Plan()
    assert (only.pending, only.pending_bytes) == (1, 5)


def test_with_no_backends_every_append_is_admitted_for_no_one() -> None:
    assert plan_admission([1, 2], []) == Plan(admitted=[(0, 0), (1, 0)])


# --- properties ---------------------------------------------------------------------


@st.composite
def backlogs(draw: st.DrawFn) -> list[Backlog]:
    """Up to four backlogs within their limits (one entry may be oversized)."""
    result = []
    for i in range(draw(st.integers(min_value=0, max_value=4))):
        capacity = draw(st.integers(min_value=1, max_value=6))
        capacity_bytes = draw(st.none() | st.integers(min_value=1, max_value=60))
        pending = draw(st.integers(min_value=0, max_value=capacity))
        if pending == 0:
            pending_bytes = 0
        elif capacity_bytes is None:
            pending_bytes = draw(st.integers(min_value=0, max_value=200))
        elif pending == 1:
            pending_bytes = draw(st.integers(min_value=0, max_value=2 * capacity_bytes))
        else:
            pending_bytes = draw(st.integers(min_value=0, max_value=capacity_bytes))
        result.append(
            Backlog(
                name=f"b{i}",
                mask=1 << i,
                overflow=draw(st.sampled_from(OverflowPolicy)),
                capacity=capacity,
                capacity_bytes=capacity_bytes,
                pending=pending,
                pending_bytes=pending_bytes,
            )
        )
    return result


sizes_lists = st.lists(st.integers(min_value=0, max_value=40), max_size=8)


@given(sizes_lists, backlogs())
def test_decided_appends_are_a_prefix_in_order(
    sizes: list[int], given_backlogs: list[Backlog]
) -> None:
    plan = plan_admission(sizes, given_backlogs)
    admitted = [index for index, _ in plan.admitted]
    rejected = [index for index, _ in plan.rejected]
    decided = plan.blocked[0] if plan.blocked is not None else len(sizes)
    assert admitted == sorted(admitted)
    assert rejected == sorted(rejected)
    assert sorted(admitted + rejected) == list(range(decided))


@given(sizes_lists, backlogs())
def test_only_drop_oldest_backlogs_may_end_over_their_limits(
    sizes: list[int], given_backlogs: list[Backlog]
) -> None:
    plan_admission(sizes, given_backlogs)
    for b in given_backlogs:
        if b.overflow is DROP_OLDEST:
            continue
        assert b.pending <= b.capacity
        if b.capacity_bytes is not None and b.pending > 1:
            assert b.pending_bytes <= b.capacity_bytes


@given(sizes_lists, backlogs())
def test_admitted_masks_name_only_given_backends_and_match_the_counts(
    sizes: list[int], given_backlogs: list[Backlog]
) -> None:
    before = copy.deepcopy(given_backlogs)
    plan = plan_admission(sizes, given_backlogs)
    every = 0
    for b in given_backlogs:
        every |= b.mask
    assert all(mask & ~every == 0 for _, mask in plan.admitted)
    for old, new in zip(before, given_backlogs, strict=True):
        targeted = [index for index, mask in plan.admitted if mask & new.mask]
        missed = len(plan.admitted) - len(targeted)
        if new.overflow is DROP_NEWEST:
            assert plan.dropped_newest.get(new.name, 0) == missed
        else:
            # Only DROP_NEWEST leaves an admitted append out.
            assert missed == 0
            assert new.name not in plan.dropped_newest
        assert new.pending == old.pending + len(targeted)
        assert new.pending_bytes == old.pending_bytes + sum(sizes[i] for i in targeted)
    assert all(count > 0 for count in plan.dropped_newest.values())


@given(sizes_lists, backlogs())
def test_blocks_rejections_and_excess_come_from_backends_with_that_policy(
    sizes: list[int], given_backlogs: list[Backlog]
) -> None:
    plan = plan_admission(sizes, given_backlogs)
    by_name = {b.name: b for b in given_backlogs}
    if plan.blocked is not None:
        assert by_name[plan.blocked[1]].overflow is BLOCK
    assert all(by_name[name].overflow is REJECT for _, name in plan.rejected)
    targeted = 0
    for _, mask in plan.admitted:
        targeted |= mask
    for b in given_backlogs:
        # Only a backlog this group adds to is trimmed.
        if b.overflow is DROP_OLDEST and b.mask & targeted and b.excess() != (0, 0):
            assert plan.oldest_excess[b.name] == b.excess()
        else:
            assert b.name not in plan.oldest_excess


def _model_plan(sizes: list[int], backlogs: list[Backlog]) -> Plan:
    """The documented rules, applied one append at a time (no fast path)."""
    plan = Plan()
    for index, size in enumerate(sizes):
        full = [b for b in backlogs if not b.fits(size)]
        full_names = {b.name for b in full}
        if any(b.overflow is REJECT for b in full):
            name = next(b.name for b in full if b.overflow is REJECT)
            plan.rejected.append((index, name))
            continue
        if any(b.overflow is BLOCK for b in full):
            plan.blocked = (index, next(b.name for b in full if b.overflow is BLOCK))
            break
        targets = 0
        for b in backlogs:
            if b.name in full_names and b.overflow is DROP_NEWEST:
                plan.dropped_newest[b.name] = plan.dropped_newest.get(b.name, 0) + 1
            else:
                targets |= b.mask
                b.pending += 1
                b.pending_bytes += size
        plan.admitted.append((index, targets))
    targeted = 0
    for _, mask in plan.admitted:
        targeted |= mask
    for b in backlogs:
        if b.overflow is DROP_OLDEST and b.mask & targeted and b.excess() != (0, 0):
            plan.oldest_excess[b.name] = b.excess()
    return plan


@given(sizes_lists, backlogs())
def test_the_plan_matches_the_rules_applied_one_append_at_a_time(
    sizes: list[int], given_backlogs: list[Backlog]
) -> None:
    model_backlogs = copy.deepcopy(given_backlogs)
    assert plan_admission(sizes, given_backlogs) == _model_plan(sizes, model_backlogs)
    assert given_backlogs == model_backlogs


def test_an_erasure_passes_a_blocked_append_of_another_session_only() -> None:
    # Index: 0 append A (blocks), 1 erase A, 2 erase B, 3 append B, 4 erase B.
    sizes = [10, 0, 0, 10, 0]
    full = backlog(capacity=1, pending=1)
    plan = plan_admission(
        sizes, [full], erasures={1, 2, 4}, sessions=["A", "A", "B", "B", "B"]
    )
    assert plan.blocked == (0, "a")
    # Erasing A must follow A's undecided append; the second erasure of B must
    # follow B's append; the first erasure of B has nothing of B ahead of it.
    assert plan.admitted == [(2, 1)]
    assert full.pending == 2


def test_without_sessions_an_erasure_waits_behind_a_blocked_append() -> None:
    plan = plan_admission([10, 0], [backlog(capacity=1, pending=1)], erasures={1})
    assert (plan.blocked, plan.admitted) == ((0, "a"), [])
