"""Reading a ``JsonlArchive`` session file back: good lines, torn tails, corrupt lines.

Synchronous, stateless, plain ``os`` calls; the other ``_jsonl_*`` modules and
``jsonl.py`` are its only importers. What a good line is, and what users are
promised about torn tails and corruption, is in ``jsonl.py``'s docstring.

Rules and theory:
- ``scan`` is the one definition of a good line: every reader of a session file
  goes through it, so the write path and the read path agree on what is in a
  file.
- ``load_ids`` runs on the write path before anything is appended, and cuts a
  torn tail (else the fragment and the next line would make one corrupt line),
  then fsyncs the cut. ``scan`` and ``read_records`` never change a file; they
  stop before such a tail.
- A bad line before the end is ``Corrupt``: never skipped, never repaired (only
  the operator can tell crash damage from an edit).
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING

from ._codec import DECODE_ERRORS, decode_record
from ._jsonl_files import logger, open_session

if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

    from .._records import MessageRecord


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


def read_records(
    dir_fd: int, name: str, path: str, session: UUID
) -> list[MessageRecord]:
    """The records of the session file ``name`` in file order, first copy of each
    id; ``[]`` if there is none.

    Skips a torn tail without cutting it. Raises ``Corrupt`` for a bad line before
    the end, ``Refused`` as ``open_session`` does.
    """
    try:
        fd, _ = open_session(dir_fd, name, path, os.O_RDONLY)
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
