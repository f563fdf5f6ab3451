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
- A delivery attempt that fails is retried with backoff. While the backend is
  UNHEALTHY, ``health_check`` is probed first; a failing probe is an outage and
  does not use up the batch's attempts. A BEST_EFFORT batch that exhausts its
  attempts (or fails with a non-retryable error) is given up on only if the probe
  then passes -- so an outage never dead-letters entries -- and is bisected until
  the poison entry is alone, which is dead-lettered. Each of these decisions is
  ``_delivery``'s (pure, tested directly); this module carries them out.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from ._backlog import Book, Settlement
from ._batching import Entry, bisect, coalesce
from ._delivery import (
    Step,
    after_failure,
    after_judging,
    before_attempt,
    is_retryable,
    judging_pause,
    retry_delay,
)
from ._errors import ArchivistClosed, BackendError
from ._failure import describe
from ._health import BackendHealth, status_for
from ._policies import FailureMode, OverflowPolicy
from ._records import decode_entry
from ._throttle import Throttle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus

    from ._config import Registration
    from ._ledger import Handover
    from ._reader import Reader
    from ._rows import BackendRow

__all__ = ["Settlement", "SyncWaiter", "Writer"]

logger = logging.getLogger("journal_archivist.writer")

#: Seconds between WARNING lines about dropped entries, per backend.
DROP_LOG_INTERVAL: Final = 10.0


class SyncWaiter:
    """An appender waiting for one entry to be settled by one backend.

    Once ``event`` is set, ``error`` is None if the entry was delivered, or says
    why not; ``final`` tells an entry that will never be delivered (dropped,
    quarantined) from one that stays journaled and is retried.
    """

    __slots__ = ("error", "event", "final", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.event = anyio.Event()
        self.error: str | None = None
        self.final = False

    @classmethod
    def dropped(cls, overflow: OverflowPolicy) -> SyncWaiter:
        """A waiter for an entry the overflow policy dropped: already settled."""
        waiter = cls(0)
        waiter.finish(f"dropped by {overflow.name} (the backlog was full)", final=True)
        return waiter

    def finish(self, error: str | None = None, *, final: bool = False) -> None:
        """Wake the appender; ``error`` says why the entry was not delivered."""
        if not self.event.is_set():
            self.error = error
            self.final = final
            self.event.set()


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
        self._backend = registration.backend
        self._retry = registration.retry
        self._best_effort = registration.failure_mode is FailureMode.BEST_EFFORT
        self._reader = reader
        self._on_settled: Callable[[Writer, Settlement], None] = lambda w, s: None
        self._dropped_at_open = row.dropped
        self._drop_log = Throttle(DROP_LOG_INTERVAL)
        self._retry_after = 0.0
        self._gate: anyio.Event | None = None

        # Health.
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._streak_logged = False

        self._waiters: list[SyncWaiter] = []
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self.draining = False
        self.closed = False

    def attach(self, on_settled: Callable[[Writer, Settlement], None]) -> None:
        """Report each settled batch to ``on_settled`` (the committer)."""
        self._on_settled = on_settled

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
        self.book.gate_closed = True
        if self._gate is None:
            self._gate = anyio.Event()

    def open_gate(self) -> None:
        """Let the writer claim entries again."""
        self.book.gate_closed = False
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
            self._finish_waiters(
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

    def waiter_for(self, seq: int, targets: int, lost: set[int]) -> SyncWaiter:
        """The waiter of a Sync append journaled as ``seq`` for ``targets``
        (``lost``: the round's seqs DROP_OLDEST dropped here at once): settled
        already if its entry was dropped."""
        if not targets & self.mask:
            return SyncWaiter.dropped(self.policy.overflow)
        if seq in lost:
            return SyncWaiter.dropped(OverflowPolicy.DROP_OLDEST)
        return self.add_waiter(seq)

    def add_waiter(self, seq: int) -> SyncWaiter:
        """Register an appender waiting for entry ``seq`` to be settled here."""
        waiter = SyncWaiter(seq)
        if seq <= self.book.settled_upto:
            waiter.finish()
        else:
            self._waiters.append(waiter)
        return waiter

    def remove_waiter(self, waiter: SyncWaiter) -> None:
        """Forget a waiter whose appender stopped waiting."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def start_draining(self) -> None:
        """Deliver what is pending without lingering for fuller batches."""
        self.draining = True
        self._wakeup.set()

    # -- introspection -------------------------------------------------------

    def health(self) -> BackendHealth:
        """A snapshot of this backend's delivery state."""
        book = self.book
        tally = book.tally
        oldest: float | None = None
        if tally.pending > 0:
            head = book.head()
            oldest = head.enqueued_at if head is not None else book.oldest_hint
        return BackendHealth(
            name=self.name,
            enabled=self.enabled,
            status=status_for(self.consecutive_failures),
            last_error=self.last_error,
            consecutive_failures=self.consecutive_failures,
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
        self._finish_waiters(
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
        from_journal = bool(book.prefetch)
        batch = book.claim(max_rows, self.policy.max_batch_bytes)
        if from_journal:
            # In-memory entries carry their records already; these are decoded.
            for entry in batch:
                if entry.damage is None:
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
            await self._deliver_part(live, dead)
        self._settle(batch, dead)

    async def _deliver_part(
        self, entries: Sequence[Entry], dead: list[tuple[Entry, str, int]]
    ) -> None:
        """Deliver ``entries`` or dead-letter their poison into ``dead``; each
        step is ``_delivery``'s decision, carried out here."""
        groups = coalesce(entries)
        attempt = 0
        while True:
            step = before_attempt(self.consecutive_failures)
            if step is Step.PROBE_FIRST and not await self._probe(entries):
                await anyio.sleep(self._backoff(self.consecutive_failures))
                continue
            attempt += 1
            try:
                await self._call(lambda: self._backend.write_batch(groups))
            except Exception as exc:
                self._record_failure(exc, entries)
                step = after_failure(
                    attempt=attempt,
                    max_attempts=self._retry.max_attempts,
                    retryable=is_retryable(exc),
                    best_effort=self._best_effort,
                )
                if step is Step.JUDGE:
                    await self._honour_retry_after()
                    step = after_judging(
                        healthy=await self._probe(entries), entries=len(entries)
                    )
                if step is Step.DEAD_LETTER:
                    dead.append((entries[0], describe(exc), attempt))
                    return
                if step is Step.BISECT:
                    left, right = bisect(entries)
                    await self._deliver_part(left, dead)
                    await self._deliver_part(right, dead)
                    return
                await anyio.sleep(self._backoff(attempt))
                continue
            self._record_success()
            return

    async def _honour_retry_after(self) -> None:
        asked, self._retry_after = self._retry_after, 0.0
        if asked:
            await anyio.sleep(judging_pause(asked))

    def _backoff(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (``_delivery.retry_delay``)."""
        asked, self._retry_after = self._retry_after, 0.0
        return retry_delay(self._retry.delay(attempt), asked)

    async def _probe(self, entries: Sequence[Entry]) -> bool:
        """Whether the backend passes its health check (a failure is recorded)."""
        try:
            await self._call(self._backend.health_check)
        except Exception as exc:
            self._record_failure(exc, entries, probe=True)
            return False
        return True

    async def _call(self, fn: Callable[[], Awaitable[None]]) -> None:
        timeout = self._retry.attempt_timeout
        with anyio.fail_after(math.inf if timeout is None else timeout):
            await fn()

    def _record_failure(
        self, exc: Exception, entries: Sequence[Entry], *, probe: bool = False
    ) -> None:
        self.consecutive_failures += 1
        self.last_error = describe(exc)
        if isinstance(exc, BackendError) and exc.retry_after is not None:
            self._retry_after = exc.retry_after
        what = "health check" if probe else f"delivery of {len(entries)} entries"
        if not self._streak_logged:
            self._streak_logged = True
            # The traceback of an unexpected exception is logged once per streak.
            logger.warning(
                "backend %r: %s failed: %s",
                self.name,
                what,
                self.last_error,
                exc_info=exc
                if not isinstance(exc, BackendError | TimeoutError)
                else None,
            )
        elif self.consecutive_failures & (self.consecutive_failures - 1) == 0:
            logger.warning(
                "backend %r: %s failed again (%d in a row): %s",
                self.name,
                what,
                self.consecutive_failures,
                self.last_error,
            )
        if not self._best_effort:
            # Every waiting Sync appender hears of it: its entry is in this batch
            # or queued behind it, so its delivery is held up by this failure.
            error = self.last_error
            self._finish_waiters(lambda w: True, lambda w: error)

    def _record_success(self) -> None:
        if self.consecutive_failures:
            logger.info(
                "backend %r: delivering again after %d failures",
                self.name,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self._streak_logged = False
        self._retry_after = 0.0

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
        self._finish_waiters(
            lambda w: w.seq <= upto, lambda w: failed.get(w.seq), final=True
        )
        self._on_settled(self, settlement)
        self._signal_progress()

    def _finish_waiters(
        self,
        match: Callable[[SyncWaiter], bool],
        error_for: Callable[[SyncWaiter], str | None],
        *,
        final: bool = False,
    ) -> None:
        """Wake the waiters ``match`` selects; ``error_for`` says why one failed
        (``final``: its entry will never be delivered)."""
        if not self._waiters:
            return
        keep: list[SyncWaiter] = []
        for waiter in self._waiters:
            if match(waiter):
                waiter.finish(error_for(waiter), final=final)
            else:
                keep.append(waiter)
        self._waiters = keep
