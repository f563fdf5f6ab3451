"""The contract suite itself: it passes a correct backend and names what a broken
one gets wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from journal_archivist.backends import SessionInfo
from journal_archivist.backends._base import checked_page
from journal_archivist.testing import MockBackend, check_backend

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from journal_archivist import MessageRecord


async def test_mock_backend_meets_the_contract() -> None:
    backend = MockBackend()
    await check_backend(lambda: backend)


async def test_unreadable_backend_is_read_through_read_session() -> None:
    backend = MockBackend(readable=False)

    async def read(session: UUID) -> list[MessageRecord]:
        return backend.records(session)

    await check_backend(lambda: backend, read_session=read)


class SortsByTime(MockBackend):
    async def read_session(self, session: UUID) -> list[MessageRecord]:
        return sorted(await super().read_session(session), key=lambda r: r.ts)


class KeepsDuplicates(MockBackend):
    async def read_session(self, session: UUID) -> list[MessageRecord]:
        return self.deliveries(session)


class StripsNul(MockBackend):
    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        await super().append_messages(
            session,
            [
                msgspec.structs.replace(r, content_md=r.content_md.replace("\0", ""))
                for r in records
            ],
        )


class RemembersErasedIds(MockBackend):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[UUID] = set()

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        fresh = [r for r in records if r.message_id not in self.seen]
        self.seen.update(r.message_id for r in records)
        await super().append_messages(session, fresh)


class IgnoresEraseFlag(MockBackend):
    async def delete_session(self, session: UUID) -> None:
        if self.erasures:  # honours only the first erasure it is asked for
            return
        await super().delete_session(session)


class FailsHealthCheck(MockBackend):
    async def health_check(self) -> None:
        raise RuntimeError("not reachable")


@pytest.mark.parametrize(
    ("backend", "complaint"),
    [
        (SortsByTime(), "round-trip exactly: .* record 0 differs in message_id"),
        (KeepsDuplicates(), "a redelivered record must be archived once"),
        (StripsNul(), "record 3 differs in content_md"),
        (RemembersErasedIds(), "a record appended again after erasure must be kept"),
        (IgnoresEraseFlag(), "delete_session must erase every record"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, MockBackend) else "",
)
async def test_a_broken_backend_is_named(backend: MockBackend, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        await check_backend(lambda: backend)


async def test_a_failing_health_check_propagates() -> None:
    with pytest.raises(RuntimeError, match="not reachable"):
        await check_backend(FailsHealthCheck)


class DurableOnlyAtClose(MockBackend):
    """Buffers appends and makes them visible only in ``aclose``."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer: list[tuple[UUID, list[MessageRecord]]] = []

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        self.buffer.append((session, list(records)))

    async def aclose(self) -> None:
        buffered, self.buffer = self.buffer, []
        for session, records in buffered:
            await super().append_messages(session, records)


async def test_acknowledging_before_durable_is_caught() -> None:
    store = DurableOnlyAtClose()
    with pytest.raises(
        AssertionError, match="an acknowledged record must be durable at once"
    ):
        await check_backend(lambda: store)


class CountsAndLists(MockBackend):
    """Offers the optional ``count`` and ``list_sessions``, correctly."""

    async def count(self, session: UUID) -> int:
        return len(self.records(session))

    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        limit, after = checked_page(limit, after)
        listed = [
            SessionInfo(
                session=session,
                message_count=len(records),
                first_ts=min(r.ts for r in records),
                last_ts=max(r.ts for r in records),
            )
            for session, records in sorted(self.records_by_session().items())
            if records and (after is None or session > after)
        ]
        return listed[:limit]


class CountsDeliveries(CountsAndLists):
    async def count(self, session: UUID) -> int:
        return len(self.deliveries(session))


class ListsDeliveries(CountsAndLists):
    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        return [
            msgspec.structs.replace(
                info, message_count=len(self.deliveries(info.session))
            )
            for info in await super().list_sessions(limit=limit, after=after)
        ]


class SwapsFirstAndLast(CountsAndLists):
    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        return [
            msgspec.structs.replace(info, first_ts=info.last_ts, last_ts=info.first_ts)
            for info in await super().list_sessions(limit=limit, after=after)
        ]


async def test_a_backend_that_counts_and_lists_meets_the_contract() -> None:
    backend = CountsAndLists()
    await check_backend(lambda: backend)


@pytest.mark.parametrize(
    ("backend", "complaint"),
    [
        # A redelivered record counted twice.
        (CountsDeliveries(), r"count must count distinct records.*read \[5, 2, 0\]"),
        # The same, in list_sessions.
        (ListsDeliveries(), "list_sessions must list a session once"),
        # Timestamps the wrong way round.
        (SwapsFirstAndLast(), "first and last ts"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, MockBackend) else "",
)
async def test_a_broken_count_or_listing_is_named(
    backend: MockBackend, complaint: str
) -> None:
    with pytest.raises(AssertionError, match=complaint):
        await check_backend(lambda: backend)
