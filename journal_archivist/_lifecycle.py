"""How an archivist runs: bootstrap, the task topology, and shutdown.

Rules and theory:
- ``bootstrap`` opens the journal, reconciles it with the registrations, opens
  the readers and builds one ``Writer`` per registration, the ``SpaceGuard`` and
  the ``Committer``. If any step fails the journal is closed before the error
  propagates: a failed open leaves nothing locked.
- One anyio task group (``Runtime._serve``) owns the committer and every writer
  loop; ``enter`` and ``start_detached`` return once every loop has started.
- Writers run in a nested group so shutdown can stop them first, then let the
  committer flush their last settlements, then stop the committer. Then the
  backends are closed (``aclose``, all at once) and the journal last. Each closing
  step gets what is left of ``shutdown``'s deadline, but at least ``CLOSE_GRACE``
  and at most its own limit.
- Each loop runs under ``_run_loop``: one that dies does not take the caller's
  task with it. It *fails* the runtime (``fail``): the committer refuses every
  append, every waiter is woken, and the loops stop as at shutdown. The archivist
  raises ``failure`` from every call from then on.
- Two ways to run, both structured, and no loop outlives ``shutdown``:
  ``async with Archivist.open(...)`` (``enter`` / ``exit``) runs the group in
  the caller's task. ``await Archivist.open(...)`` (``start_detached``) runs it
  in one host task the runtime keeps and ``shutdown`` awaits. The detached mode
  exists because the startup and shutdown hooks of web frameworks (aiohttp's
  ``on_startup`` / ``on_cleanup``, Starlette's ``on_event`` handlers, Django's
  ASGI lifespan handlers) run in different tasks, and an anyio task group must be
  exited in the task that entered it, so no group of the caller's can span them.
  The host task is the one structured group that does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Final, final

import anyio

from ._committer import Committer
from ._errors import ArchivistClosed
from ._failure import Failure
from ._health import HealthReport, JournalHealth
from ._journal import Journal
from ._space import SpaceGuard
from ._writer import Writer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus

    from ._config import Registration
    from ._options import ArchivistOptions
    from ._reader import Reader

__all__ = [
    "BACKEND_CLOSE_TIMEOUT",
    "CLOSE_GRACE",
    "FINAL_FLUSH_TIMEOUT",
    "REWRITE_AT_CLOSE_TIMEOUT",
    "Runtime",
    "bootstrap",
]

logger = logging.getLogger("journal_archivist")

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


async def bootstrap(
    options: ArchivistOptions, registrations: list[Registration]
) -> Runtime:
    """Open the journal at ``options.journal_path`` and build what runs on it.

    Nothing runs yet: start the loops with ``Runtime.enter`` or
    ``Runtime.start_detached``.

    Raises:
        JournalLocked, JournalCorrupt, JournalIncompatible, JournalError: see
            each; the journal is closed again.
    """
    journal = await Journal.open(options.journal_path, options.durability)
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
        space = SpaceGuard(journal.path, options.free_space_reserve)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await journal.close()
        raise
    return Runtime(journal, writers, query, space, close_timeout=options.close_timeout)


@final
class Runtime:
    """The running parts of one archivist and their lifecycle.

    Owns the journal, the committer and the writers; runs their loops (in the
    caller's task, ``enter``/``exit``, or in a host task, ``start_detached``),
    fails them together (``fail``) and stops them in order (``shut_down``).
    ``failure`` is the first loop's death, if one died; ``shutdown_started`` is
    set once shutdown began (or was found done by another event loop).
    """

    def __init__(
        self,
        journal: Journal,
        writers: list[Writer],
        query: Reader,
        space: SpaceGuard,
        *,
        close_timeout: float | None,
    ) -> None:
        self.journal = journal
        self.writers = writers
        self.query = query
        self.space = space
        self.committer = Committer(journal, writers, space)
        #: The in-process counters (``_metrics``), fed by the hooks.
        self.metrics = self.committer.metrics
        for writer in writers:
            writer.attach(self.committer.settled, self.metrics)
        self.failure: Failure | None = None
        #: Loops that run beside the writers and stop with them (what each is,
        #: and its ``run(task_status=...)``), e.g. a slot directory's adopter.
        self.services: list[tuple[str, Callable[..., Awaitable[None]]]] = []
        self.shutdown_started = False
        # The loop that opened it closed under it (asyncio.run() returned).
        self.abandoned = False
        #: What ``shutdown`` waits by default for the backlog (None: no limit).
        self.close_timeout = close_timeout
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._host: asyncio.Task[None] | None = None
        self._outer: TaskGroup | None = None
        self._deadline: float | None = None  # shutdown's, as time.monotonic()

    @property
    def stopped(self) -> bool:
        """Whether every loop has stopped and the journal is closed."""
        return self._stopped.is_set()

    def health(self) -> HealthReport:
        """Frozen snapshots of the journal and of every backend (contract 7)."""
        journal = self.journal
        failure = self.failure
        return HealthReport(
            journal=JournalHealth(
                path=journal.path,
                quarantined=len(journal.quarantined),
                lost_entries=journal.lost_entries,
                free_bytes=self.space.current_free(),
                low_space=self.space.low,
                commit_failures=self.committer.commit_failures,
                failed=failure is not None,
                failure=None if failure is None else failure.summary,
                repaired_rows=journal.repaired_rows,
            ),
            backends={w.name: w.health() for w in self.writers},
        )

    # -- running -------------------------------------------------------------

    async def _serve(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the committer and the writers until ``shut_down`` or a failure."""
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._run_loop, "the committer", self.committer.run)
                async with anyio.create_task_group() as writers:
                    for writer in self.writers:
                        if writer.enabled:
                            what = f"the writer loop of backend {writer.name!r}"
                            await writers.start(self._run_loop, what, writer.run)
                    for what, run in self.services:
                        await writers.start(self._run_loop, what, run)
                    task_status.started()
                    await self._stop.wait()
                    writers.cancel_scope.cancel()
                # The writers are stopped; commit their last done-marks.
                flush_for = self._time_left(FINAL_FLUSH_TIMEOUT)
                with anyio.move_on_after(flush_for, shield=True):
                    with contextlib.suppress(ArchivistClosed):  # a dead committer
                        await self.committer.flush(counters=True)
                group.cancel_scope.cancel()
        finally:
            for writer in self.writers:
                writer.close()
            self.committer.stop()
            try:
                with anyio.CancelScope(shield=True):
                    await self._close_backends()  # never raises
                    await self.journal.close(
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
        """Run one of the archivist's loops; if it dies, the runtime fails."""
        try:
            await loop(task_status=task_status)
        except Exception as exc:
            self.fail(Failure(what, exc))

    def fail(self, failure: Failure) -> None:
        """A loop died: refuse every append from now on, wake every waiter, stop."""
        if self.failure is not None:
            logger.error("journal %s: also %s", self.journal.path, failure.summary)
            return
        self.failure = failure
        logger.critical(
            "journal %s: %s; the archivist stopped. What was acknowledged is in the"
            " journal: open it again to deliver it.",
            self.journal.path,
            failure.summary,
            exc_info=failure.cause,
        )
        self.committer.fail(failure)
        for writer in self.writers:
            writer.close()  # wakes wait_drained and Sync appenders now
        self._stop.set()

    # -- the two ways to run -------------------------------------------------

    async def enter(self) -> None:
        """Start the loops in a task group of the caller's task (``async with``)."""
        outer = anyio.create_task_group()
        await outer.__aenter__()
        try:
            await outer.start(self._serve)
        except BaseException as exc:
            await outer.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._outer = outer

    async def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Shut down (within ``close_timeout``, or at once if the block raised) and
        leave the task group ``enter`` entered; raise ``failure`` if the block
        never met it."""
        assert self._outer is not None
        timeout = self.close_timeout if exc is None else 0.0
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        try:
            await self.shut_down(timeout)
            if exc is None and self.failure is not None:
                # Not silent: a failure the block never met is raised here.
                raise self.failure.error()
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

    async def start_detached(self) -> None:
        """Start the loops in a host task of their own (``await Archivist.open``).

        Returns once they run. If the start fails or the caller is cancelled
        meanwhile, what was started is shut down first, so nothing keeps the
        journal locked behind the caller's back.
        """
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
                    self.fail(Failure("the archivist's task", exc))
                elif not self.shutdown_started:
                    # asyncio.run() cancels the tasks left when its coroutine
                    # returns: the loop is going away under an open archivist.
                    self.abandoned = True
                    logger.warning(
                        "journal %s: the event loop that opened the archivist is"
                        " closing without shutdown() (did asyncio.run() return?);"
                        " it stopped. What was acknowledged is in the journal.",
                        self.journal.path,
                    )
                if not isinstance(exc, Exception):
                    raise

        self._host = loop.create_task(
            host(), name=f"journal_archivist {self.journal.path}"
        )
        try:
            await asyncio.shield(ready)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.shut_down(0)
                if self.failure is not None:
                    raise self.failure.error() from self.failure.cause
            raise

    # -- shutting down -------------------------------------------------------

    async def shut_down(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Stop intake, let the writers drain within ``timeout`` seconds (None: no
        deadline), stop the loops in order and close; a second call waits for the
        first. Raises nothing of its own: the caller reports ``failure``."""
        if self.shutdown_started:
            await self._stopped.wait()
            return
        self.shutdown_started = True
        if timeout is not None:
            self._deadline = time.monotonic() + timeout
        self.committer.close()
        try:
            if not self._stopped.is_set():
                for writer in self.writers:
                    writer.start_draining()
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    for writer in self.writers:
                        if writer.enabled:
                            with contextlib.suppress(ArchivistClosed):
                                await writer.wait_settled()
        finally:
            self._stop.set()
            with anyio.CancelScope(shield=True):
                await self._stopped.wait()
                if self._host is not None:
                    await asyncio.wait([self._host])

    async def _close_backends(self) -> None:
        """``aclose`` every registered backend once, all at once, within
        ``_time_left(BACKEND_CLOSE_TIMEOUT)`` in all; a failure is only logged."""
        unique = {id(w.registration.backend): w for w in self.writers}

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
