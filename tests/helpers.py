"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from journal_archivist import MessageRecord, Queued, Registration, RetryPolicy
from journal_archivist.testing import MockBackend

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
