"""One writer loop per backend: take a batch, coalesce, dispatch, settle, repeat.

Rules and theory:
- A writer takes its entries strictly in journal order. Everything it owed with
  ``seq <= last_taken`` is taken or settled; ``pending`` counts what it owes and has
  not settled (taken or not). Settling a batch hands a ``Settlement`` to the
  committer, which marks the entries done in the journal with its next commit.
- Untaken entries come from three places, in seq order: ``_prefetch`` (rows read
  from the journal), the unread journal range ``[_db_pos, _mem_from)``, and
  ``_mem`` (entries the committer handed over in memory right after committing
  them -- the fast path, which needs no read and no decode). ``_mem`` holds every
  entry owed to this backend with ``seq >= _mem_from``; when it would outgrow its
  bound it is emptied and ``_mem_from`` moves past the newest entry, so the writer
  reads the rest from the journal. An empty ``_mem`` takes what it is handed
  whatever its size. Entries keep their records, not their encoded payload.
- ``DROP_OLDEST`` drops the oldest *untaken* appends. The committer closes the
  claim gate before its transaction and opens it after; the writer claims entries
  only while the gate is open, and skips appends at or below ``_drop_floor``:
  exactly the rows the journal's ``drop_oldest`` picks (stored ``op`` 1), so an
  erasure, or a damaged row with another stored op, is kept. So an entry is never
  both dropped and delivered. The floor passes entries taken before the drop,
  which stay owed: in the journal, an append is dropped if it is under the floor
  *and* has lost its bit in ``targets``, so a batch in flight at a crash or
  shutdown is read again at the next open.
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
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from ._admission import Backlog
from ._batching import Entry, bisect, coalesce, cut
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
from ._records import Op, decode_entry
from ._throttle import Throttle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus

    from ._config import Registration
    from ._reader import Reader
    from ._rows import BackendRow

__all__ = ["Settlement", "SyncWaiter", "Writer"]

logger = logging.getLogger("journal_archivist.writer")

_APPEND: Final = int(Op.APPEND)
_ERASE: Final = int(Op.ERASE)

#: Seconds between WARNING lines about dropped entries, per backend.
DROP_LOG_INTERVAL: Final = 10.0
#: Entries a writer keeps in memory beyond what it has taken, at most.
MEM_MAX_ENTRIES: Final = 16_384
MEM_MAX_BYTES: Final = 32 * 1024 * 1024


@dataclass(slots=True)
class Settlement:
    """A settled batch, for the committer to mark done in the journal."""

    upto: int
    count: int
    nbytes: int
    delivered: int
    #: Entries the backlog count said were owed that are not in the journal.
    missing: int = 0
    dead: list[tuple[int, str, int]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)
    #: ``(session, seq)`` of each erasure settled (its session's parked copies
    #: from before it are purged with this settlement).
    erased: list[tuple[bytes, int]] = field(default_factory=list)


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
        self._backend = registration.backend
        self._retry = registration.retry
        self._best_effort = registration.failure_mode is FailureMode.BEST_EFFORT
        self._reader = reader
        self._on_settled: Callable[[Writer, Settlement], None] = lambda w, s: None

        # Backlog and counters, in memory (the committer mirrors them to the journal).
        self.pending = row.pending
        self.pending_bytes = row.pending_bytes
        self.delivered = row.delivered
        self.dropped = row.dropped
        self.dead_lettered = row.dead_lettered
        self.quarantined = row.quarantined
        self.cursor = row.cursor  # as last committed to the journal
        self._dropped_at_open = row.dropped
        self._drop_log = Throttle(DROP_LOG_INTERVAL)

        # Where the untaken entries are (see the module docstring).
        self.last_taken = row.cursor
        self._prefetch: deque[Entry] = deque()
        self._db_pos = row.cursor + 1
        self._mem: deque[Entry] = deque()
        self._mem_bytes = 0
        self._mem_from = tail + 1
        # DROP_OLDEST: the floor stored at open (the reader leaves out what was
        # dropped under it), and the floor of the drops since, for entries read
        # or handed over before a drop (see on_dropped_oldest).
        self._stored_floor = row.drop_floor
        self._drop_floor = 0
        self._retry_after = 0.0
        self._gate: anyio.Event | None = None
        self._inflight: Sequence[Entry] = ()
        self.settled_upto = row.cursor
        self._oldest_hint = oldest_pending_at

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

    # -- called by the committer (synchronously, between its awaits) -----------

    def backlog(self) -> Backlog:
        """A working copy of this backend's backlog for admission."""
        policy = self.policy
        return Backlog(
            self.name,
            self.mask,
            policy.overflow,
            policy.capacity,
            policy.capacity_bytes,
            self.pending,
            self.pending_bytes,
        )

    @property
    def drop_floor(self) -> int:
        """DROP_OLDEST dropped every append owed here up to this seq that is no
        longer in this backend's ``targets``."""
        return max(self._stored_floor, self._drop_floor)

    @property
    def in_flight(self) -> int:
        """Entries taken by the writer and not yet settled."""
        return len(self._inflight)

    @property
    def undispatched(self) -> int:
        """Entries owed and not yet taken (the ones DROP_OLDEST may drop)."""
        return self.pending - len(self._inflight)

    def close_gate(self) -> None:
        """Stop claiming entries until ``open_gate`` (a DROP_OLDEST is deciding)."""
        if self._gate is None:
            self._gate = anyio.Event()

    def open_gate(self) -> None:
        """Let the writer claim entries again."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def on_commit(self, entries: list[Entry], tail: int, nbytes: int) -> None:
        """Entries newly journaled for this backend (in seq order, ``nbytes`` in
        all) are committed; ``tail`` is the newest seq in the journal."""
        if not entries:
            return
        self.pending += len(entries)
        self.pending_bytes += nbytes
        if self._mem and (
            len(self._mem) + len(entries) > MEM_MAX_ENTRIES
            or self._mem_bytes + nbytes > MEM_MAX_BYTES
        ):
            # Fallen behind: forget the in-memory copies and read from the journal.
            # (Into an empty buffer entries always go, however large: their
            # records are in memory already, and reading them back would make a
            # second copy.)
            self._mem.clear()
            self._mem_bytes = 0
            self._mem_from = tail + 1
        else:
            self._mem.extend(entries)
            self._mem_bytes += nbytes
        self._wake()

    def count_dropped(self, count: int) -> None:
        """``count`` new entries were dropped before they were ever queued here."""
        if count:
            self.dropped += count
            self._log_drops(count)

    def on_dropped_oldest(self, dropped: Sequence[tuple[int, int]]) -> None:
        """Untaken entries ``(seq, size)`` were dropped (DROP_OLDEST), oldest first."""
        if not dropped:
            return
        self.pending -= len(dropped)
        self.pending_bytes -= sum(size for _, size in dropped)
        self.dropped += len(dropped)
        self._log_drops(len(dropped))
        self._drop_floor = max(self._drop_floor, dropped[-1][0])
        seqs = {seq for seq, _ in dropped}
        self._finish_waiters(
            lambda w: w.seq in seqs,
            lambda w: "dropped by DROP_OLDEST (the backlog was full)",
            final=True,
        )
        self._signal_progress()

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
                self.dropped - self._dropped_at_open,
            )

    def add_waiter(self, seq: int) -> SyncWaiter:
        """Register an appender waiting for entry ``seq`` to be settled here."""
        waiter = SyncWaiter(seq)
        if seq <= self.settled_upto:
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
        self._wake()

    # -- introspection -------------------------------------------------------

    def health(self) -> BackendHealth:
        """A snapshot of this backend's delivery state."""
        oldest: float | None = None
        if self.pending > 0:
            head = self._head()
            oldest = head.enqueued_at if head is not None else self._oldest_hint
        return BackendHealth(
            name=self.name,
            enabled=self.enabled,
            status=status_for(self.consecutive_failures),
            last_error=self.last_error,
            consecutive_failures=self.consecutive_failures,
            lag_entries=self.pending,
            lag_bytes=self.pending_bytes,
            oldest_pending_age=None
            if oldest is None
            else max(0.0, time.time() - oldest),
            delivered=self.delivered,
            dropped=self.dropped,
            dead_lettered=self.dead_lettered,
            quarantined=self.quarantined,
        )

    def _head(self) -> Entry | None:
        if self._inflight:
            return self._inflight[0]
        for entry in self._prefetch:
            if entry.seq > self._drop_floor or entry.op != _APPEND:
                return entry
        if self._db_pos >= self._mem_from:
            for entry in self._mem:
                if entry.seq > self._drop_floor or entry.op != _APPEND:
                    return entry
        return None

    async def wait_settled(self) -> None:
        """Wait until nothing is pending for this backend.

        Raises ``ArchivistClosed`` if the writer stops first.
        """
        while self.pending > 0:
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
            elif not (self._prefetch or self._mem or self._db_pos < self._mem_from):
                self._repair_backlog()

    def _repair_backlog(self) -> None:
        """The backlog count says entries are owed, yet none is left to take.

        The count is exact (kept with the entries, checked at open), so owed
        entries are missing from the journal: a damaged journal (or a bug). They
        are counted in ``lost_entries`` and the count settled, loudly.
        """
        logger.error(
            "backend %r: %d entries it is owed are missing from the journal"
            " (health().journal.lost_entries counts them)",
            self.name,
            self.undispatched,
        )
        self._settle([], [], drift=(self.undispatched, self.pending_bytes))

    def _wake(self) -> None:
        self._wakeup.set()

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    async def _wait_for_work(self) -> None:
        while self.undispatched <= 0:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    async def _linger(self) -> None:
        window = self.policy.batch_window_ms
        if window <= 0 or self.draining or self.undispatched >= self.policy.max_batch:
            return
        with anyio.move_on_after(window / 1000):
            while self.undispatched < self.policy.max_batch and not self.draining:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()

    async def _take_batch(self) -> list[Entry]:
        """Claim the next batch of untaken entries, in seq order."""
        max_rows = self.policy.max_batch
        if not self._prefetch and self._db_pos < self._mem_from:
            start = max(self._db_pos, self.last_taken + 1)
            stop = self._mem_from  # may move while we read; this read covers up to here
            rows = await self._reader.pending(
                self.mask, start, stop, max_rows, self.drop_floor
            )
            self._prefetch.extend(rows)
            self._db_pos = rows[-1].seq + 1 if len(rows) == max_rows else stop
        while self._gate is not None:
            await self._gate.wait()
        # From here to the end nothing awaits: the claim is atomic w.r.t. drops.
        source = self._prefetch if self._prefetch else self._mem
        if source is self._mem and self._db_pos < self._mem_from:
            return []  # the journal range is not read yet; next round reads it
        floor = self._drop_floor
        while source and (
            source[0].seq <= self.last_taken
            or (source[0].seq <= floor and source[0].op == _APPEND)
        ):
            dropped = source.popleft()
            if source is self._mem:
                self._mem_bytes -= dropped.size
        count = cut(source, max_rows=max_rows, max_bytes=self.policy.max_batch_bytes)
        if not count:
            return []
        pop = source.popleft
        batch = [pop() for _ in range(count)]
        self.last_taken = batch[-1].seq
        if source is self._mem:
            # In-memory entries carry their records already.
            self._mem_bytes -= sum([e.size for e in batch])
        if batch[0].seq <= floor:
            # An erasure (or a row whose op is damaged) kept among dropped
            # appends: leave those out.
            batch = [e for e in batch if e.seq > floor or e.op != _APPEND]
        if source is not self._mem:
            for entry in batch:
                if entry.damage is None:
                    try:
                        entry.records = decode_entry(entry.payload, entry.op)
                    except msgspec.DecodeError as exc:
                        entry.damage = f"undecodable payload: {exc}"
                    else:
                        entry.payload = b""  # the records are what is delivered
        self._inflight = batch
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
        damaged = [(e.seq, e.damage) for e in batch if e.damage is not None]
        count, nbytes = drift or (len(batch), sum(e.size for e in batch))
        settlement = Settlement(
            upto=batch[-1].seq if batch else self.last_taken,
            count=count,
            nbytes=nbytes,
            delivered=len(batch) - len(dead) - len(damaged),
            missing=drift[0] if drift else 0,
            dead=[(entry.seq, error, attempts) for entry, error, attempts in dead],
            damaged=damaged,
            # A damaged (quarantined) erasure was not applied: it purges nothing.
            erased=[
                (e.session, e.seq) for e in batch if e.op == _ERASE and e.damage is None
            ],
        )
        self.pending -= settlement.count
        self.pending_bytes -= settlement.nbytes
        if self.pending <= 0 and (self.pending or self.pending_bytes):
            # More was settled than counted (a damaged row's size, say): a
            # negative count would keep this writer asleep with entries owed.
            logger.error(
                "backend %r: backlog count drifted to %d entries, %d bytes; reset",
                self.name,
                self.pending,
                self.pending_bytes,
            )
            self.pending = self.pending_bytes = 0
        self.delivered += settlement.delivered
        self.dead_lettered += len(dead)
        self.quarantined += len(damaged)
        self.settled_upto = settlement.upto
        self._inflight = ()
        if batch:
            # What is pending now was journaled after this: an upper bound on
            # its age until the writer sees it.
            self._oldest_hint = batch[-1].enqueued_at
        for entry, error, _ in dead:
            logger.error(
                "backend %r: entry %d dead-lettered: %s", self.name, entry.seq, error
            )
        for seq, reason in damaged:
            logger.error("backend %r: entry %d quarantined: %s", self.name, seq, reason)
        failed = {seq: f"quarantined: {reason}" for seq, reason in damaged}
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
