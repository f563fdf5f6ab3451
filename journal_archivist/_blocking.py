"""SyncArchivist: the Archivist for threaded code, run on one background event loop.

Rules and theory:
- One ``SyncArchivist`` owns one ``LoopThread`` (``_loop_thread``): a daemon
  thread running an event loop and, in it, one ``Archivist``. Every method is
  one ``LoopThread.call`` of the matching ``Archivist`` method, so it blocks its
  caller until that call has returned in the loop, with the same guarantees and
  the same exceptions, raised unchanged.
- The ``LoopThread`` keeps no reference to its ``SyncArchivist``, so a dropped
  one is collected: ``__del__`` warns (``ResourceWarning``) and begins the close
  in the loop without blocking. One still open at interpreter exit is closed
  then, with its ``close_timeout``.
- Refused before anything is queued: a call from a process forked from the
  opener (``WrongProcess``: the loop thread does not exist there) and one from
  a thread running an event loop (``RuntimeError``: it would stall that loop,
  or in the archivist's own loop wait for itself).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, final

import anyio

from ._archivist import DEFAULT_CLOSE_TIMEOUT, Archivist
from ._config import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
)
from ._errors import ArchivistFailed
from ._loop_thread import LoopThread
from ._policies import Durability
from ._process import current_pid

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Sequence
    from types import TracebackType
    from uuid import UUID

    from ._config import Registration
    from ._config_file import ArchivistConfig
    from ._health import HealthReport
    from ._options import Slots
    from ._records import MessageRecord
    from ._stats import Stats

__all__ = ["SyncArchivist"]

logger = logging.getLogger("journal_archivist")


async def _wait_drained(
    archivist: Archivist,
    backend: str | None,
    timeout: float | None,  # noqa: ASYNC109
) -> None:
    with anyio.fail_after(timeout):
        await archivist.wait_drained(backend)


@final
class SyncArchivist:
    """An ``Archivist`` for threaded code: the same calls, blocking.

    Open with ``SyncArchivist.open(path, registrations)`` (or ``from_config``)
    and close with ``close()`` or a ``with`` block; one still open at interpreter
    exit is closed then. It runs an ``Archivist`` in an event loop of its own, in
    one background thread, and every method blocks until the archivist's call has
    returned there, with the same guarantees and raising the same exceptions.
    Safe to call from any number of threads at once. Not from async code (use
    ``Archivist``), and not in a process forked from the opener: open one per
    process, after the fork (``WrongProcess``).
    """

    def __init__(self, loop_thread: LoopThread) -> None:
        """Use ``SyncArchivist.open`` or ``SyncArchivist.from_config``."""
        self._loop_thread = loop_thread
        self._archivist = loop_thread.archivist

    @classmethod
    def open(
        cls,
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
    ) -> SyncArchivist:
        """Open (creating if needed) the journal at ``journal_path`` and start.

        Takes the arguments of ``Archivist.open``; ``close_timeout`` is also how
        long ``close()`` (and the close at exit) lets the writers drain. Returns
        once the archivist runs.

        Raises:
            JournalLocked, JournalCorrupt, JournalIncompatible, JournalError,
                ValueError, TypeError: as ``Archivist.open``; nothing was changed
                and no thread is left running.
        """
        opening = Archivist.open(
            journal_path,
            registrations,
            durability=durability,
            max_record_bytes=max_record_bytes,
            max_append_records=max_append_records,
            max_append_bytes=max_append_bytes,
            free_space_reserve=free_space_reserve,
            close_timeout=close_timeout,
            slots=slots,
        )
        return cls(LoopThread(opening))

    @classmethod
    def from_config(
        cls, config: str | os.PathLike[str] | ArchivistConfig | None = None
    ) -> SyncArchivist:
        """Open as a config file says: ``Archivist.from_config``'s argument (a
        TOML file's path, a loaded ``ArchivistConfig``, or None for the embedded
        default); ``close()`` then drains within the file's ``close_timeout``.

        Raises:
            ConfigError: as ``Archivist.from_config``; and what ``open`` raises.
        """
        return cls(LoopThread(Archivist.from_config(config)))

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<SyncArchivist {self.journal_path!r} {state}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        loop_thread = getattr(self, "_loop_thread", None)
        if (
            loop_thread is None
            or loop_thread.pid != current_pid()
            or loop_thread.closing
        ):
            return
        _warn(
            f"SyncArchivist for {loop_thread.path} was never closed; closing it now",
            ResourceWarning,
            source=self,
            stacklevel=1,
        )
        loop_thread.close_soon()

    def __enter__(self) -> SyncArchivist:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # As ``async with Archivist.open``: drain within close_timeout, or stop
        # at once if the block raised, whose error then wins over a failure.
        if exc is None:
            self.shutdown(self._loop_thread.close_timeout)
            return
        try:
            self.shutdown(0.0)
        except ArchivistFailed:
            logger.debug("failure at close hidden by the block's error", exc_info=True)

    # -- the calls -------------------------------------------------------------

    def append_messages(self, session: UUID, records: Iterable[MessageRecord]) -> None:
        """Journal ``records`` of ``session``: ``Archivist.append_messages``.

        Returns only after the entry is committed to the journal (and delivered
        to each ``Sync`` backend). Raises what that call raises; nothing of a
        refused call was journaled.
        """
        self._loop_thread.call_append(session, records)

    def delete_session(self, session: UUID) -> None:
        """Erase ``session`` from every backend: ``Archivist.delete_session``."""
        self._loop_thread.call(self._archivist.delete_session, session)

    def read_session(self, session: UUID) -> list[MessageRecord]:
        """The records of ``session``: ``Archivist.read_session``."""
        return self._loop_thread.call(self._archivist.read_session, session)

    def health(self) -> HealthReport:
        """Frozen snapshots of the journal and every backend (``Archivist.health``)."""
        return self._loop_thread.call_sync(self._archivist.health)

    def stats(self) -> Stats:
        """The archivist's numbers (``Archivist.stats``)."""
        return self._loop_thread.call_sync(self._archivist.stats)

    def wait_drained(
        self,
        backend: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Wait until nothing is pending for ``backend`` (default: every enabled one).

        Raises:
            TimeoutError: ``timeout`` seconds passed first (None: no limit).
            ValueError, ArchivistClosed, ArchivistFailed: as
                ``Archivist.wait_drained``.
        """
        self._loop_thread.call(_wait_drained, self._archivist, backend, timeout)

    def compact(self) -> None:
        """Return the journal's free pages to the filesystem now (``compact``)."""
        self._loop_thread.call(self._archivist.compact)

    def replay_dead_letters(
        self, backend: str, ids: Iterable[int] | None = None
    ) -> int:
        """Queue ``backend``'s dead letters (``ids``, or all) for delivery again;
        returns how many (``Archivist.replay_dead_letters``)."""
        return self._loop_thread.call(self._archivist.replay_dead_letters, backend, ids)

    def purge_dead_letters(self, backend: str, ids: Iterable[int] | None = None) -> int:
        """Delete ``backend``'s dead letters (``ids``, or all); returns how many
        (``Archivist.purge_dead_letters``)."""
        return self._loop_thread.call(self._archivist.purge_dead_letters, backend, ids)

    def adopt_orphans(self) -> int:
        """Drain the orphan slots of its journal directory now; how many
        (``Archivist.adopt_orphans``)."""
        return self._loop_thread.call(self._archivist.adopt_orphans)

    def purge_quarantine(self, backend: str, ids: Iterable[int] | None = None) -> int:
        """Delete ``backend``'s quarantined rows (``ids``, or all); returns how many
        (``Archivist.purge_quarantine``)."""
        return self._loop_thread.call(self._archivist.purge_quarantine, backend, ids)

    # -- state and closing -----------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Whether it takes no more calls: closing has begun, or it failed."""
        return self._loop_thread.is_closed

    @property
    def slot(self) -> int | None:
        """The slot it holds of a journal directory (``Slots``), or None."""
        return self._archivist.slot

    @property
    def journal_path(self) -> str:
        """The absolute path of the journal file."""
        return self._archivist.journal_path

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop intake, drain within ``timeout`` seconds, close, and end the thread.

        As ``Archivist.shutdown`` (None: no deadline); then the loop thread ends.
        Calls made meanwhile or later raise ``ArchivistClosed``. A second call
        waits for the first and returns.

        Raises:
            ArchivistFailed: the archivist had failed (it is closed all the same).
            WrongProcess: called in a forked child; the opener's is untouched.
        """
        self._loop_thread.close(timeout)

    def close(self) -> None:
        """``shutdown`` with the ``close_timeout`` given to ``open``."""
        self._loop_thread.close(self._loop_thread.close_timeout)
