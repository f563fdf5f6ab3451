"""The journal's upkeep between commit rounds: failed commits, the rewrite after
a failed write or fsync, checkpoints and compaction.

Rules and theory:
- A commit that fails with an I/O error (a failed read, write or fsync) asks
  for a rewrite of the journal before anything is acknowledged again
  (``Journal.rewrite`` says why) and holds the next attempt back, longer each
  time; ``MAX_IO_FAILURES`` of them in a row fail the archivist. Other failures
  (a full disk) neither count nor reset the streak; a commit that succeeds
  resets it.
- Checkpoints run in the open, once about ``CHECKPOINT_BYTES`` went to the WAL
  (SQLite's automatic checkpoint is off so that a checkpoint's failed fsync is
  seen); a failed one counts as a failed commit.
- Free pages go back to the filesystem a slice per round: by themselves once
  the journal is drained and holds more than ``COMPACT_THRESHOLD`` bytes of
  them, or when ``compact()`` asks. Checkpoints and compaction ask for the
  rewrite first: until it, a checkpoint would copy frames from past a hole in
  the WAL into the database file.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import anyio

from ._errors import JournalWriteFailed
from ._throttle import Throttle

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._journal import Journal

__all__ = ["Upkeep"]

logger = logging.getLogger("journal_archivist.committer")

#: Commits in a row that fail with an I/O error (a failed read, write or fsync)
#: after which the archivist fails. Other failures (a full disk) neither count
#: nor reset the count; a successful commit resets it.
MAX_IO_FAILURES: Final = 3
#: Seconds before the attempt after a first I/O failure; doubled after each one.
#: (So the archivist fails only after about 0.75 s of failing I/O.)
IO_RETRY_DELAY: Final = 0.25
#: Seconds between ERROR lines about failed commits.
FAILURE_LOG_INTERVAL: Final = 10.0
#: The committer checkpoints once about this many bytes went to the WAL (as
#: SQLite's automatic checkpoint would at 1,000 pages).
CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
WAL_PAGE: Final = 4096
#: Free pages worth returning to the filesystem once the journal is drained.
COMPACT_THRESHOLD: Final = 64 * 1024 * 1024
COMPACT_PAGES_PER_ROUND: Final = 4096


class Upkeep:
    """Failure streaks, rewrite, checkpoints and compaction of one journal."""

    def __init__(self, journal: Journal, drained: Callable[[], bool]) -> None:
        self._journal = journal
        self._drained = drained
        self.commit_failures = 0
        self._io_failures = 0
        #: Bytes written to the WAL since the last checkpoint, roughly.
        self.wal_debt = 0
        #: After an I/O failure, no attempt before this (``time.monotonic()``).
        self.hold_until = 0.0
        self._failure_log = Throttle(FAILURE_LOG_INTERVAL)
        self.compact_due = False
        self._compacting = False
        self._compaction_done: anyio.Event | None = None

    @property
    def compaction_asked(self) -> bool:
        """Whether ``compact()`` waits for a compaction."""
        return self._compaction_done is not None

    def failed(self, exc: JournalWriteFailed) -> None:
        """A commit (or checkpoint, or rewrite) failed with ``exc``.

        Raises ``JournalWriteFailed`` once ``MAX_IO_FAILURES`` I/O errors came
        in a row: the loop ends and the archivist fails with it as the cause.
        """
        self.commit_failures += 1
        io_failure = exc.io_error
        if io_failure:
            self._io_failures += 1
            if not self._journal.rewrite_needed:
                self._journal.rewrite_needed = True
                logger.warning(
                    "journal %s: a write or fsync failed: the journal is rewritten"
                    " before anything is acknowledged again",
                    self._journal.path,
                )
        reported = self._failure_log.due()
        if reported is not None:
            logger.error(
                "journal %s: commit failed (%d in a row%s): %s",
                self._journal.path,
                self.commit_failures,
                f"; {reported - 1} not logged since the last line"
                if reported > 1
                else "",
                exc.detail,
            )
        if io_failure:
            # Give a passing fault time to pass: the next attempt waits (appends
            # queue meanwhile), longer each time.
            pause = IO_RETRY_DELAY * 2 ** (self._io_failures - 1)
            self.hold_until = time.monotonic() + pause
        if io_failure and self._io_failures >= MAX_IO_FAILURES:
            raise JournalWriteFailed(
                exc.path,
                f"{self._io_failures} commits in a row failed with an I/O error,"
                f" the last: {exc.detail}",
                io_error=True,
            ) from exc.__cause__

    def succeeded(self, wal_bytes: int) -> None:
        """A commit succeeded, writing about ``wal_bytes`` to the WAL."""
        self.wal_debt += wal_bytes
        if self.commit_failures:
            logger.info(
                "journal %s: commits succeed again after %d failures",
                self._journal.path,
                self.commit_failures,
            )
            self.commit_failures = self._io_failures = 0
            self._failure_log.reset()

    async def rewrite_if_needed(self) -> JournalWriteFailed | None:
        """Rewrite the journal if a failed write or fsync asked for it; the
        error if the journal may not be written on (the caller counts it with
        ``failed``)."""
        if not self._journal.rewrite_needed:
            return None
        try:
            await self._journal.rewrite()
        except JournalWriteFailed as exc:
            return exc
        self._journal.rewrite_needed = False
        self.wal_debt = 0
        logger.warning(
            "journal %s: rewritten after a failed write or fsync; accepting appends",
            self._journal.path,
        )
        return None

    async def checkpoint_if_due(self) -> None:
        """Copy the WAL into the database file once enough went to it, in the
        open: a failure counts as a failed commit (and asks for a rewrite)."""
        if self.wal_debt < CHECKPOINT_BYTES:
            return
        self.wal_debt = 0
        refused = await self.rewrite_if_needed()
        if refused is not None:
            self.failed(refused)
            return
        try:
            await self._journal.checkpoint()
        except JournalWriteFailed as exc:
            self.failed(exc)

    async def compact(self, kick: Callable[[], None]) -> None:
        """Return every free page to the filesystem, between commit rounds
        (``kick`` wakes the committer's loop)."""
        done = self._compaction_done
        if done is None:
            done = self._compaction_done = anyio.Event()
        self.compact_due = True
        kick()
        await done.wait()

    def after_persist(self) -> None:
        """Bookkeeping was written: compact if the journal is drained."""
        if not self._compacting and self._drained():
            self.compact_due = True

    async def compact_slice(self) -> None:
        """Give free pages back to the filesystem, a slice per round."""
        self.compact_due = False
        refused = await self.rewrite_if_needed()
        if refused is not None:
            self.finish_compaction()
            self.failed(refused)
            return
        if not self._compacting:
            free = await self._journal.free_page_bytes()
            # Read after the await: compact() may have asked meanwhile.
            asked = self._compaction_done is not None
            if not free:
                self.finish_compaction()
                return
            if not asked and free < COMPACT_THRESHOLD:
                return
            self._compacting = True
            logger.info(
                "journal %s: returning %d bytes of free pages", self._journal.path, free
            )
        try:
            freed, remaining = await self._journal.compact(COMPACT_PAGES_PER_ROUND)
        except JournalWriteFailed as exc:
            self.finish_compaction()
            self.failed(exc)
            return
        asked = self._compaction_done is not None
        if freed and remaining and (asked or self._drained()):
            self.compact_due = True
        else:
            self.finish_compaction()

    def finish_compaction(self) -> None:
        """End the compaction; wake ``compact()``."""
        self._compacting = False
        done, self._compaction_done = self._compaction_done, None
        if done is not None:
            done.set()
