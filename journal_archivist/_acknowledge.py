"""When a call that journals an entry returns: committed, then Sync-delivered.

Rules and theory:
- ``append_messages`` and ``delete_session`` hand their entry to the committer
  and return once it is committed (contract 1). Each waits on its own future,
  woken once a round has decided its entry (a caller behind a blocked append is
  not woken by rounds that do not decide it). A caller cancelled before its
  entry is taken withdraws it: nothing of it is journaled. A SyncArchivist's
  append takes the same steps without a task of its own: its call is the
  waker (``hand_in``), and once it is decided the loop thread runs a task
  only if ``decided`` leaves a ``Sync`` backend to wait for.
- Then, for each ``Sync`` backend the entry targets, the call waits for the
  writer to settle it, within that policy's ``timeout`` counted from the commit
  (one clock for all of them). A ``REQUIRED`` backend that did not deliver raises
  ``DeliveryFailed`` (the entry stays journaled and is retried, unless the writer
  says it was final); a ``BEST_EFFORT`` one is not waited on past its timeout
  and raises nothing (contract 6). A failed runtime wakes every waiter and its
  failure is raised. The waiters are always removed from their writers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import anyio

from ._errors import ArchivistError, DeliveryFailed
from ._intake import ACKED
from ._policies import FailureMode, Sync

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._intake import PendingAppend, Waker
    from ._lifecycle import Runtime

__all__ = ["acknowledge", "decided", "hand_in"]


async def acknowledge(runtime: Runtime, append: PendingAppend) -> None:
    """Journal ``append`` through ``runtime``'s committer; wait for its Sync backends.

    Raises:
        the error the committer refused it with (nothing journaled), or, once it
        is journaled, ``DeliveryFailed`` or ``ArchivistFailed`` (see the module).
    """
    started = time.perf_counter()
    # Its own future: cancelling this caller cancels nothing another waits on.
    woken = asyncio.get_running_loop().create_future()
    hand_in(runtime, append, woken)
    try:
        await woken
    except BaseException:
        runtime.committer.withdraw(append)
        raise
    then = decided(runtime, append, started)
    if isinstance(then, BaseException):
        raise then
    if then is not None:
        await then


def hand_in(runtime: Runtime, append: PendingAppend, caller: Waker) -> None:
    """Queue ``append`` with the committer, which wakes ``caller`` once a round
    has decided it.

    Raises:
        ArchivistClosed, ArchivistFailed: the committer takes no appends
            (counted as a refusal); nothing journaled.
    """
    append.caller = caller
    try:
        runtime.committer.enqueue(append)
    except ArchivistError as exc:
        runtime.metrics.refused(exc)
        raise


def decided(
    runtime: Runtime, append: PendingAppend, started: float
) -> BaseException | Awaitable[None] | None:
    """What a decided ``append`` (handed in at ``started``) leaves its caller:
    the error it was refused with, the wait for its ``Sync`` backends, or
    nothing. Counted either way (its latency once nothing is left)."""
    outcome = append.outcome
    if outcome is not ACKED:
        assert outcome is not None  # woken only once decided
        runtime.metrics.refused(outcome)
        return outcome
    runtime.metrics.appended(1)
    if append.waiters:
        return _synced(runtime, append, started)
    runtime.metrics.append_latency(time.perf_counter() - started)
    return None


async def _synced(runtime: Runtime, append: PendingAppend, started: float) -> None:
    await _wait_synced(runtime, append)
    runtime.metrics.append_latency(time.perf_counter() - started)


async def _wait_synced(runtime: Runtime, append: PendingAppend) -> None:
    start = time.monotonic()
    try:
        for writer, waiter in append.waiters:
            policy = writer.policy
            assert isinstance(policy, Sync)
            remaining = policy.timeout - (time.monotonic() - start)
            with anyio.move_on_after(max(0.0, remaining)):
                await waiter.event.wait()
            failure = runtime.failure
            if failure is not None:
                raise failure.error()
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
            writer.waiters.remove(waiter)
