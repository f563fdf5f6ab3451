"""The free-space reserve: refuse appends while the journal's filesystem is low.

SQLite needs free space to mark entries done, delete them and checkpoint; a journal
that fills its disk cannot drain itself. So appends are refused (``JournalFull``)
while free space is below the reserve, leaving the reserve to delivery. The check
reads ``statvfs`` at most every ``CHECK_INTERVAL`` seconds, and sooner once enough
bytes were appended to matter.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

from ._errors import JournalFull

__all__ = ["SpaceGuard"]

logger = logging.getLogger("journal_archivist.journal")

CHECK_INTERVAL: Final = 1.0


def free_bytes(directory: str) -> int:
    """Bytes available to an unprivileged writer on ``directory``'s filesystem."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class SpaceGuard:
    """Tracks free space next to the journal against a reserve."""

    def __init__(self, journal_path: str, reserve: int) -> None:
        self._path = journal_path
        self._directory = os.path.dirname(journal_path)
        self.reserve = reserve
        self.free: int | None = None
        self.low = False
        self._checked_at = -float("inf")
        self._since_check = 0
        self._refresh(time.monotonic())  # known from open, not first append

    def refusal(self, incoming: int) -> JournalFull | None:
        """The error to refuse appends of ``incoming`` bytes with, or None."""
        if self.reserve <= 0:
            return None
        self._since_check += incoming
        now = time.monotonic()
        stale = now - self._checked_at >= CHECK_INTERVAL
        if stale or self.low or self._since_check * 4 >= self.reserve:
            self._refresh(now)
        if not self.low:
            return None
        assert self.free is not None
        return JournalFull(self._path, self.free, self.reserve)

    def current_free(self) -> int | None:
        """Free bytes, measured again if the last reading is stale."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL:
            self._refresh(now)
        return self.free

    def _refresh(self, now: float) -> None:
        try:
            self.free = free_bytes(self._directory)
        except OSError as exc:
            logger.warning("cannot read free space of %s: %s", self._directory, exc)
            return
        self._checked_at = now
        self._since_check = 0
        was_low, self.low = self.low, self.free < self.reserve
        if self.low and not was_low:
            logger.warning(
                "journal %s: free space %d bytes is below the reserve of %d;"
                " refusing appends until it returns",
                self._path,
                self.free,
                self.reserve,
            )
        elif was_low and not self.low:
            logger.warning(
                "journal %s: free space is back; accepting appends", self._path
            )
