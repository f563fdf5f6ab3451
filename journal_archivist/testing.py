"""Helpers for testing code that uses journal_archivist.

``check_backend`` runs the backend contract suite against any ``ArchiveBackend``.

``MockBackend`` is an in-memory ``ArchiveBackend`` that records every call and can
be slowed down, failed, taken down or held at a gate, so tests can reach each state
by waiting on events rather than sleeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ._contract import check_backend
from ._errors import BackendError
from .backends import ArchiveBackend, SessionGroup

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from ._records import MessageRecord

__all__ = ["MockBackend", "check_backend"]


class MockBackend(ArchiveBackend):
    """An in-memory backend that records calls and injects delays and failures.

    Its archive is idempotent on ``message_id`` like the built-in backends:
    ``records(session)`` lists each record once, in first-delivery order, while
    ``deliveries(session)`` keeps every delivery, duplicates included.

    Failure injection, checked at the start of every ``append_messages`` and
    ``delete_session`` call:
    ``go_down()`` fails every call and ``health_check`` until ``come_back()``;
    ``fail_next(n)`` fails the next ``n`` calls; ``poison(message_id)`` fails every
    call that carries that record. ``hold()`` makes calls wait at a gate until
    ``release()``; ``wait_held()`` returns once a call is waiting there.

    Counters: ``batch_calls`` (``write_batch``), ``attempted_calls`` and
    ``failed_calls`` (``append_messages`` and ``delete_session``; failed health
    checks count as failed calls too), ``health_checks``, ``read_calls``; and
    ``erasures``, every session erased, in order; ``close_calls`` (``aclose``).
    """

    def __init__(self, *, readable: bool = True) -> None:
        self._readable = readable
        self._deliveries: dict[UUID, list[MessageRecord]] = {}
        self._archive: dict[UUID, dict[UUID, MessageRecord]] = {}
        self._calls: dict[UUID, int] = {}
        self.batch_calls = 0
        self.attempted_calls = 0
        self.failed_calls = 0
        self.health_checks = 0
        self.read_calls = 0
        self.erasures: list[UUID] = []
        self.close_calls = 0
        self._delay = 0.0
        self._fail_next: list[BackendError] = []
        self._down: str | None = None
        self._poison: dict[UUID, bool] = {}
        self._gate: anyio.Event | None = None
        self._arrivals = 0
        self._changed = anyio.Event()

    # -- configuring ---------------------------------------------------------------

    def set_per_op_delay(self, seconds: float) -> None:
        """Sleep ``seconds`` in every ``append_messages`` call."""
        self._delay = seconds

    def fail_next(self, count: int = 1, *, retryable: bool = True) -> None:
        """Fail the next ``count`` calls with ``BackendError(retryable=...)``."""
        for _ in range(count):
            self._fail_next.append(
                BackendError("injected failure", retryable=retryable)
            )

    def go_down(self, message: str = "backend is down") -> None:
        """Fail every call and health check until ``come_back()``."""
        self._down = message

    def come_back(self) -> None:
        """Undo ``go_down()``."""
        self._down = None

    def poison(self, message_id: UUID, *, retryable: bool = False) -> None:
        """Fail every call that carries the record ``message_id``."""
        self._poison[message_id] = retryable

    def cure(self, message_id: UUID) -> None:
        """Undo ``poison(message_id)``."""
        self._poison.pop(message_id, None)

    def hold(self) -> None:
        """Make calls wait at a gate until ``release()``."""
        if self._gate is None:
            self._gate = anyio.Event()
            self._arrivals = 0

    def release(self) -> None:
        """Open the gate; held calls proceed."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def wait_held(self, count: int = 1) -> None:
        """Wait until ``count`` calls have reached the gate since ``hold()``."""
        while self._arrivals < count:
            await self._changed.wait()

    # -- inspecting -----------------------------------------------------------------

    def appended_count(self, session: UUID) -> int:
        """Distinct records archived for ``session``."""
        return len(self._archive.get(session, {}))

    def append_call_count(self, session: UUID) -> int:
        """Successful ``append_messages`` calls for ``session``."""
        return self._calls.get(session, 0)

    def records(self, session: UUID) -> list[MessageRecord]:
        """Archived records of ``session``, each once, in first-delivery order."""
        return list(self._archive.get(session, {}).values())

    def deliveries(self, session: UUID) -> list[MessageRecord]:
        """Every record delivered for ``session``, duplicates included."""
        return list(self._deliveries.get(session, []))

    def records_by_session(self) -> dict[UUID, list[MessageRecord]]:
        """``records(session)`` for every session seen."""
        return {session: self.records(session) for session in self._archive}

    async def wait_for_records(self, session: UUID, count: int) -> None:
        """Wait until ``session`` has at least ``count`` distinct records."""
        while self.appended_count(session) < count:
            await self._changed.wait()

    async def wait_failures(self, count: int) -> None:
        """Wait until at least ``count`` calls (appends or health checks) failed."""
        while self.failed_calls < count:
            await self._changed.wait()

    def _signal(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # -- the backend protocol --------------------------------------------------------

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Count the batch, then apply it group by group."""
        self.batch_calls += 1
        await super().write_batch(groups)

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records``, after any injected gate, delay or failure."""
        await self._arrive()
        error = self._failure_for(records)
        if error is not None:
            self.failed_calls += 1
            self._signal()
            raise error
        self._calls[session] = self._calls.get(session, 0) + 1
        self._deliveries.setdefault(session, []).extend(records)
        archive = self._archive.setdefault(session, {})
        for record in records:
            archive.setdefault(record.message_id, record)
        self._signal()

    async def _arrive(self) -> None:
        if self._gate is not None:
            gate = self._gate
            self._arrivals += 1
            self._signal()
            await gate.wait()
        if self._delay:
            await anyio.sleep(self._delay)
        self.attempted_calls += 1

    def _failure_for(self, records: Sequence[MessageRecord]) -> BackendError | None:
        if self._down is not None:
            return BackendError(self._down, retryable=True)
        if self._fail_next:
            return self._fail_next.pop(0)
        for record in records:
            if record.message_id in self._poison:
                return BackendError(
                    f"poison record {record.message_id}",
                    retryable=self._poison[record.message_id],
                )
        return None

    async def delete_session(self, session: UUID) -> None:
        """Erase ``session``, after any injected gate, delay or failure.

        ``erasures`` lists every erased session, in order (redeliveries included).
        """
        await self._arrive()
        error = self._failure_for(())
        if error is not None:
            self.failed_calls += 1
            self._signal()
            raise error
        self._archive.pop(session, None)
        self.erasures.append(session)
        self._signal()

    async def health_check(self) -> None:
        """Raise while the backend is down."""
        self.health_checks += 1
        if self._down is not None:
            self.failed_calls += 1
            self._signal()
            raise BackendError(self._down, retryable=True)

    async def aclose(self) -> None:
        """Count the call (``close_calls``); the archive stays usable."""
        self.close_calls += 1

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """The archived records of ``session`` (raises while down or unreadable)."""
        self.read_calls += 1
        if not self._readable:
            return await super().read_session(session)
        if self._down is not None:
            raise BackendError(self._down, retryable=True)
        return self.records(session)
