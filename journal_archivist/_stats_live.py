"""Stats of a live archivist: ``collect_stats`` reads them from its runtime.

Rules and theory:
- Synchronous and cheap, so a dashboard may call it every second: it reads
  what the runtime holds in memory (each backend's book and health, the
  journal's high-water seq, the ``Metrics``), two ``os.stat`` calls and the
  space guard's ``statvfs`` (at most once a second). It never queries the
  journal, so ``entries`` and the rows held in ``dead_letters`` / ``quarantine``
  are None here (``journal-archivist status --json`` counts them from the file).
- It reads state the event loop changes: call it on the archivist's event loop
  (``ArchivistCollector`` goes there by itself when scraped from a thread).
- ``entries_journaled_total`` is the journal's high-water seq: seqs are never
  reused, and every entry journaled got the next one, so it is exact across
  restarts. (An append every backend dropped is acknowledged without a seq:
  ``appends_total`` counts it, ``entries_journaled_total`` does not.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._stats import BackendStats, JournalStats, Stats

if TYPE_CHECKING:
    from ._lifecycle import Runtime
    from ._metrics import Metrics

__all__ = ["collect_stats"]


def _size(path: str) -> int:
    """The size of the file at ``path`` in bytes; 0 if there is none."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def collect_stats(runtime: Runtime, metrics: Metrics) -> Stats:
    """The numbers of the archivist that ``runtime`` runs, ``metrics`` its counters.

    ``up`` is whether a backend's last delivery attempt or probe succeeded (None
    for a disabled backend, which makes none); a missing WAL counts 0 bytes.
    """
    journal = runtime.journal
    backends = []
    for writer in runtime.writers:
        health = writer.health()
        backends.append(
            BackendStats(
                name=health.name,
                enabled=health.enabled,
                up=health.consecutive_failures == 0 if health.enabled else None,
                pending_entries=health.lag_entries,
                pending_bytes=health.lag_bytes,
                oldest_pending_age=health.oldest_pending_age,
                delivered_total=health.delivered,
                dropped_total=health.dropped,
                dead_lettered_total=health.dead_lettered,
                quarantined_total=health.quarantined,
                failed_attempts_total=metrics.failed_attempts(health.name),
            )
        )
    return Stats(
        journal=JournalStats(
            path=journal.path,
            size_bytes=_size(journal.path),
            wal_bytes=_size(journal.path + "-wal"),
            free_bytes=runtime.space.current_free(),
            entries_journaled_total=journal.last_seq,
            entries=None,
            lost_entries=journal.lost_entries,
            repaired_rows=journal.repaired_rows,
            quarantined=len(journal.quarantined),
            # This process holds the journal open: it is the runtime's.
            lock_holder_pid=None if runtime.stopped else os.getpid(),
        ),
        backends=tuple(backends),
        appends_total=metrics.appends_total,
        append_rejections_total=metrics.rejections(),
        commit_batch_size=metrics.commit_batch_size.snapshot(),
        commit_duration_seconds=metrics.commit_duration_seconds.snapshot(),
        append_latency_seconds=metrics.append_latency_seconds.snapshot(),
    )
