"""``JsonlArchive``: an embedded archive of JSON Lines files, one file per session.

File format:
- ``<directory>/<session>.jsonl``, where ``<session>`` is the canonical string of
  the session UUID (``str(uuid)``: 36 lower-case characters). Nothing else becomes
  part of a path; record content never does.
- One record per line: the compact JSON object of ``_codec.encode_record`` followed
  by ``\\n``. JSON escapes every ASCII control character; U+0080-U+009F (the C1
  controls, U+0085 among them), U+2028 and U+2029 are escaped too (``\\u2028``),
  so a line holds no character at which ``str.splitlines()`` or a terminal would
  break it. Files written before that may hold them raw, and still read. Lines are
  in append order. UTF-8, no header, no trailer.
- Files are created 0600. The directory is created 0700 on first use if it is
  missing (its parent must exist: a missing mount point is an error, not a reason to
  build a tree). An existing directory keeps its mode; an existing file is set to
  0600 (see below).
- The directory should be a real directory of the service's user alone, shared
  with no other writer: a symlink there, or one every user may write to, is
  refused (non-retryable ``BackendError``); one its group may write to, or owned
  by another user than us or root, is used with a WARNING (once). A session file
  must be a regular file owned by us with one link: a symlink, a hard-linked
  file, another user's file, a FIFO, device or directory is refused before
  anything in it is read or changed; one group or others may read or write is
  set to 0600 if it is empty, refused if not. Only the last path component is
  checked: the directory's parents are trusted.

Rules and theory:
- Durable before acknowledging: a batch is written, then every file it touched is
  fsync'd once, then the directory is fsync'd if it may hold unsynced entries; only
  then does ``write_batch`` return. So a line that is not complete on disk was never
  acknowledged, and the journal will deliver it again.
- ``_dir_dirty`` outlives a batch: set when a file is created or unlinked or a
  session file is read from disk (a crashed writer may not have synced its entry),
  cleared only by a directory fsync. A failed batch leaves it set, so its
  redelivery syncs the directory though its file now exists or is already gone.
- Idempotent on ``message_id``: the ids in a file are read from the file itself the
  first time this instance touches the session, then kept in an LRU cache of
  ``max_cached_sessions`` id sets. A cached set is trusted only while the file's
  inode and size are what this instance left them (one ``fstat`` per touched file
  per batch); anything else (a restart, another writer, an operator's edit) makes
  it read the file again, and fsync it before acknowledging (a crashed writer may
  have left lines that were never synced). A failed batch cuts what it appended
  (best effort) and drops the cache entries it touched, so the redelivery writes
  and syncs again rather than trusting pages a failed fsync may have lost.
- A good line decodes as a record of the file's session. Anything else (bytes
  that are not UTF-8 or not JSON, JSON that is not a record, NUL bytes, a record
  of another session) is a bad line, and never returned.
- Torn tail: the load on the write path cuts a final fragment without ``\\n`` and a
  final bad line (truncate, fsync, WARNING with the bytes cut). Reads never cut;
  they skip such a tail. A bad line anywhere else is corruption this backend
  cannot repair: reads and appends for that session raise a non-retryable
  ``BackendError`` naming file, line and offset.
  Erasing the session still works. A power loss during an unacknowledged write of
  several lines can cause it too (zeros inside it, a good last line) where a new
  size can reach the disk before the data (ext4 ``data=writeback``). Nothing says
  where the last synced write ended, so only the operator can tell.
- Erasure truncates the file to zero, unlinks it and fsyncs the directory. Freed
  blocks are not overwritten (on SSDs, copy-on-write filesystems and snapshots an
  overwrite would not reach the old copies anyway).
- At most ``MAX_OPEN_FILES`` session files are open at once (plus the
  directory): a batch is applied in chunks of that many sessions, each appended,
  fsync'd and closed before the next is opened. So a batch of any size fits a
  1,024-descriptor limit. A chunk that fails is cut back as above; chunks before
  it keep their synced lines, which the redelivery finds (their cache entries are
  dropped too, so it reads the files) and skips.
- One thread hop per call: all file I/O of a batch runs in one
  ``anyio.to_thread.run_sync`` call; only the fsyncs of a batch fan out to
  ``fsync_threads`` threads, because the filesystem commits concurrent fsyncs
  together (measured: about twice the throughput at 100 files per batch). A
  ``threading.Lock`` serialises the hops of one instance, because
  ``read_session`` (called by the application) can overlap a batch (called by the
  writer loop). One instance (one archivist) per directory at a time; a second
  writer is detected for idempotence, but two writers appending at the same
  moment are not coordinated.
- The hop is not abandoned on cancel, so ``attempt_timeout`` cannot end a call
  stuck in a hung disk. Abandoning is unsafe: an abandoned batch waiting for the
  lock could run after a later one was acknowledged and re-apply an erasure.
- This module is the lock, the thread hop and the errors. ``_jsonl_batch``
  applies a batch (the plan, the id cache, chunks, fsyncs), ``_jsonl_directory``
  opens and checks the directory, ``_jsonl_files`` the session files, and
  ``_jsonl_scan`` reads them back.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Final, TypeVar, final

import anyio.to_thread

from .._errors import BackendError
from . import _jsonl_batch as _batch, _jsonl_files as _files, _jsonl_scan as _scan
from ._base import ArchiveBackend, SessionGroup, checked_uuid, text_path
from ._jsonl_directory import ArchiveDirectory

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    from .._records import MessageRecord

__all__ = [
    "DEFAULT_FSYNC_THREADS",
    "DEFAULT_MAX_CACHED_SESSIONS",
    "MAX_OPEN_FILES",
    "JsonlArchive",
]

#: How many sessions' id sets a ``JsonlArchive`` keeps in memory by default.
DEFAULT_MAX_CACHED_SESSIONS: Final = 1024
#: How many files of one batch a ``JsonlArchive`` fsyncs at once by default.
DEFAULT_FSYNC_THREADS: Final = 4
_MAX_FSYNC_THREADS: Final = 64
#: The most session files a ``JsonlArchive`` holds open at once: a larger batch is
#: written in chunks of this many sessions (well inside a 1,024-descriptor limit).
MAX_OPEN_FILES: Final = 256

_A = TypeVar("_A")
_R = TypeVar("_R")


@final
class JsonlArchive(ArchiveBackend):
    """An embedded archive: one JSON Lines file per session in ``directory``.

    Acknowledges a batch only once every file it touched and, if it may hold
    unsynced entries (a file created or removed, by this batch or an earlier failed
    one or crashed writer), the directory are fsync'd. Idempotent on
    ``message_id``, also across restarts (the ids come from the file). Per-session
    order is file order, which is append order. Readable: ``read_session`` returns
    a session's records in file order. ``RetryPolicy.attempt_timeout`` cannot
    interrupt a call blocked in file I/O (a hung disk): it ends when the I/O does.
    Holds at most ``MAX_OPEN_FILES`` session files open at once, whatever the
    batch size.

    The directory must be the service's own: a real directory (a symlink is
    refused), owned by the user the service runs as, that no one else writes to
    (writable by every user: refused; by its group, or owned by another user than
    root: a WARNING). Session files that are not regular files of ours with one
    link, or that others may read (unless empty), are refused: never followed,
    read, repaired or erased.

    Args:
        directory: where the session files live. Created (0700) on first use if it
            is missing; its parent must exist.
        max_cached_sessions: how many sessions' id sets to keep in memory (least
            recently used are dropped first; a dropped session is read from its
            file again when next touched). Memory per cached session is about
            100 bytes per record in it.
        fsync_threads: how many files of one batch are fsync'd at once (1 syncs
            them one after another, in the batch's worker thread).

    Raises:
        TypeError: ``directory`` is not a ``str`` or ``os.PathLike[str]``, or
            ``max_cached_sessions`` or ``fsync_threads`` is not an ``int``.
        ValueError: ``directory`` is empty, ``max_cached_sessions < 1``, or
            ``fsync_threads`` is not between 1 and 64.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_cached_sessions: int = DEFAULT_MAX_CACHED_SESSIONS,
        fsync_threads: int = DEFAULT_FSYNC_THREADS,
    ) -> None:
        path = text_path(directory, "directory")
        if not path:
            raise ValueError("directory must not be empty")
        if type(max_cached_sessions) is not int:
            raise TypeError(
                f"max_cached_sessions must be an int, got"
                f" {type(max_cached_sessions).__name__} {max_cached_sessions!r}"
            )
        if max_cached_sessions < 1:
            raise ValueError(
                f"max_cached_sessions must be at least 1, got {max_cached_sessions}"
            )
        if type(fsync_threads) is not int:
            raise TypeError(
                f"fsync_threads must be an int, got"
                f" {type(fsync_threads).__name__} {fsync_threads!r}"
            )
        if not 1 <= fsync_threads <= _MAX_FSYNC_THREADS:
            raise ValueError(
                f"fsync_threads must be between 1 and {_MAX_FSYNC_THREADS},"
                f" got {fsync_threads}"
            )
        self._dir = os.path.abspath(path)
        self._max_cached = max_cached_sessions
        self._ids = _batch.IdCache(max_cached_sessions)
        self._directory = ArchiveDirectory(self._dir, on_replaced=self._ids.clear)
        self._writer = _batch.BatchWriter(
            self._directory, self._ids, fsync_threads=fsync_threads
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JsonlArchive({self._dir!r}, max_cached_sessions={self._max_cached})"

    @property
    def directory(self) -> str:
        """The absolute path of the directory holding the session files."""
        return self._dir

    def owned_paths(self) -> tuple[str, ...]:
        """The directory, absolute, with symlinks resolved as they are now."""
        return (os.path.realpath(self._dir),)

    @property
    def cached_sessions(self) -> int:
        """How many id sets are cached now (never more than ``max_cached_sessions``)."""
        return len(self._ids)

    def path_of(self, session: UUID) -> str:
        """The file that holds ``session``'s records (it may not exist)."""
        return os.path.join(self._dir, _files.file_name(session))

    # -- the backend protocol ------------------------------------------------------

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records`` of ``session``; the same as a one-group batch."""
        await self.write_batch([SessionGroup(checked_uuid(session), tuple(records))])

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply a coalesced batch durably, in one thread hop.

        Groups of one session apply in the order given; an ``erase`` group removes
        the session's file first, then its records start a new one. Records already
        in a file (by ``message_id``) are skipped. Returns once every touched file
        (once each) and, if it may hold unsynced entries, the directory are fsync'd.

        Raises:
            BackendError: retryable for an ``OSError`` (disk full, I/O error,
                permission, missing directory): some lines may have been written
                but nothing was acknowledged, and a redelivery skips what is
                there. Non-retryable for a corrupt line inside a session file or
                a record of another session (nothing of that session was written),
                a record that cannot be encoded (nothing of the batch was), a
                refused directory (nothing was written) or a refused session file
                (it was left as it is; sessions in earlier chunks may have been
                written).
        """
        plans = _batch.plan_batch(groups)
        if plans:
            await anyio.to_thread.run_sync(self._locked, self._apply, plans)

    async def delete_session(self, session: UUID) -> None:
        """Remove ``session``'s file and fsync the directory; a no-op if none.

        The file is truncated to zero before it is unlinked, so its content is gone
        from every open descriptor at once. Its freed blocks are not overwritten:
        the device may keep the old bytes until they are reused.

        Raises:
            BackendError: retryable, for an ``OSError``; non-retryable if the
                directory or the session file is refused (a symlink, a file with
                another hard link or another owner): it is left as it is.
        """
        plans = {checked_uuid(session): _batch.Plan(erase=True)}
        await anyio.to_thread.run_sync(self._locked, self._apply, plans)

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """Return ``session``'s records in file (append) order; ``[]`` if none.

        Deduplicated by ``message_id`` (the first copy wins). A torn tail is skipped,
        not repaired (it was never acknowledged; the next write repairs it).
        Reading never changes a file.

        Raises:
            BackendError: non-retryable if a line before the end does not decode
                (the message names file, line and offset) or the directory or the
                session file is refused; retryable for an ``OSError``.
        """
        return await anyio.to_thread.run_sync(
            self._locked, self._read, checked_uuid(session)
        )

    async def health_check(self) -> None:
        """Check that the directory exists (creating it if missing) and is writable.

        Creates (``O_EXCL``) and removes ``.jsonl-archive-health-probe-<random
        hex>`` in the directory: a name no one can plant a file for, and never a
        session's. Warns (once) if the directory's group may write to it or it
        belongs to another user than root.

        Raises:
            BackendError: retryable: the directory or its parent is missing, is not
                a directory, is not writable, or the disk is full or failing.
                Non-retryable: the directory is refused (a symlink, or writable
                by every user).
        """
        await anyio.to_thread.run_sync(self._locked, self._probe, None)

    async def aclose(self) -> None:
        """Forget the cached id sets and stop the fsync threads.

        No file stays open between calls. The archive may be used again afterwards.
        Cancelling it (a shutdown deadline) does not wait for a batch stuck in a
        hung disk: the forgetting then happens, under the lock, once it returns.
        """
        await anyio.to_thread.run_sync(
            self._locked, self._forget, None, abandon_on_cancel=True
        )

    # -- in the worker thread ------------------------------------------------------

    def _locked(self, fn: Callable[[_A], _R], arg: _A) -> _R:
        """Run ``fn(arg)`` under the lock, translating its errors once, here.

        ``_scan.Corrupt`` and ``_files.Refused`` become a non-retryable
        ``BackendError`` (only an operator can fix them); an ``OSError`` a retryable
        one.
        """
        with self._lock:
            try:
                return fn(arg)
            except (_scan.Corrupt, _files.Refused) as exc:
                raise BackendError(str(exc), retryable=False) from None
            except OSError as exc:
                raise BackendError(
                    f"{self!r}: {_files.describe(exc)}", retryable=True
                ) from exc

    def _read(self, session: UUID) -> list[MessageRecord]:
        with self._directory.open(create=False) as dir_fd:
            if dir_fd is None:
                return []
            name = _files.file_name(session)
            return _scan.read_records(dir_fd, name, self.path_of(session), session)

    def _forget(self, _: None) -> None:
        self._ids.clear()
        self._writer.close()

    def _apply(self, plans: dict[UUID, _batch.Plan]) -> None:
        # Looked up at each batch, so that lowering the module's MAX_OPEN_FILES
        # (tests do) takes effect.
        self._writer.apply(plans, max_open_files=MAX_OPEN_FILES)

    def _probe(self, _: None) -> None:
        with self._directory.open(create=True) as dir_fd:
            assert dir_fd is not None  # created if missing
            _files.write_probe(dir_fd)
