"""One writer loop per backend: take a batch, coalesce, dispatch, settle, repeat.

Rules and theory:
- The backend's state (counters, cursor, drop floor, where its untaken entries
  are) is its ``Book`` (``_backlog``), shared with the committer; the writer
  asks it for the next batch or the journal range to read, and tells it what
  was settled. Settling a batch hands a ``Settlement`` to the committer, which
  marks the entries done in the journal with its next persisting commit.
- The committer closes the claim gate before a transaction that may drop
  entries (DROP_OLDEST) and opens it after; the writer claims only while it is
  open, so an entry is never both dropped and delivered.
- Delivering a batch (attempts, retries, probes, bisection, dead letters) is
  the ``Dispatcher``'s (``_dispatch``), as ``_delivery`` decides each step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from ._backlog import Book, Settlement
from ._dispatch import Dispatcher
from ._errors import ArchivistClosed
from ._health import BackendHealth, status_for
from ._policies import FailureMode
from ._records import decode_entry
from ._throttle import Throttle
from ._waiters import Waiters

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from ._batching import Entry
    from ._config import Registration
    from ._ledger import Handover
    from ._metrics import Metrics
    from ._reader import Reader
    from ._rows import BackendRow

__all__ = ["Settlement", "Writer"]

logger = logging.getLogger("journal_archivist.writer")

#: Seconds between WARNING lines about dropped entries, per backend.
DROP_LOG_INTERVAL: Final = 10.0


class Writer:
    """The delivery loop of one registered backend."""

    def __init__(
        self,
        registration: Registration,
        row: BackendRow,
        reader: Reader,
        *,
        tail: int,
        oldest_pending_at: float | None,
    ) -> None:
        self.registration = registration
        self.name = registration.name
        self.mask = row.mask
        self.bit = row.bit
        self.enabled = registration.enabled
        policy = registration.write_policy
        self.policy = policy
        #: This backend's state, shared with the committer.
        self.book = Book(
            self.name, policy, row, tail=tail, oldest_pending_at=oldest_pending_at
        )
        self._dispatcher = Dispatcher(
            self.name,
            registration.backend,
            registration.retry,
            best_effort=registration.failure_mode is FailureMode.BEST_EFFORT,
            held_up=self._held_up,
        )
        self._reader = reader
        self._on_settled: Callable[[Writer, Settlement], None] = lambda w, s: None
        self._dropped_at_open = row.dropped
        self._drop_log = Throttle(DROP_LOG_INTERVAL)
        self._gate: anyio.Event | None = None

        #: The Sync appenders waiting for entries to be settled here.
        self.waiters = Waiters(self.book, policy.overflow)
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self.draining = False
        self.closed = False

    def attach(
        self, on_settled: Callable[[Writer, Settlement], None], metrics: Metrics
    ) -> None:
        """Report each settled batch to ``on_settled`` (the committer), and each
        failed delivery attempt to ``metrics``."""
        self._on_settled = on_settled
        self._dispatcher.on_failed_attempt = metrics.delivery_failed

    @property
    def settled_upto(self) -> int:
        """Every entry owed here up to this seq is settled."""
        return self.book.settled_upto

    @property
    def drop_floor(self) -> int:
        """See ``Book.drop_floor``."""
        return self.book.drop_floor

    # -- called by the committer (synchronously, between its awaits) -----------

    def close_gate(self) -> None:
        """Stop claiming entries until ``open_gate`` (a DROP_OLDEST is deciding)."""
        self.book.hold_claims(True)
        if self._gate is None:
            self._gate = anyio.Event()

    def open_gate(self) -> None:
        """Let the writer claim entries again."""
        self.book.hold_claims(False)
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def take(self, handover: Handover, tail: int) -> None:
        """Apply what a committed round means for this backend (``tail``: the
        newest seq journaled) and wake the loop."""
        book = self.book
        dropped = handover.dropped_oldest
        if dropped:
            book.dropped_oldest(dropped)
            self._log_drops(len(dropped))
            seqs = {seq for seq, _ in dropped}
            self.waiters.finish(
                lambda w: w.seq in seqs,
                lambda w: "dropped by DROP_OLDEST (the backlog was full)",
                final=True,
            )
            self._signal_progress()
        if handover.dropped_new:
            book.dropped_new(handover.dropped_new)
            self._log_drops(handover.dropped_new)
        if handover.entries:
            book.journaled(handover.entries, tail, handover.nbytes)
            self._wakeup.set()

    def _log_drops(self, count: int) -> None:
        """Log drops at WARNING, at most once per ``DROP_LOG_INTERVAL`` seconds."""
        reported = self._drop_log.due(count)
        if reported is not None:
            policy = self.policy
            limit = f"{policy.capacity} entries"
            if policy.capacity_bytes is not None:
                limit += f" or {policy.capacity_bytes} bytes"
            logger.warning(
                "backend %r: backlog full (%s, capacity %s): dropped %d entries"
                " (%d since open)",
                self.name,
                policy.overflow.name,
                limit,
                reported,
                self.book.tally.dropped - self._dropped_at_open,
            )

    def start_draining(self) -> None:
        """Deliver what is pending without lingering for fuller batches."""
        self.draining = True
        self._wakeup.set()

    # -- introspection -------------------------------------------------------

    def health(self) -> BackendHealth:
        """A snapshot of this backend's delivery state."""
        tally = self.book.tally
        oldest = self.book.oldest_pending_at()
        return BackendHealth(
            name=self.name,
            enabled=self.enabled,
            status=status_for(self._dispatcher.consecutive_failures),
            last_error=self._dispatcher.last_error,
            consecutive_failures=self._dispatcher.consecutive_failures,
            lag_entries=tally.pending,
            lag_bytes=tally.pending_bytes,
            oldest_pending_age=None
            if oldest is None
            else max(0.0, time.time() - oldest),
            delivered=tally.delivered,
            dropped=tally.dropped,
            dead_lettered=tally.dead_lettered,
            quarantined=tally.quarantined,
        )

    async def wait_settled(self) -> None:
        """Wait until nothing is pending for this backend.

        Raises ``ArchivistClosed`` if the writer stops first.
        """
        while self.book.pending > 0:
            if self.closed:
                raise ArchivistClosed()
            progress = self._progress
            await progress.wait()

    def close(self) -> None:
        """The loop has stopped: wake everyone still waiting on this writer."""
        self.closed = True
        self.waiters.finish(
            lambda w: True, lambda w: "the archivist shut down before delivery"
        )
        self._signal_progress()

    # -- the loop ------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver forever; cancel to stop (undelivered entries stay journaled)."""
        task_status.started()
        while True:
            await self._wait_for_work()
            await self._linger()
            batch = await self._take_batch()
            if batch:
                await self._deliver(batch)
            elif self.book.exhausted:
                self._repair_backlog()

    def _repair_backlog(self) -> None:
        """The backlog count says entries are owed, yet none is left to take.

        The count is exact (kept with the entries, checked at open), so owed
        entries are missing from the journal: a damaged journal (or a bug). They
        are counted in ``lost_entries`` and the count settled, loudly.
        """
        book = self.book
        logger.error(
            "backend %r: %d entries it is owed are missing from the journal"
            " (health().journal.lost_entries counts them)",
            self.name,
            book.undispatched,
        )
        self._settle([], [], drift=(book.undispatched, book.tally.pending_bytes))

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    async def _wait_for_work(self) -> None:
        while self.book.undispatched <= 0:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    async def _linger(self) -> None:
        window = self.policy.batch_window_ms
        book = self.book
        max_batch = self.policy.max_batch
        if window <= 0 or self.draining or book.undispatched >= max_batch:
            return
        with anyio.move_on_after(window / 1000):
            while book.undispatched < max_batch and not self.draining:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()

    async def _take_batch(self) -> list[Entry]:
        """Claim the next batch of untaken entries, in seq order."""
        book = self.book
        max_rows = self.policy.max_batch
        if book.unread:
            start, stop = book.read_range()  # stop may move while we read
            rows = await self._reader.pending(
                self.mask, start, stop, max_rows, book.drop_floor
            )
            book.read_done(rows, stop, max_rows)
        while self._gate is not None:
            await self._gate.wait()
        # From here to the end nothing awaits: the claim is atomic w.r.t. drops.
        batch = book.claim(max_rows, self.policy.max_batch_bytes)
        if batch and batch[0].records is None:
            # Read from the journal (in-memory entries carry their records).
            for entry in batch:
                if entry.damage is None and entry.records is None:
                    try:
                        entry.records = decode_entry(entry.payload, entry.op)
                    except msgspec.DecodeError as exc:
                        entry.damage = f"undecodable payload: {exc}"
                    else:
                        entry.payload = b""  # the records are what is delivered
        return batch

    async def _deliver(self, batch: list[Entry]) -> None:
        dead: list[tuple[Entry, str, int]] = []
        live = [e for e in batch if e.damage is None]
        if live:
            await self._dispatcher.deliver(live, dead)
        self._settle(batch, dead)

    def _held_up(self, error: str) -> None:
        """A REQUIRED backend failed: every waiting Sync appender hears of it
        (its entry is in the batch or queued behind it)."""
        self.waiters.finish(lambda w: True, lambda w: error)

    def _settle(
        self,
        batch: list[Entry],
        dead: list[tuple[Entry, str, int]],
        *,
        drift: tuple[int, int] | None = None,
    ) -> None:
        settlement, drifted = self.book.settle(batch, dead, drift=drift)
        if drifted is not None:
            logger.error(
                "backend %r: backlog count drifted to %d entries, %d bytes; reset",
                self.name,
                *drifted,
            )
        for entry, error, _ in dead:
            logger.error(
                "backend %r: entry %d dead-lettered: %s", self.name, entry.seq, error
            )
        for seq, reason in settlement.damaged:
            logger.error("backend %r: entry %d quarantined: %s", self.name, seq, reason)
        failed = {seq: f"quarantined: {reason}" for seq, reason in settlement.damaged}
        upto = settlement.upto
        self.waiters.finish(
            lambda w: w.seq <= upto, lambda w: failed.get(w.seq), final=True
        )
        self._on_settled(self, settlement)
        self._signal_progress()
