"""A call crossing into a LoopThread's event loop, and the workers that run
calls there.

Rules and theory:
- A ``Call`` carries a function and its arguments into the loop and its outcome
  back. Its caller waits on ``gate``, a lock of its own, held until the outcome
  is set. An append's call is also its waker (``_intake.Waker``): once a round
  decides the entry, the committer calls ``set_result``, which passes the call
  to its ``on_decided``.
- ``Workers`` await the calls' coroutines in the loop. A worker runs calls one
  at a time, then waits idle for the next: workers outlive their calls, since a
  task per call cost the loop thread (which every caller waits on) three times
  as much.
- Callers of finished calls are woken together, once the loop's round of
  callbacks is done: a woken caller wants the GIL at once, and each one taken
  from the loop mid-round costs it a context switch.
- Closing: ``end_calls`` gives the calls still running a grace to finish, then
  cancels them; a cancelled call raises ``ArchivistClosed`` to its caller.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import ArchivistClosed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Call", "Workers"]


class Call:
    """One call crossing into the loop, and its outcome crossing back."""

    __slots__ = (
        "args",
        "decided",
        "error",
        "fn",
        "gate",
        "on_decided",
        "result",
    )

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        # Held until the outcome is set; the caller waits by acquiring it again.
        self.gate = threading.Lock()
        self.gate.acquire()
        # An append handed in and not yet decided: what to call once it is.
        self.decided: Callable[[], BaseException | Awaitable[Any] | None] | None
        self.decided = None
        self.on_decided: Callable[[Call], None] | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.gate.release()

    def done(self) -> bool:
        """Whether its append was decided (``Waker``)."""
        return self.decided is None

    def set_result(self, result: None, /) -> None:
        """Its append was decided (``Waker``; the committer calls it in the loop)."""
        assert self.on_decided is not None
        self.on_decided(self)


class Workers:
    """The tasks that await calls in the loop, and the waking of their callers."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set once it runs
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[asyncio.Task[Any], Call] = {}
        self._idle: list[asyncio.Future[tuple[Call, Awaitable[Any]]]] = []
        self._settled: list[Call] = []  # finished, their callers not yet woken
        self._quiet: anyio.Event | None = None  # set once only the closer runs
        self._closer: asyncio.Task[Any] | None = None

    def start(self, call: Call, coro: Awaitable[Any]) -> None:
        """Await ``coro`` for ``call`` in an idle worker (a new one if none is)."""
        while self._idle:
            waiter = self._idle.pop()
            if not waiter.done():  # cancelled only as the loop ends
                waiter.set_result((call, coro))
                return
        assert self.loop is not None
        worker = self.loop.create_task(self._work(call, coro))
        self._tasks.add(worker)
        worker.add_done_callback(self._tasks.discard)

    async def _work(self, call: Call, coro: Awaitable[Any]) -> None:
        """Run calls, one at a time, then wait idle for the next (the loop's end
        cancels it)."""
        task = asyncio.current_task()
        assert task is not None
        assert self.loop is not None
        while True:
            self._busy[task] = call
            try:
                call.result = await coro
            except asyncio.CancelledError:
                # Only closing cancels a call: the archivist is gone.
                call.error = ArchivistClosed("the archivist closed during this call")
                self._settle(task, call)
                raise
            except BaseException as exc:
                call.error = exc
            self._settle(task, call)
            waiter: asyncio.Future[tuple[Call, Awaitable[Any]]]
            waiter = self.loop.create_future()
            self._idle.append(waiter)
            call, coro = await waiter

    def _settle(self, task: asyncio.Task[Any], call: Call) -> None:
        del self._busy[task]
        if self._quiet is not None and not self._busy.keys() - {self._closer}:
            self._quiet.set()
        self.wake_soon(call)

    def wake_soon(self, call: Call) -> None:
        """Wake the caller of a finished ``call``, together with the others."""
        self._settled.append(call)
        if len(self._settled) == 1:
            assert self.loop is not None
            self.loop.call_soon(self.wake_all)

    def wake_all(self) -> None:
        """Wake every caller whose call has finished."""
        settled, self._settled = self._settled, []
        for call in settled:
            call.gate.release()

    async def end_calls(self, grace: float) -> None:
        """Let the calls still running (but the current task's) end within
        ``grace`` seconds, then cancel them."""
        self._closer = asyncio.current_task()
        if self._busy.keys() - {self._closer}:
            self._quiet = anyio.Event()
            with anyio.move_on_after(grace):
                await self._quiet.wait()
            for task in self._busy.keys() - {self._closer}:
                task.cancel()  # settles its call with ArchivistClosed
