"""Waiting for a lock another process holds: it sends no word when it lets go, so
the waiter tries, pauses, and tries again, the pause doubling up to a cap, until
its time is up."""

from __future__ import annotations

import anyio

__all__ = ["Backoff"]


class Backoff:
    """The pauses between tries, for up to ``timeout`` seconds from now in all:
    ``first`` seconds, doubling up to ``most``."""

    def __init__(self, timeout: float, first: float, most: float) -> None:
        self._deadline = anyio.current_time() + timeout
        self._pause = first
        self._most = most

    async def pause(self) -> bool:
        """Wait before the next try; False, at once, if the time is up."""
        left = self._deadline - anyio.current_time()
        if left <= 0:
            return False
        await anyio.sleep(min(self._pause, left))
        self._pause = min(self._pause * 2, self._most)
        return True
