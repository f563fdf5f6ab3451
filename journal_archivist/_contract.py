"""``check_backend``: the contract every archive backend must meet, as one suite.

Each check builds its own sessions (random UUIDs), so the checks share one store
without seeing each other's data. Reads go through a *new* backend instance
(``make_backend()`` again), so what a check reads was made durable by an instance
that is already closed: that is how a restart sees it. A backend that is not
readable is read through ``read_session`` (the place it delivers to). The optional
``count`` and ``list_sessions`` are checked only where the backend's class offers
them (``backends._base.implements``, the one rule for optional methods), and
erasure marks only where its class sets ``erasure_marks`` (``_contract_marks``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import msgspec

from ._contract_marks import check_erasure_marks
from ._records import Attachment, MessageRecord
from .backends._base import SessionGroup, implements

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from uuid import UUID

    from .backends._base import ArchiveBackend

__all__ = ["check_backend"]

_BASE_TS = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def _records(session: UUID, count: int, tag: str) -> list[MessageRecord]:
    """Records whose ids and timestamps both run *backwards* against append order,
    so a backend that sorts by either instead of keeping append order is caught."""
    ids = sorted((uuid.uuid4() for _ in range(count)), reverse=True)
    return [
        MessageRecord(
            session=session,
            message_id=ids[i],
            ts=_BASE_TS - timedelta(seconds=i),
            role="user" if i % 2 else "assistant",
            content_md=f"{tag} {i}",
        )
        for i in range(count)
    ]


def _varied(session: UUID) -> list[MessageRecord]:
    """One record per awkward shape a real archive meets."""
    nested: Any = {"leaf": [1, 2.5, None, True, "x"]}
    for depth in range(12):
        nested = {f"level{depth}": nested, "n": depth}
    make = MessageRecord
    first = uuid.uuid4()
    return [
        make(session=session, message_id=first, role="user", content_md="plain"),
        make(session=session, role="assistant", content_md=""),  # empty content
        make(
            session=session,
            role="user",
            content_md="héllo wörld ✓ 你好 مرحبا 🙂👍🏽 e\u0301 \u200b tab\tnl\n",
        ),
        make(session=session, role="user", content_md="nul\x00inside\x00"),
        make(session=session, role="tool", content_md="x" * (256 * 1024)),
        make(
            session=session,
            role="assistant",
            parent_id=first,
            author="model-7 ✓",
            ts=datetime(
                2001,
                2,
                3,
                4,
                5,
                6,
                789012,
                tzinfo=timezone(timedelta(hours=5, minutes=30)),
            ),
            content_parts=[{"type": "text", "text": "hi"}, {"type": "image", "n": 3}],
            metadata={
                "nested": nested,
                "big": 2**63 - 1,
                "small": -(2**63),
                "float": 0.1,
                "huge": 1e300,
                "unicode ✓ key": "välue",
                "empty": {},
                "list": [],
            },
        ),
        make(
            session=session,
            role="user",
            attachments=(
                Attachment(
                    name="all-bytes.bin",
                    media_type="application/octet-stream",
                    size=256,
                    data=bytes(range(256)),
                ),
                Attachment(
                    name="photo ✓.png",
                    media_type="image/png",
                    size=123456,
                    uri="https://example.invalid/a/b.png?x=1&y=2",
                ),
            ),
        ),
    ]


def _difference(got: Sequence[MessageRecord], want: Sequence[MessageRecord]) -> str:
    if len(got) != len(want):
        got_ids = [str(r.message_id)[:8] for r in got]
        want_ids = [str(r.message_id)[:8] for r in want]
        return f"read {len(got)} records, expected {len(want)}: {got_ids} != {want_ids}"
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:
            for field in MessageRecord.__struct_fields__:
                if getattr(a, field) != getattr(b, field):
                    mine, theirs = getattr(a, field), getattr(b, field)
                    return (
                        f"record {index} differs in {field}: read {mine!r:.200},"
                        f" expected {theirs!r:.200}"
                    )
    return ""


def _moved(record: MessageRecord, session: UUID) -> MessageRecord:
    """``record`` moved to ``session`` under a new message id."""
    return msgspec.structs.replace(record, session=session, message_id=uuid.uuid4())


class _Contract:
    def __init__(
        self,
        make_backend: Callable[[], ArchiveBackend],
        read_session: Callable[[UUID], Awaitable[Sequence[MessageRecord]]] | None,
    ) -> None:
        self._make = make_backend
        self._read = read_session

    async def read(self, session: UUID) -> list[MessageRecord]:
        if self._read is not None:
            return list(await self._read(session))
        async with self._make() as backend:
            return list(await backend.read_session(session))

    async def expect(
        self, session: UUID, want: Sequence[MessageRecord], what: str
    ) -> None:
        problem = _difference(await self.read(session), want)
        if problem:
            raise AssertionError(f"{what}: session {session}: {problem}")

    async def health(self) -> None:
        async with self._make() as backend:
            await backend.health_check()

    async def round_trip(self) -> None:
        session = uuid.uuid4()
        records = _varied(session)
        async with self._make() as backend:
            await backend.append_messages(session, records)
            # Read through another instance while this one is still open: what
            # was acknowledged must be durable already, not only once closed.
            got = {r.message_id for r in await self.read(session)}
            missing = [
                str(r.message_id)[:8] for r in records if r.message_id not in got
            ]
            if missing:
                raise AssertionError(
                    "an acknowledged record must be durable at once: session"
                    f" {session}: not readable before close: {missing}"
                )
        await self.expect(session, records, "every field must round-trip exactly")
        await self.expect(uuid.uuid4(), [], "an unknown session must read as empty")

    async def order(self) -> None:
        session, other = uuid.uuid4(), uuid.uuid4()
        first, second, third = (_records(session, 5, t) for t in ("a", "b", "c"))
        noise = _records(other, 4, "n")
        async with self._make() as backend:
            await backend.append_messages(session, first)
            await backend.write_batch(
                [
                    SessionGroup(other, tuple(noise[:2])),
                    SessionGroup(session, tuple(second)),
                    SessionGroup(other, tuple(noise[2:])),
                    SessionGroup(session, tuple(third[:2])),
                ]
            )
        async with self._make() as backend:
            await backend.append_messages(session, third[2:])
        await self.expect(
            session, first + second + third, "records must read in append order"
        )
        await self.expect(other, noise, "records must read in append order")

    async def idempotence(self) -> None:
        session = uuid.uuid4()
        records = _records(session, 6, "i")
        groups = [SessionGroup(session, tuple(records))]
        async with self._make() as backend:
            await backend.write_batch([SessionGroup(session, tuple(records[:3]))])
            await backend.write_batch(groups)  # a retry of a partly applied batch
            await backend.append_messages(session, records)
        async with self._make() as backend:  # a redelivery after a restart
            await backend.write_batch(groups)
            await backend.append_messages(session, records[4:])
        await self.expect(
            session, records, "a redelivered record must be archived once"
        )

    async def batch_equivalence(self) -> None:
        batched = [uuid.uuid4() for _ in range(3)]
        single = [uuid.uuid4() for _ in range(3)]
        content = [_records(s, 4, f"e{i}") for i, s in enumerate(batched)]
        async with self._make() as backend:
            await backend.write_batch(
                [
                    SessionGroup(s, tuple(rs))
                    for s, rs in zip(batched, content, strict=True)
                ]
            )
            for session, records in zip(single, content, strict=True):
                await backend.append_messages(
                    session, [_moved(r, session) for r in records]
                )
        for b_session, s_session, records in zip(batched, single, content, strict=True):
            await self.expect(b_session, records, "write_batch must archive each group")
            got_single = await self.read(s_session)
            got_batched = await self.read(b_session)
            same = [r.content_md for r in got_single] == [
                r.content_md for r in got_batched
            ]
            if not same:
                raise AssertionError(
                    "write_batch must equal one append_messages per group: "
                    f"{[r.content_md for r in got_batched]} != "
                    f"{[r.content_md for r in got_single]}"
                )

    async def erasure(self) -> None:
        session, kept, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        records, survivors = _records(session, 4, "x"), _records(kept, 2, "k")
        async with self._make() as backend:
            await backend.append_messages(session, records)
            await backend.append_messages(kept, survivors)
            await backend.delete_session(session)
            await backend.delete_session(session)  # a redelivered erasure
            await backend.delete_session(never)  # nothing to erase
        await self.expect(session, [], "delete_session must erase every record")
        await self.expect(kept, survivors, "delete_session must erase only its session")
        # Erasure forgets the ids too: a record erased and appended again is new,
        # for the instance that erased (any cache of ids included) and for a new one.
        async with self._make() as backend:
            await backend.append_messages(session, records)
            await backend.delete_session(session)
            await self.expect(session, [], "delete_session must erase every record")
            await backend.append_messages(session, records[:1])
            await self.expect(
                session,
                records[:1],
                "a record appended again after erasure must be kept",
            )
            # A retried erasing batch: erase, then re-append the same ids, twice.
            again = [SessionGroup(session, tuple(records[:2]), erase=True)]
            await backend.write_batch(again)
            await backend.write_batch(again)
            await self.expect(
                session, records[:2], "a retried erasing batch must apply again"
            )
        async with self._make() as backend:
            await backend.delete_session(session)
            await backend.append_messages(session, records[:1])
        await self.expect(
            session, records[:1], "a record appended again after erasure must be kept"
        )
        later = _records(session, 2, "y")
        async with self._make() as backend:
            await backend.write_batch(
                [
                    SessionGroup(kept, (), erase=True),
                    SessionGroup(session, tuple(later), erase=True),
                ]
            )
        await self.expect(
            session, later, "an erasing group must erase, then append its records"
        )
        await self.expect(kept, [], "an erase-only group must erase its session")
        async with self._make() as backend:
            await backend.write_batch(
                [
                    SessionGroup(session, tuple(records[:2])),
                    SessionGroup(session, (), erase=True),
                    SessionGroup(session, tuple(records[2:])),
                ]
            )
        await self.expect(
            session, records[2:], "groups of one session must apply in the order given"
        )

    async def counts(self) -> None:
        async with self._make() as backend:
            counts = implements(backend, "count")
            lists = implements(backend, "list_sessions")
        if not (counts or lists):
            return
        session, erased, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        records = _records(session, 3, "c")
        async with self._make() as backend:
            await backend.append_messages(session, records)
            await backend.append_messages(session, records[1:])  # redelivered
            await backend.append_messages(erased, _records(erased, 2, "e"))
            await backend.delete_session(erased)
        async with self._make() as backend:
            if counts:
                got = [await backend.count(s) for s in (session, erased, never)]
                if got != [3, 0, 0]:
                    raise AssertionError(
                        "count must count distinct records, 0 once erased or"
                        f" never written: read {got}, expected [3, 0, 0]"
                    )
            if lists:
                # Page from just before each session: O(1) in a shared store.
                def before(s: UUID) -> UUID:
                    return uuid.UUID(int=s.int - 1)

                page = await backend.list_sessions(limit=1, after=before(session))
                want = (session, 3, records[-1].ts, records[0].ts)
                got_info = [
                    (i.session, i.message_count, i.first_ts, i.last_ts) for i in page
                ]
                if got_info != [want]:
                    raise AssertionError(
                        "list_sessions must list a session once with its distinct"
                        f" record count and first and last ts: read {got_info},"
                        f" expected [{want}]"
                    )
                page = await backend.list_sessions(limit=1, after=before(erased))
                if page and page[0].session == erased:
                    raise AssertionError(
                        f"list_sessions must skip an erased session: {erased}"
                    )


async def check_backend(
    make_backend: Callable[[], ArchiveBackend],
    *,
    read_session: Callable[[UUID], Awaitable[Sequence[MessageRecord]]] | None = None,
) -> None:
    """Check an archive backend against the contract the writer loops rely on.

    ``make_backend()`` must return a *new* backend instance over the *same* store
    each time it is called (the suite closes each instance it makes, and reads what
    one instance wrote through another, both while the writer is still open and
    after it closed, as a restart would). Checked: the health
    check passes; every field round-trips exactly (unicode, NUL characters, empty
    and large content, attachments, nested metadata, time zones); records read in
    append order across calls and batches, never sorted by id or time; a
    redelivered record is archived once, also after a restart; ``write_batch``
    equals one call per group; ``delete_session`` and erasing groups remove the
    session's records and only those, and forget their ids. If the backend's
    class overrides the optional ``count`` or ``list_sessions``: they count each
    record once, give the earliest and latest ``ts``, and forget an erased session.
    If its class sets ``erasure_marks``, the rule of ``SessionGroup`` with explicit
    times: an erasure at T deletes only records appended before T (one at T or
    later survives); a record appended before the mark arriving later is skipped
    and its batch succeeds, while one after it is stored; an older erasure arriving
    after a newer one neither lowers the mark nor deletes what the newer one kept;
    and redelivery, even reordered, stays idempotent.

    For a backend that is not readable, pass ``read_session``: an async function
    returning what was delivered for a session, read from where the backend
    delivers to (for a webhook, the receiving service).

    Raises:
        AssertionError: a contract is broken; the message names it and the first
            difference.
    """
    contract = _Contract(make_backend, read_session)
    for check in (
        contract.health,
        contract.round_trip,
        contract.order,
        contract.idempotence,
        contract.batch_equivalence,
        contract.erasure,
        contract.counts,
    ):
        await check()
    async with make_backend() as backend:
        marks = type(backend).erasure_marks
    if marks:
        await check_erasure_marks(make_backend, contract.expect)
