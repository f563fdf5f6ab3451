"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest

from journal_archivist import (
    Archivist,
    MessageRecord,
    OverflowPolicy,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist._admission import Backlog
from journal_archivist.backends import ArchiveBackend, SessionGroup
from journal_archivist.testing import MockBackend

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: The repository's root: the working directory of tools run as subprocesses.
ROOT = Path(__file__).resolve().parent.parent

#: The uid of "nobody", for files given to another user.
NOBODY = 65534

#: For tests that give a file to another user (uid ``NOBODY``).
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a file to another user"
)

#: Retries fast enough for tests; a failing backend still goes UNHEALTHY after 3.
FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_attempts=3)


def backlog(
    name: str = "a",
    overflow: OverflowPolicy = OverflowPolicy.BLOCK,
    *,
    mask: int = 1,
    capacity: int = 100,
    capacity_bytes: int | None = None,
    pending: int = 0,
    pending_bytes: int = 0,
    block_timeout: float | None = None,
) -> Backlog:
    """An admission backlog with roomy defaults."""
    return Backlog(
        name=name,
        mask=mask,
        overflow=overflow,
        capacity=capacity,
        capacity_bytes=capacity_bytes,
        pending=pending,
        pending_bytes=pending_bytes,
        block_timeout=block_timeout,
    )


def record(session: UUID, content: str = "hi", **fields: Any) -> MessageRecord:
    """A valid record of ``session``."""
    return MessageRecord(session=session, role="user", content_md=content, **fields)


def records(session: UUID, count: int, prefix: str = "m") -> list[MessageRecord]:
    """``count`` valid records of ``session`` with distinct contents."""
    return [record(session, f"{prefix}{i}") for i in range(count)]


def registration(
    backend: ArchiveBackend | None = None, name: str = "mock", **fields: Any
) -> Registration:
    """A registration with test-friendly defaults (fast retries, 1 ms window).

    ``backend`` defaults to a new ``MockBackend``.
    """
    fields.setdefault("retry", FAST_RETRY)
    fields.setdefault("write_policy", Queued(batch_window_ms=1))
    backend = MockBackend() if backend is None else backend
    return Registration(name=name, backend=backend, **fields)


def texts(got: Iterable[MessageRecord]) -> list[str]:
    """The ``content_md`` of each record, in order."""
    return [r.content_md for r in got]


def contents(mock: MockBackend, session: UUID) -> list[str]:
    """The ``content_md`` of each record ``mock`` archived for ``session``."""
    return texts(mock.records(session))


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Run one query on the SQLite file at ``path``, on a connection closed after."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


async def append_catching(
    archivist: Archivist,
    session: UUID,
    content: str,
    error: type[BaseException],
    caught: list[BaseException],
) -> None:
    """Append one record of ``session``; an ``error`` it raises goes to ``caught``
    (for appends started in a task group, whose outcome is checked after it)."""
    try:
        await archivist.append_messages(session, [record(session, content)])
    except error as exc:
        caught.append(exc)


def tricky_uuids() -> list[UUID]:
    """Sessions whose order differs under some other way of comparing UUIDs."""
    return [
        UUID("80000000-0000-0000-0000-000000000000"),  # signed: the smallest
        UUID("7fffffff-ffff-ffff-ffff-ffffffffffff"),
        UUID("00000000-0000-0000-8000-000000000000"),  # signed low half (Java)
        UUID("00000000-0000-0000-7fff-ffffffffffff"),
        UUID("00000100-0000-0000-0000-000000000000"),  # bytes_le (GUID) order
        UUID("00000001-0000-0000-0000-000000000000"),
        UUID("0000000a-0000-0000-0000-000000000000"),  # a letter after a digit
        UUID("00000009-0000-0000-0000-000000000000"),
        UUID("ffffffff-ffff-ffff-ffff-fffffffffffe"),
    ]


async def check_session_paging(archive: ArchiveBackend) -> None:
    """``list_sessions`` lists in UUID value order and pages with ``after``."""
    sessions = tricky_uuids()
    assert sorted(sessions, key=lambda u: u.bytes_le) != sorted(sessions)
    await archive.write_batch(  # not in id order
        [SessionGroup(s, tuple(records(s, 1))) for s in reversed(sessions)]
    )
    listed = [info.session for info in await archive.list_sessions()]
    assert listed == sorted(sessions) == sorted(sessions, key=lambda u: u.int)
    pages: list[UUID] = []
    after: UUID | None = None
    while page := await archive.list_sessions(limit=2, after=after):
        assert len(page) <= 2
        pages.extend(info.session for info in page)
        after = page[-1].session
    assert pages == listed
    # ``after`` need not be an archived session.
    between = UUID(int=sessions[4].int + 1)
    assert [i.session for i in await archive.list_sessions(after=between)] == [
        u for u in listed if u > between
    ]
    assert await archive.list_sessions(after=max(sessions)) == []
    assert len(await archive.list_sessions(limit=2**70)) == len(sessions)


#: ``list_sessions`` arguments every archive refuses: (options, error, message).
BAD_PAGES: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"limit": 0}, ValueError, "limit must be >= 1, got 0"),  # empty page
    ({"limit": -1}, ValueError, "limit must be >= 1, got -1"),  # not "all"
    ({"limit": True}, TypeError, "limit must be an int or None, got bool"),
    ({"limit": 2.0}, TypeError, "limit must be an int or None, got float"),
    ({"after": "x"}, TypeError, r"after must be a uuid\.UUID, got str"),  # not parsed
]


class GroupLog(MockBackend):
    """A mock backend that also keeps every group it was handed (with the
    journal times of its records and erasure)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[SessionGroup] = []

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        self.groups.extend(groups)
        await super().write_batch(groups)

    def times_of(self, message_id: UUID) -> list[float]:
        """The journal time each delivery of record ``message_id`` carried."""
        return [
            at
            for group in self.groups
            for record, at in zip(group.records, group.appended_at, strict=True)
            if record.message_id == message_id
        ]
