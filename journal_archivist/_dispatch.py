"""Delivery attempts to one backend, as ``_delivery`` decides them.

Rules and theory:
- A delivery attempt that fails is retried with backoff (and the
  ``retry_after`` a backend asks for, capped). While the backend is UNHEALTHY,
  ``health_check`` is probed first; a failing probe is an outage and does not
  use up the batch's attempts. A BEST_EFFORT batch that exhausts its attempts
  (or fails with a non-retryable error) is given up on only if the probe then
  passes -- so an outage never dead-letters entries -- and is bisected until the
  poison entry is alone, which is dead-lettered; the left half goes first, so a
  session's records keep their order. Each of these decisions is
  ``_delivery``'s (pure, tested directly); this module carries them out.
- Every call to the backend is bounded by the policy's ``attempt_timeout``.
- The failure streak is the backend's health: logged once per streak at
  WARNING (with the traceback of an unexpected exception), then at each power
  of two, and once more when delivery succeeds again.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio

from ._batching import bisect, coalesce
from ._delivery import (
    Step,
    after_failure,
    after_judging,
    before_attempt,
    is_retryable,
    judging_pause,
    retry_delay,
)
from ._errors import BackendError
from ._failure import describe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._batching import Entry
    from ._policies import RetryPolicy
    from .backends._base import ArchiveBackend

__all__ = ["Dispatcher"]

logger = logging.getLogger("journal_archivist.writer")


class Dispatcher:
    """Delivers batches to one backend and keeps its failure streak."""

    def __init__(
        self,
        name: str,
        backend: ArchiveBackend,
        retry: RetryPolicy,
        *,
        best_effort: bool,
        held_up: Callable[[str], None],
    ) -> None:
        self.name = name
        self._backend = backend
        self._retry = retry
        self._best_effort = best_effort
        #: Called with the error of each failure of a REQUIRED backend.
        self._held_up = held_up
        self._retry_after = 0.0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._streak_logged = False
        #: Called with the backend's name after each failed delivery attempt.
        self.on_failed_attempt: Callable[[str], None] = lambda name: None

    async def deliver(
        self, entries: Sequence[Entry], dead: list[tuple[Entry, str, int]]
    ) -> None:
        """Deliver ``entries`` or dead-letter their poison into ``dead``; each
        step is ``_delivery``'s decision, carried out here."""
        groups = coalesce(entries)
        attempt = 0
        while True:
            step = before_attempt(self.consecutive_failures)
            if step is Step.PROBE_FIRST and not await self._probe(entries):
                await anyio.sleep(self._backoff(self.consecutive_failures))
                continue
            attempt += 1
            try:
                await self._call(lambda: self._backend.write_batch(groups))
            except Exception as exc:
                self._record_failure(exc, entries)
                self.on_failed_attempt(self.name)
                step = after_failure(
                    attempt=attempt,
                    max_attempts=self._retry.max_attempts,
                    retryable=is_retryable(exc),
                    best_effort=self._best_effort,
                )
                if step is Step.JUDGE:
                    await self._honour_retry_after()
                    step = after_judging(
                        healthy=await self._probe(entries), entries=len(entries)
                    )
                if step is Step.DEAD_LETTER:
                    dead.append((entries[0], describe(exc), attempt))
                    return
                if step is Step.BISECT:
                    left, right = bisect(entries)
                    await self.deliver(left, dead)
                    await self.deliver(right, dead)
                    return
                await anyio.sleep(self._backoff(attempt))
                continue
            self._record_success()
            return

    async def _honour_retry_after(self) -> None:
        asked, self._retry_after = self._retry_after, 0.0
        if asked:
            await anyio.sleep(judging_pause(asked))

    def _backoff(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (``_delivery.retry_delay``)."""
        asked, self._retry_after = self._retry_after, 0.0
        return retry_delay(self._retry.delay(attempt), asked)

    async def _probe(self, entries: Sequence[Entry]) -> bool:
        """Whether the backend passes its health check (a failure is recorded)."""
        try:
            await self._call(self._backend.health_check)
        except Exception as exc:
            self._record_failure(exc, entries, probe=True)
            return False
        return True

    async def _call(self, fn: Callable[[], Awaitable[None]]) -> None:
        timeout = self._retry.attempt_timeout
        with anyio.fail_after(math.inf if timeout is None else timeout):
            await fn()

    def _record_failure(
        self, exc: Exception, entries: Sequence[Entry], *, probe: bool = False
    ) -> None:
        self.consecutive_failures += 1
        self.last_error = describe(exc)
        if isinstance(exc, BackendError) and exc.retry_after is not None:
            self._retry_after = exc.retry_after
        what = "health check" if probe else f"delivery of {len(entries)} entries"
        if not self._streak_logged:
            self._streak_logged = True
            # The traceback of an unexpected exception is logged once per streak.
            logger.warning(
                "backend %r: %s failed: %s",
                self.name,
                what,
                self.last_error,
                exc_info=exc
                if not isinstance(exc, BackendError | TimeoutError)
                else None,
            )
        elif self.consecutive_failures & (self.consecutive_failures - 1) == 0:
            logger.warning(
                "backend %r: %s failed again (%d in a row): %s",
                self.name,
                what,
                self.consecutive_failures,
                self.last_error,
            )
        if not self._best_effort:
            # Every waiting Sync appender hears of it: its entry is in this batch
            # or queued behind it, so its delivery is held up by this failure.
            self._held_up(self.last_error)

    def _record_success(self) -> None:
        if self.consecutive_failures:
            logger.info(
                "backend %r: delivering again after %d failures",
                self.name,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self._streak_logged = False
        self._retry_after = 0.0
