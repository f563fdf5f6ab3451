"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import os
from typing import Any, Protocol
from uuid import UUID

import pytest

from journal_archivist import (
    Archivist,
    MessageRecord,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import SessionGroup, SessionInfo
from journal_archivist.testing import MockBackend

#: For tests that give a file to another user (uid 65534, "nobody").
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can give a file to another user"
)

#: Retries fast enough for tests; a failing backend still goes UNHEALTHY after 3.
FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_attempts=3)


def record(session: UUID, content: str = "hi", **fields: Any) -> MessageRecord:
    """A valid record of ``session``."""
    return MessageRecord(session=session, role="user", content_md=content, **fields)


def records(session: UUID, count: int, prefix: str = "m") -> list[MessageRecord]:
    """``count`` valid records of ``session`` with distinct contents."""
    return [record(session, f"{prefix}{i}") for i in range(count)]


def registration(
    backend: MockBackend | None = None, name: str = "mock", **fields: Any
) -> Registration:
    """A registration with test-friendly defaults (fast retries, 1 ms window)."""
    fields.setdefault("retry", FAST_RETRY)
    fields.setdefault("write_policy", Queued(batch_window_ms=1))
    return Registration(name=name, backend=backend or MockBackend(), **fields)


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


class ListsSessions(Protocol):
    """A readable archive that lists its sessions (SQLite, PostgreSQL)."""

    async def write_batch(self, groups: list[SessionGroup]) -> None: ...

    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]: ...


async def check_session_paging(archive: ListsSessions) -> None:
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
