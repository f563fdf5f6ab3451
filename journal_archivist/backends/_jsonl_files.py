"""The session files of ``JsonlArchive``: synchronous, stateless, plain ``os`` calls.

Opening and checking a session file, encoding and appending lines, fsyncing,
erasing, the health probe. ``jsonl.py`` decides when (locking, caching,
batches); the directory is ``_jsonl_directory``'s and reading a file back
``_jsonl_scan``'s. The file format and what users are promised are in
``jsonl.py``'s docstring.

Rules and theory:
- An fsync of a file makes its lines durable, not its name: a created file can
  vanish after a power loss, and an unlinked one come back, until the directory
  holding it is fsync'd (``_jsonl_directory``). So the caller fsyncs every file
  it appended to, then the directory if an entry in it may be unsynced, and only
  then acknowledges. Nothing here decides when to sync.
- Nothing is followed, nothing foreign is touched. Every session file is opened
  relative to the directory's descriptor (``dir_fd``, opened and checked by
  ``_jsonl_directory``), so swapping the path for a symlink mid-call changes
  nothing. A session file is opened with ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a
  FIFO or device planted there cannot block the open) and, before a byte of it is
  read, cut or written, ``fstat`` must show a regular file owned by us with
  exactly one link; anything else is ``Refused``. A second link is refused
  because the torn-tail repair, an append and an erasure all change the inode,
  i.e. every file linked to it. A mode other than 0600 is set to 0600, except
  that a non-empty file group or others may read or write is ``Refused`` (others
  may have read it: the operator decides, then ``chmod 600``).
- A session file is created ``O_EXCL`` and set to exactly 0600 with ``fchmod``.
  The health probe is created ``O_EXCL`` under a random name that is never a
  session's.
- Lines hold no character that ``str.splitlines()`` ends a line at and no C1
  control: JSON escapes the ASCII ones, ``encode_line`` escapes U+0080-U+009F
  (U+0085 among them), U+2028 and U+2029. Reading accepts them raw (older files).
- ``erase`` truncates before it unlinks, so the content is gone from every open
  descriptor at once; the caller fsyncs the directory after it.
- ``OSError`` is left to the caller, which translates it once; only
  ``FileNotFoundError`` / ``FileExistsError`` are caught, where they are answers.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import re
import secrets
import stat
from typing import TYPE_CHECKING, Final
from uuid import UUID

import msgspec

from .._errors import BackendError
from .._private_files import FILE_MODE, UnsafePath, adopt
from ._codec import encode_record

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .._records import MessageRecord

# The name users configure logging for: this module's work is JsonlArchive's.
logger = logging.getLogger("journal_archivist.backends.jsonl")

_SUFFIX: Final = ".jsonl"
#: ``write_probe`` creates ``PROBE_PREFIX + <32 hex digits>`` and removes it again:
#: a dot file that does not end in ``.jsonl``, so never a session's name.
PROBE_PREFIX: Final = ".jsonl-archive-health-probe-"
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)
#: Every open of a session file: never through a symlink, never blocking on a
#: FIFO or device planted in its place, never taking a terminal.
_SESSION_FLAGS: Final = _NOFOLLOW | _CLOEXEC | _NONBLOCK | _NOCTTY
#: What ``open`` says about a symlink under ``O_NOFOLLOW`` (Linux: ``ELOOP`` for a
#: file, ``ENOTDIR`` with ``O_DIRECTORY``; FreeBSD: ``EMLINK``), about a directory
#: opened for writing (``EISDIR``) and about a socket (``ENXIO``).
_NOT_A_FILE_ERRNOS: Final = frozenset(
    {errno.ELOOP, errno.EMLINK, errno.ENOTDIR, errno.EISDIR, errno.ENXIO}
)


class Refused(Exception):
    """A directory or session file this backend must not use (internal).

    Raised before anything in it was read or changed; ``jsonl.py`` makes it a
    non-retryable ``BackendError``.
    """

    def __init__(self, path: str, why: str, rule: str) -> None:
        super().__init__(
            f"{path}: refused: {why}; nothing in it was read or changed. {rule}"
        )


_FILE_RULE: Final = (
    "A session file must be a regular file owned by the user the service runs as,"
    " with no other hard link (back up by copying, not hard-linking): move this one"
    " aside"
)


def file_name(session: UUID) -> str:
    """The name of ``session``'s file: its canonical UUID string and ``.jsonl``."""
    # Rebuilt from the int, so a UUID subclass cannot choose its own str().
    return str(UUID(int=session.int)) + _SUFFIX


def describe(exc: OSError) -> str:
    """``exc`` in one line for an error message: errno name, text, file."""
    name = errno.errorcode.get(exc.errno or 0, "")
    where = f": {exc.filename}" if exc.filename else ""
    return f"[{name or exc.errno}] {exc.strerror or exc}{where}"


# What msgspec leaves raw that a line must not hold: U+0085 (NEL), U+2028 and
# U+2029 end a line for str.splitlines(), and U+0080-U+009F are C1 controls a
# terminal acts on. JSON already escapes every ASCII control and line break. Each
# pattern starts with a UTF-8 lead byte, which is never a continuation byte, so a
# match is always a whole character, and it is always inside a JSON string.
_RAW_SEPARATORS: Final = re.compile(rb"\xe2\x80[\xa8\xa9]")  # U+2028, U+2029
_RAW_C1: Final = re.compile(rb"\xc2[\x80-\x9f]")  # U+0080-U+009F
_ESCAPES: Final = {
    chr(code).encode(): b"\\u%04x" % code
    for code in (*range(0x80, 0xA0), 0x2028, 0x2029)
}


def _escaped(match: re.Match[bytes]) -> bytes:
    return _ESCAPES[match.group()]


def escape_line_breaks(line: bytes) -> bytes:
    """``line`` (compact JSON) with U+0080-U+009F, U+2028 and U+2029 escaped.

    Decodes to the same value. Costs one ``isascii`` for an ASCII line; a
    regular-expression pass runs only where a lead byte of such a character is.
    """
    if line.isascii():
        return line
    if b"\xe2" in line and _RAW_SEPARATORS.search(line):
        line = _RAW_SEPARATORS.sub(_escaped, line)
    if b"\xc2" in line and _RAW_C1.search(line):
        line = _RAW_C1.sub(_escaped, line)
    return line


def encode_line(record: MessageRecord) -> bytes:
    """``record`` as one line, without its ``\\n``; see ``escape_line_breaks``.

    Raises:
        BackendError: non-retryable, if the record cannot be encoded.
    """
    try:
        return escape_line_breaks(encode_record(record))
    except (
        msgspec.EncodeError,
        TypeError,
        ValueError,
        OverflowError,
        RecursionError,
    ) as exc:
        # The journal validates what it accepts; this guards direct callers.
        raise BackendError(
            f"cannot archive record {record.message_id} of session"
            f" {record.session}: {exc}",
            retryable=False,
        ) from exc


def _what_is_at(dir_fd: int, name: str) -> str | None:
    """What the entry ``name`` is, if it is not a regular file (None: it is one,
    or it cannot be seen)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISLNK, "a symbolic link (never followed: it could point anywhere)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def open_session(
    dir_fd: int, name: str, path: str, flags: int, *, erasing: bool = False
) -> tuple[int, os.stat_result]:
    """Open the session file ``name`` in ``dir_fd`` and check it; return ``(fd, st)``.

    ``path`` names it in messages. Raises ``Refused``, before anything in it was
    read or changed, unless it is a regular file owned by our effective uid with
    exactly one link and, unless ``erasing``, not one others could read with
    content in it; ``FileNotFoundError`` if it is missing (or was removed
    meanwhile: no link left).
    """
    try:
        fd = os.open(name, flags | _SESSION_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        what = _what_is_at(dir_fd, name) if exc.errno in _NOT_A_FILE_ERRNOS else None
        if what is None:
            raise
        raise Refused(path, f"the session file is {what}", _FILE_RULE) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = f"the session file is {_kind(st.st_mode)}"
            raise Refused(path, why, _FILE_RULE)
        if st.st_nlink == 0:  # removed since it was opened: as good as missing
            raise FileNotFoundError(errno.ENOENT, "removed while opening", path)
        try:
            # One link, our owner, 0600. A file others could read is still
            # erased: that can only end what they could read.
            adopt(fd, "the session file", secret=not erasing)
        except UnsafePath as exc:
            raise Refused(path, str(exc), _FILE_RULE) from None
        os.set_blocking(fd, True)  # O_NONBLOCK was for the open only
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_for_append(
    dir_fd: int, name: str, path: str
) -> tuple[int, bool, os.stat_result]:
    """Open (creating if missing) a session file for reading and appending.

    Returns ``(fd, created, st)``; raises ``Refused`` as ``open_session`` does.
    """
    flags = os.O_RDWR | os.O_APPEND
    try:
        fd, st = open_session(dir_fd, name, path, flags)
    except FileNotFoundError:
        fd, st = open_session(dir_fd, name, path, flags | os.O_CREAT | os.O_EXCL)
        return fd, True, st
    return fd, False, st


def erase(dir_fd: int, name: str, path: str) -> bool:
    """Truncate and unlink the session file ``name``; return whether there was one.

    Raises ``Refused`` as ``open_session`` does, leaving it as it is.
    """
    try:
        fd, _ = open_session(dir_fd, name, path, os.O_WRONLY, erasing=True)
    except FileNotFoundError:
        return False
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    os.unlink(name, dir_fd=dir_fd)
    return True


# Buffers one writev takes at most (POSIX guarantees 16, Linux takes 1024).
_IOV_MAX: Final = max(16, min(1024, os.sysconf("SC_IOV_MAX")))


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, however many ``os.write`` calls it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_lines(fd: int, lines: list[bytes]) -> int:
    """Append ``lines``, each ended by ``\\n``, to ``fd``; return the bytes written.

    Gathered by ``writev`` rather than joined: a large line is not copied.
    """
    views = [memoryview(piece) for line in lines for piece in (line, b"\n")]
    total = sum(len(view) for view in views)
    at = 0
    while at < len(views):
        written = os.writev(fd, views[at : at + _IOV_MAX])
        while written:  # drop what went out, keep the rest of a partial piece
            if written >= len(views[at]):
                written -= len(views[at])
                at += 1
            else:
                views[at] = views[at][written:]
                written = 0
    return total


def write_probe(dir_fd: int) -> str:
    """Create a probe file (0600) in ``dir_fd``, write a line, remove it again.

    Its name is ``PROBE_PREFIX`` and 32 random hex digits, created ``O_EXCL``: no
    one can plant a file or symlink for it to write through. Returns the name.
    """
    name = PROBE_PREFIX + secrets.token_hex(16)
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
        FILE_MODE,
        dir_fd=dir_fd,
    )
    try:
        write_all(fd, b"\n")
    finally:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
    return name


def fsync_files(fds: list[int], pool: Executor | None) -> None:
    """fsync every file of ``fds``, one after another or on ``pool``'s threads."""
    if pool is None:
        for fd in fds:
            os.fsync(fd)
        return
    # Wait for all of them, failed or not: the caller closes the fds next.
    futures = [pool.submit(os.fsync, fd) for fd in fds]
    concurrent.futures.wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
