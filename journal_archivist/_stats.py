"""Stats: the plain-data numbers of an archivist, for dashboards and scripts.

Rules and theory:
- One shape for every consumer: ``Archivist.stats()`` (a live archivist), the
  ``journal-archivist status --json`` command (a journal read from disk, the
  owning service running or not) and the Prometheus collector all report these
  structs, so they cannot disagree on a number's name or meaning.
- Counters named ``*_total`` that the journal keeps (delivered, dropped,
  dead-lettered, quarantined, entries journaled) are exact across restarts. The
  others count since the archivist opened (``None`` where a reader of the file
  alone cannot know them: failed attempts, rejections, the histograms).
- Base units only: bytes, seconds, entries (one entry is one ``append_messages``
  or ``delete_session`` call).
Pure values: no I/O.
"""

from __future__ import annotations

import msgspec

__all__ = ["BackendStats", "HistogramSnapshot", "JournalStats", "Stats"]


class HistogramSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A histogram as Prometheus exposes one: cumulative counts per upper bound.

    ``counts[i]`` observations were ``<= bounds[i]``; ``count`` is all of them
    (the ``+Inf`` bucket) and ``sum`` their total.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float


class BackendStats(msgspec.Struct, frozen=True, kw_only=True):
    """One backend's numbers.

    ``pending_entries``/``pending_bytes``: journaled for it and not yet settled;
    ``oldest_pending_age``: seconds since the oldest of them was journaled (None
    when nothing is pending). ``up``: its last delivery or probe succeeded (None
    when unknown, as for a journal read from disk). ``dead_letters`` and
    ``quarantine`` are the rows held for it now (they go with a purge, a replay or
    an erasure); the ``*_total`` counters never go down.
    """

    name: str
    enabled: bool
    up: bool | None
    pending_entries: int
    pending_bytes: int
    oldest_pending_age: float | None
    delivered_total: int
    dropped_total: int
    dead_lettered_total: int
    quarantined_total: int
    #: Delivery attempts that failed since the archivist opened (None: unknown).
    failed_attempts_total: int | None = None
    dead_letters: int | None = None
    quarantine: int | None = None


class JournalStats(msgspec.Struct, frozen=True, kw_only=True):
    """The journal file's numbers.

    ``size_bytes`` is the main file, ``wal_bytes`` its write-ahead log;
    ``free_bytes`` the free space of its filesystem; ``high_water_seq`` the
    highest entry number ever used, which is also the number of entries ever
    journaled (``entries_journaled_total``); ``entries`` the rows it holds now.
    ``lock_holder_pid`` is the process that holds the journal open (None: none,
    or unknown).
    """

    path: str
    size_bytes: int
    wal_bytes: int
    free_bytes: int | None
    entries_journaled_total: int
    entries: int | None
    lost_entries: int
    repaired_rows: int
    quarantined: int
    lock_holder_pid: int | None = None


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Everything at once: the journal, each backend, and (live only) the
    append and commit counters and histograms since the archivist opened."""

    journal: JournalStats
    backends: tuple[BackendStats, ...]
    appends_total: int | None = None
    #: Appends refused, by reason: ``queue_full``, ``journal_full``,
    #: ``validation``, ``write_failed``, ``closed``.
    append_rejections_total: dict[str, int] | None = None
    commit_batch_size: HistogramSnapshot | None = None
    commit_duration_seconds: HistogramSnapshot | None = None
    append_latency_seconds: HistogramSnapshot | None = None
