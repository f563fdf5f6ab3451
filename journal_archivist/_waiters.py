"""Sync appenders waiting for their entry to be settled by one backend.

Rules and theory:
- A ``Sync`` append registers one waiter per Sync backend after its commit,
  before its appender resumes. A waiter for an entry already settled is
  finished at once; one for an entry its backend's overflow policy dropped is
  finished as dropped (final: it will never be delivered).
- The writer finishes waiters as it settles (delivered, or quarantined: final),
  when a REQUIRED backend fails (not final: the entry stays journaled and is
  retried), and when it stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ._policies import OverflowPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backlog import Book

__all__ = ["SyncWaiter", "Waiters"]


class SyncWaiter:
    """An appender waiting for one entry to be settled by one backend.

    Once ``event`` is set, ``error`` is None if the entry was delivered, or says
    why not; ``final`` tells an entry that will never be delivered (dropped,
    quarantined) from one that stays journaled and is retried.
    """

    __slots__ = ("error", "event", "final", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.event = anyio.Event()
        self.error: str | None = None
        self.final = False

    @classmethod
    def dropped(cls, overflow: OverflowPolicy) -> SyncWaiter:
        """A waiter for an entry the overflow policy dropped: already settled."""
        waiter = cls(0)
        waiter.finish(f"dropped by {overflow.name} (the backlog was full)", final=True)
        return waiter

    def finish(self, error: str | None = None, *, final: bool = False) -> None:
        """Wake the appender; ``error`` says why the entry was not delivered."""
        if not self.event.is_set():
            self.error = error
            self.final = final
            self.event.set()


class Waiters:
    """The waiters of one backend (``book``'s; ``overflow`` its policy's)."""

    __slots__ = ("_book", "_overflow", "_waiting")

    def __init__(self, book: Book, overflow: OverflowPolicy) -> None:
        self._book = book
        self._overflow = overflow
        self._waiting: list[SyncWaiter] = []

    def for_entry(self, seq: int, targets: int, lost: set[int]) -> SyncWaiter:
        """The waiter of a Sync append journaled as ``seq`` for ``targets``
        (``lost``: the round's seqs DROP_OLDEST dropped here at once): settled
        already if its entry was dropped."""
        if not targets & self._book.mask:
            return SyncWaiter.dropped(self._overflow)
        if seq in lost:
            return SyncWaiter.dropped(OverflowPolicy.DROP_OLDEST)
        waiter = SyncWaiter(seq)
        if seq <= self._book.settled_upto:
            waiter.finish()
        else:
            self._waiting.append(waiter)
        return waiter

    def remove(self, waiter: SyncWaiter) -> None:
        """Forget a waiter whose appender stopped waiting."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def finish(
        self,
        match: Callable[[SyncWaiter], bool],
        error_for: Callable[[SyncWaiter], str | None],
        *,
        final: bool = False,
    ) -> None:
        """Wake the waiters ``match`` selects; ``error_for`` says why one failed
        (``final``: its entry will never be delivered)."""
        if not self._waiting:
            return
        keep: list[SyncWaiter] = []
        for waiter in self._waiting:
            if match(waiter):
                waiter.finish(error_for(waiter), final=final)
            else:
                keep.append(waiter)
        self._waiting = keep
