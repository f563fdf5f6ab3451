"""Sans-IO intake: the queue of appends waiting for a commit round, and how each
round decides them.

Rules and theory:
- Appends queue in arrival order. Each round decides the head of the queue (up
  to ``MAX_GROUP``) against the backlogs (``plan_admission``): admitted ones are
  taken off the queue for the round's transaction; refused ones get their error;
  an append blocked at the head (``BLOCK``) holds back the ones behind it, except
  erasures that may pass it (``_admission`` says which).
- Free space is judged first: below the reserve the whole group is refused with
  ``JournalFull`` (the rest of the queue in the next rounds).
- A blocked head times out after its backend's ``block_timeout``, judged after
  planning, so an append that room was just made for is admitted rather than
  timed out.
- An append's ``outcome`` is None until decided, then ``ACKED`` or the error that
  refused it; then, and only then, its caller is woken (``wake``): an append
  that waits behind a blocked head is not woken by rounds that do not decide it.
Nothing here awaits or does I/O.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from ._admission import Plan, plan_admission
from ._batching import Entry
from ._errors import JournalFull, JournalWriteFailed, QueueFull
from ._journal_types import EntryRow
from ._records import Op
from ._schema import entry_crc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from uuid import UUID

    from ._admission import Backlog
    from ._records import MessageRecord
    from ._waiters import SyncWaiter
    from ._writer import Writer

__all__ = [
    "ACKED",
    "MAX_GROUP",
    "Decision",
    "Intake",
    "Numbered",
    "PendingAppend",
    "acknowledge",
    "number",
    "refuse_failed",
    "wake",
]

#: The most appends one transaction journals.
MAX_GROUP: Final = 1024

_APPEND: Final = int(Op.APPEND)


class _Acked(BaseException):
    """The outcome of an acknowledged append (a sentinel, never raised)."""


#: ``PendingAppend.outcome`` once the append is committed.
ACKED: Final = _Acked()


class Waker(Protocol):
    """What wakes a waiting caller (an ``asyncio.Future``, set by the caller)."""

    def done(self) -> bool: ...  # pragma: no cover - a protocol

    def set_result(self, result: None, /) -> None: ...  # pragma: no cover


class PendingAppend(Entry):
    """One ``append_messages`` (or ``delete_session``) call waiting for its
    commit; then, its entry.

    ``outcome`` is None until a round decides the append, then ``ACKED`` or the
    error that refused it. ``queued`` is true until a round takes it; until then
    the caller may withdraw it. Once committed, the same object goes to the
    writers as the journal ``Entry`` (no second copy per append).
    """

    __slots__ = (
        "blocked_on",
        "blocked_since",
        "caller",
        "outcome",
        "queued",
        "waiters",
    )

    def __init__(
        self,
        session: UUID,
        payload: bytes,
        records: list[MessageRecord],
        op: int = _APPEND,
    ):
        self.seq = 0
        self.session = session.bytes
        self.op = op if op is _APPEND else int(op)
        self.payload = payload
        self.size = len(payload)
        #: Its journal time, given by ``number`` (0.0 until then); a replayed
        #: dead letter keeps the one it was first journaled at.
        self.enqueued_at = 0.0
        self.records = records
        self.damage = None
        self.outcome: BaseException | None = None
        #: Woken once ``outcome`` is set (the caller's own future: cancelling one
        #: caller disturbs no other).
        self.caller: Waker | None = None
        self.queued = True
        self.blocked_on: Backlog | None = None
        self.blocked_since = 0.0
        self.waiters: Sequence[tuple[Writer, SyncWaiter]] = ()

    def finish(self, error: BaseException | None = None) -> None:
        """Decide the call: acknowledged if ``error`` is None (a decided call
        keeps its first outcome)."""
        self.queued = False
        if self.outcome is None:
            self.outcome = ACKED if error is None else error


@dataclass(slots=True)
class Decision:
    """What one round decided about the queue."""

    #: Appends to journal, each with its target mask, in order.
    admitted: list[tuple[PendingAppend, int]] = field(default_factory=list)
    #: Appends refused (their ``outcome`` is set).
    refused: list[PendingAppend] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)
    #: Appends are left that the next round can decide at once.
    more: bool = False


class Intake:
    """The queue of appends waiting for a round (see the module docstring)."""

    __slots__ = ("_queue", "erasures")

    def __init__(self) -> None:
        self._queue: deque[PendingAppend] = deque()
        #: Erasures in the queue: when the head blocks, those beyond the planned
        #: group are looked for too (only while there are any).
        self.erasures = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def head(self) -> PendingAppend | None:
        """The oldest queued append."""
        return self._queue[0] if self._queue else None

    def push(self, append: PendingAppend) -> None:
        """Queue ``append`` for the next round."""
        self._queue.append(append)
        if append.op != _APPEND:
            self.erasures += 1

    def withdraw(self, append: PendingAppend) -> bool:
        """Take back a queued append (its caller gave up); whether it was queued."""
        if not append.queued:
            return False
        self._queue.remove(append)
        append.queued = False
        if append.op != _APPEND:
            self.erasures -= 1
        return True

    def refuse_all(self, make: Callable[[], BaseException]) -> list[PendingAppend]:
        """Refuse every queued append with ``make()``; return them."""
        refused = list(self._queue)
        self._queue.clear()
        self.erasures = 0
        for append in refused:
            append.finish(make())
        return refused

    def deadline(self) -> float | None:
        """When the blocked head times out (``time.monotonic()``), if it does."""
        head = self.head
        if head is None or head.blocked_on is None:
            return None
        timeout = head.blocked_on.block_timeout
        return None if timeout is None else head.blocked_since + timeout

    def decide(
        self,
        now: float,
        backlogs: list[Backlog],
        *,
        space: Callable[[int], JournalFull | None],
        disabled: int = 0,
    ) -> Decision:
        """Decide the head of the queue against ``backlogs`` (working copies of
        the enabled backends'); ``space(nbytes)`` refuses a group of ``nbytes``
        for want of free space (``SpaceGuard.refusal``); ``disabled`` is the mask
        of the disabled backends."""
        queue = self._queue
        decision = Decision()
        count = min(len(queue), MAX_GROUP)
        if not count:
            return decision
        # islice, not queue[i]: indexing a deque walks it from an end each time.
        group = list(itertools.islice(queue, count))
        sizes = [a.size for a in group]
        refusal = space(sum(sizes))
        if refusal is not None:
            for append in group:
                queue.popleft()
                if append.op != _APPEND:
                    self.erasures -= 1
                append.finish(JournalFull(refusal.path, refusal.free, refusal.reserve))
            decision.refused = group
            decision.more = bool(queue)  # the rest are refused in the next round
            return decision
        erasures = (  # rare: look for them only when some are queued
            {i for i, a in enumerate(group) if a.op != _APPEND}
            if self.erasures
            else set()
        )
        beyond: list[tuple[int, bool, object]] = []
        if self.erasures > len(erasures):
            beyond = [
                (a.size, a.op != _APPEND, a.session)
                for a in itertools.islice(queue, count, None)
            ]
        plan = plan_admission(
            sizes,
            backlogs,
            erasures=erasures,
            sessions=[a.session for a in group] if self.erasures else (),
            beyond=beyond,
            disabled=disabled,
        )
        decision.plan = plan
        if plan.blocked is None:
            for _ in range(count):
                queue.popleft().queued = False
            decision.more = bool(queue)  # past MAX_GROUP
            decision.admitted = [(group[i], targets) for i, targets in plan.admitted]
        else:
            later = list(itertools.islice(queue, count, None)) if beyond else []
            decision.admitted = [
                (group[i] if i < count else later[i - count], targets)
                for i, targets in plan.admitted
            ]
            for _ in range(plan.blocked[0]):
                queue.popleft().queued = False
        if self.erasures:
            for append, _ in decision.admitted:
                if append.op != _APPEND:
                    self.erasures -= 1
                    if append.queued:  # admitted past a blocked append
                        queue.remove(append)
                        append.queued = False
        if plan.rejected:
            by_name = {b.name: b for b in backlogs}
            for index, name in plan.rejected:
                group[index].finish(QueueFull(name, by_name[name].capacity))
                decision.refused.append(group[index])
        if plan.blocked is not None:
            head = group[plan.blocked[0]]
            backlog = next(b for b in backlogs if b.name == plan.blocked[1])
            if head.blocked_on is None or head.blocked_on.name != backlog.name:
                head.blocked_since = now  # the wait counts from the first block
            head.blocked_on = backlog
            self._expire_blocked(now, decision)
        return decision

    def _expire_blocked(self, now: float, decision: Decision) -> None:
        head = self._queue[0] if self._queue else None
        if head is None or head.blocked_on is None:
            return
        backlog = head.blocked_on
        timeout = backlog.block_timeout
        if timeout is not None and now - head.blocked_since >= timeout:
            self._queue.popleft()
            waited = now - head.blocked_since
            head.finish(QueueFull(backlog.name, backlog.capacity, waited=waited))
            decision.refused.append(head)
            decision.more = True  # the appends behind it get their turn


@dataclass(slots=True)
class Numbered:
    """A round's admitted appends, numbered for the journal."""

    #: The rows to insert, in seq order.
    rows: list[EntryRow]
    #: The entries journaled, each with its targets.
    entries: list[tuple[Entry, int]]
    #: Their payload bytes, in all.
    nbytes: int
    #: The newest seq journaled (the last one before, if none).
    tail: int
    #: Sessions the round's erasures erase.
    erased: list[bytes]
    #: The newest journal time given (the last one before, if none).
    stamp: float


def number(
    admitted: Sequence[tuple[PendingAppend, int]], last_seq: int, last_stamp: float
) -> Numbered:
    """Give the appends that still owe someone the seqs after ``last_seq`` and
    journal times after ``last_stamp``, and build their rows (checksummed); an
    append every backend dropped is acknowledged without a row.

    Journal times are the clock's, but strictly increasing in seq order even if
    the clock stands still or steps back: an archive's erasure marks
    (``SessionGroup``) tell records before an erasure from those after it by
    them. A replayed dead letter keeps its first time.
    """
    seq = last_seq
    stamp = last_stamp
    now = time.time()
    rows: list[EntryRow] = []
    entries: list[tuple[Entry, int]] = []
    nbytes = 0
    for append, targets in admitted:
        if not targets:
            continue
        seq += 1
        append.seq = seq
        if not append.enqueued_at:
            stamp = now if now > stamp else math.nextafter(stamp, math.inf)
            append.enqueued_at = stamp
        session, op, payload, size = (
            append.session,
            append.op,
            append.payload,
            append.size,
        )
        nbytes += size
        crc = entry_crc(seq, session, op, targets, payload)
        # origin = targets: who is owed it, kept under the checksum for good.
        rows.append(
            EntryRow(
                seq,
                session,
                op,
                payload,
                size,
                crc,
                append.enqueued_at,
                targets,
                targets,
            )
        )
        entries.append((append, targets))
    erased = [e.session for e, _ in entries if e.op != _APPEND]
    return Numbered(rows, entries, nbytes, seq, erased, stamp)


def refuse_failed(
    exc: JournalWriteFailed, admitted: Sequence[tuple[PendingAppend, int]]
) -> None:
    """The round's commit failed with ``exc``: refuse each of its appends with a
    copy of it (one exception object is never raised in two tasks)."""
    for append, _ in admitted:
        error = JournalWriteFailed(exc.path, exc.detail, io_error=exc.io_error)
        error.__cause__ = exc.__cause__
        append.finish(error)


def acknowledge(admitted: Sequence[tuple[PendingAppend, int]]) -> None:
    """The round's transaction committed: acknowledge each of its appends."""
    for append, _ in admitted:
        # Writers deliver the records they are handed; the encoded payload lives
        # on in the journal only (a large record is not held twice).
        append.payload = b""
        # PendingAppend.finish, inlined: this runs for every append. A withdrawn
        # caller's append is decided already.
        append.queued = False
        if append.outcome is None:
            append.outcome = ACKED


def wake(appends: Iterable[PendingAppend]) -> None:
    """Wake the callers of decided ``appends`` (their ``outcome`` is set)."""
    for append in appends:
        caller = append.caller
        if caller is not None and not caller.done():
            caller.set_result(None)
