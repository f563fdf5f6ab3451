"""Applying a batch to the session files: ``JsonlArchive``'s write path.

Synchronous: it runs in the archive's worker thread, under its lock. ``jsonl.py``
plans a batch (``plan_batch``, on the event loop), hops to the thread, and
translates errors; the durability and idempotence users are promised are in its
docstring, and this module keeps them.

Rules and theory:
- One ``Plan`` per session file: an erasure in a batch drops the records of the
  session before it (they would be erased), so a file is erased at most once
  and then appended to.
- Every record of a batch is encoded before the directory is touched: a record
  that cannot be encoded fails the batch with nothing written.
- A file's ids come from ``IdCache`` only while its inode and size are what this
  writer left them; otherwise ``_scan.load_ids`` reads them, and the file and the
  directory are fsync'd before acknowledging (``_dir_dirty``).
- If a chunk or the directory's fsync fails, what the failed chunk appended is
  cut back and the cached ids of every session of the batch are dropped, those
  of the chunks that succeeded too: the redelivery reads the files again rather
  than trusting pages a failed fsync may have lost.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from .._errors import BackendError
from . import _jsonl_files as _files, _jsonl_scan as _scan
from ._base import checked_uuid

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from .._records import MessageRecord
    from ._base import SessionGroup
    from ._jsonl_directory import ArchiveDirectory


@dataclass
class _Cached:
    """The ids in one session file, and the file they were read from."""

    ids: set[int]  # message_id.int: smaller and faster to hash than UUIDs
    inode: int
    size: int


@dataclass
class Plan:
    """What one batch does to one session file: erase first?, then these records."""

    erase: bool = False
    records: list[MessageRecord] = field(default_factory=list)


@dataclass
class _Target:
    """A session file open during one batch."""

    session: UUID
    fd: int
    state: _Cached
    start: int  # the file's size before this batch appended to it
    synced: bool  # whether everything in the file is known to be fsync'd
    wrote: bool = False  # whether this batch appended (or tried to)

    def roll_back(self) -> None:
        """Cut what this batch appended (best effort: the batch failed anyway).

        After a failed fsync, cached pages may never reach the disk: the
        redelivery writes and syncs them again instead of trusting them.
        """
        if self.wrote:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.start)


def plan_batch(groups: Sequence[SessionGroup]) -> dict[UUID, Plan]:
    """What the batch ``groups`` does to each session file, in the order given.

    Raises:
        BackendError: non-retryable, for a record of another session than its
            group's (nothing of the batch was written).
    """
    plans: dict[UUID, Plan] = {}
    for group in groups:
        plan = plans.setdefault(checked_uuid(group.session), Plan())
        if group.erase:
            # Everything before an erasure in this batch would be erased: skip it.
            plan.erase = True
            plan.records.clear()
        for record in group.records:
            if record.session.int != group.session.int:
                raise BackendError(
                    f"record {record.message_id} belongs to session"
                    f" {record.session}, not {group.session}",
                    retryable=False,
                )
        plan.records.extend(group.records)
    return plans


@final
class IdCache:
    """The ids in the session files last touched: ``max_sessions`` sets, the least
    recently written to dropped first."""

    def __init__(self, max_sessions: int) -> None:
        self._max = max_sessions
        self._sets: OrderedDict[UUID, _Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sets)

    def get(self, session: UUID) -> _Cached | None:
        """The ids of ``session``'s file, if cached."""
        return self._sets.get(session)

    def drop(self, session: UUID) -> None:
        """Forget ``session``'s ids, if cached."""
        self._sets.pop(session, None)

    def clear(self) -> None:
        """Forget every session's ids."""
        self._sets.clear()

    def remember(self, session: UUID, state: _Cached) -> None:
        """Cache ``state`` as ``session``'s ids, the most recently used."""
        self._sets[session] = state
        self._sets.move_to_end(session)
        while len(self._sets) > self._max:
            self._sets.popitem(last=False)


@final
class BatchWriter:
    """Applies planned batches to the session files in ``directory``, durably and
    once per ``message_id``.

    Args:
        directory: the archive directory, opened for each batch.
        ids: the cache of the ids in the session files (shared with the archive,
            which clears it).
        fsync_threads: how many files of one batch are fsync'd at once.
    """

    def __init__(
        self, directory: ArchiveDirectory, ids: IdCache, *, fsync_threads: int
    ) -> None:
        self._directory = directory
        self._ids = ids
        self._dir_dirty = False  # the directory may hold entries not yet synced
        self._fsync_threads = fsync_threads
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the fsync threads (started again by the next batch that needs them)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def apply(self, plans: dict[UUID, Plan], *, max_open_files: int) -> None:
        """Apply ``plans`` durably, ``max_open_files`` sessions at a time.

        Returns once every file it appended to and, if it may hold unsynced
        entries, the directory are fsync'd. Raises what the file calls raise, with
        what the failed chunk appended cut back and the batch's cached ids dropped.
        """
        encoded = {
            s: [_files.encode_line(r) for r in plan.records]
            for s, plan in plans.items()
        }
        items = list(plans.items())
        with self._directory.open(create=True) as dir_fd:
            assert dir_fd is not None  # created if missing
            try:
                for at in range(0, len(items), max_open_files):
                    chunk = items[at : at + max_open_files]
                    self._apply_chunk(dir_fd, chunk, encoded)
                if self._dir_dirty:
                    os.fsync(dir_fd)
                    self._dir_dirty = False
            except BaseException:
                # Also the chunks that succeeded: the redelivery reads their files.
                for session in plans:
                    self._ids.drop(session)
                raise

    def _apply_chunk(
        self,
        dir_fd: int,
        chunk: list[tuple[UUID, Plan]],
        encoded: dict[UUID, list[bytes]],
    ) -> None:
        """Apply ``chunk`` (at most ``max_open_files`` sessions), fsync its files
        and close them; on failure cut back what it appended."""
        opened: list[_Target] = []
        try:
            for session, plan in chunk:
                name = _files.file_name(session)
                path = os.path.join(self._directory.path, name)
                if plan.erase:
                    self._ids.drop(session)
                    if _files.erase(dir_fd, name, path):
                        self._dir_dirty = True
                if not plan.records:
                    continue
                fd, created, stat = _files.open_for_append(dir_fd, name, path)
                self._dir_dirty |= created
                try:
                    state, synced = self._state(session, path, fd, stat, fresh=created)
                except BaseException:
                    os.close(fd)
                    raise
                target = _Target(session, fd, state, state.size, synced)
                opened.append(target)
                lines = []
                for record, line in zip(plan.records, encoded[session], strict=True):
                    key = record.message_id.int
                    if key not in state.ids:
                        state.ids.add(key)
                        lines.append(line)
                if lines:
                    target.synced = False
                    target.wrote = True
                    state.size += _files.append_lines(fd, lines)
            self._fsync_all([t.fd for t in opened if not t.synced])
        except BaseException:
            for target in opened:
                target.roll_back()
            raise
        finally:
            for target in opened:
                os.close(target.fd)
        for target in opened:
            self._ids.remember(target.session, target.state)

    def _state(
        self, session: UUID, path: str, fd: int, stat: os.stat_result, *, fresh: bool
    ) -> tuple[_Cached, bool]:
        """The ids in the open file ``fd`` (``stat`` is its ``fstat``), and whether
        the file is known synced.

        A cached set is used while the file's inode and size are what this writer
        left them, after an fsync; otherwise the file is read again, and it and the
        directory must be fsync'd before acknowledging: a crashed writer may have
        left lines, or the file's directory entry, never synced, which the ids now
        vouch for.
        """
        cached = self._ids.get(session)
        if (
            cached is not None
            and cached.inode == stat.st_ino
            and cached.size == stat.st_size
        ):
            return cached, True
        if fresh and stat.st_size == 0:
            return _Cached(set(), stat.st_ino, 0), False
        self._dir_dirty = True
        ids, size = _scan.load_ids(path, session, fd)
        return _Cached(ids, stat.st_ino, size), False

    def _fsync_all(self, fds: list[int]) -> None:
        """fsync every file of ``fds``; on several threads if configured."""
        pool = None
        if len(fds) > 1 and self._fsync_threads > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._fsync_threads, thread_name_prefix="jsonl-fsync"
                )
            pool = self._pool
        _files.fsync_files(fds, pool)
