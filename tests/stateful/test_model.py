"""A model-based test: the real Archivist, driven next to a plain dict model.

Hypothesis picks appends to several sessions, session erasures, backend failures
and outages, held deliveries, restarts (with and without a drain deadline) and
drains. After every drain, each backend's idempotent view must equal the model
exactly: every acknowledged record delivered, once, in per-session append order,
nothing from before an acknowledged erasure, and nothing that was never
acknowledged (contracts 1, 2, 3, 6, 8).

Rules are sync (hypothesis#4107), so the async archivist runs behind an anyio
blocking portal.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from uuid import UUID, uuid4

import anyio
import hypothesis.strategies as st
from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from journal_archivist import (
    Archivist,
    DeliveryFailed,
    MessageRecord,
    Queued,
    Registration,
    RetryPolicy,
    Sync,
)
from journal_archivist.testing import MockBackend

RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.004, max_attempts=3)
POLICIES: dict[str, Queued | Sync] = {
    # One entry at a time, no lingering: many small batches.
    "single": Queued(batch_window_ms=0, max_batch=1),
    # Lingers and coalesces bigger batches.
    "batched": Queued(batch_window_ms=2, max_batch=64),
    # The appender waits for delivery (and hears about failures).
    "sync": Sync(timeout=5.0),
}


class ArchivistMatchesModel(RuleBasedStateMachine):
    """Appends, failures, restarts and drains never lose, repeat or reorder records."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal("asyncio"))
        self.directory = Path(tempfile.mkdtemp(prefix="ja-model-"))
        self._stack.callback(shutil.rmtree, self.directory, ignore_errors=True)
        self.backends = {name: MockBackend() for name in POLICIES}
        self.model: dict[UUID, list[MessageRecord]] = {}
        self.acknowledged: set[UUID] = set()  # every record id ever acknowledged
        self.archivist: Archivist | None = None
        self._session_stack: contextlib.ExitStack | None = None
        self.counter = 0

    # -- lifecycle ---------------------------------------------------------------

    def _open(self) -> None:
        regs = [
            Registration(
                name=name, backend=backend, write_policy=POLICIES[name], retry=RETRY
            )
            for name, backend in self.backends.items()
        ]
        stack = contextlib.ExitStack()
        opening = Archivist.open(self.directory / "journal.db", regs, close_timeout=0)
        self.archivist = stack.enter_context(
            self.portal.wrap_async_context_manager(opening)
        )
        self._session_stack = stack

    def _close(self) -> None:
        assert self._session_stack is not None
        self._session_stack.close()
        self._session_stack = None
        self.archivist = None

    @initialize()
    def start(self) -> None:
        self._open()

    def teardown(self) -> None:
        for backend in self.backends.values():
            backend.come_back()
            backend.release()
        if self._session_stack is not None:
            self._close()
        self._stack.close()

    # -- rules -------------------------------------------------------------------

    @rule(target=sessions)
    def new_session(self) -> UUID:
        session = uuid4()
        self.model[session] = []
        return session

    @rule(session=sessions, count=st.integers(min_value=1, max_value=3))
    def append(self, session: UUID, count: int) -> None:
        assert self.archivist is not None
        records = []
        for _ in range(count):
            self.counter += 1
            records.append(
                MessageRecord(
                    session=session, role="user", content_md=f"r{self.counter}"
                )
            )
        # DeliveryFailed: journaled all the same; the Sync backend gets it on retry.
        with contextlib.suppress(DeliveryFailed):
            self.portal.call(self.archivist.append_messages, session, records)
        self.model[session].extend(records)
        self.acknowledged.update(r.message_id for r in records)

    @rule(session=sessions)
    def erase(self, session: UUID) -> None:
        assert self.archivist is not None
        with contextlib.suppress(DeliveryFailed):
            self.portal.call(self.archivist.delete_session, session)
        self.model[session] = []

    @rule(name=st.sampled_from(sorted(POLICIES)), count=st.integers(1, 3))
    def fail_next(self, name: str, count: int) -> None:
        self.backends[name].fail_next(count, retryable=count != 2)

    @rule(name=st.sampled_from(sorted(POLICIES)))
    def go_down(self, name: str) -> None:
        self.backends[name].go_down()

    @rule(name=st.sampled_from(sorted(POLICIES)))
    def come_back(self, name: str) -> None:
        self.backends[name].come_back()

    @rule(name=st.sampled_from(["single", "batched"]))
    def hold(self, name: str) -> None:
        self.backends[name].hold()

    @rule(name=st.sampled_from(["single", "batched"]))
    def release(self, name: str) -> None:
        self.backends[name].release()

    @rule(drain_first=st.booleans())
    def restart(self, drain_first: bool) -> None:
        """Close (with or without a drain) and reopen the same journal."""
        assert self.archivist is not None
        if drain_first:
            self.drain()
        self._close()
        self._open()

    @precondition(lambda self: self.archivist is not None)
    @rule()
    def drain(self) -> None:
        assert self.archivist is not None
        for backend in self.backends.values():
            backend.come_back()
            backend.release()
        self.portal.call(_drained, self.archivist)
        for name, backend in self.backends.items():
            for session, expected in self.model.items():
                got = backend.records(session)
                assert got == expected, f"{name}: session {session} differs from model"
            for session in self.model:
                delivered = {r.message_id for r in backend.deliveries(session)}
                extra = delivered - self.acknowledged
                assert not extra, f"{name} got records never acknowledged"
        health = self.archivist.health()
        for name in self.backends:
            assert health.backends[name].lag_entries == 0
            assert health.backends[name].dead_lettered == 0
        # Delivered to every backend and marked done: the journal holds nothing.
        with closing(sqlite3.connect(self.directory / "journal.db")) as db:
            assert db.execute("SELECT count(*) FROM entries").fetchone() == (0,)

    @invariant()
    def lag_is_never_negative(self) -> None:
        if self.archivist is not None:
            for health in self.archivist.health().backends.values():
                assert health.lag_entries >= 0
                assert health.lag_bytes >= 0


async def _drained(archivist: Archivist) -> None:
    with anyio.fail_after(20):
        await archivist.wait_drained()


ArchivistMatchesModel.TestCase.settings = settings(
    ArchivistMatchesModel.TestCase.settings, stateful_step_count=30
)
TestArchivistMatchesModel = ArchivistMatchesModel.TestCase
