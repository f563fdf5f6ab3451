"""Metrics: the in-process counters and histograms of one archivist.

Rules and theory:
- The hooks sit on the hot path: ``commit`` runs once per commit group and
  ``append_latency`` once per append, on the event loop. Each is a few
  additions and one ``bisect`` over a short tuple (a few hundred nanoseconds):
  no locks, no allocation, no clock reads (the caller passes the durations).
- A ``Histogram`` keeps one count per bucket (not cumulative) so ``observe``
  touches one slot; ``snapshot`` makes them cumulative, as Prometheus wants,
  and derives ``count`` from the same copy so the snapshot is self-consistent.
- Everything here counts since the archivist opened; the counters the journal
  keeps across restarts are read from the backends' books, not from here.
- The bucket bounds are fixed (see ``BATCH_SIZE_BOUNDS``, ``DURATION_BOUNDS``),
  so a dashboard can compare two processes or two releases bucket for bucket.
Pure: no I/O, no event loop.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from typing import TYPE_CHECKING, Final, final

from ._errors import (
    ArchivistClosed,
    ArchivistFailed,
    JournalFull,
    JournalWriteFailed,
    QueueFull,
    ValidationError,
)
from ._stats import HistogramSnapshot

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "BATCH_SIZE_BOUNDS",
    "DURATION_BOUNDS",
    "REJECTION_REASONS",
    "Histogram",
    "Metrics",
    "rejection_reason",
]

#: Upper bounds (entries) of the commit batch size buckets. A commit group holds
#: 1 to ``MAX_GROUP`` (1024) appends: powers of two give 11 buckets, an exact
#: bucket for the uncontended case (1: one append per fsync) and for a saturated
#: committer (1024), and a doubling between that shows how well group commit
#: amortises the fsync as load grows.
BATCH_SIZE_BOUNDS: Final = tuple(float(2**i) for i in range(11))

#: Upper bounds (seconds) of the duration buckets (commit duration, append
#: latency): 1-2.5-5 per decade from 100 µs to 10 s. A commit without fsync
#: (``Durability.NORMAL``) on an SSD takes about 100 µs; an fsync takes 0.5-2 ms
#: on an SSD and 5-20 ms on a spinning or network disk; an append that waits for
#: room (``BLOCK``) or for a ``Sync`` backend takes up to its timeout, seconds.
#: Beyond 10 s something is stuck, and the ``+Inf`` bucket says so.
DURATION_BOUNDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: The reasons an append is refused (the ``reason`` label), each for one error.
REJECTION_REASONS: Final = (
    "queue_full",  # QueueFull: a backlog full under REJECT, or BLOCK timed out
    "journal_full",  # JournalFull: free space below the reserve
    "validation",  # ValidationError: a bad record or an oversized call
    "write_failed",  # JournalWriteFailed: the commit failed
    "closed",  # ArchivistClosed / ArchivistFailed: takes no more calls
)

_REASON_OF: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (QueueFull, "queue_full"),
    (JournalFull, "journal_full"),
    (ValidationError, "validation"),
    (JournalWriteFailed, "write_failed"),
    (ArchivistClosed, "closed"),
    (ArchivistFailed, "closed"),
)


def rejection_reason(exc: BaseException) -> str | None:
    """The ``reason`` an append refused with ``exc`` is counted under.

    None for an error that is not a refusal: ``DeliveryFailed`` (the entry was
    journaled), a ``TypeError`` for a session that is not a UUID, a
    ``WrongEventLoop``, a cancellation.
    """
    for cls, reason in _REASON_OF:
        if isinstance(exc, cls):
            return reason
    return None


@final
class Histogram:
    """Counts observations into fixed buckets, as a Prometheus histogram does.

    ``observe(value)`` counts ``value`` in the first bucket whose upper bound is
    ``>= value`` (or the ``+Inf`` bucket past the last bound), in
    O(log buckets). Values are expected finite: a NaN lands in the first bucket
    and makes ``sum`` NaN.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Iterable[float]) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        if any(not (low < high) for low, high in itertools.pairwise(bounds)):
            raise ValueError(f"bucket bounds must increase strictly, got {bounds}")
        if not all(abs(b) < float("inf") for b in bounds):
            raise ValueError(f"bucket bounds must be finite, got {bounds}")
        #: The buckets' upper bounds, ascending (``+Inf`` is implied).
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The counts so far, cumulative per upper bound."""
        cumulative = list(itertools.accumulate(self._counts[:]))
        return HistogramSnapshot(
            bounds=self.bounds,
            counts=tuple(cumulative[:-1]),
            count=cumulative[-1],
            sum=self._sum,
        )


@final
class Metrics:
    """The counters and histograms of one archivist since it opened.

    The hooks (``appended``, ``rejected`` / ``refused``, ``commit``,
    ``append_latency``, ``delivery_failed``) are called by the committer, the
    append path and the writers; ``collect_stats`` reads the rest. Counting
    only: nothing here raises on the hot path (``rejected`` with an unknown
    reason is a bug, and raises ``ValueError``).
    """

    __slots__ = (
        "_failed",
        "_rejections",
        "append_latency_seconds",
        "appends_total",
        "commit_batch_size",
        "commit_duration_seconds",
    )

    def __init__(self) -> None:
        #: Calls acknowledged: appends and erasures committed.
        self.appends_total = 0
        #: Appends per commit round.
        self.commit_batch_size = Histogram(BATCH_SIZE_BOUNDS)
        #: Seconds from deciding a round's appends to their commit.
        self.commit_duration_seconds = Histogram(DURATION_BOUNDS)
        #: Seconds from queuing an append for its commit to its successful
        #: return (Sync delivery included).
        self.append_latency_seconds = Histogram(DURATION_BOUNDS)
        self._rejections = dict.fromkeys(REJECTION_REASONS, 0)
        self._failed: dict[str, int] = {}

    # -- the hooks -------------------------------------------------------------

    def appended(self, n_entries: int) -> None:
        """``n_entries`` appends (or erasures) were committed and acknowledged."""
        self.appends_total += n_entries

    def rejected(self, reason: str) -> None:
        """One append was refused for ``reason`` (one of ``REJECTION_REASONS``).

        Raises:
            ValueError: ``reason`` is not one of them; nothing was counted.
        """
        try:
            self._rejections[reason] += 1
        except KeyError:
            raise ValueError(
                f"unknown rejection reason {reason!r}; expected one of"
                f" {', '.join(REJECTION_REASONS)}"
            ) from None

    def refused(self, exc: BaseException) -> None:
        """Count an append refused with ``exc`` under its ``rejection_reason``
        (nothing, for an error that is not a refusal)."""
        reason = rejection_reason(exc)
        if reason is not None:
            self._rejections[reason] += 1

    def commit(self, batch_size: int, seconds: float) -> None:
        """A commit round journaled ``batch_size`` appends, ``seconds`` after it
        decided them. A round that journaled none (it only settled entries) is
        not counted: ``batch_size`` 0 is ignored."""
        if batch_size:
            self.commit_batch_size.observe(batch_size)
            self.commit_duration_seconds.observe(seconds)

    def append_latency(self, seconds: float) -> None:
        """An append returned successfully ``seconds`` after it was queued."""
        self.append_latency_seconds.observe(seconds)

    def delivery_failed(self, backend_name: str) -> None:
        """One delivery attempt to ``backend_name`` failed."""
        failed = self._failed
        failed[backend_name] = failed.get(backend_name, 0) + 1

    # -- reading -------------------------------------------------------------

    def rejections(self) -> dict[str, int]:
        """Appends refused so far, by reason (every reason, zeros included)."""
        return dict(self._rejections)

    def failed_attempts(self, backend_name: str) -> int:
        """Delivery attempts to ``backend_name`` that failed so far."""
        return self._failed.get(backend_name, 0)
