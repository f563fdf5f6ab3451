"""Sans-IO: what a writer does with a batch after each attempt, probe and failure.

The writer (``_writer``) calls the backend, sleeps and records; every decision
about what comes next is made here, by plain functions of what happened, so the
rules are tested directly (``tests/test_delivery.py``, with Hypothesis).

Rules and theory:
- Once a backend has failed ``UNHEALTHY_AFTER`` times in a row, its health check
  comes before the next attempt (``before_attempt``); a failing check is an
  outage: wait and check again, without using up the batch's attempts.
- A failed attempt is retried with backoff (``after_failure``) until it gives
  up: a non-retryable error, or ``max_attempts`` used. Only a ``BEST_EFFORT``
  backend ever gives up, and only to *judge* the batch: after the pause the
  backend asked for, the health check decides (``after_judging``). It passing
  means the backend is up and the batch itself is poison: a single entry is
  dead-lettered, a larger batch bisected to find it. It failing means an outage:
  retry. So an outage never dead-letters, and ``REQUIRED`` never does.
- Any exception but a ``BackendError(retryable=False)`` is retryable
  (``is_retryable``), timeouts included.
- The delay before a retry is the retry policy's, never shorter than a
  ``retry_after`` the backend asked for, which is honoured up to
  ``RETRY_AFTER_CAP`` (``retry_delay``).
"""

from __future__ import annotations

import enum

from ._errors import RETRY_AFTER_CAP, BackendError
from ._health import UNHEALTHY_AFTER

__all__ = [
    "Step",
    "after_failure",
    "after_judging",
    "before_attempt",
    "is_retryable",
    "judging_pause",
    "retry_delay",
]


class Step(enum.Enum):
    """What the writer does next with the batch in hand."""

    #: Call ``write_batch``.
    ATTEMPT = "attempt"
    #: The backend is unhealthy: run the health check; if it fails, wait and
    #: check again (an outage), else attempt.
    PROBE_FIRST = "probe first"
    #: Wait ``retry_delay`` and attempt again.
    RETRY = "retry"
    #: Given up (``BEST_EFFORT``): honour ``retry_after``, then run the health
    #: check and ask ``after_judging``.
    JUDGE = "judge"
    #: The batch is one poison entry: dead-letter it.
    DEAD_LETTER = "dead-letter"
    #: The batch holds poison: deliver each half on its own.
    BISECT = "bisect"


def before_attempt(consecutive_failures: int) -> Step:
    """``PROBE_FIRST`` once the backend is unhealthy, else ``ATTEMPT``."""
    return Step.PROBE_FIRST if consecutive_failures >= UNHEALTHY_AFTER else Step.ATTEMPT


def is_retryable(exc: BaseException) -> bool:
    """Whether the same call may succeed later: anything but a
    ``BackendError(retryable=False)``."""
    return not (isinstance(exc, BackendError) and not exc.retryable)


def after_failure(
    *, attempt: int, max_attempts: int, retryable: bool, best_effort: bool
) -> Step:
    """After failed attempt number ``attempt`` (from 1): ``RETRY`` or ``JUDGE``."""
    gave_up = not retryable or attempt >= max_attempts
    return Step.JUDGE if best_effort and gave_up else Step.RETRY


def after_judging(*, healthy: bool, entries: int) -> Step:
    """After the health check that judges a given-up batch of ``entries``."""
    if not healthy:
        return Step.RETRY  # an outage: the batch waits, it is not poison
    return Step.DEAD_LETTER if entries == 1 else Step.BISECT


def retry_delay(policy_delay: float, asked: float) -> float:
    """The wait before a retry: ``policy_delay``, or the ``asked`` retry_after
    (capped at ``RETRY_AFTER_CAP``) if that is longer."""
    return max(policy_delay, min(asked, RETRY_AFTER_CAP))


def judging_pause(asked: float) -> float:
    """The pause before judging a given-up batch: what the backend asked for,
    capped."""
    return min(asked, RETRY_AFTER_CAP)
