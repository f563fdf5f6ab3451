"""The single-owner lock file beside the journal, which also keeps the high-water.

Rules:
- ``<journal>.lock`` is locked with ``flock(LOCK_EX | LOCK_NB)``; the OS releases it
  when the owner exits, even by SIGKILL. A second owner (another process, or another
  open in this process) gets ``JournalLocked``. SQLite's own locks are POSIX record
  locks on the journal file and are unaffected.
- The lock file is opened like every file of ours (``_private_files.open_file``):
  never through a symlink, and only if it is a regular file of ours with one
  link; its mode is kept 0600. Otherwise ``JournalError`` says why and nothing is
  written: a planted symlink must not let us overwrite another file's first bytes.
- The owner writes its pid into the file once it holds the lock, so a second
  opener can say who holds it (``JournalLocked.pid``).
- The file also records the highest sequence number ever committed, rewritten after
  each commit without an fsync. It lets open detect a lost WAL tail (committed
  entries that SQLite silently dropped because a WAL frame was damaged): if the
  journal's own high-water is lower, the difference was lost. Without the fsync the
  record may be stale after a power loss, which can hide a loss but never invent one
  under ``Durability.FULL``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib

from ._errors import JournalError, JournalLocked
from ._private_files import UnsafePath, open_file

__all__ = ["LockFile"]

logger = logging.getLogger("journal_archivist.journal")

_MAGIC = b"JALOCK01"
_RECORD = struct.Struct(">8sQI")  # magic, high-water, crc32 of the first two
_OWNER_MAGIC = b"JAOWNER1"
_OWNER = struct.Struct(">8sQI")  # magic, pid, crc32 of the first two
_OWNER_AT = 32


class LockFile:
    """An exclusive, process-lifetime lock on a journal, holding its high-water."""

    def __init__(self, path: str, journal_path: str) -> None:
        self.path = path
        try:
            fd = open_file(path, os.O_RDWR | os.O_CREAT, "the lock file", secret=False)
        except UnsafePath as exc:
            raise JournalError(journal_path, str(exc)) from exc
        except OSError as exc:
            raise JournalError(
                journal_path, f"cannot open the lock file {path!r} ({exc})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(fd)
            os.close(fd)
            raise JournalLocked(journal_path, pid=holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._write_failed = False
        head = _OWNER_MAGIC + os.getpid().to_bytes(8, "big")
        self._pwrite(head + zlib.crc32(head).to_bytes(4, "big"), _OWNER_AT)

    def read_high_water(self) -> int | None:
        """The recorded high-water, or None if there is none or it is damaged."""
        assert self._fd is not None
        data = os.pread(self._fd, _RECORD.size, 0)
        if len(data) != _RECORD.size:
            return None
        magic, value, crc = _RECORD.unpack(data)
        if magic != _MAGIC or zlib.crc32(data[:16]) != crc:
            return None
        return int(value)

    def write_high_water(self, value: int) -> None:
        """Record ``value`` (one small pwrite into the page cache, no fsync).

        Best effort: a failed write only weakens lost-tail detection, so it is
        logged once rather than raised into the commit that was just made.
        """
        if self._fd is None:
            return
        head = _MAGIC + value.to_bytes(8, "big")
        self._pwrite(head + zlib.crc32(head).to_bytes(4, "big"), 0)

    def _pwrite(self, data: bytes, offset: int) -> None:
        assert self._fd is not None
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                logger.warning("cannot write the lock file %s: %s", self.path, exc)

    def release(self) -> None:
        """Unlock and close; harmless to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


def _read_owner(fd: int) -> int | None:
    """The pid the holder of the lock wrote, or None if unknown."""
    try:
        data = os.pread(fd, _OWNER.size, _OWNER_AT)
    except OSError:
        return None
    if len(data) != _OWNER.size:
        return None
    magic, pid, crc = _OWNER.unpack(data)
    if magic != _OWNER_MAGIC or zlib.crc32(data[:16]) != crc:
        return None
    return int(pid)
