"""Exceptions raised by journal_archivist.

ArchivistError              base of everything we raise on purpose
├── ValidationError         bad record (also a ValueError); nothing journaled
├── ConfigError             a bad config file (also a ValueError); nothing opened
├── QueueFull               a backlog is full (REJECT, or BLOCK past its timeout)
├── DeliveryFailed          a Sync write was not delivered; the entry stays journaled
├── BackendError            raised by backends; ``retryable`` says whether to try again
├── ReadFailed              read_session found no readable backend that answered
├── ArchivistClosed         used after shutdown() or outside its ``async with``
├── ArchivistFailed         a background loop died; the archivist accepts nothing more
├── WrongEventLoop          used from an event loop other than the one that opened it
├── WrongProcess            a SyncArchivist used in a process forked from its opener
└── JournalError            about the journal file itself
    ├── JournalLocked       another owner holds the journal
    ├── JournalCorrupt      the file is not a journal, or is damaged
    ├── JournalIncompatible the file was written by a newer schema
    ├── JournalFull         free space is below the reserve; nothing journaled
    └── JournalWriteFailed  a commit failed; nothing of that group was acknowledged

Every class says when it is raised and what state it leaves behind. The facts that
make up each message are kept as attributes.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

__all__ = [
    "RETRY_AFTER_CAP",
    "ArchivistClosed",
    "ArchivistError",
    "ArchivistFailed",
    "BackendError",
    "ConfigError",
    "DeliveryFailed",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalIncompatible",
    "JournalLocked",
    "JournalWriteFailed",
    "NoFreeSlot",
    "QueueFull",
    "ReadFailed",
    "ValidationError",
    "WrongEventLoop",
    "WrongProcess",
]


class ArchivistError(Exception):
    """Base class of every error journal_archivist raises on purpose."""


class ValidationError(ArchivistError, ValueError):
    """A record or argument was rejected before anything was journaled.

    Raised by ``append_messages`` for a bad record; nothing of that call was
    journaled, for any backend. ``index`` is the record's position in the call
    (``None`` when the problem is not one record's), ``field`` the offending field.
    """

    def __init__(
        self, problem: str, *, index: int | None = None, field: str | None = None
    ) -> None:
        where = []
        if index is not None:
            where.append(f"record {index}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{problem}")
        self.problem = problem
        self.index = index
        self.field = field


class ConfigError(ArchivistError, ValueError):
    """A config file (``load_config``) or a registration built from it is refused.

    Raised for a missing or unreadable file, bad TOML, an unknown key, a wrong type
    or value, a missing environment variable, or a backend that cannot be built.
    Nothing was opened or changed. The facts are kept as attributes: ``path`` (the
    file; None for a config not read from one), ``table`` (``journal``,
    ``backends[1]``, ``backends[1].write_policy``...; None for the whole file),
    ``key`` (None for the whole table) and ``line`` (1-based; None when unknown,
    and a best effort otherwise). A value taken from the environment is never
    shown. The message reads ``<file>:<line>: <table>.<key>: <problem>``.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        table: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        where = path if path is not None else "<config>"
        if line is not None:
            where += f":{line}"
        field = ".".join(part for part in (table, key) if part)
        super().__init__(
            f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        )
        self.problem = problem
        self.path = path
        self.table = table
        self.key = key
        self.line = line


class QueueFull(ArchivistError):
    """The append was refused because a backend's backlog is full.

    Raised under ``OverflowPolicy.REJECT``, or under ``BLOCK`` once the wait passes
    its ``block_timeout``. Nothing from the refused call was journaled, for any
    backend.
    """

    def __init__(self, backend: str, capacity: int, *, waited: float | None = None):
        detail = f" after waiting {waited:.3f}s" if waited is not None else ""
        super().__init__(
            f"backlog of backend {backend!r} is full ({capacity} entries){detail}"
        )
        self.backend = backend
        self.capacity = capacity
        self.waited = waited


class DeliveryFailed(ArchivistError):
    """A ``Sync`` write to a ``REQUIRED`` backend was not delivered.

    Usually the entry *is* journaled: a delivery attempt failed or the timeout
    passed, and it stays queued for that backend and is retried in the background,
    so the caller need not append it again (the message says "stays journaled").
    If the backend's overflow policy dropped the entry, or it was quarantined, it
    will not be delivered to that backend (the message says so).
    """

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"delivery to backend {backend!r} failed: {reason}")
        self.backend = backend
        self.reason = reason


#: The longest a backend's ``retry_after`` is honoured, so a bogus value cannot
#: stall a backend for days (the writer's wait, and what a backend reports).
RETRY_AFTER_CAP: Final = 600.0


class BackendError(ArchivistError):
    """Raised by an archive backend when a call fails.

    ``retryable=True`` means the same call may succeed later (a timeout, a lost
    connection); ``False`` means it will keep failing (a rejected record). Writers
    treat any other exception from a backend as retryable. ``retry_after`` (seconds)
    is the earliest the backend wants to be called again, as an HTTP
    ``Retry-After`` says; the writer waits at least that long before its retry,
    up to ``RETRY_AFTER_CAP`` (600 s). A negative ``retry_after`` counts as 0; one
    that is not a finite number is a ``TypeError`` or ``ValueError`` here, not
    later in the writer.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(
                retry_after, int | float
            ):
                raise TypeError(
                    "retry_after must be a number of seconds or None, got"
                    f" {type(retry_after).__name__} {retry_after!r:.40}"
                )
            if not math.isfinite(retry_after):
                raise ValueError(f"retry_after must be finite, got {retry_after!r}")
            retry_after = max(0.0, float(retry_after))
        self.retry_after = retry_after


class ReadFailed(ArchivistError):
    """``read_session`` found no readable backend that could answer.

    ``errors`` maps each backend that was tried to the error it raised. Nothing was
    changed by the attempt.
    """

    def __init__(self, session: UUID, errors: dict[str, BaseException]) -> None:
        if errors:
            tried = "; ".join(f"{name}: {exc!r}" for name, exc in errors.items())
            message = f"no readable backend answered for session {session}: {tried}"
        else:
            message = f"no backend is registered as readable (session {session})"
        super().__init__(message)
        self.session = session
        self.errors = errors


class ArchivistClosed(ArchivistError):
    """The archivist is shut down (or shutting down) and accepts no more calls.

    An append refused with this error was not journaled.
    """

    def __init__(self, message: str = "the archivist is closed") -> None:
        super().__init__(message)


class ArchivistFailed(ArchivistError):
    """A background loop of the archivist died and it accepts nothing more.

    Everything acknowledged before is still in the journal; reopen it to continue.
    The original error is the ``__cause__``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the archivist has failed: {reason}")
        self.reason = reason


class WrongEventLoop(ArchivistError, RuntimeError):
    """An archivist was used from an event loop other than the one that opened it.

    An ``Archivist`` runs its loops as tasks of the event loop that opened it, and
    serves that loop only; the call did nothing. The usual cause is opening it in
    one ``asyncio.run()`` and using it in another: the first one closed its loop
    on return, which stopped the archivist (``loop_closed`` says so). Open and use
    it inside one ``asyncio.run()``/``anyio.run()``; from other threads, submit
    calls to that loop.
    """

    def __init__(self, path: str, *, loop_closed: bool) -> None:
        what = (
            "was opened in an event loop that has since closed, which stopped it"
            " (asyncio.run() closes its loop when it returns)"
            if loop_closed
            else "was opened in another event loop and serves only that one"
        )
        super().__init__(
            f"the archivist of journal {path} {what}. Open it where it is used:"
            " `async with Archivist.open(...) as archivist:` inside the one"
            " asyncio.run() or anyio.run() of the program; from other threads,"
            " submit calls to that loop (an anyio blocking portal, or"
            " asyncio.run_coroutine_threadsafe)"
        )
        self.path = path
        self.loop_closed = loop_closed


class JournalError(ArchivistError):
    """Base class of errors about the journal file itself."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"{message}: {os.fspath(path)}")
        self.path = os.fspath(path)


class JournalLocked(JournalError):
    """Another ``Archivist`` (in this process or another) owns the journal.

    Nothing was opened or changed. The lock is an OS file lock, so it is released
    when its owner exits, even by a crash. ``pid`` is the owner's process id, when
    it is known.
    """

    def __init__(self, path: str | os.PathLike[str], *, pid: int | None = None):
        if pid is None:
            holder = "another owner"
        elif pid == os.getpid():
            holder = f"another Archivist of this process (pid {pid})"
        else:
            holder = f"another process (pid {pid})"
        super().__init__(path, f"journal is locked by {holder}")
        self.pid = pid


class NoFreeSlot(JournalLocked):
    """Every slot of a journal directory is held by another owner.

    Nothing was opened or changed. ``path`` is the directory, ``max_slots`` the
    slots tried, ``pids`` their owners' process ids (None where unknown) and
    ``waited`` the seconds waited for one to come free. Raise
    ``Slots.max_slots``, wait longer (``Slots.claim_timeout``), or stop a
    process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_slots: int,
        pids: Sequence[int | None],
        *,
        waited: float = 0.0,
    ) -> None:
        known = sorted({pid for pid in pids if pid is not None})
        owners = f" (by pids {', '.join(map(str, known))})" if known else ""
        after = f" after waiting {waited:g}s" if waited else ""
        JournalError.__init__(
            self,
            path,
            f"all {max_slots} slots of the journal directory are held{owners}"
            f"{after}; raise Slots.max_slots, set Slots.claim_timeout to wait"
            " for one, or stop a process",
        )
        self.pid = None
        self.max_slots = max_slots
        self.pids = tuple(pids)
        self.waited = waited


class JournalCorrupt(JournalError):
    """The file is not a journal, or SQLite reports it damaged.

    The file was not changed: it is never overwritten or recreated silently. Move it
    aside (keep it for inspection) and open a new journal, or restore a copy.
    """

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        super().__init__(path, f"journal is corrupt or not a journal ({detail})")
        self.detail = detail


class JournalIncompatible(JournalError):
    """The journal was written by a newer version of journal_archivist.

    Nothing was changed; open it with the version that wrote it (schema ``found``;
    this version understands up to ``supported``).
    """

    def __init__(self, path: str | os.PathLike[str], found: int, supported: int):
        super().__init__(
            path,
            f"journal schema version {found} is newer than the supported {supported}",
        )
        self.found = found
        self.supported = supported


class JournalFull(JournalError):
    """Free space on the journal's filesystem is below the configured reserve.

    Nothing of the refused call was journaled. Delivery, mark-done and checkpoints
    keep running in the reserve, and appends are accepted again by themselves once
    free space rises above it.
    """

    def __init__(self, path: str | os.PathLike[str], free: int, reserve: int) -> None:
        super().__init__(
            path,
            f"free space {free} bytes is below the reserve of {reserve} bytes;"
            " appends are refused until space returns",
        )
        self.free = free
        self.reserve = reserve


class JournalWriteFailed(JournalError):
    """The commit of an append failed (I/O error, failed fsync, disk full).

    Nothing of the failed group was acknowledged; the journal rolled back to its
    previous commit. The SQLite error is the ``__cause__``; ``io_error`` says
    whether it was a failed read, write or fsync (not a full disk or another
    refusal), which three times in a row fails the archivist.
    """

    def __init__(
        self, path: str | os.PathLike[str], detail: str, *, io_error: bool = False
    ) -> None:
        super().__init__(path, f"journal commit failed ({detail})")
        self.detail = detail
        self.io_error = io_error


class WrongProcess(ArchivistError, RuntimeError):
    """A ``SyncArchivist`` was used in a process forked from the one that opened it.

    Its event-loop thread runs in the opener only (``fork`` copies the calling
    thread alone), so the call did nothing, here or in the opener, whose archivist
    is untouched. Open an archivist of the child's own instead (gunicorn: in
    ``post_fork`` or when the worker starts, not before the fork), on a journal no
    other process holds. ``opener_pid`` opened it; ``pid`` is this process.
    """

    def __init__(self, path: str, *, opener_pid: int, pid: int) -> None:
        super().__init__(
            f"the SyncArchivist of journal {path} was opened by process {opener_pid}"
            f" and cannot be used in process {pid}, forked from it: its event loop"
            " runs in the opener only. Open one of this process's own after the"
            " fork (gunicorn: in post_fork, or when the worker starts), on a journal"
            " no other process holds"
        )
        self.path = path
        self.opener_pid = opener_pid
        self.pid = pid
