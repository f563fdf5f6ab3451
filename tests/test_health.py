"""Tests for journal_archivist._health: the status a failure count implies."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from journal_archivist._health import UNHEALTHY_AFTER, HealthStatus, status_for

_RANK = {
    HealthStatus.HEALTHY: 0,
    HealthStatus.DEGRADED: 1,
    HealthStatus.UNHEALTHY: 2,
}


@pytest.mark.parametrize(
    ("consecutive_failures", "status"),
    [
        # No failure in a row.
        (0, HealthStatus.HEALTHY),
        # A negative count is treated like none.
        (-1, HealthStatus.HEALTHY),
        # The first failure degrades.
        (1, HealthStatus.DEGRADED),
        # The last count before the threshold is still degraded.
        (UNHEALTHY_AFTER - 1, HealthStatus.DEGRADED),
        # The threshold itself is unhealthy.
        (UNHEALTHY_AFTER, HealthStatus.UNHEALTHY),
        # Just past the threshold.
        (UNHEALTHY_AFTER + 1, HealthStatus.UNHEALTHY),
        # A very long outage.
        (10**9, HealthStatus.UNHEALTHY),
    ],
)
def test_status_follows_the_consecutive_failure_count(
    consecutive_failures: int, status: HealthStatus
) -> None:
    assert status_for(consecutive_failures) is status


def test_unhealthy_after_leaves_room_for_a_degraded_state() -> None:
    assert UNHEALTHY_AFTER >= 2


@given(st.integers(min_value=-5, max_value=10_000))
def test_one_more_failure_never_improves_the_status(failures: int) -> None:
    assert _RANK[status_for(failures + 1)] >= _RANK[status_for(failures)]
