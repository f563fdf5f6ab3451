"""The Prometheus collector reports exactly the numbers of ``Stats``.

Rendered with ``generate_latest`` on a fresh registry and parsed back with
``prometheus_client``'s own parser, so names, types and values are checked as a
Prometheus server would read them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from journal_archivist import Archivist
from journal_archivist._stats import (
    BackendStats,
    HistogramSnapshot,
    JournalStats,
    Stats,
)
from journal_archivist.prometheus import ArchivistCollector, register
from tests.helpers import records, registration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from uuid import UUID

    from prometheus_client.metrics_core import Metric

P = "journal_archivist_"


def _histogram(bounds: tuple[float, ...], counts: tuple[int, ...]) -> HistogramSnapshot:
    return HistogramSnapshot(
        bounds=bounds, counts=counts, count=counts[-1] + 1, sum=12.5
    )


def _backend(name: str, base: int, *, up: bool | None) -> BackendStats:
    return BackendStats(
        name=name,
        enabled=True,
        up=up,
        pending_entries=base + 1,
        pending_bytes=base + 2,
        oldest_pending_age=base + 3.5,
        delivered_total=base + 4,
        dropped_total=base + 5,
        dead_lettered_total=base + 6,
        quarantined_total=base + 7,
        failed_attempts_total=base + 8,
        dead_letters=base + 9,
        quarantine=base + 10,
    )


#: Every field set, each number distinct, so a value read from the wrong field shows.
FULL = Stats(
    journal=JournalStats(
        path="/data/journal.db",
        size_bytes=4096,
        wal_bytes=8192,
        free_bytes=1 << 30,
        entries_journaled_total=77,
        entries=5,
        lost_entries=2,
        repaired_rows=3,
        quarantined=4,
        lock_holder_pid=1234,
    ),
    backends=(_backend("alpha", 100, up=True), _backend("beta", 200, up=False)),
    appends_total=70,
    append_rejections_total={
        "queue_full": 1,
        "journal_full": 2,
        "validation": 3,
        "write_failed": 4,
        "closed": 5,
    },
    commit_batch_size=_histogram((1.0, 2.0, 4.0), (3, 5, 6)),
    commit_duration_seconds=_histogram((0.001, 0.01), (1, 4)),
    append_latency_seconds=_histogram((0.5,), (9,)),
)

#: Sample name -> family type, for every family the collector exports.
TYPES = {
    "appends_total": "counter",
    "append_rejections_total": "counter",
    "commit_batch_size_entries": "histogram",
    "commit_duration_seconds": "histogram",
    "append_latency_seconds": "histogram",
    "delivered_entries_total": "counter",
    "delivery_failures_total": "counter",
    "dropped_entries_total": "counter",
    "dead_lettered_entries_total": "counter",
    "quarantined_entries_total": "counter",
    "pending_entries": "gauge",
    "pending_bytes": "gauge",
    "oldest_pending_age_seconds": "gauge",
    "backend_up": "gauge",
    "backend_enabled": "gauge",
    "dead_letter_rows": "gauge",
    "quarantine_rows": "gauge",
    "journal_size_bytes": "gauge",
    "wal_size_bytes": "gauge",
    "free_bytes": "gauge",
    "journal_entries": "gauge",
    "journal_quarantined_entries": "gauge",
    "entries_journaled_total": "counter",
    "lost_entries_total": "counter",
    "repaired_rows_total": "counter",
}

#: Per-backend sample name -> the BackendStats field it reports.
BACKEND_FIELDS = {
    "delivered_entries_total": "delivered_total",
    "delivery_failures_total": "failed_attempts_total",
    "dropped_entries_total": "dropped_total",
    "dead_lettered_entries_total": "dead_lettered_total",
    "quarantined_entries_total": "quarantined_total",
    "pending_entries": "pending_entries",
    "pending_bytes": "pending_bytes",
    "oldest_pending_age_seconds": "oldest_pending_age",
    "backend_up": "up",
    "backend_enabled": "enabled",
    "dead_letter_rows": "dead_letters",
    "quarantine_rows": "quarantine",
}


def scrape(registry: CollectorRegistry) -> dict[str, Metric]:
    """The families ``registry`` renders, parsed back, by family name."""
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(
    families: dict[str, Metric],
) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in families.values():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with ``labels``."""
    (found,) = [v for n, ls, v in samples(families) if n == P + name and ls == labels]
    return found


def registry_of(stats: Stats) -> CollectorRegistry:
    registry = CollectorRegistry()
    register(lambda: stats, registry)
    return registry


def family_name(sample_name: str, kind: str) -> str:
    # The parser names a counter's family without its _total suffix.
    return sample_name.removesuffix("_total") if kind == "counter" else sample_name


class TestFullStats:
    def test_every_metric_is_exported_with_its_type(self) -> None:
        families = scrape(registry_of(FULL))
        got = {name: family.type for name, family in families.items()}
        assert got == {
            P + family_name(name, kind): kind for name, kind in TYPES.items()
        }

    def test_every_name_has_the_prefix_and_labels_are_backend_or_reason(self) -> None:
        families = scrape(registry_of(FULL))
        for name, labels, _ in samples(families):
            assert name.startswith(P)
            assert set(labels) <= {"backend", "reason", "le"}, name
            if "le" in labels:
                assert name.endswith("_bucket")

    def test_counters_end_in_total(self) -> None:
        for name, kind in TYPES.items():
            assert name.endswith("_total") == (kind == "counter"), name

    def test_archivist_values_equal_the_stats(self) -> None:
        families = scrape(registry_of(FULL))
        assert value(families, "appends_total") == 70
        assert FULL.append_rejections_total is not None
        for reason, count in FULL.append_rejections_total.items():
            assert value(families, "append_rejections_total", reason=reason) == count

    def test_journal_values_equal_the_stats(self) -> None:
        families = scrape(registry_of(FULL))
        journal = FULL.journal
        assert value(families, "journal_size_bytes") == journal.size_bytes
        assert value(families, "wal_size_bytes") == journal.wal_bytes
        assert value(families, "free_bytes") == journal.free_bytes
        assert value(families, "journal_entries") == journal.entries
        assert value(families, "journal_quarantined_entries") == journal.quarantined
        assert (
            value(families, "entries_journaled_total")
            == journal.entries_journaled_total
        )
        assert value(families, "lost_entries_total") == journal.lost_entries
        assert value(families, "repaired_rows_total") == journal.repaired_rows

    @pytest.mark.parametrize("name", sorted(BACKEND_FIELDS))
    def test_backend_values_equal_the_stats(self, name: str) -> None:
        families = scrape(registry_of(FULL))
        for backend in FULL.backends:
            expected = getattr(backend, BACKEND_FIELDS[name])
            assert value(families, name, backend=backend.name) == float(expected)

    @pytest.mark.parametrize(
        ("name", "field"),
        [
            ("commit_batch_size_entries", "commit_batch_size"),
            ("commit_duration_seconds", "commit_duration_seconds"),
            ("append_latency_seconds", "append_latency_seconds"),
        ],
    )
    def test_histograms_equal_the_stats(self, name: str, field: str) -> None:
        families = scrape(registry_of(FULL))
        snap: HistogramSnapshot = getattr(FULL, field)
        buckets = {
            float(labels["le"]): v
            for n, labels, v in samples(families)
            if n == P + name + "_bucket"
        }
        assert buckets == {
            **dict(zip(snap.bounds, map(float, snap.counts), strict=True)),
            float("inf"): snap.count,
        }
        assert value(families, name + "_count") == snap.count
        assert value(families, name + "_sum") == snap.sum


def test_none_fields_are_not_exported() -> None:
    sparse = Stats(
        journal=JournalStats(
            path="/j",
            size_bytes=1,
            wal_bytes=0,
            free_bytes=None,
            entries_journaled_total=0,
            entries=None,
            lost_entries=0,
            repaired_rows=0,
            quarantined=0,
        ),
        backends=(
            BackendStats(
                name="disk",
                enabled=True,
                up=None,
                pending_entries=0,
                pending_bytes=0,
                oldest_pending_age=None,
                delivered_total=0,
                dropped_total=0,
                dead_lettered_total=0,
                quarantined_total=0,
            ),
        ),
    )
    families = scrape(registry_of(sparse))
    names = {name.removeprefix(P) for name in families}
    assert names == {
        "delivered_entries",
        "dropped_entries",
        "dead_lettered_entries",
        "quarantined_entries",
        "pending_entries",
        "pending_bytes",
        "backend_enabled",
        "journal_size_bytes",
        "wal_size_bytes",
        "journal_quarantined_entries",
        "entries_journaled",
        "lost_entries",
        "repaired_rows",
    }


def test_two_collectors_on_one_registry_are_refused() -> None:
    registry = registry_of(FULL)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(lambda: FULL, registry)


def test_register_refuses_what_is_neither_an_archivist_nor_a_source() -> None:
    with pytest.raises(TypeError, match=r"an Archivist or a callable.*got Stats"):
        register(FULL, CollectorRegistry())  # type: ignore[arg-type]


def test_source_is_called_once_per_scrape() -> None:
    calls = []

    def source() -> Stats:
        calls.append(1)
        return FULL

    registry = CollectorRegistry()
    register(source, registry)
    assert calls == []  # registering does not scrape
    scrape(registry)
    scrape(registry)
    assert len(calls) == 2


def test_a_scrape_from_another_thread_waits_for_the_loop_at_most_its_timeout() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    release = threading.Event()
    try:
        ran_on: list[int] = []

        def source() -> Stats:
            ran_on.append(threading.get_ident())
            return FULL

        collector = ArchivistCollector(source, loop=loop, timeout=0.05)
        assert len(list(collector.collect())) > 0
        assert ran_on == [thread.ident]  # run on the loop, not here
        loop.call_soon_threadsafe(release.wait)  # the loop is stuck
        with pytest.raises(TimeoutError, match=r"did not answer within 0\.05s"):
            list(collector.collect())
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert len(ran_on) == 1  # the timed-out call was cancelled, not run late
    list(collector.collect())  # a closed loop: called right here
    assert ran_on[-1] == threading.get_ident()


class TestLiveArchivist:
    async def test_a_scrape_reports_what_stats_reports(
        self, journal_path: Path, session: UUID
    ) -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            await archivist.append_messages(session, records(session, 2))
            with anyio.fail_after(5):
                await archivist.wait_drained()
            registry = CollectorRegistry()
            collector = register(archivist, registry)
            stats = archivist.stats()
            on_loop = scrape(registry)  # as an ASGI app scrapes: on the loop
            from_thread = await anyio.to_thread.run_sync(scrape, registry)
            registry.unregister(collector)
        for families in (on_loop, from_thread):
            assert value(families, "appends_total") == stats.appends_total == 1
            assert (
                value(families, "entries_journaled_total")
                == stats.journal.entries_journaled_total
            )
            assert value(families, "delivered_entries_total", backend="mock") == 1
            assert value(families, "backend_up", backend="mock") == 1
            assert value(families, "pending_entries", backend="mock") == 0
            assert value(families, "commit_batch_size_entries_count") == 1
            assert value(families, "append_latency_seconds_count") == 1


def test_a_missing_prometheus_client_names_the_extra() -> None:
    code = """
import sys
import journal_archivist
assert "prometheus_client" not in sys.modules, "imported prometheus_client"
sys.modules["prometheus_client"] = None  # as if the extra were not installed
try:
    import journal_archivist.prometheus
except ImportError as exc:
    print(exc)
    print(type(exc.__cause__).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "journal_archivist.prometheus needs prometheus-client:"
        " pip install 'journal-archivist[prometheus]'",
        "ModuleNotFoundError",
    ]
