"""Files and folders only we may touch: how the journal and the SQLite archive
create, adopt and check theirs.

Rules and theory:
- The threat is another local user who can write a folder we use, or plant a name
  in it before we start: a symlink where our file goes makes us write through it
  (the lock file would overwrite a victim's first bytes); a hard link makes a
  repair or an erasure truncate someone else's file; a loose mode lets others read
  conversations or inject entries. Root, and our own user, are trusted.
- So a folder writable by others (the ``o+w`` bit, even sticky as ``/tmp`` is) is
  refused; one writable by its group or owned by another user (not root) is
  allowed with a warning, since a shared group folder is a deliberate deployment.
  Folders we create are exactly 0700 whatever the umask, each synced into its
  parent so the new name survives a power loss.
- Every file of ours is opened with ``O_NOFOLLOW``, so a symlink is refused (not
  followed), and checked on the open descriptor (not the name): a regular file,
  owned by us, with one link. Its mode is set to exactly 0600, except that a
  non-empty file with any group or other bit is refused, saying why: its content
  may already have been read, which an operator should decide about (an empty
  one has nothing to leak yet). The lock file holds no content and is always set.
- SQLite opens the database by name and would follow a symlink there (Python's
  ``sqlite3`` cannot pass ``SQLITE_OPEN_NOFOLLOW``), so ``check_file`` checks the
  name and the ``-wal`` and ``-shm`` beside it first (SQLite itself refuses to
  write through a symlinked ``-wal`` or ``-shm``). In a folder only we can write,
  nobody else can rename into it between the check and SQLite's open; in a
  group-writable one (allowed, with a warning) the group is trusted not to.
- Checking an existing file looks (``lstat``) rather than opens, and opens it
  only to set its mode: closing any descriptor of a file drops every POSIX lock
  the process holds on it, SQLite's included.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Final

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "UnsafePath",
    "adopt",
    "check_file",
    "check_folder",
    "create_file",
    "make_folders",
    "open_file",
    "sync_folder",
]

logger = logging.getLogger("journal_archivist.files")

#: The mode of every file we create: owner read and write.
FILE_MODE: Final = 0o600
#: The mode of every folder we create: owner only.
FOLDER_MODE: Final = 0o700

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_TRUSTED_OWNERS: Final = frozenset({0})


class UnsafePath(Exception):
    """A file or folder we must not use; the message says which and why (internal:
    callers translate it into their own error)."""


def make_folders(folder: str) -> list[str]:
    """Create ``folder`` and its missing parents, each exactly 0700 and synced into
    its parent; return the folders created, outermost first."""
    missing: list[str] = []
    at = folder
    while not os.path.isdir(at) and os.path.dirname(at) != at:
        missing.append(at)
        at = os.path.dirname(at)
    created: list[str] = []
    for new in reversed(missing):
        try:
            os.mkdir(new, FOLDER_MODE)
        except FileExistsError:
            if not os.path.isdir(new):
                raise
            continue  # made by someone else meanwhile: checked like any other
        # mkdir's mode passes through the umask (which may also strip our own
        # bits); the folder's mode must not depend on the process's umask.
        _set_folder_mode(new)
        sync_folder(os.path.dirname(new))
        created.append(new)
    return created


def check_folder(folder: str, what: str) -> None:
    """Refuse ``folder`` if others may write it; warn if its group may, or it
    belongs to another user.

    Raises:
        UnsafePath: ``folder`` is writable by others, or not a folder.
    """
    try:
        info = os.stat(folder)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise UnsafePath(f"cannot inspect {what} {folder!r} ({detail})") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{what} {folder!r} is not a folder")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise UnsafePath(
            f"{what} {folder!r} is writable by every user (mode {mode:o}): anyone"
            " could plant or swap the files in it; use a folder only the"
            " service's user can write (chmod o-w, or a private subfolder)"
        )
    if mode & stat.S_IWGRP:
        logger.warning(
            "%s %r is writable by its group (mode %o): group members can plant or"
            " swap files in it; make it owner-only unless the group is trusted",
            what,
            folder,
            mode,
        )
    elif info.st_uid != os.geteuid() and info.st_uid not in _TRUSTED_OWNERS:
        logger.warning(
            "%s %r belongs to another user (uid %d), who can plant or swap files in it",
            what,
            folder,
            info.st_uid,
        )


def create_file(path: str) -> bool:
    """Create ``path`` empty and exactly 0600 unless a name is there already;
    return whether it was created (its name is not synced yet)."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE
        )
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits, even ours
    finally:
        os.close(fd)
    return True


def open_file(path: str, flags: int, what: str, *, secret: bool = True) -> int:
    """Open ``path`` (``O_NOFOLLOW``, ``O_CLOEXEC``) and return the descriptor once
    it is known to be ours (see ``adopt``); a file ``O_CREAT`` makes is 0600.

    Raises:
        UnsafePath: a symlink, not a regular file, another owner, more than one
            link, or a loose mode on a non-empty file holding ``secret`` content.
        OSError: the open itself failed (missing, permissions, ...).
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(_symlink_refused(path, what)) from exc
        raise
    try:
        adopt(fd, f"{what} {path!r}", secret=secret)
    except BaseException:
        os.close(fd)
        raise
    return fd


def adopt(fd: int, what: str, *, secret: bool = True) -> None:
    """Check the open file ``fd`` is ours, setting its mode to 0600; ``what``
    names it in messages (e.g. "the journal file '/data/journal.db'").

    Raises:
        UnsafePath: see ``open_file``.
    """
    if _judge(os.fstat(fd), what, secret=secret):
        os.fchmod(fd, FILE_MODE)


def check_file(path: str, what: str, *, secret: bool = True) -> bool:
    """Check the existing file ``path`` as ``open_file`` would, without creating
    it; return whether it exists.

    Looks with ``lstat`` and opens the file only if its mode must be set: closing
    a descriptor drops every POSIX lock this process holds on the file, and SQLite
    keeps its locks on the journal's files so.

    Raises:
        UnsafePath: see ``open_file``.
        OSError: its mode must be set and it cannot be opened.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(_symlink_refused(path, what))
    if _judge(info, f"{what} {path!r}", secret=secret):
        fd = open_file(path, os.O_RDONLY, what, secret=secret)  # checks again
        os.close(fd)
    return True


def _judge(info: os.stat_result, what: str, *, secret: bool) -> bool:
    """Raise ``UnsafePath`` if the file ``info`` describes is not ours; return
    whether its mode must be set to 0600."""
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{what} is not a regular file")
    if info.st_uid != os.geteuid():
        raise UnsafePath(
            f"{what} belongs to another user (uid {info.st_uid}, we run as"
            f" {os.geteuid()}): run as its owner, or move it aside"
        )
    if info.st_nlink != 1:
        raise UnsafePath(
            f"{what} has {info.st_nlink} hard links: writing it would"
            " change the other names' content too; copy it to a file of its own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode == FILE_MODE:
        return False
    # Also a mode the umask left without our own write bit.
    if mode & 0o077 and secret and info.st_size > 0:
        raise UnsafePath(
            f"{what} can be read or written by other users (mode"
            f" {mode:o}): it holds private conversations others may have read"
            " or changed; if that is acceptable, chmod 600 it and open again"
        )
    return True


def _set_folder_mode(folder: str) -> None:
    # Through a descriptor: chmod(follow_symlinks=False) is not implemented for
    # folders by glibc before 2.32.
    fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    try:
        os.fchmod(fd, FOLDER_MODE)
    finally:
        os.close(fd)


def _symlink_refused(path: str, what: str) -> str:
    try:
        target = f" (to {os.readlink(path)!r})"
    except OSError:
        target = ""
    return (
        f"{what} {path!r} is a symbolic link{target}: refused, since following it"
        " could write into another file; give the real path instead"
    )


def sync_folder(folder: str) -> None:
    """fsync ``folder``, making the names in it durable."""
    fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
