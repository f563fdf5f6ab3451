"""Throttling recurring log lines: at most one line per interval, counting the rest.

Pure: no I/O (the caller logs). A disk that stays full or a backlog that keeps
overflowing repeats the same event many times a second; one line every few seconds
that says how many happened tells an operator as much and floods nothing.
"""

from __future__ import annotations

import math
import time

__all__ = ["Throttle"]


class Throttle:
    """Lets a recurring event's log line through at most once per ``interval``
    seconds, and counts the events held back in between."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._logged_at = -math.inf
        self._held = 0

    def due(self, count: int = 1) -> int | None:
        """Note ``count`` events. If a line is due, how many events it reports
        (these and the ones held back since the last line); else None."""
        self._held += count
        now = time.monotonic()
        if now - self._logged_at < self.interval:
            return None
        self._logged_at = now
        reported, self._held = self._held, 0
        return reported

    def reset(self) -> None:
        """Forget the last line: the next event is logged at once."""
        self._logged_at = -math.inf
        self._held = 0
