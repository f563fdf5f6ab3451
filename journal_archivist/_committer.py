"""Group commit: the only code that opens a write transaction on the journal.

Rules and theory:
- Appends queue in the ``Intake`` and wait. Each round asks it to decide the
  queued appends (up to ``MAX_GROUP``) against the backlogs, then journals the
  admitted ones in ONE transaction: appends that arrive while a transaction is
  in flight join the next one, so one fsync serves many appends. The decision
  is made in memory without awaiting, so the decision and the transaction see
  the same backlogs.
- An append is acknowledged only after its transaction committed. If the commit
  fails, every append of the group gets an error: nothing is acknowledged that is
  not durable. Each caller is woken once its append is decided, not before.
- Bookkeeping is written lazily: what to write and when is the ``Ledger``'s
  decision (``_ledger``, pure); each backend's state is its ``Book``
  (``_backlog``), which the committer changes only through its writer's and
  its book's methods.
- Transactions with appends are durable (fsync under ``Durability.FULL``);
  persisting rounds without appends are not.
- After the commit, the new entries go to the writers in memory (the fast path),
  and ``Sync`` waiters are registered, before any appender resumes.
- Failed commits, the rewrite after a failed write or fsync, checkpoints and
  compaction are the ``Upkeep``'s (``_upkeep``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import anyio

from ._bookkeeping import hand_over, write_bookkeeping
from ._errors import ArchivistClosed, ArchivistError, JournalWriteFailed
from ._failure import Failure
from ._intake import (
    Intake,
    PendingAppend,
    acknowledge,
    number,
    refuse_failed,
    wake,
)
from ._ledger import (
    PERSIST_INTERVAL,
    Delta,
    Ledger,
    added_by_backend,
)
from ._maintenance import Requests
from ._metrics import Metrics
from ._policies import Sync
from ._upkeep import WAL_PAGE, Upkeep

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from ._admission import Plan
    from ._backlog import Settlement
    from ._journal import Journal
    from ._journal_types import Dropped
    from ._maintenance import Request
    from ._space import SpaceGuard
    from ._transaction import Transaction
    from ._writer import Writer

__all__ = ["Committer"]


def _closed_before_journaled() -> ArchivistClosed:
    return ArchivistClosed("the archivist shut down before this append was journaled")


class Committer:
    """Journals appends in groups and writes the writers' bookkeeping."""

    def __init__(self, journal: Journal, writers: list[Writer], space: SpaceGuard):
        self._journal = journal
        self._writers = writers
        self._active = [w for w in writers if w.enabled]
        # One bit per backend: their sum is their union.
        self._disabled_mask = sum(w.mask for w in writers if not w.enabled)
        self._sync = [w for w in self._active if isinstance(w.policy, Sync)]
        self._names = [w.name for w in writers]
        # Whether an entry may owe more than one backend (then done-marks must
        # clear bits instead of deleting rows outright).
        self._shared = len(journal.backends) > 1
        self._space = space
        self.metrics = Metrics()
        self._intake = Intake()
        self._ledger = Ledger()
        self._upkeep = Upkeep(
            journal, lambda: all(w.book.pending == 0 for w in self._active)
        )
        self._kick = anyio.Event()
        self._flushed = anyio.Event()
        self._requests = Requests()
        self.failure: Failure | None = None
        self.closing = False
        self.stopped = False

    @property
    def commit_failures(self) -> int:
        """Commits (and checkpoints) that failed in a row."""
        return self._upkeep.commit_failures

    # -- called by appenders -------------------------------------------------

    def enqueue(self, append: PendingAppend) -> None:
        """Queue ``append`` for the next round; once a round decides it, its
        ``outcome`` is ``ACKED`` or the error that refused it, and its
        ``caller`` is woken.

        Raises ``ArchivistFailed`` or ``ArchivistClosed`` at once if the committer
        takes no more appends.
        """
        self._check_taking()
        self._intake.push(append)
        self._kick.set()

    def withdraw(self, append: PendingAppend) -> None:
        """Take back an append whose caller gave up, if no round has taken it yet
        (then nothing of it is journaled); once taken, it may still commit."""
        if self._intake.withdraw(append):
            self._kick.set()  # it may have been blocking the head

    # -- called by writers ---------------------------------------------------

    def settled(self, writer: Writer, settlement: Settlement) -> None:
        """Record a settled batch; a persisting round marks it done."""
        self._ledger.settled(writer.bit, settlement)
        self._journal.quarantined.update(seq for seq, _ in settlement.damaged)
        self._kick.set()  # room in the backlog may unblock an append

    async def flush(self, *, counters: bool = False) -> None:
        """Wait until every settlement reported so far is written (``counters``:
        and the backlog counters of every entry journaled so far, as at
        shutdown, so the next open need not count them from the entries).

        Raises ``ArchivistClosed`` if the committer stops first.
        """
        ledger = self._ledger
        target = ledger.want_flush(counters=counters)
        while ledger.flushed_gen < target:
            if self.stopped:
                raise ArchivistClosed()
            ledger.flush_wanted = True
            self._kick.set()
            flushed = self._flushed
            await flushed.wait()

    async def compact(self) -> None:
        """Return every free page to the filesystem, between commit rounds."""
        await self._upkeep.compact(self._kick.set)

    def submit(self, request: Request) -> None:
        """Run an operator's ``request`` between rounds (``_maintenance``); it is
        answered through its future. Raises like ``enqueue``."""
        self._check_taking()
        self._requests.push(request)
        self._kick.set()

    def _check_taking(self) -> None:
        if self.failure is not None:
            raise self.failure.error()
        if self.closing:
            raise ArchivistClosed()

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Refuse new appends and withdraw the queued ones (``ArchivistClosed``,
        or ``ArchivistFailed`` once failed).

        Appends a round has already taken still commit.
        """
        self.closing = True
        self._upkeep.finish_compaction()
        failed = self.failure.error if self.failure else None
        self._requests.refuse_all(failed or ArchivistClosed)
        wake(self._intake.refuse_all(failed or _closed_before_journaled))

    def fail(self, failure: Failure) -> None:
        """The archivist failed: refuse appends from now on, and the queued ones.

        The loop keeps going until cancelled, to write the last settlements.
        """
        if self.failure is None:
            self.failure = failure
        self.close()

    def stop(self) -> None:
        """The loop has stopped: wake everyone still waiting on it."""
        self.close()
        self.stopped = True
        flushed, self._flushed = self._flushed, anyio.Event()
        flushed.set()

    # -- the loop ------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit rounds until cancelled (or failed: see ``MAX_IO_FAILURES``)."""
        task_status.started()
        upkeep = self._upkeep
        try:
            while True:
                self._kick = anyio.Event()
                if upkeep.hold_until > time.monotonic():
                    await anyio.sleep(upkeep.hold_until - time.monotonic())
                worked = await self._round()
                if await self._requests.serve_next(self._commit):
                    worked = True
                await upkeep.checkpoint_if_due()
                # Compaction runs between rounds: when idle, or at once if asked.
                if upkeep.compact_due and (not worked or upkeep.compaction_asked):
                    await upkeep.compact_slice()
                elif not worked:
                    await self._idle()
        except BaseException as exc:
            # Whatever ended the loop decides how the queued appends are refused.
            if self.failure is None and not isinstance(
                exc, anyio.get_cancelled_exc_class()
            ):
                self.failure = Failure("the committer", exc)
            raise
        finally:
            self.stop()

    async def _idle(self) -> None:
        """Wait for a kick, a blocked append's deadline, or the next persist."""
        blocked_until = self._intake.deadline()
        deadline = math.inf if blocked_until is None else blocked_until
        if self._ledger.deltas:
            deadline = min(deadline, self._ledger.persist_at)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self._kick.wait()

    async def _round(self) -> bool:
        """Run one transaction if there is anything to write; whether it did work."""
        now = time.monotonic()
        decision = self._intake.decide(
            now,
            [w.book.backlog() for w in self._active],
            space=self._space.refusal,
            disabled=self._disabled_mask,
        )
        if decision.more:
            self._kick.set()
        wake(decision.refused)
        admitted, plan = decision.admitted, decision.plan
        trimming = [w for w in self._active if w.name in plan.oldest_excess]
        persist = self._ledger.due(now, dropping=bool(trimming or plan.dropped_newest))
        if not admitted and not persist:
            return bool(decision.refused)
        try:
            await self._commit(now, admitted, plan, trimming, persist)
        except BaseException as exc:
            # Too many I/O errors, a bug, or shutdown: never leave an appender of
            # this group waiting for an answer (finish does nothing to an answered
            # one). Cancelled, nothing of the group was journaled (the transaction
            # is shielded once started).
            make: Callable[[], ArchivistError]
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                make = _closed_before_journaled
            else:
                self.failure = Failure("the committer", exc)
                make = self.failure.error
            for append, _ in admitted:
                append.finish(make())
            raise
        finally:
            wake([append for append, _ in admitted])
        return True

    async def _commit(
        self,
        now: float,
        admitted: list[tuple[PendingAppend, int]],
        plan: Plan,
        trimming: list[Writer],
        persist: bool,
        *,
        step: Callable[[Transaction], Awaitable[None]] | None = None,
    ) -> JournalWriteFailed | None:
        """Journal ``admitted`` and (``persist``) the bookkeeping, and run an
        operator request's ``step``, in one transaction; the write failure that
        refused it, if one did."""
        # After a failed write or fsync nothing is acknowledged again before the
        # journal is rewritten (Journal.rewrite says why).
        refused = await self._upkeep.rewrite_if_needed()
        if refused is not None:
            refuse_failed(refused, admitted)
            self._upkeep.failed(refused)
            return refused
        numbered = number(admitted, self._journal.last_seq, self._journal.last_stamp)
        inserts, entries, seq = numbered.rows, numbered.entries, numbered.tail
        added = added_by_backend(
            entries,
            numbered.nbytes,
            [w.bit for w in self._active] if plan.uniform else None,
            [(w.bit, w.mask) for w in self._writers],
        )
        deltas: dict[int, Delta] = {}
        gen = 0
        if persist:
            deltas, gen = self._ledger.take()
        for writer in trimming:
            writer.close_gate()
        try:
            # Once started, finish the transaction even if we are cancelled, so
            # every appender of the group gets a definite answer.
            with anyio.CancelScope(shield=True):
                durable = bool(inserts) or step is not None
                async with self._journal.transaction(durable=durable) as tx:
                    if inserts:
                        await tx.insert(inserts)
                    if step is not None:
                        await step(tx)
                    if numbered.erased:
                        await tx.journal_erasures(
                            numbered.erased, self._names, numbered.stamp
                        )
                    dropped: dict[str, list[Dropped]] = {}
                    if persist:
                        dropped, settled = await write_bookkeeping(
                            tx,
                            self._writers,
                            self._journal.backends,
                            deltas,
                            added,
                            plan.dropped_newest,
                            trimming,
                            seq,
                            shared=self._shared,
                        )
                        if settled:
                            # Deleting settled entries rewrites a page per 16.
                            self._upkeep.wal_debt += WAL_PAGE * (1 + settled // 16)
        except JournalWriteFailed as exc:
            for writer in trimming:
                writer.open_gate()
            refuse_failed(exc, admitted)
            # Keep the bookkeeping: the next persisting round writes it.
            self._ledger.restore(deltas, time.monotonic(), PERSIST_INTERVAL * 10)
            self._upkeep.failed(exc)
            return exc

        # Committed: hand entries to the writers, then wake the appenders.
        self.metrics.commit(len(admitted), time.monotonic() - now)
        self._upkeep.succeeded(WAL_PAGE * (2 + len(inserts) // 8) + numbered.nbytes)
        if inserts:
            self._journal.record_high_water(seq, numbered.stamp)
        hand_over(
            self._writers,
            self._ledger,
            numbered,
            added,
            dropped,
            plan,
            deltas if persist else None,
            # An operator's request has no caller to wait for Sync delivery.
            sync=self._sync if step is None else (),
            admitted=admitted,
        )
        acknowledge(admitted)
        if persist:
            self._ledger.persisted(now, gen)
            flushed, self._flushed = self._flushed, anyio.Event()
            flushed.set()
            self._upkeep.after_persist()
        return None
