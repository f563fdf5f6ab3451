"""The journal settings of ``Archivist.open``, as one typed, validated value.

Rules and theory:
- ``ArchivistOptions`` holds every keyword ``open()`` takes except the
  registrations, under the same names, so a config file's keys are ``open()``'s
  keywords. It is a frozen msgspec Struct checked in ``__post_init__``, which
  msgspec runs on construction and on ``msgspec.convert`` / decode alike: options
  built in Python and options read from a file pass one check. On decode msgspec
  wraps our ``ValueError`` / ``TypeError`` in its ``ValidationError`` and keeps
  the message, so every message names the field and the bad value.
- ``max_append_bytes`` given as None (or left out) is resolved in
  ``__post_init__`` to ``max(DEFAULT_MAX_APPEND_BYTES, max_record_bytes)``: a
  built options value always holds an int there.
- Registrations carry live backend objects, so they are not part of the options;
  ``check_registrations`` checks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from ._config import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    JOURNAL_VALUE_LIMIT,
    MAX_BACKENDS,
    Registration,
)
from ._policies import Durability

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_ADOPT_INTERVAL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_SLOTS",
    "ArchivistOptions",
    "Slots",
    "check_registrations",
]

#: Seconds ``async with`` gives the writers to drain when the block exits.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0
#: Slots a journal directory has, at most, by default (``Slots``).
DEFAULT_MAX_SLOTS: Final = 16
#: Seconds between two looks for orphan slots, by default (``Slots``).
DEFAULT_ADOPT_INTERVAL: Final = 30.0


class ArchivistOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The journal settings of an archivist: ``Archivist.open``'s keywords.

    Args:
        journal_path: the journal file; its directory is created if missing.
        durability: ``FULL`` (default: survives power loss) or ``NORMAL``.
        max_record_bytes: the largest encoded record an append may carry.
        max_append_records: the most records one ``append_messages`` call may
            carry.
        max_append_bytes: the most encoded bytes one ``append_messages`` call may
            carry, at least ``max_record_bytes`` (None: ``DEFAULT_MAX_APPEND_BYTES``,
            or ``max_record_bytes`` if that is larger; resolved on construction,
            so it is never None on a built value).
        free_space_reserve: appends are refused (``JournalFull``) while free space
            on the journal's filesystem is below this many bytes.
        close_timeout: seconds the writers may drain when an ``async with`` block
            exits (None: until drained).

    Raises:
        ValueError, TypeError: a bad value, named with the field in the message
            (wrapped in ``msgspec.ValidationError`` when decoded).
    """

    journal_path: str
    durability: Durability = Durability.FULL
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_append_records: int = DEFAULT_MAX_APPEND_RECORDS
    max_append_bytes: int | None = None
    free_space_reserve: int = DEFAULT_FREE_SPACE_RESERVE
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.journal_path, str):
            raise TypeError(f"journal_path must be a str, got {self.journal_path!r}")
        max_record_bytes = self.max_record_bytes
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
        if self.max_append_records < 1:
            raise ValueError(
                f"max_append_records must be >= 1, got {self.max_append_records}"
            )
        max_append_bytes = self.max_append_bytes
        if max_append_bytes is None:
            max_append_bytes = max(DEFAULT_MAX_APPEND_BYTES, max_record_bytes)
            # Frozen, but not yet shared: resolving the default is part of building.
            msgspec.structs.force_setattr(self, "max_append_bytes", max_append_bytes)
        if max_append_bytes < max_record_bytes:
            raise ValueError(
                f"max_append_bytes ({max_append_bytes}) must be >= max_record_bytes"
                f" ({max_record_bytes}): a record the limit allows must fit a call"
            )
        if max_append_bytes > JOURNAL_VALUE_LIMIT - 16:
            raise ValueError(
                f"max_append_bytes ({max_append_bytes}) must be below"
                f" {JOURNAL_VALUE_LIMIT - 16}: a call's records are one value in the"
                f" journal, and SQLite stores {JOURNAL_VALUE_LIMIT} bytes at most"
            )
        if self.free_space_reserve < 0:
            raise ValueError(
                f"free_space_reserve must be >= 0, got {self.free_space_reserve}"
            )
        if self.close_timeout is not None and self.close_timeout < 0:
            raise ValueError(
                f"close_timeout must be >= 0 or None, got {self.close_timeout}"
            )
        if not isinstance(self.durability, Durability):
            raise TypeError(f"durability must be a Durability, got {self.durability!r}")

    @property
    def append_byte_limit(self) -> int:
        """``max_append_bytes`` as resolved on construction (never None)."""
        assert self.max_append_bytes is not None  # resolved by __post_init__
        return self.max_append_bytes


class Slots(msgspec.Struct, frozen=True, kw_only=True):
    """Open a journal *directory* of slots, one per process (``docs/scaling.md``).

    Pass to ``Archivist.open(directory, factory, slots=Slots(...))``. The process
    claims the lowest-numbered slot (``slot-0``, ``slot-1``, ...) no other holds,
    and drains orphans: slots whose owner is gone that still hold a backlog.

    Attributes:
        max_slots: the slots a process may claim; past it, ``NoFreeSlot``.
        adopt_orphans: drain orphan slots in the background (at open, then every
            ``adopt_interval`` seconds).
        adopt_interval: seconds between two looks for orphans.
        claim_timeout: seconds to wait for a slot to come free when every one
            is held (an adopter drains one, a worker is shutting down); 0
            raises ``NoFreeSlot`` at once.
    """

    max_slots: int = DEFAULT_MAX_SLOTS
    adopt_orphans: bool = True
    adopt_interval: float = DEFAULT_ADOPT_INTERVAL
    claim_timeout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_slots, bool) or not isinstance(self.max_slots, int):
            raise TypeError(f"max_slots must be an int, got {self.max_slots!r}")
        if not 1 <= self.max_slots <= 100_000:
            raise ValueError(f"max_slots must be 1 to 100000, got {self.max_slots}")
        if not isinstance(self.adopt_orphans, bool):
            raise TypeError(f"adopt_orphans must be a bool, got {self.adopt_orphans!r}")
        interval = self.adopt_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise TypeError(f"adopt_interval must be a number, got {interval!r}")
        if not 0 < interval < float("inf"):
            raise ValueError(f"adopt_interval must be > 0 and finite, got {interval}")
        wait = self.claim_timeout
        if isinstance(wait, bool) or not isinstance(wait, int | float):
            raise TypeError(f"claim_timeout must be a number, got {wait!r}")
        if not 0 <= wait < float("inf"):
            raise ValueError(f"claim_timeout must be >= 0 and finite, got {wait}")


def check_registrations(registrations: Sequence[Registration]) -> list[Registration]:
    """The registrations as a list, once checked.

    Raises:
        TypeError: one is not a ``Registration``.
        ValueError: two share a name, none is enabled, or there are more than
            ``MAX_BACKENDS``.
    """
    regs = list(registrations)
    for reg in regs:
        if not isinstance(reg, Registration):
            raise TypeError(f"expected Registration objects, got {type(reg).__name__}")
    names = [reg.name for reg in regs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"registration names must be unique, repeated: {duplicates}")
    if not any(reg.enabled for reg in regs):
        raise ValueError("at least one registration must be enabled")
    if len(regs) > MAX_BACKENDS:
        raise ValueError(f"at most {MAX_BACKENDS} registrations, got {len(regs)}")
    return regs
