"""The file-level work of ``JsonlArchive``: synchronous, stateless, plain ``os`` calls.

Scanning a session file (torn-tail repair, corrupt-line errors), encoding and
appending lines, fsyncing, erasing, creating the directory. ``jsonl.py`` decides
when (locking, caching, batches) and is the only importer; the file format and
what users are promised are in its docstring.

Rules and theory:
- An fsync of a file makes its lines durable, not its name: a created file can
  vanish after a power loss, and an unlinked one come back, until the directory
  holding it is fsync'd (a new directory: until its parent is, which
  ``settle_new_directory`` does). So the caller fsyncs every file it appended to,
  then the directory if an entry in it may be unsynced, and only then
  acknowledges. Nothing here decides when to sync.
- ``load_ids`` runs on the write path before anything is appended, and cuts a
  torn tail (else the fragment and the next line would make one corrupt line),
  then fsyncs the cut. ``scan`` and ``read_records`` never change a file; they
  stop before such a tail.
- A session file is created ``O_EXCL`` and set to exactly 0600 with ``fchmod``.
  Every open of a file uses ``O_NOFOLLOW`` and ``O_CLOEXEC``.
- ``erase`` truncates before it unlinks, so the content is gone from every open
  descriptor and hard link at once; the caller fsyncs the directory after it.
- ``OSError`` is left to the caller, which translates it once; only
  ``FileNotFoundError`` / ``FileExistsError`` are caught, where they are answers.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
from typing import IO, TYPE_CHECKING, Final
from uuid import UUID

import msgspec

from .._errors import BackendError
from ._codec import DECODE_ERRORS, decode_record, encode_record

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Executor

    from .._records import MessageRecord

# The name users configure logging for: this module's work is JsonlArchive's.
logger = logging.getLogger("journal_archivist.backends.jsonl")

_SUFFIX: Final = ".jsonl"
#: Created and removed again by ``write_probe``; never a session's name.
_PROBE_NAME: Final = ".jsonl-archive-health-probe"
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)


class Corrupt(Exception):
    """A line that does not decode, before the end of a file (internal)."""

    def __init__(self, path: str, line: int, offset: int, detail: str) -> None:
        super().__init__(
            f"{path}: line {line} (at byte {offset}) is corrupt and cannot be"
            f" repaired automatically ({detail}); the file was not changed. If it is"
            " crash damage in the last write, never acknowledged, keep a copy and"
            f" truncate the file to {offset} bytes; otherwise move the file aside or"
            " erase the session"
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


def encode_line(record: MessageRecord) -> bytes:
    """``record`` as one line, without its ``\\n``.

    Raises:
        BackendError: non-retryable, if the record cannot be encoded.
    """
    try:
        return encode_record(record)
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


def open_for_append(path: str) -> tuple[int, bool]:
    """Open ``path`` for reading and appending; return ``(fd, created)``."""
    flags = os.O_RDWR | os.O_APPEND | _NOFOLLOW | _CLOEXEC
    try:
        return os.open(path, flags), False
    except FileNotFoundError:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # exactly 0600, whatever the umask
        except BaseException:
            os.close(fd)
            raise
        return fd, True


def erase(path: str) -> bool:
    """Truncate and unlink ``path``; return whether there was a file."""
    try:
        fd = os.open(path, os.O_WRONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    os.unlink(path)
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


def write_probe(directory: str) -> None:
    """Create a probe file (0600) in ``directory``, write a line, remove it again."""
    path = os.path.join(directory, _PROBE_NAME)
    fd = os.open(
        path,
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC,
        _FILE_MODE,
    )
    try:
        write_all(fd, b"\n")
    finally:
        os.close(fd)
        os.unlink(path)


def fsync_directory(path: str) -> None:
    """fsync the directory ``path``, making the names in it durable."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def make_directory(path: str) -> bool:
    """Create the directory ``path`` if it is missing; return whether it was created.

    Its parent must exist. Raises ``NotADirectoryError`` if ``path`` is something
    else. A created directory is not settled until ``settle_new_directory``.
    """
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(
                errno.ENOTDIR, "exists but is not a directory", path
            ) from None
        return False
    return True


def settle_new_directory(path: str) -> None:
    """Set a directory just created to 0700 and fsync its parent, making it durable."""
    os.chmod(path, _DIR_MODE)  # exactly 0700, whatever the umask
    fsync_directory(os.path.dirname(path))


def scan(
    path: str, session: UUID, file: IO[bytes]
) -> Iterator[tuple[int, MessageRecord]]:
    """Yield ``(end offset, record)`` for each good line; stop before a torn tail.

    A good line is a record of ``session`` (the file's) followed by a newline. A
    torn tail is a final fragment without a newline and, before it, a final line
    that is not good. Raises ``Corrupt`` for a line before the end that is not
    good: anything from JSON that is not a record to bytes that are not UTF-8.
    """
    end = 0
    bad: tuple[int, int, str] | None = None  # (line number, offset, error)
    want = session.int
    for number, line in enumerate(file, start=1):
        if not line.endswith(b"\n"):
            return  # a fragment: at most the last line; never acknowledged
        if bad is not None:
            raise Corrupt(path, *bad)
        try:
            record = decode_record(line)
        except DECODE_ERRORS as exc:
            problem = str(exc)
        else:
            if record.session.int == want:
                end += len(line)
                yield end, record
                continue
            # Never written here: returning it would hand out another session's
            # record (a flipped digit, a file copied or renamed by hand).
            problem = f"a record of session {record.session}, not of {session}"
        zeros = "; it holds NUL bytes" if b"\0" in line else ""
        bad = (number, end, f"{problem}{zeros}")


def load_ids(path: str, session: UUID, fd: int) -> tuple[set[int], int]:
    """Read the ids of an open session file, repairing a torn tail.

    Returns the ``message_id.int`` of every good line and the file's size after
    the repair (just past the last good line).
    """
    os.lseek(fd, 0, os.SEEK_SET)
    ids: set[int] = set()
    end = 0  # just past the last good line
    with os.fdopen(fd, "rb", closefd=False) as file:
        for line_end, record in scan(path, session, file):
            ids.add(record.message_id.int)
            end = line_end
    size = os.fstat(fd).st_size
    if size > end:
        os.ftruncate(fd, end)
        os.fsync(fd)
        logger.warning(
            "%s: cut %d bytes of a torn last line left by a crash (never"
            " acknowledged; it will be delivered again)",
            path,
            size - end,
        )
    return ids, end


def read_records(path: str, session: UUID) -> list[MessageRecord]:
    """The records in ``path`` in file order, first copy of each id; ``[]`` if none.

    Skips a torn tail without cutting it. Raises ``Corrupt`` for a bad line before
    the end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return []
    records: list[MessageRecord] = []
    seen: set[int] = set()
    with os.fdopen(fd, "rb") as file:
        for _, record in scan(path, session, file):
            if record.message_id.int not in seen:
                seen.add(record.message_id.int)
                records.append(record)
    return records
