"""The directory of a ``JsonlArchive``: opened and checked once per call.

The functions are synchronous, stateless, plain ``os`` calls; ``ArchiveDirectory``
keeps what one call cannot see (whether it created the directory, which one the
path named last time, what it warned about). ``jsonl.py`` builds one per archive
and ``_jsonl_batch`` writes through it; what users are promised is in
``jsonl.py``'s docstring.

Rules and theory:
- Nothing is followed. The directory is opened once per call with
  ``O_DIRECTORY | O_NOFOLLOW`` (a symlink there is ``Refused``) and must not be
  writable by every user (anyone could remove or rename our files); one writable
  by its group or owned by another user than us or root is used, and
  ``ArchiveDirectory`` warns (the rule of the journal's folder too). Session
  files are then opened relative to that descriptor (``_jsonl_files``).
- A directory created here is set to exactly 0700, and it is not durable until
  its parent is fsync'd (``settle_new_directory``): until that succeeds, every
  call that may write settles it again before using it.
- The ids cached for a directory hold for that directory only: one created here
  (even on the inode of a removed one) or another than last time (recreated, or
  the path now names another one) makes ``ArchiveDirectory`` call its
  ``on_replaced``, which drops them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING, Final, final

from .._private_files import FOLDER_MODE
from ._jsonl_files import _CLOEXEC, _NOFOLLOW, _NOT_A_FILE_ERRNOS, Refused, logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS: Final = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC

_DIRECTORY_RULE: Final = (
    "The JSONL directory must be a real directory (not a symbolic link), owned by"
    " the user the service runs as, and not shared with other writers (chmod 700)"
)


def fsync_directory(path: str) -> None:
    """fsync the directory ``path``, making the names in it durable."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_directory(
    path: str, *, create: bool
) -> tuple[int, bool, os.stat_result] | None:
    """Open the archive directory ``path``; return ``(fd, created, st)``.

    If it is missing it is created (0700 and unsettled: see
    ``settle_new_directory``) when ``create`` is set, else None is returned. Its
    parent must exist. Raises ``Refused`` if ``path`` is a symbolic link (never
    followed) or every user may write to it (sticky or not), and
    ``NotADirectoryError`` if it is something else.
    """
    created = False
    try:
        fd = _open_directory(path)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(path, FOLDER_MODE)
            created = True
        except FileExistsError:
            pass  # made meanwhile: open whatever is there, with the same checks
        fd = _open_directory(path)
    try:
        st = os.fstat(fd)
        if st.st_mode & stat.S_IWOTH:
            raise Refused(
                path,
                "the JSONL directory is writable by every user (mode"
                f" {stat.S_IMODE(st.st_mode):04o}): anyone could plant, rename or"
                " remove session files",
                _DIRECTORY_RULE,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, created, st


def _open_directory(path: str) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno not in _NOT_A_FILE_ERRNOS or not _is_symlink(path):
            raise
    raise Refused(
        path,
        "the JSONL directory is a symbolic link (never followed: whoever can change"
        " it would choose which files are written)",
        _DIRECTORY_RULE + "; configure the real directory's path",
    )


def _is_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def sharing(st: os.stat_result) -> str | None:
    """Who else than us (and root) controls the entries of a directory, if anyone:
    its group (``g+w``) or its owner (another uid)."""
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {st.st_uid} (this process runs as {os.geteuid()})"
    if st.st_mode & stat.S_IWGRP:
        return f"writable by its group (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def settle_new_directory(fd: int, path: str) -> None:
    """Set the directory just created (open as ``fd``) to 0700 and fsync its
    parent, making it durable."""
    os.fchmod(fd, FOLDER_MODE)  # exactly 0700, whatever the umask
    fsync_directory(os.path.dirname(path))


@final
class ArchiveDirectory:
    """The archive directory at ``path``, across the calls of one archive.

    Args:
        path: the directory, absolute.
        on_replaced: called (under the archive's lock) when the path names a
            directory other than the one last used, or one created here: the
            ids cached for the old one hold nothing for it.
    """

    def __init__(self, path: str, *, on_replaced: Callable[[], None]) -> None:
        self.path = path
        self._on_replaced = on_replaced
        self._new_dir = False  # created by us; its parent is not synced yet
        self._dir_identity: tuple[int, int] | None = None  # (st_dev, st_ino)
        # (dev, ino, mode, uid) of the directory last warned about
        self._warned_shared: tuple[int, int, int, int] | None = None

    @contextlib.contextmanager
    def open(self, *, create: bool) -> Iterator[int | None]:
        """The directory, open (``O_NOFOLLOW``) and checked, for one call.

        None if it is missing and not ``create``. A directory created here is
        settled (0700, its parent fsync'd) before use, and again by later calls
        until that succeeds. Another directory than last time (recreated, or the
        path now names another one) holds none of the cached ids: they are dropped
        (``on_replaced``).
        """
        opened = open_directory(self.path, create=create)
        if opened is None:
            yield None
            return
        fd, created, st = opened
        try:
            if created:
                self._new_dir = True
                self._on_replaced()  # even if it took the inode of a removed one
            if self._new_dir and create:
                settle_new_directory(fd, self.path)
                self._new_dir = False
            identity = (st.st_dev, st.st_ino)
            if identity != self._dir_identity:
                self._on_replaced()
                self._dir_identity = identity
            self._warn_if_shared(st)
            yield fd
        finally:
            os.close(fd)

    def _warn_if_shared(self, st: os.stat_result) -> None:
        """Warn once per directory, mode and owner if someone else controls it."""
        who = sharing(st)
        if who is None:
            self._warned_shared = None
            return
        seen = (st.st_dev, st.st_ino, st.st_mode, st.st_uid)
        if seen == self._warned_shared:
            return
        self._warned_shared = seen
        logger.warning(
            "%s: the JSONL directory is %s: another user can add, remove or rename"
            " session files. Session files that are symlinks, hard-linked or not"
            " ours are refused, but the directory should belong to the service's"
            " user alone (chown it, chmod 700 it)",
            self.path,
            who,
        )
