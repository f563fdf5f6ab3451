"""The Archivist: what users call.

Rules and theory:
- ``Archivist.open`` checks its arguments (``ArchivistOptions``,
  ``check_registrations``, ``check_ownership``) before anything is touched;
  ``_lifecycle`` then opens the journal and runs the loops (``Runtime``). The
  archivist holds one runtime and keeps no lifecycle state of its own.
- Once the runtime has failed (a loop died), every call raises ``ArchivistFailed``;
  ``shutdown`` (or the end of the ``async with``) raises it too.
- The archivist serves the event loop that opened it; a call from another one
  raises ``WrongEventLoop`` before touching anything.
- The calls' paths live beside it: ``_acknowledge`` journals an entry and waits
  for its ``Sync`` backends, ``_reading`` reads a session (journal before
  backend, contract 10).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
import warnings
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, final

import msgspec

from ._acknowledge import acknowledge, decided, hand_in
from ._config import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    Registration,
)
from ._config_file import ArchivistConfig, load_config
from ._errors import ArchivistClosed, ArchivistError, WrongEventLoop
from ._intake import PendingAppend
from ._lifecycle import bootstrap
from ._operator_calls import OperatorCalls
from ._options import (
    DEFAULT_CLOSE_TIMEOUT,
    ArchivistOptions,
    Slots,
    check_registrations,
)
from ._ownership import check_ownership
from ._policies import Durability
from ._reading import read_session
from ._records import MessageRecord, Op, check_append_count, encode_append
from ._slots import Adopter, check_slot_backends, claim, slot_journal
from .backends._base import checked_uuid

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
    from types import TracebackType
    from uuid import UUID

    from ._intake import Waker
    from ._lifecycle import Runtime

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "Archivist"]


@final
class Archivist(OperatorCalls):
    """Archives message records durably to every registered backend.

    Open with ``async with Archivist.open(path, registrations) as archivist:`` or
    ``archivist = await Archivist.open(...)`` (then call ``shutdown()``). Every
    append is committed to the journal at ``path`` before it is acknowledged, then
    delivered by one writer loop per backend; undelivered entries survive crashes
    and restarts and are delivered when the journal is opened again.
    """

    def __init__(self, runtime: Runtime, options: ArchivistOptions) -> None:
        self._runtime = runtime
        # The runtime's parts, named here for the calls (and white-box tests).
        self._journal = runtime.journal
        self._writers = runtime.writers
        self._committer = runtime.committer
        self._by_name = {w.name: w for w in runtime.writers}
        self._max_record_bytes = options.max_record_bytes
        self._max_append_records = options.max_append_records
        self._max_append_bytes = options.append_byte_limit
        # The event loop that runs the loops: the only one the archivist serves.
        self._loop = asyncio.get_running_loop()

    # -- opening -------------------------------------------------------------

    @staticmethod
    def open(
        journal_path: str | os.PathLike[str],
        registrations: Sequence[Registration] | Callable[[], Sequence[Registration]],
        *,
        durability: Durability = Durability.FULL,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_append_records: int = DEFAULT_MAX_APPEND_RECORDS,
        max_append_bytes: int | None = None,
        free_space_reserve: int = DEFAULT_FREE_SPACE_RESERVE,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        slots: Slots | None = None,
    ) -> OpeningArchivist:
        """Open (creating if needed) the journal at ``journal_path`` and start.

        Args:
            journal_path: the journal file; its directory is created if missing.
                With ``slots``, a journal directory (``docs/scaling.md``).
            registrations: the backends to deliver to (at least one enabled), or
                a function that makes them afresh (called once, and once per
                orphan slot adopted; ``slots`` with ``adopt_orphans`` needs it).
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
            slots: claim a slot of the journal directory ``journal_path`` and
                drain its orphans (``Slots``); every backend must keep erasure
                marks.

        Raises:
            NoFreeSlot: every slot is held by another owner.
            JournalLocked, JournalCorrupt, JournalIncompatible, JournalError: see
                each; nothing was changed.
            ValueError, TypeError: bad arguments, named in the message; among them
                a backend that would write the journal's files, or a file or
                directory another registration writes (``owned_paths``).
        """
        options = ArchivistOptions(
            journal_path=os.fspath(journal_path),
            durability=durability,
            max_record_bytes=max_record_bytes,
            max_append_records=max_append_records,
            max_append_bytes=max_append_bytes,
            free_space_reserve=free_space_reserve,
            close_timeout=close_timeout,
        )
        if slots is not None:
            return _opening_slot(options, registrations, slots)
        return _opening(options, _made(registrations))

    @staticmethod
    def from_config(
        config: str | os.PathLike[str] | ArchivistConfig | None = None,
    ) -> OpeningArchivist:
        """Open as a config file says (``docs/configuration.md``): a TOML file's
        path, a loaded ``ArchivistConfig``, or None for the embedded default (a
        journal and a SQLite archive under ``./archivist-data/``). Use it as
        ``open()``'s result.

        Raises:
            ConfigError: the file cannot be read, or a value in it is wrong
                (named with the file, table, key and line).
            and what ``open()`` raises.
        """
        if not isinstance(config, ArchivistConfig):
            config = load_config(config)
        if config.slots is not None:
            return _opening_slot(config.journal, config.registrations, config.slots)
        return _opening(config.journal, config.registrations())

    def __del__(self, _warn: Any = warnings.warn) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None and not runtime.shutdown_started:
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
        append = self._checked_append(session, records)
        if append is not None:
            await acknowledge(self._runtime, append)

    def _checked_append(
        self, session: UUID, records: Iterable[MessageRecord]
    ) -> PendingAppend | None:
        """The entry ``append_messages`` journals (None: no records)."""
        runtime = self._runtime
        try:
            if runtime.shutdown_started or runtime.failure or not self._in_own_loop():
                self._check_open()
            checked_uuid(session)
            records = _taken_records(records, self._max_append_records)
            if not records:
                return None
            payload = encode_append(
                session,
                records,
                max_record_bytes=self._max_record_bytes,
                max_append_bytes=self._max_append_bytes,
            )
        except ArchivistError as exc:
            runtime.metrics.refused(exc)
            raise
        return PendingAppend(session, payload, records)

    def _hand_in_append(
        self, session: UUID, records: Iterable[MessageRecord], caller: Waker
    ) -> Callable[[], BaseException | Awaitable[None] | None] | None:
        """SyncArchivist's ``append_messages`` without a task (``_acknowledge``):
        queues the entry (None: no records) and returns what to call once
        ``caller`` is woken."""
        append = self._checked_append(session, records)
        if append is None:
            return None
        started = time.perf_counter()
        hand_in(self._runtime, append, caller)
        return functools.partial(decided, self._runtime, append, started)

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
        try:
            self._check_open()
        except ArchivistError as exc:
            self._runtime.metrics.refused(exc)
            raise
        checked_uuid(session)
        await acknowledge(self._runtime, PendingAppend(session, b"", [], Op.ERASE))

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
        return await read_session(
            self._writers, self._runtime.query, checked_uuid(session)
        )

    # -- introspection and waiting -------------------------------------------

    @property
    def close_timeout(self) -> float | None:
        """How long ``shutdown`` (and leaving ``async with``) waits for the backlog
        by default, in seconds; None waits as long as it takes."""
        return self._runtime.close_timeout

    @property
    def is_closed(self) -> bool:
        """Whether the archivist takes no more calls: ``shutdown`` has begun, or
        it failed (``health().journal.failure`` says why)."""
        runtime = self._runtime
        return runtime.shutdown_started or runtime.failure is not None

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
            closed = self._runtime.abandoned or self._loop.is_closed()
            raise WrongEventLoop(self._journal.path, loop_closed=closed)
        runtime = self._runtime
        if runtime.failure is not None:
            raise runtime.failure.error()
        if runtime.shutdown_started:
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
        runtime = self._runtime
        if not self._in_own_loop():
            if not runtime.stopped:
                raise WrongEventLoop(self._journal.path, loop_closed=False)
            runtime.shutdown_started = True  # its own loop stopped it already
        else:
            await runtime.shut_down(timeout)
        if runtime.failure is not None:
            raise runtime.failure.error()

    async def aclose(self) -> None:
        """Shut down without waiting for delivery (``shutdown(timeout=0)``)."""
        await self.shutdown(timeout=0)


def _taken_records(
    records: Iterable[MessageRecord], max_append_records: int
) -> list[MessageRecord]:
    """The records of one call, as a list of its own: an iterator is read no
    further than one past ``max_append_records``, and a call over it is
    refused before anything is copied or encoded."""
    if not isinstance(records, Sized):
        records = list(itertools.islice(records, max_append_records + 1))
    check_append_count(len(records), max_append_records)
    return list(records)


def _opening(
    options: ArchivistOptions, registrations: Sequence[Registration]
) -> OpeningArchivist:
    regs = check_registrations(registrations)
    check_ownership(options.journal_path, regs)

    async def create() -> Archivist:
        return Archivist(await bootstrap(options, regs), options)

    return OpeningArchivist(create)


def _made(
    registrations: Sequence[Registration] | Callable[[], Sequence[Registration]],
) -> Sequence[Registration]:
    return registrations() if callable(registrations) else registrations


def _opening_slot(
    options: ArchivistOptions,
    registrations: Sequence[Registration] | Callable[[], Sequence[Registration]],
    slots: Slots,
) -> OpeningArchivist:
    """Open the first free slot of the journal directory ``options.journal_path``
    and, with ``slots.adopt_orphans``, adopt its orphans (``_slots``)."""
    if not isinstance(slots, Slots):
        raise TypeError(f"slots must be a Slots, got {type(slots).__name__}")
    if slots.adopt_orphans and not callable(registrations):
        raise TypeError(
            "with Slots(adopt_orphans=True), registrations must be a function that"
            " makes them: each orphan slot adopted is drained by backends of its own"
        )
    directory = options.journal_path
    regs = check_registrations(_made(registrations))
    check_slot_backends(regs)
    check_ownership(directory, regs)

    def at(journal: str) -> ArchivistOptions:
        return msgspec.structs.replace(options, journal_path=journal)

    def orphan(journal: str) -> OpeningArchivist:
        return _opening(at(journal), _made(registrations))

    async def open_slot(index: int) -> tuple[int, Runtime]:
        return index, await bootstrap(at(slot_journal(directory, index)), regs)

    async def create() -> Archivist:
        index, runtime = await claim(
            directory, slots.max_slots, open_slot, slots.claim_timeout
        )
        archivist = Archivist(runtime, options)
        archivist._slot = index
        if slots.adopt_orphans:
            adopter = Adopter(directory, index, slots, orphan)
            runtime.services.append(("the orphan adopter", adopter.run))
            archivist._adopter = adopter
        return archivist

    return OpeningArchivist(create)


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
        await archivist._runtime.start_detached()
        return archivist

    async def __aenter__(self) -> Archivist:
        if self._archivist is not None:
            raise RuntimeError("this Archivist.open(...) was already entered")
        archivist = await self._create()
        await archivist._runtime.enter()
        self._archivist = archivist
        return archivist

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._archivist is not None
        return await self._archivist._runtime.exit(exc_type, exc, tb)
