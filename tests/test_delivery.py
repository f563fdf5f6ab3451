"""The delivery decision (``_delivery``), tested directly: no event loop, no backend.

The writer tests (tests/test_writer.py) check that the writer carries these
decisions out; here the rules themselves hold for every input.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from journal_archivist import BackendError
from journal_archivist._delivery import (
    Step,
    after_failure,
    after_judging,
    before_attempt,
    is_retryable,
    judging_pause,
    retry_delay,
)
from journal_archivist._errors import RETRY_AFTER_CAP
from journal_archivist._health import UNHEALTHY_AFTER

attempts = st.integers(min_value=1, max_value=50)
seconds = st.floats(min_value=0, max_value=10 * RETRY_AFTER_CAP, allow_nan=False)


@given(attempt=attempts, max_attempts=attempts, retryable=st.booleans())
def test_required_never_gives_up(
    attempt: int, max_attempts: int, retryable: bool
) -> None:
    step = after_failure(
        attempt=attempt,
        max_attempts=max_attempts,
        retryable=retryable,
        best_effort=False,
    )
    assert step is Step.RETRY


@given(entries=st.integers(min_value=1, max_value=10_000))
def test_an_outage_never_dead_letters(entries: int) -> None:
    assert after_judging(healthy=False, entries=entries) is Step.RETRY


@given(
    attempt=attempts,
    max_attempts=attempts,
    retryable=st.booleans(),
    best_effort=st.booleans(),
    healthy=st.booleans(),
    entries=st.integers(min_value=1, max_value=10_000),
)
def test_only_a_healthy_best_effort_backend_dead_letters_one_entry(
    attempt: int,
    max_attempts: int,
    retryable: bool,
    best_effort: bool,
    healthy: bool,
    entries: int,
) -> None:
    # The whole path a failure can take, as the writer walks it.
    step = after_failure(
        attempt=attempt,
        max_attempts=max_attempts,
        retryable=retryable,
        best_effort=best_effort,
    )
    if step is Step.JUDGE:
        step = after_judging(healthy=healthy, entries=entries)
    if step in (Step.DEAD_LETTER, Step.BISECT):
        assert best_effort
        assert healthy
        assert (entries == 1) == (step is Step.DEAD_LETTER)
    gave_up = not retryable or attempt >= max_attempts
    assert (step is Step.RETRY) == (not (best_effort and gave_up and healthy))


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "retryable", "step"),
    [
        (1, 3, True, Step.RETRY),
        (2, 3, True, Step.RETRY),
        (3, 3, True, Step.JUDGE),  # attempts used up
        (1, 3, False, Step.JUDGE),  # a non-retryable error: at once
        (4, 3, True, Step.JUDGE),
    ],
)
def test_best_effort_gives_up_after_max_attempts_or_at_once_if_not_retryable(
    attempt: int, max_attempts: int, retryable: bool, step: Step
) -> None:
    assert (
        after_failure(
            attempt=attempt,
            max_attempts=max_attempts,
            retryable=retryable,
            best_effort=True,
        )
        is step
    )


def test_a_healthy_judge_bisects_a_batch_and_dead_letters_a_single_entry() -> None:
    assert after_judging(healthy=True, entries=1) is Step.DEAD_LETTER
    assert after_judging(healthy=True, entries=2) is Step.BISECT


def test_the_health_check_comes_first_once_unhealthy() -> None:
    assert before_attempt(0) is Step.ATTEMPT
    assert before_attempt(UNHEALTHY_AFTER - 1) is Step.ATTEMPT
    assert before_attempt(UNHEALTHY_AFTER) is Step.PROBE_FIRST
    assert before_attempt(UNHEALTHY_AFTER + 100) is Step.PROBE_FIRST


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (BackendError("rejected", retryable=False), False),
        (BackendError("busy"), True),
        (TimeoutError(), True),
        (OSError("connection reset"), True),
        (RuntimeError("a bug in the backend"), True),
    ],
)
def test_only_a_non_retryable_backend_error_is_not_retryable(
    exc: BaseException, retryable: bool
) -> None:
    assert is_retryable(exc) is retryable


@given(policy=seconds, asked=seconds)
def test_a_retry_waits_for_the_policy_and_what_was_asked_up_to_the_cap(
    policy: float, asked: float
) -> None:
    delay = retry_delay(policy, asked)
    assert delay >= policy
    assert delay >= min(asked, RETRY_AFTER_CAP)
    assert delay == policy or delay <= RETRY_AFTER_CAP
    assert math.isfinite(delay)


@given(asked=seconds)
def test_the_pause_before_judging_is_what_was_asked_up_to_the_cap(
    asked: float,
) -> None:
    assert judging_pause(asked) == min(asked, RETRY_AFTER_CAP)
