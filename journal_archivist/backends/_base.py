"""The backend protocol: what a writer loop calls, and what it hands over.

Required: ``append_messages``, ``delete_session`` and ``health_check``. Optional,
with defaults: ``write_batch`` (one call per group, in order), ``owned_paths``
(none) and ``aclose`` (nothing to release); and the reads ``read_session``,
``count`` and ``list_sessions``, whose defaults raise ``BackendError``
(``retryable=False``) saying the backend cannot do that. A writer calls one
backend method at a time, so a backend needs no locking of its own for calls from
one archivist.

The one rule for "does this backend offer an optional method": its class
overrides the base's (``implements(backend, "count")``). Nothing probes with
``hasattr``: every backend has every method, and the base's answers "not
supported".
"""

from __future__ import annotations

import abc
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Final, Self
from uuid import UUID

import msgspec

from .._errors import BackendError
from .._records import MessageRecord

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = [
    "OPTIONAL_READS",
    "ArchiveBackend",
    "SessionGroup",
    "SessionInfo",
    "append_times",
    "erasure_time",
    "implements",
]


class SessionGroup(msgspec.Struct, frozen=True):
    """What one batch asks a backend to do for one session.

    If ``erase`` is set, first erase ``session`` (a privacy erasure, see
    ``Archivist.delete_session``); then archive ``records`` in append order.
    Groups of different sessions in one batch may be applied in any order; groups
    of the same session must be applied in the order given.

    Erasure marks (``docs/scaling.md``): several journals (slots, hosts) may feed
    one archive, so an erasure can arrive before an older append of the same
    session still waiting in another journal. Times are unix seconds of the
    journal that took the call, strictly increasing within one journal. An
    erasure at ``erased_at`` deletes the records appended before it and leaves a
    mark, the latest erasure time of the session; a record appended before the
    session's mark is skipped on arrival (it was erased), not an error.
    ``erased_at`` None (a direct call) means now, and so does a missing
    ``appended_at``: use ``erasure_time`` and ``append_times``.
    """

    session: UUID
    records: tuple[MessageRecord, ...]
    erase: bool = False
    #: When the erasure was journaled; None: now.
    erased_at: float | None = None
    #: When each of ``records`` was journaled, in the same order; empty: now.
    appended_at: tuple[float, ...] = ()


def erasure_time(group: SessionGroup, now: float | None = None) -> float:
    """The time ``group``'s erasure applies at: its ``erased_at``, else now."""
    if group.erased_at is not None:
        return group.erased_at
    return time.time() if now is None else now


def append_times(group: SessionGroup, now: float | None = None) -> tuple[float, ...]:
    """The journal time of each of ``group.records``; now for each if not given."""
    times = group.appended_at
    if len(times) == len(group.records):
        return times
    if times:
        raise ValueError(
            f"SessionGroup of {len(group.records)} records has"
            f" {len(times)} append times"
        )
    return (time.time() if now is None else now,) * len(group.records)


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One archived session, as a readable archive's ``list_sessions`` reports it.

    ``message_count`` counts distinct records; ``first_ts`` and ``last_ts`` are the
    earliest and latest record timestamps, in UTC.
    """

    session: UUID
    message_count: int
    first_ts: datetime
    last_ts: datetime


def text_path(value: object, what: str) -> str:
    """``value`` (a ``str`` or ``os.PathLike``) as a text path; ``TypeError`` if not."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"{what} must be a str or os.PathLike, got {type(value).__name__}"
            f" {value!r:.80}"
        )
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a text path, got {path!r:.80}")
    return path


def checked_page(limit: object, after: object) -> tuple[int | None, UUID | None]:
    """Check ``list_sessions(limit=..., after=...)``; cap ``limit`` at what SQL takes.

    Raises ``TypeError`` for a non-int ``limit`` (or a bool) or a non-UUID ``after``,
    ``ValueError`` for a ``limit`` below 1.
    """
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        limit = min(limit, 2**63 - 1)
    return limit, None if after is None else checked_uuid(after, "after")


def checked_uuid(value: object, what: str = "session") -> UUID:
    """Return ``value`` if it is a ``UUID``; raise ``TypeError`` naming ``what``.

    The one check of a session id (or a page's ``after``) at every public call.
    """
    if not isinstance(value, UUID):
        raise TypeError(f"{what} must be a uuid.UUID, got {type(value).__name__}")
    return value


class ArchiveBackend(abc.ABC):
    """Base class of archive backends.

    A writer loop delivers each batch with ``write_batch`` and retries it on
    failure, so a backend must tolerate receiving a record again: the built-in
    backends are idempotent on ``message_id``. A backend must acknowledge (return)
    only once the change is durable on its side, because the journal forgets an
    entry as soon as it is acknowledged.

    Raise ``BackendError(retryable=False)`` for a failure that repeating cannot
    fix (a record the backend will never accept); any other exception is treated
    as retryable. Connect lazily and reconnect after a failure: the archivist
    starts delivering whether or not the backend is reachable yet, and calls
    ``aclose`` when it shuts down. ``journal_archivist.testing.check_backend``
    checks a backend against this contract.

    Required: ``append_messages``, ``delete_session``, ``health_check``. Optional,
    with defaults: ``write_batch``, ``owned_paths``, ``aclose``, and the reads
    ``read_session``, ``count`` and ``list_sessions``, whose defaults raise
    ``BackendError(retryable=False)``. A backend offers a read by overriding it.
    """

    #: Whether this archive keeps erasure marks (``SessionGroup``), so that
    #: several journals may feed it at once without an erased record coming back.
    #: A slot journal directory refuses a backend that does not.
    erasure_marks: ClassVar[bool] = False

    @abc.abstractmethod
    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records`` (all of ``session``, in append order)."""

    @abc.abstractmethod
    async def delete_session(self, session: UUID) -> None:
        """Delete every record archived for ``session``; a no-op if there is none."""

    @abc.abstractmethod
    async def health_check(self) -> None:
        """Return if the backend can take writes; raise (``BackendError``) if not.

        Called while the backend is ``UNHEALTHY``, before the next delivery attempt.
        """

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply a whole coalesced batch, ideally in one round trip or transaction.

        The default applies the groups one call at a time, in order. On failure
        the writer retries the whole batch, so groups applied before the failure
        are delivered again.
        """
        for group in groups:
            if group.erase:
                await self.delete_session(group.session)
            if group.records:
                await self.append_messages(group.session, group.records)

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """Return the archived records of ``session`` in append order.

        Optional. ``Archivist.read_session`` reads through it. The default raises
        ``BackendError`` (``retryable=False``): the backend is not readable.
        """
        raise BackendError(f"{type(self).__name__} is not readable", retryable=False)

    async def count(self, session: UUID) -> int:
        """How many distinct records of ``session`` are archived (0 if none).

        Optional. The default raises ``BackendError`` (``retryable=False``): the
        backend cannot count.
        """
        raise BackendError(
            f"{type(self).__name__} cannot count a session's records",
            retryable=False,
        )

    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        """The sessions with archived records, ordered by session id.

        Optional. An override orders by ``UUID`` order (the 128-bit value), skips
        sessions with no records, returns at most ``limit`` (all if ``None``; at
        least 1) and only sessions with an id greater than ``after``, and raises
        ``TypeError`` / ``ValueError`` for a bad ``limit`` or ``after``. The
        default raises ``BackendError`` (``retryable=False``): the backend cannot
        list its sessions.
        """
        raise BackendError(
            f"{type(self).__name__} cannot list its sessions", retryable=False
        )

    def owned_paths(self) -> tuple[str, ...]:
        """Local files and directories this backend writes and shares with no one.

        ``Archivist.open`` refuses a registration whose owned path is the journal
        (or its ``-wal``, ``-shm`` or lock file), holds it, or is, holds or lies
        inside a path another registration owns: two writers on one file would
        retry forever. Paths are compared after resolving symlinks. The default,
        for a backend that keeps nothing on the local filesystem, owns none.
        """
        return ()

    async def aclose(self) -> None:
        """Release connections and files. The default has nothing to release.

        The archivist calls it once at shutdown. A backend used after ``aclose``
        may reopen what it needs.
        """
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


#: The optional reads, whose base versions raise ``BackendError`` (not supported).
OPTIONAL_READS: Final = ("read_session", "count", "list_sessions")


def implements(backend: ArchiveBackend, method: str) -> bool:
    """Whether ``backend`` offers the optional ``method`` (one of ``OPTIONAL_READS``).

    The one rule: its class overrides ``ArchiveBackend``'s version, which raises
    ``BackendError`` saying the backend cannot do it. An override may still fail
    (a ``MockBackend(readable=False)`` refuses reads); this says what the class
    offers, not that a call will succeed.

    Raises:
        ValueError: ``method`` is not one of ``OPTIONAL_READS``.
    """
    if method not in OPTIONAL_READS:
        raise ValueError(f"method must be one of {OPTIONAL_READS}, got {method!r}")
    return getattr(type(backend), method) is not getattr(ArchiveBackend, method)
