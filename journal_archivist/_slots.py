"""Slot journals: one journal directory shared by the worker processes of a host.

Rules and theory:
- A journal directory holds slots ``slot-0`` ... ``slot-<max_slots - 1>``, each a
  folder holding one journal file (``journal``) and its ``-wal``, ``-shm`` and
  ``.lock``. A process claims the lowest-numbered slot whose lock it can take
  (``claim``), so a restarted worker takes over the slot, and the backlog, of one
  that died; numbers are reused, so files do not pile up with pids.
- An orphan is a slot whose lock nobody holds and whose journal still has
  entries. Each live process runs an ``Adopter``: at start and every
  ``adopt_interval`` seconds it looks for orphans and drains those it found at
  the look before too, one at a time, each under its own lock (it opens the
  orphan as an archivist with registrations made afresh by the factory, waits
  until it is drained, and closes it, which releases the slot). Waiting one look
  lets a worker its supervisor restarts at once take its own slot back; a slot
  being adopted is locked, so a worker starting meanwhile takes another (hence
  ``max_slots`` above the number of workers). A process finding every slot
  held may wait for one (``Slots.claim_timeout``): slots are tried again after
  a growing pause, since another process's lock sends no word when let go.
- Looking for orphans takes no lock: the lock file is peeked and the journal read
  read-only (``_offline``), so a scan never makes a starting worker skip a free
  slot. Between the peek and the open another process may take the slot: the
  open then fails with ``JournalLocked`` and the orphan is left to its new owner.
- An orphan that cannot be opened or drained (a damaged file, an archive down) is
  logged and tried again at the next scan: an orphan never fails the live
  archivist.
- Every backend must keep erasure marks (``ArchiveBackend.erasure_marks``): the
  slots feed one archive each, and an erasure journaled in one slot must hold
  against an older append of the session still waiting in another.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import anyio

from ._backoff import Backoff
from ._errors import JournalError, JournalLocked, NoFreeSlot
from ._lockfile import peek
from ._offline import read_only

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskStatus

    from ._config import Registration
    from ._options import Slots

__all__ = [
    "Adopter",
    "DrainOnly",
    "check_slot_backends",
    "claim",
    "slot_indexes",
    "slot_journal",
]

logger = logging.getLogger("journal_archivist.slots")

_T = TypeVar("_T")

#: The journal file's name inside a slot's folder.
JOURNAL_NAME: Final = "journal"
_SLOT: Final = re.compile(r"slot-(0|[1-9][0-9]{0,5})")
#: Seconds ``claim`` first waits before trying the slots again; the pause then
#: doubles, up to ``CLAIM_POLL_MAX``.
CLAIM_POLL: Final = 0.05
CLAIM_POLL_MAX: Final = 1.0


def slot_journal(directory: str, index: int) -> str:
    """The journal file of slot ``index`` of ``directory``."""
    return os.path.join(directory, f"slot-{index}", JOURNAL_NAME)


def slot_indexes(directory: str) -> list[int]:
    """The slots ``directory`` holds (folders named ``slot-N``), in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(name[5:]) for name in names if _SLOT.fullmatch(name))


def check_slot_backends(registrations: Sequence[Registration]) -> None:
    """Raise ``ValueError`` naming a backend that cannot be shared by slots."""
    for reg in registrations:
        if not type(reg.backend).erasure_marks:
            raise ValueError(
                f"registration {reg.name!r} ({type(reg.backend).__name__}) keeps no"
                " erasure marks, so it cannot take writes from several journals: a"
                " slot journal directory needs archives that do (SqliteArchive,"
                " PostgresArchive, WebhookArchive, JetStreamArchive; see"
                " docs/scaling.md)"
            )


async def claim(
    directory: str,
    max_slots: int,
    open_slot: Callable[[int], Awaitable[_T]],
    timeout: float = 0.0,  # noqa: ASYNC109
) -> _T:
    """Open the lowest-numbered slot of ``directory`` no other owner holds,
    waiting up to ``timeout`` seconds for one to come free.

    ``open_slot(index)`` opens slot ``index``'s journal and raises
    ``JournalLocked`` if another owner holds it.

    Raises:
        NoFreeSlot: every one of the ``max_slots`` slots is held, and stayed so
            for ``timeout`` seconds.
    """
    backoff = Backoff(timeout, CLAIM_POLL, CLAIM_POLL_MAX)
    while True:
        holders: list[int | None] = []
        for index in range(max_slots):
            try:
                return await open_slot(index)
            except JournalLocked as exc:
                holders.append(exc.pid)
        if not await backoff.pause():
            raise NoFreeSlot(directory, max_slots, holders, waited=timeout)


class DrainOnly(Protocol):
    """What the adopter needs of an archivist opened on an orphan."""

    async def wait_drained(self) -> None: ...


def has_backlog(journal: str) -> bool:
    """Whether the journal file ``journal`` holds entries (read-only, no lock)."""
    with read_only(journal) as conn:
        (exists,) = conn.execute("SELECT EXISTS (SELECT 1 FROM entries)").fetchone()
        return bool(exists == 1)


def lock_held(journal: str) -> bool:
    """Whether some process holds the lock of the journal file ``journal``."""
    return peek(journal + ".lock").held


class Adopter:
    """Drains the orphans of a journal directory, one at a time (see the module)."""

    def __init__(
        self,
        directory: str,
        own: int,
        slots: Slots,
        open_orphan: Callable[[str], AbstractAsyncContextManager[DrainOnly]],
    ) -> None:
        self._directory = directory
        self._own = own
        self._slots = slots
        self._open_orphan = open_orphan
        #: Orphans drained since start.
        self.adopted = 0
        #: Why the last orphan that could not be adopted was not, if one was not.
        self.last_error: str | None = None
        # One look at a time: the background loop's or an ``adopt_now`` call's.
        self._scanning = anyio.Lock()
        # The orphans the last patient look found and left for the next one.
        self._suspects: set[int] = set()

    def orphans(self) -> list[int]:
        """The slots that are orphans now (unlocked, with a backlog), in order.

        Slots at or past ``max_slots`` count too: a directory whose workers were
        restarted with fewer slots still has its old slots drained.
        """
        found = []
        for index in slot_indexes(self._directory):
            if index == self._own:
                continue
            journal = slot_journal(self._directory, index)
            try:
                if not os.path.exists(journal) or lock_held(journal):
                    continue
                if has_backlog(journal):
                    found.append(index)
            except JournalError:
                # Unreadable as it is (an older schema, which open migrates; or
                # damaged): let the open decide, and say why if it cannot.
                found.append(index)
            except OSError as exc:
                self._failed(index, exc)
        return found

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Look at once (the open waits for it), then every ``adopt_interval``
        seconds, until cancelled; drain the orphans found at two looks in a row."""
        await self.adopt_now(patient=True)  # the open waits for the first look
        task_status.started()
        while True:
            await anyio.sleep(self._slots.adopt_interval)
            await self.adopt_now(patient=True)

    async def adopt_now(self, *, patient: bool = False) -> int:
        """Look for orphans now and drain each found; how many were drained.

        ``patient``: drain only the orphans the last patient look found too, so
        a worker that is restarting (its supervisor starts it again at once)
        takes its own slot back, rather than finding it held by an adopter.
        Waits for a look under way to finish first. An orphan that cannot be
        drained is logged (``last_error``) and not counted.
        """
        async with self._scanning:
            found = await anyio.to_thread.run_sync(self.orphans)
            chosen = found
            if patient:
                chosen = [index for index in found if index in self._suspects]
                self._suspects = set(found) - set(chosen)
            drained = 0
            for index in chosen:
                drained += await self._adopt(index)
            return drained

    async def _adopt(self, index: int) -> int:
        """Drain orphan slot ``index``: 1 if drained, 0 if not."""
        journal = slot_journal(self._directory, index)
        try:
            async with self._open_orphan(journal) as orphan:
                logger.info("adopting orphan slot %d of %s", index, self._directory)
                await orphan.wait_drained()
        except JournalLocked:
            return 0  # its new owner (or another adopter) drains it
        except Exception as exc:
            self._failed(index, exc)
            return 0
        self.adopted += 1
        logger.info("orphan slot %d of %s drained", index, self._directory)
        return 1

    def _failed(self, index: int, exc: BaseException) -> None:
        self.last_error = f"slot {index}: {exc}"
        logger.warning(
            "cannot adopt orphan slot %d of %s (tried again in %g s): %s",
            index,
            self._directory,
            self._slots.adopt_interval,
            exc,
        )
