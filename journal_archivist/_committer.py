"""Group commit: the only code that opens a write transaction on the journal.

Rules and theory:
- Appends queue here and wait. Each round takes the queued appends (up to
  ``MAX_GROUP``) and journals them in ONE transaction: appends that arrive while a
  transaction is in flight join the next one, so one fsync serves many appends.
- Admission (which appends are journaled, for which backends, what is dropped) is
  decided in memory by ``plan_admission`` without awaiting in between, so the
  decision and the transaction see the same backlogs. ``REJECT`` and ``BLOCK``
  refuse or hold an append for every backend at once; an append blocked at the
  head of the queue holds back the ones behind it (arrival order is kept).
- An append is acknowledged only after its transaction committed. If the commit
  fails, every append of the group gets an error: nothing is acknowledged that is
  not durable.
- Bookkeeping is written lazily: what to write and when is the ``Ledger``'s
  decision (``_ledger``, pure); each backend's state is its ``Book``
  (``_backlog``), which the committer changes only through its methods.
- Transactions with appends are durable (fsync under ``Durability.FULL``);
  persisting rounds without appends are not.
- After the commit, the new entries go to the writers in memory (the fast path),
  and ``Sync`` waiters are registered, before any appender resumes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import anyio

from ._admission import Plan, plan_admission
from ._batching import Entry
from ._errors import (
    ArchivistClosed,
    ArchivistError,
    JournalFull,
    JournalWriteFailed,
    QueueFull,
)
from ._failure import Failure
from ._ledger import PERSIST_INTERVAL, Delta, Ledger, handover, stored_row
from ._policies import OverflowPolicy, Sync
from ._records import MessageRecord, Op
from ._schema import entry_crc
from ._throttle import Throttle
from ._writer import SyncWaiter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    from anyio.abc import TaskStatus

    from ._backlog import Settlement
    from ._journal import Journal, Transaction
    from ._space import SpaceGuard
    from ._writer import Writer

__all__ = ["Committer", "PendingAppend"]

logger = logging.getLogger("journal_archivist.committer")

#: The most appends one transaction journals.
MAX_GROUP: Final = 1024
#: Commits in a row that fail with an I/O error (a failed read, write or fsync)
#: after which the archivist fails. Other failures (a full disk) neither count
#: nor reset the count; a successful commit resets it.
MAX_IO_FAILURES: Final = 3
#: Seconds before the attempt after a first I/O failure; doubled after each one.
#: (So the archivist fails only after about 0.75 s of failing I/O.)
IO_RETRY_DELAY: Final = 0.25
#: Seconds between ERROR lines about failed commits.
FAILURE_LOG_INTERVAL: Final = 10.0
#: The committer checkpoints once about this many bytes went to the WAL (as
#: SQLite's automatic checkpoint would at 1,000 pages, which is turned off so that
#: a checkpoint's failed fsync is seen).
CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
WAL_PAGE: Final = 4096
#: Free pages worth returning to the filesystem once the journal is drained.
COMPACT_THRESHOLD: Final = 64 * 1024 * 1024
COMPACT_PAGES_PER_ROUND: Final = 4096

_APPEND_OP: Final = Op.APPEND
_Future: Final = asyncio.Future
_running_loop: Final = asyncio.get_running_loop
_APPEND: Final = int(Op.APPEND)


class PendingAppend(Entry):
    """One ``append_messages`` call waiting for its commit; then, its entry.

    ``done`` resolves to None once committed, or to the error that refused it.
    ``queued`` is true until a round takes the append; until then the caller may
    withdraw it. Once committed, the same object goes to the writers as the
    journal ``Entry`` (no second copy per append).
    """

    __slots__ = ("blocked_on", "blocked_since", "done", "queued", "waiters")

    def __init__(
        self,
        session: UUID,
        payload: bytes,
        records: list[MessageRecord],
        op: Op = _APPEND_OP,
    ):
        self.seq = 0
        self.session = session.bytes
        self.op = op
        self.payload = payload
        self.size = len(payload)
        self.enqueued_at = time.time()
        self.records = records
        self.damage = None
        self.done: asyncio.Future[BaseException | None] = _Future(loop=_running_loop())
        self.queued = True
        self.blocked_on: Writer | None = None
        self.blocked_since = 0.0
        self.waiters: Sequence[tuple[Writer, SyncWaiter]] = ()

    def finish(self, error: BaseException | None = None) -> None:
        """Resolve the call: acknowledged if ``error`` is None."""
        self.queued = False
        if not self.done.done():
            self.done.set_result(error)


def _closed_before_journaled() -> ArchivistClosed:
    return ArchivistClosed("the archivist shut down before this append was journaled")


class Committer:
    """Journals appends in groups and writes the writers' bookkeeping."""

    def __init__(self, journal: Journal, writers: list[Writer], space: SpaceGuard):
        self._journal = journal
        self._writers = writers
        self._active = [w for w in writers if w.enabled]
        self._disabled_mask = 0
        for writer in writers:
            if not writer.enabled:
                self._disabled_mask |= writer.mask
        self._sync = [w for w in self._active if isinstance(w.policy, Sync)]
        self._names = [w.name for w in writers]
        # Whether an entry may owe more than one backend (then done-marks must
        # clear bits instead of deleting rows outright).
        self._shared = len(journal.backends) > 1
        self._space = space
        self._queue: deque[PendingAppend] = deque()
        # Erasures in the queue: when the head blocks, those beyond the planned
        # group are looked for too (only while there are any).
        self._queued_erasures = 0
        self._ledger = Ledger()
        self._kick = anyio.Event()
        self._flushed = anyio.Event()
        self._compact_due = False
        self._compacting = False
        self._compaction_done: anyio.Event | None = None
        self.commit_failures = 0
        self._io_failures = 0
        # Bytes written to the WAL since the last checkpoint, roughly.
        self._wal_debt = 0
        # After an I/O failure, no attempt before this (time.monotonic()).
        self._hold_until = 0.0
        self._failure_log = Throttle(FAILURE_LOG_INTERVAL)
        self.failure: Failure | None = None
        self.closing = False
        self.stopped = False

    # -- called by appenders -------------------------------------------------

    def enqueue(self, append: PendingAppend) -> None:
        """Queue ``append`` for the next round; its ``done`` future gives the
        outcome: None once committed, else the error that refused it
        (``QueueFull``, ``JournalFull``, ``JournalWriteFailed``,
        ``ArchivistClosed``, ``ArchivistFailed``).

        Raises ``ArchivistFailed`` or ``ArchivistClosed`` at once if the committer
        takes no more appends.
        """
        if self.failure is not None:
            raise self.failure.error()
        if self.closing:
            raise ArchivistClosed()
        self._queue.append(append)
        if append.op is not _APPEND_OP:
            self._queued_erasures += 1
        self._kick.set()

    def withdraw(self, append: PendingAppend) -> None:
        """Take back an append whose caller gave up, if no round has taken it yet
        (then nothing of it is journaled); once taken, it may still commit."""
        if append.queued:
            self._queue.remove(append)
            append.queued = False
            if append.op is not _APPEND_OP:
                self._queued_erasures -= 1
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

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Refuse new appends and withdraw the queued ones (``ArchivistClosed``,
        or ``ArchivistFailed`` once failed).

        Appends a round has already taken still commit.
        """
        self.closing = True
        self._finish_compaction()
        failure = self.failure
        self._fail_queued(
            failure.error if failure is not None else _closed_before_journaled
        )

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

    def _fail_queued(self, make: Callable[[], ArchivistError]) -> None:
        while self._queue:
            self._queue.popleft().finish(make())
        self._queued_erasures = 0

    # -- the loop ------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit rounds until cancelled (or failed: see ``MAX_IO_FAILURES``)."""
        task_status.started()
        try:
            while True:
                self._kick = anyio.Event()
                if self._hold_until > time.monotonic():
                    await anyio.sleep(self._hold_until - time.monotonic())
                worked = await self._round()
                if self._wal_debt >= CHECKPOINT_BYTES:
                    await self._checkpoint()
                # Compaction runs between rounds: when idle, or at once if asked.
                if self._compact_due and (not worked or self._compaction_done):
                    await self._compact()
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
        deadline = math.inf
        if self._queue and self._queue[0].blocked_on is not None:
            head = self._queue[0]
            assert head.blocked_on is not None
            timeout = head.blocked_on.policy.block_timeout
            if timeout is not None:
                deadline = head.blocked_since + timeout
        if self._ledger.deltas:
            deadline = min(deadline, self._ledger.persist_at)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self._kick.wait()

    def _admit(self, now: float) -> tuple[list[tuple[PendingAppend, int]], Plan]:
        """Decide the queued appends: refuse, hold or admit them (no awaiting)."""
        queue = self._queue
        group = [queue[i] for i in range(min(len(queue), MAX_GROUP))]
        sizes = [a.size for a in group]
        if group and (refusal := self._space.refusal(sum(sizes))) is not None:
            for append in group:
                queue.popleft()
                if append.op is not _APPEND_OP:
                    self._queued_erasures -= 1
                append.finish(JournalFull(refusal.path, refusal.free, refusal.reserve))
            if queue:
                self._kick.set()  # the rest are refused in the next round
            return [], Plan()
        erasures = (  # rare: look for them only when some are queued
            {i for i, a in enumerate(group) if a.op is not _APPEND_OP}
            if self._queued_erasures
            else set()
        )
        plan = plan_admission(
            sizes,
            [w.book.backlog() for w in self._active],
            erasures=erasures,
            sessions=[a.session for a in group] if erasures else (),
        )
        if erasures and self._disabled_mask:
            # A disabled backend keeps its backlog and gets it when enabled
            # again: an erasure must wait there too, after the appends it erases.
            plan.admitted = [
                (i, targets | self._disabled_mask if i in erasures else targets)
                for i, targets in plan.admitted
            ]
            plan.uniform = False
        admitted = [(group[index], targets) for index, targets in plan.admitted]
        if plan.blocked is not None and self._queued_erasures > len(erasures):
            admitted += self._erasures_beyond(group, plan)
        decided = plan.blocked[0] if plan.blocked is not None else len(group)
        for _ in range(decided):
            queue.popleft().queued = False
        if self._queued_erasures:
            for append, _ in admitted:
                if append.op is not _APPEND_OP:
                    self._queued_erasures -= 1
                    if append.queued:  # admitted past a blocked append
                        queue.remove(append)
                        append.queued = False
        by_name = {w.name: w for w in self._active}
        for index, name in plan.rejected:
            group[index].finish(QueueFull(name, by_name[name].policy.capacity))
        if plan.blocked is not None:
            head = group[plan.blocked[0]]
            writer = by_name[plan.blocked[1]]
            if head.blocked_on is not writer:
                head.blocked_on, head.blocked_since = writer, now
            # Judged after planning, so an append that room was just made for
            # is admitted rather than timed out.
            self._expire_blocked(now)
        return admitted, plan

    def _erasures_beyond(
        self, group: list[PendingAppend], plan: Plan
    ) -> list[tuple[PendingAppend, int]]:
        """Erasures queued after ``group`` that may pass its blocked append: those
        with no undecided append of their session ahead of them."""
        assert plan.blocked is not None
        decided = {index for index, _ in plan.admitted}
        waiting = {
            group[i].session
            for i in range(plan.blocked[0], len(group))
            if i not in decided
        }
        everyone = self._disabled_mask
        for writer in self._active:
            everyone |= writer.mask
        passing = []
        for append in itertools.islice(self._queue, len(group), None):
            if append.op is not _APPEND_OP and append.session not in waiting:
                passing.append((append, everyone))
            else:
                waiting.add(append.session)
        if passing and self._disabled_mask:
            plan.uniform = False
        return passing

    async def _round(self) -> bool:
        """Run one transaction if there is anything to write; whether it did work."""
        now = time.monotonic()
        admitted, plan = self._admit(now)
        trimming = [w for w in self._active if w.name in plan.oldest_excess]
        persist = self._ledger.due(now, dropping=bool(trimming or plan.dropped_newest))
        if not admitted and not persist:
            return bool(plan.rejected)
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
        return True

    async def _commit(
        self,
        now: float,
        admitted: list[tuple[PendingAppend, int]],
        plan: Plan,
        trimming: list[Writer],
        persist: bool,
    ) -> None:
        # After a failed write or fsync nothing is acknowledged again before the
        # journal is rewritten (Journal.rewrite says why).
        if not await self._rewrite_if_needed(admitted):
            return
        # Sequence numbers go to appends that still owe someone; an append every
        # backend dropped is acknowledged without a row.
        seq = self._journal.last_seq
        inserts: list[tuple[int, bytes, int, bytes, int, int, float, int, int]] = []
        entries: list[tuple[Entry, int]] = []
        for append, targets in admitted:
            if not targets:
                continue
            seq += 1
            append.seq = seq
            sid = append.session
            payload = append.payload
            op = _APPEND if append.op is _APPEND_OP else int(append.op)
            crc = entry_crc(seq, sid, op, targets, payload)
            at = append.enqueued_at
            # origin = targets: who is owed it, kept under the checksum for good.
            row = (seq, sid, op, payload, append.size, crc, at, targets, targets)
            inserts.append(row)
            entries.append((append, targets))
        erased = [e.session for e, _ in entries if e.op is not _APPEND_OP]
        added = self._added_by_writer(entries, plan.uniform)
        deltas: dict[int, Delta] = {}
        if persist:
            deltas, gen = self._ledger.take()
        for writer in trimming:
            writer.close_gate()
        try:
            # Once started, finish the transaction even if we are cancelled, so
            # every appender of the group gets a definite answer.
            with anyio.CancelScope(shield=True):
                async with self._journal.transaction(durable=bool(inserts)) as tx:
                    if inserts:
                        await tx.insert(inserts)
                    if erased:
                        await tx.purge_unregistered(erased, self._names)
                    dropped = {}
                    if persist:
                        dropped = await self._persist(
                            tx, deltas, added, plan.dropped_newest, trimming, seq
                        )
        except JournalWriteFailed as exc:
            for writer in trimming:
                writer.open_gate()
            self._on_failure(exc, admitted, deltas)
            return

        # Committed: hand entries to the writers, then wake the appenders.
        self._on_success()
        self._wal_debt += WAL_PAGE * (2 + len(inserts) // 8) + sum(
            [row[4] for row in inserts]
        )
        if inserts:
            self._journal.record_high_water(seq)
        lost: dict[str, set[int]] = {}
        for writer in self._writers:
            bit = writer.bit
            if not writer.enabled and bit not in added:
                continue  # a disabled backend takes erasures only
            share = handover(
                writer.mask,
                entries,
                uniform=plan.uniform,
                added=added.get(bit, (0, 0)),
                drops=dropped.get(writer.name, ()),
                dropped_newest=plan.dropped_newest.get(writer.name, 0),
                tail=seq,
            )
            writer.take(share, seq)
            lost[writer.name] = share.lost
            if persist:
                delta = deltas.get(bit)
                if delta is not None:
                    writer.book.persisted(delta.upto)
            elif bit in added:
                # Not written yet (a round that drops entries always persists).
                self._ledger.journaled(bit, *added[bit])
            writer.open_gate()
        for append, targets in admitted:
            if self._sync:
                append.waiters = [
                    (writer, self._sync_waiter(writer, append, targets, lost))
                    for writer in self._sync
                ]
            # Writers deliver the records they are handed; the encoded payload
            # lives on in the journal only (a large record is not held twice).
            append.payload = b""
            # PendingAppend.finish, inlined: this runs for every append. The
            # future is already done if its caller was cancelled meanwhile.
            append.queued = False
            if not append.done.done():
                append.done.set_result(None)
        if persist:
            self._ledger.persisted(now, gen)
            flushed, self._flushed = self._flushed, anyio.Event()
            flushed.set()
            if not self._compacting and all(w.book.pending == 0 for w in self._active):
                self._compact_due = True

    @staticmethod
    def _sync_waiter(
        writer: Writer, append: PendingAppend, targets: int, lost: dict[str, set[int]]
    ) -> SyncWaiter:
        """The waiter of a Sync append: settled already if its entry was dropped."""
        if not targets & writer.mask:
            return SyncWaiter.dropped(writer.policy.overflow)
        if append.seq in lost[writer.name]:
            return SyncWaiter.dropped(OverflowPolicy.DROP_OLDEST)
        return writer.add_waiter(append.seq)

    def _added_by_writer(
        self, entries: list[tuple[Entry, int]], uniform: bool
    ) -> dict[int, tuple[int, int]]:
        """Entries and bytes this round journals for each backend (a disabled one
        gets erasures only)."""
        added: dict[int, tuple[int, int]] = {}
        if uniform and entries:
            # Every entry targets every active backend.
            total = (len(entries), sum([e.size for e, _ in entries]))
            return {writer.bit: total for writer in self._active}
        for writer in self._writers:
            mask = writer.mask
            mine = [e.size for e, targets in entries if targets & mask]
            if mine:
                added[writer.bit] = (len(mine), sum(mine))
        return added

    async def _persist(
        self,
        tx: Transaction,
        deltas: dict[int, Delta],
        added: dict[int, tuple[int, int]],
        dropped_newest: dict[str, int],
        trimming: list[Writer],
        tail: int,
    ) -> dict[str, list[tuple[int, int]]]:
        """Write settlements, drops and counters; return DROP_OLDEST drops by name."""
        by_bit = {w.bit: w for w in self._writers}
        at = time.time()
        missing = 0
        for bit, delta in deltas.items():
            name = by_bit[bit].name
            if delta.dead:
                await tx.dead_letter(name, delta.dead, at)
            if delta.damaged:
                await tx.quarantine(name, delta.damaged, at)
            if delta.erased:
                await tx.purge_erased(name, delta.erased)
            missing += delta.missing
        ranges = [
            (by_bit[bit].mask, by_bit[bit].book.cursor, delta.upto)
            for bit, delta in deltas.items()
            if delta.upto > by_bit[bit].book.cursor
        ]
        if ranges:
            await tx.settle(ranges, shared=self._shared)
            # Deleting settled entries rewrites about a page per 16 of them.
            settled = sum(upto - after for _, after, upto in ranges)
            self._wal_debt += WAL_PAGE * (1 + settled // 16)
        dropped: dict[str, list[tuple[int, int]]] = {}
        for writer in trimming:
            # Measured now, not when planned: deliveries may have made room.
            book = writer.book
            backlog = book.backlog()
            count, nbytes = added.get(writer.bit, (0, 0))
            backlog.pending += count
            backlog.pending_bytes += nbytes
            excess_count, excess_bytes = backlog.excess()
            if excess_count or excess_bytes:
                # With nothing in flight the newest entry stays, however large:
                # alone, it fits (as an oversized entry fits an empty backlog).
                keep = tail if not book.in_flight else tail + 1
                dropped[writer.name] = await tx.drop_oldest(
                    writer.mask,
                    book.last_taken,
                    excess_count,
                    excess_bytes,
                    before=keep,
                )
        rows = [
            stored_row(
                self._journal.backends[writer.name],
                deltas.get(writer.bit),
                added.get(writer.bit, (0, 0)),
                dropped.get(writer.name, ()),
                dropped_newest.get(writer.name, 0),
                tail,
            )
            for writer in self._writers
        ]
        if missing:
            await tx.count_lost(missing)
        await tx.update_backends(rows)
        return dropped

    def _on_failure(
        self,
        exc: JournalWriteFailed,
        admitted: Sequence[tuple[PendingAppend, int]],
        deltas: dict[int, Delta],
    ) -> None:
        self.commit_failures += 1
        io_failure = exc.io_error
        if io_failure:
            self._io_failures += 1
            if not self._journal.rewrite_needed:
                self._journal.rewrite_needed = True
                logger.warning(
                    "journal %s: a write or fsync failed: the journal is rewritten"
                    " before anything is acknowledged again",
                    self._journal.path,
                )
        reported = self._failure_log.due()
        if reported is not None:
            logger.error(
                "journal %s: commit failed (%d in a row%s): %s",
                self._journal.path,
                self.commit_failures,
                f"; {reported - 1} not logged since the last line"
                if reported > 1
                else "",
                exc.detail,
            )
        for append, _ in admitted:
            error = JournalWriteFailed(exc.path, exc.detail, io_error=exc.io_error)
            error.__cause__ = exc.__cause__
            append.finish(error)
        # Keep the bookkeeping: the next persisting round writes it.
        self._ledger.restore(deltas, time.monotonic(), PERSIST_INTERVAL * 10)
        if io_failure:
            # Give a passing fault time to pass: the next attempt waits (appends
            # queue meanwhile), longer each time.
            pause = IO_RETRY_DELAY * 2 ** (self._io_failures - 1)
            self._hold_until = time.monotonic() + pause
        if io_failure and self._io_failures >= MAX_IO_FAILURES:
            # The loop ends here; the archivist fails with this as the cause.
            raise JournalWriteFailed(
                exc.path,
                f"{self._io_failures} commits in a row failed with an I/O error,"
                f" the last: {exc.detail}",
                io_error=True,
            ) from exc.__cause__

    async def _rewrite_if_needed(
        self, admitted: Sequence[tuple[PendingAppend, int]] = ()
    ) -> bool:
        """Rewrite the journal if a failed write or fsync asked for it; whether
        the journal may be written on (a failed rewrite refuses ``admitted``).

        Checkpoints and compaction ask here first: until the rewrite, a
        checkpoint would copy frames from past a hole in the WAL on disk into the
        database file (``Journal.rewrite`` says why that corrupts it).
        """
        if not self._journal.rewrite_needed:
            return True
        try:
            await self._journal.rewrite()
        except JournalWriteFailed as exc:
            self._on_failure(exc, admitted, {})
            return False
        self._journal.rewrite_needed = False
        self._wal_debt = 0
        logger.warning(
            "journal %s: rewritten after a failed write or fsync; accepting appends",
            self._journal.path,
        )
        return True

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file, in the open: a failure counts as
        a failed commit (and asks for a rewrite) rather than go unnoticed."""
        self._wal_debt = 0
        if not await self._rewrite_if_needed():
            return
        try:
            await self._journal.checkpoint()
        except JournalWriteFailed as exc:
            self._on_failure(exc, [], {})

    def _on_success(self) -> None:
        if self.commit_failures:
            logger.info(
                "journal %s: commits succeed again after %d failures",
                self._journal.path,
                self.commit_failures,
            )
            self.commit_failures = self._io_failures = 0
            self._failure_log.reset()

    def _expire_blocked(self, now: float) -> None:
        if not self._queue:
            return
        head = self._queue[0]
        writer = head.blocked_on
        if writer is None:
            return
        timeout = writer.policy.block_timeout
        if timeout is not None and now - head.blocked_since >= timeout:
            self._queue.popleft()
            waited = now - head.blocked_since
            head.finish(QueueFull(writer.name, writer.policy.capacity, waited=waited))
            self._kick.set()  # the appends behind it get their turn

    async def compact(self) -> None:
        """Return every free page to the filesystem, between commit rounds."""
        done = self._compaction_done
        if done is None:
            done = self._compaction_done = anyio.Event()
        self._compact_due = True
        self._kick.set()
        await done.wait()

    async def _compact(self) -> None:
        """Give free pages back to the filesystem, a slice per round.

        Runs by itself once the journal is drained and holds more than
        ``COMPACT_THRESHOLD`` bytes of free pages, or when ``compact()`` asks.
        """
        self._compact_due = False
        if not await self._rewrite_if_needed():
            self._finish_compaction()
            return
        if not self._compacting:
            free = await self._journal.free_page_bytes()
            # Read after the await: compact() may have asked meanwhile.
            asked = self._compaction_done is not None
            if not free:
                self._finish_compaction()
                return
            if not asked and free < COMPACT_THRESHOLD:
                return
            self._compacting = True
            logger.info(
                "journal %s: returning %d bytes of free pages", self._journal.path, free
            )
        try:
            freed, remaining = await self._journal.compact(COMPACT_PAGES_PER_ROUND)
        except JournalWriteFailed as exc:
            self._finish_compaction()
            self._on_failure(exc, [], {})
            return
        asked = self._compaction_done is not None
        drained = all(w.book.pending == 0 for w in self._active)
        if freed and remaining and (asked or drained):
            self._compact_due = True
        else:
            self._finish_compaction()

    def _finish_compaction(self) -> None:
        self._compacting = False
        done, self._compaction_done = self._compaction_done, None
        if done is not None:
            done.set()
