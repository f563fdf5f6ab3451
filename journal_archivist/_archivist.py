"""The Archivist: opens the journal, runs the loops, and is what users call.

Rules and theory:
- One anyio task group (``_serve``) owns the committer and every writer loop.
  Under ``async with Archivist.open(...)`` it runs in the caller's task; under
  ``await Archivist.open(...)`` it runs in one host task the archivist keeps and
  awaits at shutdown. Either way no loop outlives ``shutdown``.
- Writers run in a nested group so shutdown can stop them first, then let the
  committer flush their last settlements, then stop the committer.
- Each loop runs under ``_run_loop``: one that dies does not take the caller's
  task with it. It *fails* the archivist (``_fail``): every call raises
  ``ArchivistFailed`` from then on, every waiter is woken, and the loops stop as
  at shutdown; ``shutdown`` (or the end of the ``async with``) raises it too.
- The archivist serves the event loop that opened it; a call from another one
  raises ``WrongEventLoop`` before touching anything.
- ``read_session`` reads the journal before the backend: an entry that is settled
  between the two reads is then found by the second, so nothing acknowledged is
  missed (read your writes, contract 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import warnings
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from ._committer import Committer, PendingAppend
from ._config import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    JOURNAL_VALUE_LIMIT,
    MAX_BACKENDS,
    Registration,
)
from ._errors import (
    ArchivistClosed,
    DeliveryFailed,
    ReadFailed,
    WrongEventLoop,
)
from ._failure import Failure, describe
from ._health import HealthReport, HealthStatus, JournalHealth
from ._journal import Journal
from ._ownership import check_ownership
from ._policies import Durability, FailureMode, Sync
from ._read_merge import merge_read
from ._records import (
    MessageRecord,
    Op,
    check_append_count,
    encode_append,
)
from ._space import SpaceGuard
from ._writer import Writer
from .backends._base import checked_uuid

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
    from types import TracebackType
    from uuid import UUID

    from anyio.abc import TaskStatus

    from ._reader import Reader

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "Archivist"]

logger = logging.getLogger("journal_archivist")

#: Seconds ``async with`` gives the writers to drain when the block exits.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0
#: Seconds shutdown waits for the last done-marks to commit once writers stopped.
FINAL_FLUSH_TIMEOUT: Final = 5.0
#: Seconds shutdown gives the backends' ``aclose`` calls (run together).
BACKEND_CLOSE_TIMEOUT: Final = 5.0
#: Past ``shutdown``'s deadline, the last done-marks and the backends' ``aclose``
#: (and the rewrite a journal may need after an I/O failure) get this many seconds
#: each at most (never more than their limits).
CLOSE_GRACE: Final = 0.5
#: Longest a journal that must be rewritten (after an I/O failure) may take to be
#: rewritten at close; past it, its WAL is kept for the next open.
REWRITE_AT_CLOSE_TIMEOUT: Final = 30.0


def _check_registrations(registrations: Sequence[Registration]) -> list[Registration]:
    regs = list(registrations)
    for reg in regs:
        if not isinstance(reg, Registration):
            raise TypeError(f"expected Registration objects, got {type(reg).__name__}")
    names = [reg.name for reg in regs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"registration names must be unique, repeated: {duplicates}")
    if not any(reg.enabled for reg in regs):
        raise ValueError("at least one registration must be enabled")
    if len(regs) > MAX_BACKENDS:
        raise ValueError(f"at most {MAX_BACKENDS} registrations, got {len(regs)}")
    return regs


@final
class Archivist:
    """Archives message records durably to every registered backend.

    Open with ``async with Archivist.open(path, registrations) as archivist:`` or
    ``archivist = await Archivist.open(...)`` (then call ``shutdown()``). Every
    append is committed to the journal at ``path`` before it is acknowledged, then
    delivered by one writer loop per backend; undelivered entries survive crashes
    and restarts and are delivered when the journal is opened again.
    """

    def __init__(
        self,
        journal: Journal,
        registrations: list[Registration],
        writers: list[Writer],
        query: Reader,
        space: SpaceGuard,
        *,
        max_record_bytes: int,
        max_append_records: int,
        max_append_bytes: int,
        close_timeout: float | None,
    ) -> None:
        self._journal = journal
        self._registrations = registrations
        self._writers = writers
        self._by_name = {w.name: w for w in writers}
        self._query = query
        self._space = space
        self._committer = Committer(journal, writers, space)
        for writer in writers:
            writer.attach(self._committer.settled)
        self._max_record_bytes = max_record_bytes
        self._max_append_records = max_append_records
        self._max_append_bytes = max_append_bytes
        self._close_timeout = close_timeout
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._shutdown_started = False
        self._host: asyncio.Task[None] | None = None
        self._outer: anyio.abc.TaskGroup | None = None
        self._failure: Failure | None = None
        self._deadline: float | None = None  # shutdown's, as time.monotonic()
        # The event loop that runs the loops: the only one the archivist serves.
        self._loop = asyncio.get_running_loop()
        self._abandoned = False

    # -- opening -------------------------------------------------------------

    @staticmethod
    def open(
        journal_path: str | os.PathLike[str],
        registrations: Sequence[Registration],
        *,
        durability: Durability = Durability.FULL,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_append_records: int = DEFAULT_MAX_APPEND_RECORDS,
        max_append_bytes: int | None = None,
        free_space_reserve: int = DEFAULT_FREE_SPACE_RESERVE,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    ) -> OpeningArchivist:
        """Open (creating if needed) the journal at ``journal_path`` and start.

        Args:
            journal_path: the journal file; its directory is created if missing.
            registrations: the backends to deliver to (at least one enabled).
            durability: ``FULL`` (default: survives power loss) or ``NORMAL``.
            max_record_bytes: the largest encoded record an append may carry.
            max_append_records: the most records one ``append_messages`` call
                may carry; a call over it is refused (``ValidationError``)
                before any of it is encoded.
            max_append_bytes: the most encoded bytes (its records' together) one
                ``append_messages`` call may carry, at least ``max_record_bytes``
                (None: ``DEFAULT_MAX_APPEND_BYTES``, or ``max_record_bytes`` if
                that is larger); a call over it is refused (``ValidationError``)
                as soon as its encoded records pass it.
            free_space_reserve: appends are refused (``JournalFull``) while free
                space on the journal's filesystem is below this many bytes.
            close_timeout: seconds the writers may drain when an ``async with``
                block exits (None: until drained).

        Raises:
            JournalLocked, JournalCorrupt, JournalIncompatible, JournalError: see
                each; nothing was changed.
            ValueError, TypeError: bad arguments, named in the message; among them
                a backend that would write the journal's files, or a file or
                directory another registration writes (``owned_paths``).
        """
        regs = _check_registrations(registrations)
        check_ownership(os.fspath(journal_path), regs)
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
        if max_append_records < 1:
            raise ValueError(
                f"max_append_records must be >= 1, got {max_append_records}"
            )
        if max_append_bytes is None:
            max_append_bytes = max(DEFAULT_MAX_APPEND_BYTES, max_record_bytes)
        if max_append_bytes < max_record_bytes:
            raise ValueError(
                f"max_append_bytes ({max_append_bytes}) must be >= max_record_bytes"
                f" ({max_record_bytes}): a record the limit allows must fit a call"
            )
        if max_append_bytes > JOURNAL_VALUE_LIMIT - 16:
            raise ValueError(
                f"max_append_bytes ({max_append_bytes}) must be below"
                f" {JOURNAL_VALUE_LIMIT - 16}: a call's records are one value in the"
                f" journal, and SQLite stores {JOURNAL_VALUE_LIMIT} bytes at most"
            )
        if free_space_reserve < 0:
            raise ValueError(
                f"free_space_reserve must be >= 0, got {free_space_reserve}"
            )
        if close_timeout is not None and close_timeout < 0:
            raise ValueError(f"close_timeout must be >= 0 or None, got {close_timeout}")
        if not isinstance(durability, Durability):
            raise TypeError(f"durability must be a Durability, got {durability!r}")

        async def create() -> Archivist:
            return await Archivist._create(
                journal_path,
                regs,
                durability=durability,
                max_record_bytes=max_record_bytes,
                max_append_records=max_append_records,
                max_append_bytes=max_append_bytes,
                free_space_reserve=free_space_reserve,
                close_timeout=close_timeout,
            )

        return OpeningArchivist(create)

    @classmethod
    async def _create(
        cls,
        journal_path: str | os.PathLike[str],
        registrations: list[Registration],
        *,
        durability: Durability,
        max_record_bytes: int,
        max_append_records: int,
        max_append_bytes: int,
        free_space_reserve: int,
        close_timeout: float | None,
    ) -> Archivist:
        journal = await Journal.open(journal_path, durability)
        try:
            _, released = await journal.reconcile([r.name for r in registrations])
            for name, count in released.items():
                logger.warning(
                    "backend %r is no longer registered: released its %d pending"
                    " entries from journal %s",
                    name,
                    count,
                    journal.path,
                )
            query = await journal.open_reader()
            writers = []
            for reg in registrations:
                row = journal.backends[reg.name]
                reader = await journal.open_reader() if reg.enabled else query
                oldest = (
                    await query.oldest_pending(row.mask, row.cursor, row.drop_floor)
                    if row.pending
                    else None
                )
                writers.append(
                    Writer(
                        reg,
                        row,
                        reader,
                        tail=journal.last_seq,
                        oldest_pending_at=oldest,
                    )
                )
            space = SpaceGuard(journal.path, free_space_reserve)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await journal.close()
            raise
        return cls(
            journal,
            registrations,
            writers,
            query,
            space,
            max_record_bytes=max_record_bytes,
            max_append_records=max_append_records,
            max_append_bytes=max_append_bytes,
            close_timeout=close_timeout,
        )

    async def _serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the committer and the writers until ``shutdown`` or a failure."""
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._run_loop, "the committer", self._committer.run)
                async with anyio.create_task_group() as writers:
                    for writer in self._writers:
                        if writer.enabled:
                            what = f"the writer loop of backend {writer.name!r}"
                            await writers.start(self._run_loop, what, writer.run)
                    task_status.started()
                    await self._stop.wait()
                    writers.cancel_scope.cancel()
                # The writers are stopped; commit their last done-marks.
                flush_for = self._time_left(FINAL_FLUSH_TIMEOUT)
                with anyio.move_on_after(flush_for, shield=True):
                    with contextlib.suppress(ArchivistClosed):  # a dead committer
                        await self._committer.flush(counters=True)
                group.cancel_scope.cancel()
        finally:
            for writer in self._writers:
                writer.close()
            self._committer.stop()
            try:
                with anyio.CancelScope(shield=True):
                    await self._close_backends()  # never raises
                    await self._journal.close(
                        rewrite_within=self._time_left(REWRITE_AT_CLOSE_TIMEOUT)
                    )
            finally:
                self._stopped.set()

    async def _run_loop(
        self,
        what: str,
        loop: Callable[..., Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one of the archivist's loops; if it dies, the archivist fails."""
        try:
            await loop(task_status=task_status)
        except Exception as exc:
            self._fail(Failure(what, exc))

    def _fail(self, failure: Failure) -> None:
        """A loop died: refuse every call from now on, wake every waiter, stop."""
        if self._failure is not None:
            logger.error("journal %s: also %s", self._journal.path, failure.summary)
            return
        self._failure = failure
        logger.critical(
            "journal %s: %s; the archivist stopped. What was acknowledged is in the"
            " journal: open it again to deliver it.",
            self._journal.path,
            failure.summary,
            exc_info=failure.cause,
        )
        self._committer.fail(failure)
        for writer in self._writers:
            writer.close()  # wakes wait_drained and Sync appenders now
        self._stop.set()

    async def _close_backends(self) -> None:
        """``aclose`` every registered backend once, all at once, within
        ``_time_left(BACKEND_CLOSE_TIMEOUT)`` in all; a failure is only logged."""
        unique = {id(w.registration.backend): w for w in self._writers}

        async def close(writer: Writer) -> None:
            try:
                await writer.registration.backend.aclose()
            except Exception as exc:
                logger.warning(
                    "backend %r: aclose failed: %r", writer.name, exc, exc_info=exc
                )

        limit = self._time_left(BACKEND_CLOSE_TIMEOUT)
        with anyio.move_on_after(limit) as scope:
            async with anyio.create_task_group() as group:
                for writer in unique.values():
                    group.start_soon(close, writer)
        if scope.cancelled_caught:
            logger.warning("backends did not finish aclose within %.1fs", limit)

    def _time_left(self, limit: float) -> float:
        """Seconds a closing step may take: what is left of ``shutdown``'s
        deadline, but at least ``CLOSE_GRACE``, and at most ``limit``."""
        if self._deadline is None:
            return limit
        return min(limit, max(CLOSE_GRACE, self._deadline - time.monotonic()))

    async def _start_detached(self) -> Archivist:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        async def host() -> None:
            try:
                async with anyio.create_task_group() as group:
                    await group.start(self._serve)
                    if not ready.done():
                        ready.set_result(None)
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                elif isinstance(exc, Exception):
                    self._fail(Failure("the archivist's task", exc))
                elif not self._shutdown_started:
                    # asyncio.run() cancels the tasks left when its coroutine
                    # returns: the loop is going away under an open archivist.
                    self._abandoned = True
                    logger.warning(
                        "journal %s: the event loop that opened the archivist is"
                        " closing without shutdown() (did asyncio.run() return?);"
                        " it stopped. What was acknowledged is in the journal.",
                        self._journal.path,
                    )
                if not isinstance(exc, Exception):
                    raise

        self._host = loop.create_task(
            host(), name=f"journal_archivist {self._journal.path}"
        )
        try:
            await asyncio.shield(ready)
        except BaseException:
            # The caller gave up (or the start failed): stop what was started,
            # so nothing keeps the journal locked behind its back.
            with anyio.CancelScope(shield=True):
                await self.shutdown(timeout=0)
            raise
        return self

    async def _enter(self) -> Archivist:
        outer = anyio.create_task_group()
        await outer.__aenter__()
        try:
            await outer.start(self._serve)
        except BaseException as exc:
            await outer.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._outer = outer
        return self

    async def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._outer is not None
        timeout = self._close_timeout if exc is None else 0.0
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        try:
            await self._shut_down(timeout)
            if exc is None and self._failure is not None:
                # Not silent: a failure the block never met is raised here.
                raise self._failure.error()
        finally:
            if cancelled:
                # Let the task group see its own cancellation (it may carry the
                # error of a failed loop) and decide what propagates.
                result = await self._outer.__aexit__(exc_type, exc, tb)
            else:
                # The body's own error propagates unchanged, not in an
                # ExceptionGroup: the loops were stopped by shutdown above.
                result = await self._outer.__aexit__(None, None, None)
        return result

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not getattr(self, "_shutdown_started", True):
            _warn(
                f"Archivist for {self._journal.path} was never shut down",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    # -- appending -----------------------------------------------------------

    async def append_messages(
        self, session: UUID, records: Iterable[MessageRecord]
    ) -> None:
        """Journal ``records`` of ``session`` for every enabled backend.

        Returns only after the entry is committed to the journal (contract 1) and,
        for each ``Sync`` backend, delivered there. An empty ``records`` is a no-op.
        ``records`` is usually a list; an iterator is read no further than one
        past ``max_append_records``.

        Raises:
            ValidationError: a bad record (named by index and field), or a call
                over ``max_append_records`` or ``max_append_bytes``; nothing of
                the call was journaled.
            QueueFull: a backlog is full under ``REJECT`` (or ``BLOCK`` waited past
                its ``block_timeout``); nothing journaled for anyone.
            JournalFull: free space is below the reserve; nothing journaled.
            JournalWriteFailed: the commit failed; nothing acknowledged.
            DeliveryFailed: a ``Sync``, ``REQUIRED`` backend did not deliver; the
                entry is journaled and retried, unless the message says it was
                dropped or quarantined for that backend.
            ArchivistClosed, ArchivistFailed: the archivist is shut down or failed.
        """
        if self._shutdown_started or self._failure or not self._in_own_loop():
            self._check_open()
        checked_uuid(session)
        if not isinstance(records, Sized):
            # An iterator: taken only as far as the limit allows.
            records = list(itertools.islice(records, self._max_append_records + 1))
        if not records:
            return
        # Counted before the copy and the encoding: refusing costs nothing per record.
        check_append_count(len(records), self._max_append_records)
        records = list(records)
        append = PendingAppend(
            session,
            encode_append(
                session,
                records,
                max_record_bytes=self._max_record_bytes,
                max_append_bytes=self._max_append_bytes,
            ),
            records,
        )
        await self._journal_entry(append)  # held by the append alone: see _commit

    async def delete_session(self, session: UUID) -> None:
        """Erase ``session`` from every backend: a journaled privacy erasure.

        The erasure is an entry like an append: durable once this returns, and
        delivered to each backend in order after the session's earlier appends,
        through restarts and outages (``ArchiveBackend.delete_session``); a
        disabled backend gets it, after its backlog, once enabled again. Appends
        of the session made after it are kept. It is never refused, blocked or
        dropped for a full backlog. Undelivered appends of the session that a
        backend receives in the same batch as the erasure are not sent to it at
        all. Once a backend has settled it, the journal also purges that backend's
        dead letters and quarantined copies of the session from before it (those
        of backends no longer registered go at once), and rows delivered
        everywhere are deleted as usual. Waits for ``Sync`` backends as
        ``append_messages`` does.

        Raises:
            TypeError: ``session`` is not a ``uuid.UUID``.
            JournalFull, JournalWriteFailed, DeliveryFailed, ArchivistClosed,
                ArchivistFailed: as for ``append_messages``; unless it returned,
                the erasure may not be journaled: call again.
        """
        self._check_open()
        checked_uuid(session)
        await self._journal_entry(PendingAppend(session, b"", [], Op.ERASE))

    async def _journal_entry(self, append: PendingAppend) -> None:
        self._committer.enqueue(append)
        try:
            error = await append.done
        except BaseException:
            self._committer.withdraw(append)
            raise
        if error is not None:
            raise error
        if append.waiters:
            await self._wait_synced(append)

    async def _wait_synced(self, append: PendingAppend) -> None:
        start = time.monotonic()
        try:
            for writer, waiter in append.waiters:
                policy = writer.policy
                assert isinstance(policy, Sync)
                remaining = policy.timeout - (time.monotonic() - start)
                with anyio.move_on_after(max(0.0, remaining)):
                    await waiter.event.wait()
                if self._failure is not None:
                    raise self._failure.error()
                error = waiter.error
                if not waiter.event.is_set():
                    error = f"not delivered within {policy.timeout}s"
                required = writer.registration.failure_mode is FailureMode.REQUIRED
                if error is not None and required:
                    if not waiter.final:
                        error += " (the entry stays journaled and is retried)"
                    raise DeliveryFailed(writer.name, error)
        finally:
            for writer, waiter in append.waiters:
                writer.remove_waiter(waiter)

    # -- reading -------------------------------------------------------------

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """The records of ``session``: archived ones plus those still journaled.

        Reads from the highest-``priority`` readable backend that is healthy,
        falling back in priority order (healthy backends first) when one fails,
        and merges the entries still pending for that backend in the journal, in
        order and without duplicates (contract 10).

        Raises:
            ReadFailed: no readable backend is registered, or none answered.
        """
        self._check_open()
        readable = [w for w in self._writers if w.registration.readable and w.enabled]
        readable.sort(
            key=lambda w: (
                w.health().status is not HealthStatus.HEALTHY,
                -w.registration.priority,
            )
        )
        errors: dict[str, BaseException] = {}
        for writer in readable:
            # Read first: an entry delivered meanwhile is then in the archive.
            pending = await self._query.pending_for_session(
                session, writer.mask, writer.settled_upto, writer.drop_floor
            )
            try:
                timeout = writer.registration.retry.attempt_timeout
                with anyio.fail_after(math.inf if timeout is None else timeout):
                    archived = await writer.registration.backend.read_session(session)
            except Exception as exc:
                errors[writer.name] = exc
                logger.warning(
                    "read_session: backend %r failed: %s", writer.name, describe(exc)
                )
                continue
            return merge_read(archived, pending)
        raise ReadFailed(session, errors)

    # -- introspection and waiting -------------------------------------------

    def health(self) -> HealthReport:
        """Frozen snapshots of the journal and of every backend (contract 7)."""
        backends = {w.name: w.health() for w in self._writers}
        return HealthReport(
            journal=JournalHealth(
                path=self._journal.path,
                quarantined=len(self._journal.quarantined),
                lost_entries=self._journal.lost_entries,
                free_bytes=self._space.current_free(),
                low_space=self._space.low,
                commit_failures=self._committer.commit_failures,
                failed=self._failure is not None,
                failure=None if self._failure is None else self._failure.summary,
                repaired_rows=self._journal.repaired_rows,
            ),
            backends=backends,
        )

    async def wait_drained(self, backend: str | None = None) -> None:
        """Wait until nothing is pending for ``backend`` (default: every enabled one).

        Also waits for the done-marks to be committed, so the journal no longer
        holds the delivered entries. Use under ``anyio.fail_after`` when a backend
        may be down.

        Raises:
            ValueError: ``backend`` is not registered, or is disabled.
            ArchivistClosed: the archivist is shut down.
            ArchivistFailed: the archivist failed (at once, also while waiting).
        """
        self._check_open()
        if backend is None:
            writers = [w for w in self._writers if w.enabled]
        else:
            writer = self._by_name.get(backend)
            if writer is None:
                raise ValueError(f"no backend named {backend!r} is registered")
            if not writer.enabled:
                raise ValueError(f"backend {backend!r} is disabled and will not drain")
            writers = [writer]
        try:
            for writer in writers:
                await writer.wait_settled()
            await self._committer.flush()
        except ArchivistClosed:
            self._check_open()  # ArchivistFailed, if that is why
            raise

    async def compact(self) -> None:
        """Return the journal's free pages to the filesystem now.

        The journal reuses the space of delivered entries, so its file keeps the
        size of its largest backlog; the archivist gives free pages back by itself
        once the backlog is drained and more than 64 MiB is free. This does it now,
        in slices between commits (appends are not held up for long).
        """
        self._check_open()
        await self._committer.compact()
        self._check_open()  # it may have stopped meanwhile

    @property
    def is_closed(self) -> bool:
        """Whether the archivist takes no more calls: ``shutdown`` has begun, or
        it failed (``health().journal.failure`` says why)."""
        return self._shutdown_started or self._failure is not None

    @property
    def journal_path(self) -> str:
        """The absolute path of the journal file."""
        return self._journal.path

    def _in_own_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # not under asyncio at all
            return False

    def _check_open(self) -> None:
        """Raise if the archivist takes no calls (or not from this event loop)."""
        if not self._in_own_loop():
            closed = self._abandoned or self._loop.is_closed()
            raise WrongEventLoop(self._journal.path, loop_closed=closed)
        if self._failure is not None:
            raise self._failure.error()
        if self._shutdown_started:
            raise ArchivistClosed()

    # -- shutting down -------------------------------------------------------

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop intake, drain within ``timeout`` seconds, and close (contract 8).

        Appends not yet committed when shutdown begins raise ``ArchivistClosed``.
        Writers then deliver what they can until everything is delivered or the
        deadline passes (None: no deadline); the rest stays journaled for the next
        open. Then the last done-marks are written and the backends closed
        (``aclose``), each within what is left of the deadline but at least
        ``CLOSE_GRACE`` (0.5 s): it returns within ``timeout`` + 1 s (+ 0.5 s
        if an I/O failure left the journal to be rewritten, see guarantees.md),
        unless a backend call that cannot be cancelled (a thread) is stuck. A
        second call waits for the first and returns.

        Raises:
            ArchivistFailed: the archivist had failed (it is closed all the same),
                so a failure is never silent.
            WrongEventLoop: called from another event loop while the archivist
                still runs in its own.
        """
        if not self._in_own_loop():
            if not self._stopped.is_set():
                raise WrongEventLoop(self._journal.path, loop_closed=False)
            self._shutdown_started = True  # its own loop stopped it already
        else:
            await self._shut_down(timeout)
        if self._failure is not None:
            raise self._failure.error()

    async def _shut_down(self, timeout: float | None) -> None:  # noqa: ASYNC109
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        if timeout is not None:
            self._deadline = time.monotonic() + timeout
        self._committer.close()
        try:
            if not self._stopped.is_set():
                for writer in self._writers:
                    writer.start_draining()
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    for writer in self._writers:
                        if writer.enabled:
                            with contextlib.suppress(ArchivistClosed):
                                await writer.wait_settled()
        finally:
            self._stop.set()
            with anyio.CancelScope(shield=True):
                await self._stopped.wait()
                if self._host is not None:
                    await asyncio.wait([self._host])

    async def aclose(self) -> None:
        """Shut down without waiting for delivery (``shutdown(timeout=0)``)."""
        await self.shutdown(timeout=0)


@final
class OpeningArchivist:
    """What ``Archivist.open`` returns: await it, or use it with ``async with``."""

    def __init__(self, create: Callable[[], Awaitable[Archivist]]) -> None:
        self._create = create
        self._archivist: Archivist | None = None

    def __await__(self) -> Generator[Any, None, Archivist]:
        return self._open_detached().__await__()

    async def _open_detached(self) -> Archivist:
        archivist = await self._create()
        return await archivist._start_detached()

    async def __aenter__(self) -> Archivist:
        if self._archivist is not None:
            raise RuntimeError("this Archivist.open(...) was already entered")
        archivist = await self._create()
        self._archivist = await archivist._enter()
        return self._archivist

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._archivist is not None
        return await self._archivist._exit(exc_type, exc, tb)
