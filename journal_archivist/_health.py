"""Health: the status rule and the frozen snapshots ``Archivist.health()`` returns.

Pure: no I/O, no event loop. A backend's status is a function of its consecutive
failures alone, so it cannot drift from the counter that explains it:

    consecutive failures   status
    0                      HEALTHY
    1 .. UNHEALTHY_AFTER-1 DEGRADED
    >= UNHEALTHY_AFTER     UNHEALTHY

Any successful delivery resets the count to 0.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

__all__ = [
    "UNHEALTHY_AFTER",
    "BackendHealth",
    "HealthReport",
    "HealthStatus",
    "JournalHealth",
    "status_for",
]

#: Consecutive failed deliveries after which a backend is UNHEALTHY.
UNHEALTHY_AFTER: Final = 3


class HealthStatus(enum.Enum):
    """A backend's health (contract 7)."""

    #: The last delivery attempt succeeded (or none has failed yet).
    HEALTHY = "healthy"
    #: Recent attempts failed, fewer than ``UNHEALTHY_AFTER`` in a row.
    DEGRADED = "degraded"
    #: At least ``UNHEALTHY_AFTER`` attempts in a row failed.
    UNHEALTHY = "unhealthy"


def status_for(consecutive_failures: int) -> HealthStatus:
    """The status that ``consecutive_failures`` failed attempts in a row imply."""
    if consecutive_failures <= 0:
        return HealthStatus.HEALTHY
    if consecutive_failures < UNHEALTHY_AFTER:
        return HealthStatus.DEGRADED
    return HealthStatus.UNHEALTHY


class BackendHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one backend's delivery state.

    ``lag_entries``/``lag_bytes`` count entries journaled for this backend and not
    yet delivered, dropped or dead-lettered; ``oldest_pending_age`` is the age in
    seconds of the oldest of them (None when there is none). The counters
    ``delivered``, ``dropped``, ``dead_lettered`` and ``quarantined`` are entries
    (one entry is one ``append_messages`` call) and survive restarts.
    """

    name: str
    enabled: bool
    status: HealthStatus
    last_error: str | None
    consecutive_failures: int
    lag_entries: int
    lag_bytes: int
    oldest_pending_age: float | None
    delivered: int
    dropped: int
    dead_lettered: int
    quarantined: int


class JournalHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the journal's own state.

    ``quarantined`` counts damaged entries moved aside (checksum mismatch), each
    once whichever backends read it;
    ``lost_entries`` counts acknowledged entries found missing: at open (a lost WAL
    tail), or by a backend that was owed them (a damaged journal);
    ``repaired_rows`` counts damaged rows of the journal's own bookkeeping
    (backend progress, counters) found and rebuilt at open. ``free_bytes`` is the
    free space of the journal's filesystem as last measured; ``low_space`` is true
    while appends are refused for lack of it. ``commit_failures`` counts commits
    that failed in a row. ``failed`` is true once a background loop died (three
    I/O failures in a row, or a bug): ``failure`` says what died and why, and the
    archivist takes no more calls.
    """

    path: str
    quarantined: int
    lost_entries: int
    free_bytes: int | None
    low_space: bool
    commit_failures: int
    failed: bool
    failure: str | None = None
    repaired_rows: int = 0


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Archivist.health()`` returns: the journal and every backend."""

    journal: JournalHealth
    backends: dict[str, BackendHealth]
