"""LoopThread: an event loop in a thread of its own, and calls into it.

Rules and theory:
- A ``LoopThread`` is one daemon thread running one asyncio event loop
  (``anyio.run``), and in it one detached ``Archivist``, which only that thread
  ever touches (it serves the loop that opened it). ``call`` runs a coroutine
  function there and blocks its caller until it returns, raising what it
  raised, unchanged (the very exception object).
- Crossing into the loop (``LoopThread.call``): a call is put in an inbox
  under a lock, and the loop is woken (``call_soon_threadsafe``, outside the
  lock) only if no wake-up is already pending: 64 threads appending at once
  cost the loop one wake-up per batch of calls, not one per call. While the
  callers of the last batch are still coming back, the loop waits
  ``GATHER_DELAY`` for them, so their appends join one commit. The loop hands
  each call to an idle worker task and wakes the callers of finished calls
  together, once per round of callbacks (``_loop_calls``); a caller waits on a
  lock of its own.
- An append (``call_append``) needs no task: the loop hands its entry to the
  committer with the call itself as the waker, and once a round decides it the
  caller is woken, or, if it waits for ``Sync`` backends, a worker takes over
  (``Archivist._hand_in_append``): no task switch and no
  future per append in the thread every caller waits on (docs/performance.md).
- Why so lean: the loop thread is the bottleneck every caller shares (it holds
  the GIL for the archivist's own work too), and each caller costs it context
  switches. anyio's ``BlockingPortal.call`` makes two thread round trips per
  call, plus a task, a task-group entry and a cancel scope: it measured under
  half this rate (docs/performance.md, "Blocking API: 64 threads").
- Closing: once ``_closing`` is set (under the inbox lock) no call enters the
  inbox; the close is itself the last call in it, so every call before it has
  been started. It shuts the archivist down (which ends or refuses the calls in
  flight), lets the calls in flight finish, then stops the loop. When the thread
  ends, any call still waiting is failed with ``ArchivistClosed`` (an append
  handed in but never decided too): no caller is ever left waiting on a loop
  that is gone.
- Forked children: ``fork`` copies the calling thread only, so a child's copy
  has no loop thread and a call would wait forever. Every call compares the
  process id (``_process.current_pid``) with the opener's first and raises
  ``WrongProcess``; a child's copy of the at-exit registry is emptied at fork,
  so its exit never touches the parent's archivist.
- A caller running an event loop is refused (``RuntimeError``) before anything
  is queued: blocking it would stall its loop, and in the archivist's own loop
  thread it would wait for itself forever.
- At interpreter exit every ``LoopThread`` still open is closed (``_process``),
  with its ``close_timeout``. The registry holds these, never the
  ``SyncArchivist`` objects (a ``LoopThread`` never refers to its own), so a
  dropped ``SyncArchivist`` is collected; ``close_soon`` then begins the close
  in the loop without blocking the collecting thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar, TypeVarTuple, Unpack

import anyio

from ._errors import ArchivistClosed, WrongProcess
from ._loop_calls import Call, Workers
from ._options import DEFAULT_CLOSE_TIMEOUT
from ._process import current_pid, register, unregister

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from uuid import UUID

    from ._archivist import Archivist, OpeningArchivist
    from ._records import MessageRecord

__all__ = ["GATHER_DELAY", "JOIN_TIMEOUT", "LoopThread"]

logger = logging.getLogger("journal_archivist")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Seconds ``close`` waits for the loop thread to end once the archivist is shut
#: down (it ends at once unless a backend's thread call is stuck); past it, the
#: daemon thread is left to die with the process, so exit never hangs on it.
JOIN_TIMEOUT: Final = 5.0
#: Seconds the loop waits for more callers when fewer than half of the last
#: batch are back (``LoopThread._drain``).
GATHER_DELAY: Final = 0.0003
#: Seconds the calls in flight get to finish once the archivist is shut down.
_CALLS_GRACE: Final = 1.0


#: ``Call.fn`` of an append (``LoopThread.call_append``).
_APPEND: Final[Any] = object()


class LoopThread:
    """The loop thread of one SyncArchivist, and the way calls get into it."""

    def __init__(self, opening: OpeningArchivist) -> None:
        self.pid = current_pid()
        self.path = "(opening)"
        self.close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT
        self._archivist: Archivist | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: anyio.Event | None = None
        self._lock = threading.Lock()  # guards the three fields below
        self._inbox: list[Call] = []
        self._wake_pending = False
        self._closing = False
        self._workers = Workers()  # the loop side of calls
        self._handed_in: set[Call] = set()  # appends not yet decided
        self._last_batch = 0
        self._deferred = False
        self._closing_task: asyncio.Task[None] | None = None  # asyncio holds it weakly
        self._close_lock = threading.Lock()  # one closer at a time
        self._ended = threading.Event()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(opening, ready), daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            raise
        self._thread.name = f"journal_archivist {self.path}"

    @property
    def archivist(self) -> Archivist:
        assert self._archivist is not None  # set before the constructor returns
        return self._archivist

    @property
    def closing(self) -> bool:
        """Whether closing has begun: no call is let in any more."""
        return self._closing

    @property
    def is_closed(self) -> bool:
        return self._closing or self.archivist.is_closed

    # -- the loop thread -----------------------------------------------------

    def _main(
        self, opening: OpeningArchivist, ready: concurrent.futures.Future[None]
    ) -> None:
        try:
            anyio.run(self._serve, opening, ready, backend="asyncio")
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                logger.error(
                    "journal %s: event loop thread died", self.path, exc_info=exc
                )
        finally:
            with self._lock:
                self._closing = True
                stranded, self._inbox = self._inbox, []
            stranded += self._handed_in  # never decided: the committer is gone
            self._handed_in.clear()
            for call in stranded:
                call.fail(ArchivistClosed())
            self._workers.wake_all()  # any the loop's end left waiting
            unregister(self)
            self._ended.set()

    async def _serve(
        self, opening: OpeningArchivist, ready: concurrent.futures.Future[None]
    ) -> None:
        try:
            archivist = await opening
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._archivist = archivist
        self.path = archivist.journal_path
        self.close_timeout = archivist.close_timeout
        self._loop = self._workers.loop = asyncio.get_running_loop()
        self._stop = anyio.Event()
        register(self)
        ready.set_result(None)
        await self._stop.wait()

    def _drain(self) -> None:
        """Start every call in the inbox (in the loop, once per wake-up)."""
        loop = self._loop
        assert loop is not None
        with self._lock:
            # Fewer than half the callers of the last batch are back: the rest
            # are most likely on their way (each needs the GIL in turn), so
            # wait a moment and start them together, as asyncio tasks would
            # be. The appends join the same commit, and the loop is woken
            # once for all of them. A lone caller is never held back.
            if len(self._inbox) * 2 < self._last_batch and not self._deferred:
                self._deferred = True
                loop.call_later(GATHER_DELAY, self._drain)
                return
            self._deferred = False
            self._wake_pending = False
            calls, self._inbox = self._inbox, []
        self._last_batch = len(calls)
        for call in calls:
            if call.fn is _APPEND:
                self._hand_in(call)
                continue
            try:
                outcome = call.fn(*call.args)
            except BaseException as exc:
                call.fail(exc)
                continue
            if not asyncio.iscoroutine(outcome):
                call.result = outcome
                call.gate.release()
                continue
            self._workers.start(call, outcome)

    def _hand_in(self, call: Call) -> None:
        """Queue an append with the committer; the call is its waker."""
        call.on_decided = self._append_decided
        session, records = call.args
        try:
            # Decided only in the committer's own task, once this has returned.
            call.decided = self.archivist._hand_in_append(session, records, call)
        except BaseException as exc:
            call.fail(exc)
            return
        if call.decided is None:  # no records: nothing to do
            call.gate.release()
            return
        self._handed_in.add(call)

    def _append_decided(self, call: Call) -> None:
        decided, call.decided = call.decided, None
        assert decided is not None
        self._handed_in.discard(call)
        then = decided()
        if isinstance(then, BaseException):
            call.error = then
        elif then is not None:
            self._workers.start(call, then)  # a worker waits for its Sync backends
            return
        self._workers.wake_soon(call)

    async def _shut_down(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Shut the archivist down, let the calls in flight end, stop the loop."""
        try:
            await self.archivist.shutdown(timeout)
        finally:
            # The archivist has refused or ended them; a read may still be
            # waiting on a backend, which gets a moment before it is cancelled.
            await self._workers.end_calls(_CALLS_GRACE)
            assert self._stop is not None
            self._stop.set()

    def _begin_close_in_loop(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        assert self._loop is not None
        self._closing_task = self._loop.create_task(self._shut_down(self.close_timeout))

    # -- the callers' side ---------------------------------------------------

    def check_caller(self) -> None:
        """Raise if this thread must not wait on the loop (see the module)."""
        pid = current_pid()
        if pid != self.pid:
            raise WrongProcess(self.path, opener_pid=self.pid, pid=pid)
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                f"SyncArchivist of journal {self.path} was called from a thread"
                " running an event loop; its calls block, which would stall that"
                " loop (or, in the archivist's own loop, wait forever). From async"
                " code use Archivist (await archivist.append_messages(...)), or run"
                " the blocking call in a worker thread (anyio.to_thread.run_sync,"
                " asyncio.to_thread)"
            )

    def call(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        *args: *Ts,
        closing: bool = False,
    ) -> T:
        """Await ``fn(*args)`` in the loop and wait for its outcome.

        ``closing`` marks the close call: it is let in, and nothing after it.
        """
        result: T = self._cross(fn, args, closing)
        return result

    def call_append(self, session: UUID, records: Iterable[MessageRecord]) -> None:
        """``Archivist.append_messages`` in the loop, without a task of its own
        unless it waits for ``Sync`` backends (``_acknowledge`` says how)."""
        self._cross(_APPEND, (session, records), False)

    def call_sync(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Call ``fn(*args)`` in the loop (it reads the loop's state) and wait."""
        result: T = self._cross(fn, args, False)
        return result

    def _cross(
        self, fn: Callable[..., Any], args: tuple[Any, ...], closing: bool
    ) -> Any:
        self.check_caller()
        call = Call(fn, args)
        with self._lock:
            if self._closing:
                raise ArchivistClosed()
            self._closing = closing
            self._inbox.append(call)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            # Outside the lock: the write to the loop's self-pipe lets go of the
            # GIL, and other callers would queue on the lock meanwhile. The loop
            # cannot end before this wake-up: the close call needs a drain too.
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._drain)
        call.gate.acquire()
        error = call.error
        if error is not None:
            try:
                raise error
            finally:  # no cycle through this frame's traceback
                del error, call
        return call.result

    def close(self, timeout: float | None, *, join: bool = True) -> None:
        """Shut down within ``timeout`` (see ``SyncArchivist.shutdown``)."""
        self.check_caller()
        with self._close_lock:
            if self._ended.is_set():
                return
            try:
                self.call(self._shut_down, timeout, closing=True)
            except ArchivistClosed:
                pass  # closing began in the loop (it was dropped): wait for it
            finally:
                if join and not self._ended.wait(JOIN_TIMEOUT):
                    logger.warning(
                        "journal %s: the event loop thread did not end within"
                        " %.0fs of shutdown (a backend call stuck in a thread?);"
                        " left running",
                        self.path,
                        JOIN_TIMEOUT,
                    )

    def close_soon(self) -> None:
        """Begin closing in the loop without waiting (safe in ``__del__``)."""
        loop = self._loop
        if current_pid() == self.pid and loop is not None and not loop.is_closed():
            # The loop may close meanwhile: then there is nothing left to do.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._begin_close_in_loop)
