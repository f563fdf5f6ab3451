"""Registrations: which backend, under which name, written to how.

A registration's ``name`` is its identity in the journal: progress, counters and
dead letters are kept under it across restarts, so renaming a backend is a removal
plus an addition (docs/operations.md).
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from ._policies import FailureMode, Queued, RetryPolicy, Sync, WritePolicy
from ._schema import MAX_BACKENDS
from .backends._base import ArchiveBackend

__all__ = [
    "DEFAULT_FREE_SPACE_RESERVE",
    "DEFAULT_MAX_APPEND_BYTES",
    "DEFAULT_MAX_APPEND_RECORDS",
    "DEFAULT_MAX_RECORD_BYTES",
    "JOURNAL_VALUE_LIMIT",
    "MAX_BACKENDS",
    "Registration",
]

DEFAULT_MAX_RECORD_BYTES: Final = 1024 * 1024
#: Records one ``append_messages`` call may carry (``Archivist.open`` argument).
DEFAULT_MAX_APPEND_RECORDS: Final = 10_000
#: Encoded bytes one ``append_messages`` call may carry (``Archivist.open``
#: argument; at least ``max_record_bytes``).
DEFAULT_MAX_APPEND_BYTES: Final = 64 * 1024 * 1024
DEFAULT_FREE_SPACE_RESERVE: Final = 64 * 1024 * 1024
#: Bytes SQLite stores in one value at most (its default ``SQLITE_MAX_LENGTH``); a
#: call's records are one value in the journal, so ``max_append_bytes`` stays below.
JOURNAL_VALUE_LIMIT: Final = 1_000_000_000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """One backend registered with an ``Archivist``.

    Args:
        name: stable identity in the journal (letters, digits, ``_.-``; at most 64).
        backend: the ``ArchiveBackend`` to deliver to.
        write_policy: ``Queued(...)`` (default) or ``Sync(...)``.
        failure_mode: ``REQUIRED`` (default) or ``BEST_EFFORT``.
        retry: backoff between failed deliveries.
        priority: ``read_session`` tries readable backends from the highest
            priority down.
        readable: whether ``read_session`` may read from this backend.
        enabled: a disabled backend keeps its journal state (its undelivered
            entries stay journaled and are delivered once it is enabled again) but
            runs no writer and is not a target of appends made meanwhile.
    """

    name: str
    backend: ArchiveBackend
    write_policy: WritePolicy = msgspec.field(default_factory=Queued)
    failure_mode: FailureMode = FailureMode.REQUIRED
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    priority: int = 0
    readable: bool = True
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"registration name must be 1-64 letters, digits or '_.-' starting"
                f" with a letter or digit, got {self.name!r}"
            )
        if not isinstance(self.backend, ArchiveBackend):
            raise TypeError(
                f"backend of {self.name!r} must be an ArchiveBackend, got"
                f" {type(self.backend).__name__}"
            )
        if not isinstance(self.write_policy, Queued | Sync):
            raise TypeError(
                f"write_policy of {self.name!r} must be Queued or Sync, got"
                f" {type(self.write_policy).__name__}"
            )
