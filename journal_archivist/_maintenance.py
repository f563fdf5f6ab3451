"""Operator requests on the journal: replaying dead letters, purging dead
letters and quarantined entries. The committer runs them between its rounds.

Rules and theory:
- A request runs in the committer's task, between commit rounds: it never
  interleaves with a transaction, and it sees every entry committed before it.
- Replay: each dead letter of one backend becomes a new entry (a new seq, after
  everything journaled before it) owed to that backend alone, and its dead-letter
  row is deleted in the same transaction: a letter is replayed once, or stays.
  The other backends' backlogs are untouched. A replay is not refused for a full
  backlog (it is an operator's decision, bounded by the letters on disk), and a
  replayed entry counts as pending like any other; ``dead_lettered`` counters
  never go down.
- Left in place, and counted in ``Request.left``: a dead letter of a session whose
  erasure, journaled after it, is still owed to the backend (replayed after that
  erasure it would bring the session back; once the erasure settles, the journal
  purges the letter), and a damaged one (its checksum does not match: it would
  deliver something other than what was appended).
- At most ``MAX_GROUP`` letters per transaction, paging by id, so appends keep
  flowing between a long replay's rounds.
- A purge deletes the rows of one backend (those of ``ids`` only, if given) in
  one durable transaction; a backend no longer registered may be purged too.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from ._admission import Plan
from ._intake import MAX_GROUP, PendingAppend
from ._records import decode_entry

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from ._errors import JournalWriteFailed
    from ._reader import Reader
    from ._transaction import Transaction
    from ._writer import Writer

    #: The committer's ``_commit``: journals entries (each with its targets) in
    #: one transaction that also runs ``step``; the write failure that refused
    #: it, if one did.
    class Commit(Protocol):
        def __call__(
            self,
            now: float,
            admitted: list[tuple[PendingAppend, int]],
            plan: Plan,
            trimming: list[Writer],
            persist: bool,
            *,
            step: Callable[[Transaction], Awaitable[None]] | None = None,
        ) -> Awaitable[JournalWriteFailed | None]: ...


__all__ = ["Kind", "Request", "Requests", "replay_batch", "serve"]

logger = logging.getLogger("journal_archivist.maintenance")


class Kind(enum.Enum):
    """What a request does."""

    #: Requeue a backend's dead letters for that backend alone.
    REPLAY = "replay"
    #: Delete a backend's dead letters.
    PURGE_DEAD_LETTERS = "dead_letters"
    #: Delete a backend's quarantined entries.
    PURGE_QUARANTINE = "quarantine"


@dataclass(eq=False)
class Request:
    """One operator request, answered through ``done`` with ``count``: the rows
    replayed or purged."""

    kind: Kind
    backend: str
    #: Only these row ids (None: all of the backend's).
    ids: frozenset[int] | None
    done: asyncio.Future[int]
    #: The backend's writer and a journal reader (a replay needs both).
    writer: Writer | None = None
    reader: Reader | None = None
    count: int = 0
    #: Dead letters a replay left in place, by reason.
    left: dict[str, int] = field(default_factory=dict)
    #: The last dead-letter id a replay has looked at.
    after: int = 0

    def finish(self, error: BaseException | None = None) -> None:
        """Answer the caller: the count, or ``error``."""
        if self.done.done():
            return
        if error is None:
            self.done.set_result(self.count)
        else:
            self.done.set_exception(error)


class Requests:
    """The committer's queue of requests, served one transaction at a time."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def push(self, request: Request) -> None:
        """Queue ``request``."""
        self._queue.append(request)

    async def serve_next(self, commit: Commit) -> bool:
        """Carry the first request one transaction forward; whether one was."""
        while self._queue and self._queue[0].done.done():  # its caller gave up
            self._queue.popleft()
        if not self._queue:
            return False
        if await serve(self._queue[0], commit):
            self._queue.popleft()
        return True

    def refuse_all(self, make: Callable[[], BaseException]) -> None:
        """Answer every queued request with ``make()`` (the committer stopped)."""
        while self._queue:
            self._queue.popleft().finish(make())


async def replay_batch(request: Request) -> tuple[list[PendingAppend], list[int]]:
    """The next dead letters of ``request`` to replay, as entries, with their
    dead-letter ids; nothing left when both are empty (``request.after`` moves
    past what was looked at, ``request.left`` counts what stays)."""
    writer, reader = request.writer, request.reader
    assert writer is not None
    assert reader is not None
    book = writer.book
    while True:
        letters = await reader.dead_letters(
            request.after, MAX_GROUP, backend=request.backend
        )
        if not letters:
            return [], []
        request.after = letters[-1].id
        erased = await reader.pending_erasures(book.mask)
        appends: list[PendingAppend] = []
        ids: list[int] = []
        for letter in letters:
            if request.ids is not None and letter.id not in request.ids:
                continue
            entry = letter.entry
            reason = None
            if entry.damage is not None:
                reason = "damaged"
            elif erased.get(entry.session, 0) > entry.seq:
                reason = "erasure pending"
            if reason is not None:
                request.left[reason] = request.left.get(reason, 0) + 1
                continue
            session = UUID(bytes=entry.session)
            records = decode_entry(entry.payload, entry.op)
            append = PendingAppend(session, entry.payload, records, entry.op)
            # Its first journal time: an archive's erasure mark set since must
            # still refuse it (``SessionGroup``).
            append.enqueued_at = entry.enqueued_at
            appends.append(append)
            ids.append(letter.id)
        if appends:
            return appends, ids


async def serve(request: Request, commit: Commit) -> bool:
    """Carry ``request`` one transaction forward; whether it is answered."""
    if request.kind is not Kind.REPLAY:
        table = request.kind.value

        async def purge(tx: Transaction) -> None:
            request.count = await tx.discard(table, request.backend, request.ids)

        request.finish(await _commit(commit, [], purge))
        return True
    try:
        appends, ids = await replay_batch(request)
    except Exception as exc:  # a read that failed: the request's, not the loop's
        request.finish(exc)
        return True
    if not appends:
        if request.left:
            logger.warning(
                "replaying %s's dead letters: left %s",
                request.backend,
                ", ".join(f"{n} ({why})" for why, n in sorted(request.left.items())),
            )
        request.finish()
        return True
    assert request.writer is not None

    async def discard(tx: Transaction) -> None:
        await tx.discard("dead_letters", request.backend, ids)

    mask = request.writer.mask
    failed = await _commit(commit, [(append, mask) for append in appends], discard)
    if failed is not None:
        request.finish(failed)
        return True
    request.count += len(appends)
    return False


async def _commit(
    commit: Commit,
    entries: list[tuple[PendingAppend, int]],
    step: Callable[[Transaction], Awaitable[None]],
) -> JournalWriteFailed | None:
    # A request's entries have no caller to wake and no backlog to admit them.
    return await commit(time.monotonic(), entries, Plan(), [], False, step=step)
