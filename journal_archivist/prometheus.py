"""Prometheus metrics of an archivist: ``register(archivist)``.

Needs the ``prometheus`` extra: ``pip install 'journal-archivist[prometheus]'``.

Rules and theory:
- One source of numbers: each scrape calls ``source()`` (``archivist.stats``)
  once and turns that ``Stats`` into metric families, so Prometheus reports
  exactly what ``stats()`` and ``journal-archivist status --json`` report. A
  ``Stats`` field that is None is not exported.
- Names follow Prometheus conventions: one prefix ``journal_archivist_``, base
  units (seconds, bytes) named in the suffix, counters end in ``_total``. The
  only labels are ``backend`` and, on rejections, ``reason``: never a session or
  message id, whose values have no bound.
- ``stats()`` reads state the archivist's event loop changes, so a scrape from
  another thread (``start_http_server``, a WSGI server) runs it on that loop
  and waits for it, at most ``SCRAPE_TIMEOUT`` seconds; a scrape on the loop
  itself (an ASGI app), or once the loop has stopped, calls it directly.
- ``describe`` names every family, so registering two collectors whose names
  clash on one registry raises ``ValueError`` at once: give each archivist of a
  process its own ``CollectorRegistry``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Final, final

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "journal_archivist.prometheus needs prometheus-client:"
        " pip install 'journal-archivist[prometheus]'"
    ) from exc

from ._archivist import Archivist

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._stats import BackendStats, HistogramSnapshot, Stats

__all__ = ["PREFIX", "SCRAPE_TIMEOUT", "ArchivistCollector", "register"]

#: The prefix of every metric name.
PREFIX: Final = "journal_archivist_"
#: Seconds a scrape from another thread waits for the archivist's event loop.
SCRAPE_TIMEOUT: Final = 5.0

# (name, help, field of BackendStats): per backend, label ``backend``.
_BACKEND_COUNTERS: Final = (
    (
        "delivered_entries_total",
        "Entries delivered to the backend (kept in the journal: exact across"
        " restarts).",
        "delivered_total",
    ),
    (
        "delivery_failures_total",
        "Delivery attempts to the backend that failed, since the archivist opened.",
        "failed_attempts_total",
    ),
    (
        "dropped_entries_total",
        "Entries dropped for the backend by its overflow policy (exact across"
        " restarts).",
        "dropped_total",
    ),
    (
        "dead_lettered_entries_total",
        "Entries the backend refused for good, moved to dead_letters (exact"
        " across restarts).",
        "dead_lettered_total",
    ),
    (
        "quarantined_entries_total",
        "Damaged entries read for the backend and quarantined (exact across restarts).",
        "quarantined_total",
    ),
)
_BACKEND_GAUGES: Final = (
    (
        "pending_entries",
        "Entries journaled for the backend and not yet settled.",
        "pending_entries",
    ),
    (
        "pending_bytes",
        "Payload bytes of the entries pending for the backend.",
        "pending_bytes",
    ),
    (
        "oldest_pending_age_seconds",
        "Seconds since the oldest entry pending for the backend was journaled.",
        "oldest_pending_age",
    ),
    (
        "backend_up",
        "1 if the backend's last delivery attempt or probe succeeded, else 0.",
        "up",
    ),
    (
        "backend_enabled",
        "1 if the backend's registration is enabled, else 0.",
        "enabled",
    ),
    (
        "dead_letter_rows",
        "Rows held in dead_letters for the backend now.",
        "dead_letters",
    ),
    (
        "quarantine_rows",
        "Rows held in quarantine for the backend now.",
        "quarantine",
    ),
)
_HISTOGRAMS: Final = (
    (
        "commit_batch_size_entries",
        "Appends journaled per commit round, since the archivist opened.",
        "commit_batch_size",
    ),
    (
        "commit_duration_seconds",
        "Seconds from deciding a commit round's appends to their commit (mostly"
        " the transaction and its fsync), since the archivist opened.",
        "commit_duration_seconds",
    ),
    (
        "append_latency_seconds",
        "Seconds from queuing an append for its commit to its successful return"
        " (Sync delivery included), since the archivist opened.",
        "append_latency_seconds",
    ),
)


def _number(value: float | bool | None) -> float | None:
    return None if value is None else float(value)


def _backend_family(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    field: str,
    backends: tuple[BackendStats, ...],
) -> Metric:
    family = kind(PREFIX + name, documentation, labels=["backend"])
    for backend in backends:
        value = _number(getattr(backend, field))
        if value is not None:
            family.add_metric([backend.name], value)
    return family


def _histogram(name: str, documentation: str, snap: HistogramSnapshot) -> Metric:
    buckets = [
        # repr: the shortest text that reads back as the same float.
        (repr(bound), float(count))
        for bound, count in zip(snap.bounds, snap.counts, strict=True)
    ]
    buckets.append(("+Inf", float(snap.count)))
    return HistogramMetricFamily(
        PREFIX + name, documentation, buckets=buckets, sum_value=snap.sum
    )


def _families(stats: Stats) -> Iterator[Metric]:
    """Every metric family for ``stats`` (empty families are left out)."""
    if stats.appends_total is not None:
        yield CounterMetricFamily(
            PREFIX + "appends_total",
            "Appends (and erasures) acknowledged since the archivist opened.",
            value=stats.appends_total,
        )
    if stats.append_rejections_total is not None:
        rejections = CounterMetricFamily(
            PREFIX + "append_rejections_total",
            "Appends refused since the archivist opened, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(stats.append_rejections_total.items()):
            rejections.add_metric([reason], count)
        yield rejections
    for name, documentation, field in _HISTOGRAMS:
        snap: HistogramSnapshot | None = getattr(stats, field)
        if snap is not None:
            yield _histogram(name, documentation, snap)
    for name, documentation, field in _BACKEND_COUNTERS:
        family = _backend_family(
            CounterMetricFamily, name, documentation, field, stats.backends
        )
        if family.samples:
            yield family
    for name, documentation, field in _BACKEND_GAUGES:
        family = _backend_family(
            GaugeMetricFamily, name, documentation, field, stats.backends
        )
        if family.samples:
            yield family
    journal = stats.journal
    yield CounterMetricFamily(
        PREFIX + "entries_journaled_total",
        "Entries ever journaled (the journal's high-water sequence number).",
        value=journal.entries_journaled_total,
    )
    yield CounterMetricFamily(
        PREFIX + "lost_entries_total",
        "Acknowledged entries found missing from the journal.",
        value=journal.lost_entries,
    )
    yield CounterMetricFamily(
        PREFIX + "repaired_rows_total",
        "Damaged bookkeeping rows of the journal found and rebuilt at open.",
        value=journal.repaired_rows,
    )
    for name, documentation, value in (
        ("journal_size_bytes", "Size of the journal file.", journal.size_bytes),
        ("wal_size_bytes", "Size of the journal's write-ahead log.", journal.wal_bytes),
        (
            "free_bytes",
            "Free bytes on the journal's filesystem (for an unprivileged writer).",
            journal.free_bytes,
        ),
        ("journal_entries", "Entries the journal holds now.", journal.entries),
        (
            "journal_quarantined_entries",
            "Damaged entries held in the journal's quarantine, each counted once.",
            journal.quarantined,
        ),
    ):
        if value is not None:
            yield GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _every_family() -> Iterator[Metric]:
    """Every family ``collect`` may yield, without samples (for ``describe``)."""
    counter, gauge = CounterMetricFamily, GaugeMetricFamily
    yield counter(PREFIX + "appends_total", "")
    yield counter(PREFIX + "append_rejections_total", "", labels=["reason"])
    for name, _, _ in _HISTOGRAMS:
        yield HistogramMetricFamily(PREFIX + name, "")
    for name, _, _ in _BACKEND_COUNTERS:
        yield counter(PREFIX + name, "", labels=["backend"])
    for name, _, _ in _BACKEND_GAUGES:
        yield gauge(PREFIX + name, "", labels=["backend"])
    for name in (
        "entries_journaled_total",
        "lost_entries_total",
        "repaired_rows_total",
    ):
        yield counter(PREFIX + name, "")
    for name in (
        "journal_size_bytes",
        "wal_size_bytes",
        "free_bytes",
        "journal_entries",
        "journal_quarantined_entries",
    ):
        yield gauge(PREFIX + name, "")


@final
class ArchivistCollector:
    """A ``prometheus_client`` collector that reports ``source()`` on each scrape.

    Args:
        source: returns the ``Stats`` to report, e.g. ``archivist.stats``.
        loop: the event loop ``source`` must run on (the archivist's); a scrape
            from another thread runs it there. None: call it wherever scraped.
        timeout: seconds such a scrape waits for the loop; past it the scrape
            fails with ``TimeoutError`` (Prometheus records a failed scrape).
    """

    def __init__(
        self,
        source: Callable[[], Stats],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout: float = SCRAPE_TIMEOUT,
    ) -> None:
        self._source = source
        self._loop = loop
        self._timeout = timeout

    def collect(self) -> Iterator[Metric]:
        """The metric families of one ``source()`` call."""
        return _families(self._read())

    def describe(self) -> Iterator[Metric]:
        """Every family this collector may report (names only, no samples)."""
        return _every_family()

    def _read(self) -> Stats:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self._source()  # nothing changes the state under us
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return self._source()
        future: concurrent.futures.Future[Stats] = concurrent.futures.Future()

        def call() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._source())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # closed meanwhile: nothing runs on it any more
            return self._source()
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the archivist's event loop did not answer within {self._timeout}s"
            ) from None


def register(
    archivist_or_source: Archivist | Callable[[], Stats],
    registry: CollectorRegistry = REGISTRY,
) -> ArchivistCollector:
    """Report an archivist's ``stats()`` to ``registry`` on every scrape.

    Given an ``Archivist``, scrapes from other threads run ``stats()`` on its
    event loop; given a callable returning ``Stats``, it is called as scraped.
    Returns the collector (``registry.unregister(collector)`` removes it).

    Raises:
        TypeError: ``archivist_or_source`` is neither (an ``Archivist.open(...)``
            not yet awaited, say).
        ValueError: ``registry`` already has a metric of these names (another
            archivist's collector): use one registry per archivist.
    """
    if isinstance(archivist_or_source, Archivist):
        archivist = archivist_or_source
        collector = ArchivistCollector(
            archivist.stats,
            # The loop that opened it: the only one that changes its state.
            loop=archivist._loop,
        )
    elif callable(archivist_or_source):
        collector = ArchivistCollector(archivist_or_source)
    else:
        raise TypeError(
            "register() takes an Archivist or a callable returning Stats, got"
            f" {type(archivist_or_source).__name__}"
        )
    registry.register(collector)
    return collector
