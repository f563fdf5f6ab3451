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
- ``peek`` reads both records without taking the lock (the offline reader, while
  the owner runs): whether the lock is held is read from ``/proc/locks`` where
  there is one, so a peek never holds a lock an opening owner could collide with.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from typing import NamedTuple

from ._errors import JournalError, JournalLocked
from ._private_files import UnsafePath, open_file

__all__ = ["LockFile", "LockPeek", "peek"]

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
        return _read_high_water(self._fd)

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


def _read_high_water(fd: int) -> int | None:
    data = os.pread(fd, _RECORD.size, 0)
    if len(data) != _RECORD.size:
        return None
    magic, value, crc = _RECORD.unpack(data)
    if magic != _MAGIC or zlib.crc32(data[:16]) != crc:
        return None
    return int(value)


class LockPeek(NamedTuple):
    """What ``peek`` read from a lock file."""

    #: Whether an owner holds the lock now.
    held: bool
    #: The holder's pid (None when the lock is free, or the pid is unreadable).
    pid: int | None
    #: The recorded high-water (None: none, or damaged).
    high_water: int | None


def peek(path: str) -> LockPeek:
    """Read the lock file at ``path`` without locking it (missing: nothing held).

    Opened read-only and never through a symlink; its mode is not touched.

    Raises:
        OSError: it exists but cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockPeek(False, None, None)
    try:
        held = _is_held(fd)
        return LockPeek(held, _read_owner(fd) if held else None, _read_high_water(fd))
    finally:
        # Our own descriptor: closing it releases no flock another one holds.
        os.close(fd)


def _is_held(fd: int) -> bool:
    """Whether some descriptor holds a ``flock`` on the file ``fd`` is open on."""
    stat = os.fstat(fd)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1466752 0 EOF"
            if any(
                fields[1] == "FLOCK" and fields[5] == inode
                for fields in (line.split() for line in listing)
                if len(fields) > 5
            ):
                return True
    except OSError:
        pass
    # No /proc/locks, or no entry (an overlay filesystem may list another device
    # than stat reports): try a shared lock and let it go at once. Only here can
    # a peek collide with an owner opening in the same microseconds, which would
    # get JournalLocked and could simply retry.
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
