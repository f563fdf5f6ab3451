"""Group commit: the only code that opens a write transaction on the journal.

Rules and theory:
- Appends queue here and wait. Each round takes the queued appends (up to
  ``MAX_GROUP``) and every settlement the writers reported since the last round, and
  applies them in ONE transaction: appends that arrive while a transaction is in
  flight join the next one, so one fsync serves many appends.
- Admission (which appends are journaled, for which backends, what is dropped) is
  decided in memory by ``plan_admission`` before the transaction, without awaiting
  in between. ``REJECT`` and ``BLOCK`` refuse or hold an append for every backend
  at once; an append blocked at the head of the queue holds back the ones behind
  it, so waiting appends are journaled in arrival order.
- An append is acknowledged (its caller returns) only after its transaction
  committed. If the commit fails, every append of the group gets an error and the
  settlements are kept for the next round: nothing is acknowledged that is not
  durable, and nothing delivered is forgotten.
- Transactions with appends are ``durable`` (fsync under ``Durability.FULL``);
  settle-only ones are not: a lost done-mark only means an idempotent redelivery.
- After the commit, the new entries go to the writers in memory (the fast path)
  before any appender resumes, so ``Sync`` waiters are registered in time.
"""

from __future__ import annotations

import enum
import logging
import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio

from ._admission import plan_admission
from ._batching import Entry
from ._errors import (
    ArchivistClosed,
    ArchivistError,
    ArchivistFailed,
    JournalWriteFailed,
    QueueFull,
)
from ._journal import Journal, Transaction, entry_crc
from ._policies import Sync
from ._records import MessageRecord, Op

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from anyio.abc import TaskStatus

    from ._space import SpaceGuard
    from ._writer import Settlement, SyncWaiter, Writer

__all__ = ["Committer", "PendingAppend"]

logger = logging.getLogger("journal_archivist.committer")

#: The most appends one transaction journals.
MAX_GROUP: Final = 1024
#: Consecutive failed I/O commits after which the archivist gives up.
MAX_IO_FAILURES: Final = 3
#: Seconds between retries of a failed settle-only transaction.
SETTLE_RETRY_DELAY: Final = 0.5
#: Free pages worth returning to the filesystem once the journal is drained.
COMPACT_THRESHOLD: Final = 64 * 1024 * 1024
COMPACT_PAGES_PER_ROUND: Final = 4096


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for a round; may still be withdrawn
    IN_FLIGHT = "in_flight"  # part of a transaction
    DONE = "done"  # committed, refused or failed; ``error`` says which


@dataclass(slots=True, eq=False)
class PendingAppend:
    """One ``append_messages`` call waiting for its commit."""

    session: UUID
    payload: bytes
    records: list[MessageRecord]
    enqueued_at: float
    done: anyio.Event = field(default_factory=anyio.Event)
    state: _State = _State.QUEUED
    error: BaseException | None = None
    seq: int = 0
    blocked_on: Writer | None = None
    blocked_since: float = 0.0
    waiters: list[tuple[Writer, SyncWaiter]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Payload bytes."""
        return len(self.payload)

    def finish(self, error: BaseException | None = None) -> None:
        """Resolve the call: acknowledged if ``error`` is None."""
        self.state = _State.DONE
        self.error = error
        self.done.set()


@dataclass(slots=True)
class _Ledger:
    """A writer's settlements not yet committed to the journal."""

    upto: int = 0
    count: int = 0
    nbytes: int = 0
    delivered: int = 0
    dead: list[tuple[int, str, int]] = field(default_factory=list)
    damaged: list[tuple[int, str]] = field(default_factory=list)

    def add(self, other: Settlement | _Ledger) -> None:
        self.upto = max(self.upto, other.upto)
        self.count += other.count
        self.nbytes += other.nbytes
        self.delivered += other.delivered
        self.dead.extend(other.dead)
        self.damaged.extend(other.damaged)


def _io_failure(exc: BaseException) -> bool:
    """Whether a commit error is an I/O failure (not a full disk, which passes)."""
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(cause, sqlite3.Error) and code is not None and code & 0xFF == 10


class Committer:
    """Journals appends in groups and marks settled entries done."""

    def __init__(self, journal: Journal, writers: list[Writer], space: SpaceGuard):
        self._journal = journal
        self._writers = writers
        self._active = [w for w in writers if w.enabled]
        # Whether an entry may owe more than one backend (then done-marks must
        # clear bits instead of deleting rows outright).
        self._shared = len(journal.backends) > 1
        self._space = space
        self._queue: deque[PendingAppend] = deque()
        self._ledgers: dict[int, _Ledger] = {}
        self._kick = anyio.Event()
        self._settle_gen = 0
        self._flushed_gen = 0
        self._flushed = anyio.Event()
        self._retry_settle_at = 0.0
        self._compact_due = False
        self._compacting = False
        self.commit_failures = 0
        self.failure: BaseException | None = None
        self.closing = False

    # -- called by appenders -------------------------------------------------------

    async def submit(self, append: PendingAppend) -> None:
        """Queue ``append`` and return once it is committed.

        Raises the error that refused it (``QueueFull``, ``JournalFull``,
        ``JournalWriteFailed``, ``ArchivistClosed``, ``ArchivistFailed``). If the
        caller is cancelled while the append is still queued, it is withdrawn and
        nothing is journaled; once in flight it may still commit.
        """
        if self.failure is not None:
            raise ArchivistFailed(str(self.failure)) from self.failure
        if self.closing:
            raise ArchivistClosed()
        self._space.check(append.size)
        self._queue.append(append)
        self._kick.set()
        try:
            await append.done.wait()
        except BaseException:
            if append.state is _State.QUEUED:
                self._queue.remove(append)
                self._kick.set()  # it may have been blocking the head
            raise
        if append.error is not None:
            raise append.error

    # -- called by writers -----------------------------------------------------------

    def settled(self, writer: Writer, settlement: Settlement) -> None:
        """Record a settled batch; the next round marks it done in the journal."""
        self._ledgers.setdefault(writer.bit, _Ledger()).add(settlement)
        self._settle_gen += 1
        self._kick.set()

    async def flush(self) -> None:
        """Wait until every settlement reported so far is committed."""
        target = self._settle_gen
        while self._flushed_gen < target:
            flushed = self._flushed
            await flushed.wait()

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new appends and withdraw the queued ones (``ArchivistClosed``).

        Appends already in a transaction still commit.
        """
        self.closing = True
        self._fail_queued(
            lambda: ArchivistClosed(
                "the archivist shut down before this append was journaled"
            )
        )

    def _fail_queued(self, make: Callable[[], ArchivistError]) -> None:
        while self._queue:
            self._queue.popleft().finish(make())

    # -- the loop ----------------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Commit rounds until cancelled."""
        task_status.started()
        while True:
            self._kick = anyio.Event()
            if not await self._round():
                await self._idle()

    async def _idle(self) -> None:
        """Wait for a kick, or for the next blocked-append deadline or retry."""
        deadline = math.inf
        if self._queue and self._queue[0].blocked_on is not None:
            head = self._queue[0]
            assert head.blocked_on is not None
            timeout = head.blocked_on.policy.block_timeout
            if timeout is not None:
                deadline = head.blocked_since + timeout
        if self._ledgers:
            deadline = min(deadline, self._retry_settle_at)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await self._kick.wait()

    async def _round(self) -> bool:
        """Run one transaction if there is anything to commit; whether it did."""
        now = time.monotonic()
        self._expire_blocked(now)
        group = [self._queue[i] for i in range(min(len(self._queue), MAX_GROUP))]
        plan = plan_admission(
            [a.size for a in group], [w.backlog() for w in self._active]
        )
        by_name = {w.name: w for w in self._active}
        decided = plan.blocked[0] if plan.blocked is not None else len(group)
        for _ in range(decided):
            self._queue.popleft()
        for index, name in plan.rejected:
            writer = by_name[name]
            group[index].finish(QueueFull(name, writer.policy.capacity))
        if plan.blocked is not None:
            head = group[plan.blocked[0]]
            writer = by_name[plan.blocked[1]]
            if head.blocked_on is not writer:
                head.blocked_on, head.blocked_since = writer, now
        admitted = [(group[index], targets) for index, targets in plan.admitted]
        ledgers = self._ledgers
        settle_now = bool(ledgers) and (bool(admitted) or now >= self._retry_settle_at)
        if not admitted and not settle_now:
            if not plan.rejected and self._compact_due:
                await self._compact()
                return True
            return bool(plan.rejected)
        self._ledgers = {} if settle_now else ledgers
        if not settle_now:
            ledgers = {}
        gen = self._settle_gen if settle_now else self._flushed_gen

        # Sequence numbers go to appends that still owe someone; an append every
        # backend dropped is acknowledged without a row.
        seq = self._journal.last_seq
        inserts: list[tuple[int, bytes, int, bytes, int, int, float, int]] = []
        new_entries: list[tuple[Entry, int]] = []
        for append, targets in admitted:
            append.state = _State.IN_FLIGHT
            if not targets:
                continue
            seq += 1
            append.seq = seq
            sid = append.session.bytes
            crc = entry_crc(seq, sid, Op.APPEND, append.payload)
            inserts.append(
                (
                    seq,
                    sid,
                    Op.APPEND,
                    append.payload,
                    append.size,
                    crc,
                    append.enqueued_at,
                    targets,
                )
            )
            entry = Entry(
                seq,
                append.session,
                Op.APPEND,
                append.payload,
                append.size,
                append.enqueued_at,
                append.records,
            )
            new_entries.append((entry, targets))

        trimming = [w for w in self._active if w.name in plan.oldest_excess]
        for writer in trimming:
            writer.close_gate()
        try:
            # Once started, finish the transaction even if we are cancelled, so
            # every appender of the group gets a definite answer.
            with anyio.CancelScope(shield=True):
                dropped_oldest = await self._transact(
                    bool(inserts),
                    inserts,
                    new_entries,
                    ledgers,
                    plan.dropped_newest,
                    trimming,
                )
        except JournalWriteFailed as exc:
            for writer in trimming:
                writer.open_gate()
            self._on_failure(exc, admitted, ledgers)
            return True

        # Committed: hand entries to the writers, then wake the appenders.
        self.commit_failures = 0
        if inserts:
            self._journal.record_high_water(seq)
        tail = self._journal.last_seq
        for writer in self._active:
            dropped = dropped_oldest.get(writer.name, [])
            in_group = {s for s, _ in dropped if s > tail - len(inserts)}
            writer.on_dropped_oldest([d for d in dropped if d[0] not in in_group])
            writer.count_dropped(
                plan.dropped_newest.get(writer.name, 0) + len(in_group)
            )
            writer.on_commit(
                [
                    e
                    for e, t in new_entries
                    if t & writer.mask and e.seq not in in_group
                ],
                tail,
            )
            if writer.bit in ledgers:
                writer.cursor = max(writer.cursor, ledgers[writer.bit].upto)
            writer.open_gate()
        for append, targets in admitted:
            for writer in self._active:
                if targets & writer.mask and isinstance(writer.policy, Sync):
                    append.waiters.append((writer, writer.add_waiter(append.seq)))
            append.finish()
        if ledgers:
            self._flushed_gen = max(self._flushed_gen, gen)
            flushed, self._flushed = self._flushed, anyio.Event()
            flushed.set()
            if all(w.pending == 0 for w in self._writers):
                self._compact_due = True
        return True

    async def _transact(
        self,
        durable: bool,
        inserts: list[tuple[int, bytes, int, bytes, int, int, float, int]],
        new_entries: list[tuple[Entry, int]],
        ledgers: dict[int, _Ledger],
        dropped_newest: dict[str, int],
        trimming: list[Writer],
    ) -> dict[str, list[tuple[int, int]]]:
        """The one transaction of a round; returns the DROP_OLDEST drops by backend."""
        writers = {w.bit: w for w in self._writers}
        dropped_oldest: dict[str, list[tuple[int, int]]] = {}
        async with self._journal.transaction(durable=durable) as tx:
            if inserts:
                await tx.insert(inserts)
            await self._apply_ledgers(tx, ledgers, writers)
            for writer in trimming:
                new_count = sum(1 for e, t in new_entries if t & writer.mask)
                new_bytes = sum(e.size for e, t in new_entries if t & writer.mask)
                # Measured now, not at planning: deliveries may have made room.
                excess = writer.backlog()
                excess.pending += new_count
                excess.pending_bytes += new_bytes
                count, nbytes = excess.excess()
                if count or nbytes:
                    dropped_oldest[writer.name] = await tx.drop_oldest(
                        writer.mask, writer.last_taken, count, nbytes
                    )
            counters = []
            for writer in self._active:
                ledger = ledgers.get(writer.bit, _Ledger())
                dropped = dropped_oldest.get(writer.name, [])
                new_count = sum(1 for e, t in new_entries if t & writer.mask)
                new_bytes = sum(e.size for e, t in new_entries if t & writer.mask)
                row = (
                    new_count - len(dropped) - ledger.count,
                    new_bytes - sum(size for _, size in dropped) - ledger.nbytes,
                    ledger.delivered,
                    len(dropped) + dropped_newest.get(writer.name, 0),
                    len(ledger.dead),
                    len(ledger.damaged),
                    ledger.upto,
                    writer.bit,
                )
                if any(row[:7]):
                    counters.append(row)
            if counters:
                await tx.update_backends(counters)
        return dropped_oldest

    async def _apply_ledgers(
        self, tx: Transaction, ledgers: dict[int, _Ledger], writers: dict[int, Writer]
    ) -> None:
        if not ledgers:
            return
        now = time.time()
        for bit, ledger in ledgers.items():
            name = writers[bit].name
            if ledger.dead:
                await tx.dead_letter(name, ledger.dead, now)
            if ledger.damaged:
                await tx.quarantine(name, ledger.damaged, now)
        ranges = [
            (writers[bit].mask, writers[bit].cursor, ledger.upto)
            for bit, ledger in ledgers.items()
            if ledger.upto > writers[bit].cursor
        ]
        if ranges:
            await tx.settle(ranges, shared=self._shared)

    def _on_failure(
        self,
        exc: JournalWriteFailed,
        admitted: list[tuple[PendingAppend, int]],
        ledgers: dict[int, _Ledger],
    ) -> None:
        self.commit_failures += 1
        logger.error(
            "journal %s: commit failed (%d in a row): %s",
            self._journal.path,
            self.commit_failures,
            exc.detail,
        )
        for append, _ in admitted:
            error = JournalWriteFailed(exc.path, exc.detail)
            error.__cause__ = exc.__cause__
            append.finish(error)
        # Keep the settlements: they are retried with the next round.
        for bit, ledger in ledgers.items():
            newer = self._ledgers.get(bit)
            if newer is not None:
                ledger.add(newer)
            self._ledgers[bit] = ledger
        self._retry_settle_at = time.monotonic() + SETTLE_RETRY_DELAY
        if _io_failure(exc) and self.commit_failures >= MAX_IO_FAILURES:
            self.failure = exc
            logger.critical(
                "journal %s: %d I/O failures in a row; refusing appends. Acknowledged"
                " entries remain in the journal; reopen it once the disk is healthy.",
                self._journal.path,
                self.commit_failures,
            )
            self._fail_queued(
                lambda: ArchivistFailed(f"journal I/O failed: {exc.detail}")
            )

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
            head.finish(
                QueueFull(
                    writer.name, writer.policy.capacity, waited=now - head.blocked_since
                )
            )
            self._kick.set()

    async def _compact(self) -> None:
        """Give free pages back to the filesystem, a slice per round, while drained."""
        self._compact_due = False
        if not self._compacting:
            if await self._journal.free_page_bytes() < COMPACT_THRESHOLD:
                return
            self._compacting = True
            logger.info("journal %s: drained; returning free pages", self._journal.path)
        remaining = await self._journal.compact(COMPACT_PAGES_PER_ROUND)
        if remaining and all(w.pending == 0 for w in self._writers):
            self._compact_due = True
        else:
            self._compacting = False
