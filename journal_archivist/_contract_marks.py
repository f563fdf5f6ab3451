"""``check_backend``'s checks of erasure marks, for a backend that keeps them.

A backend whose class sets ``erasure_marks`` may be fed by several journals at
once, so batches of one session can arrive out of journal order. The rule it
must keep (``SessionGroup``): an erasure at T deletes the session's records
appended before T (strictly) and leaves a mark, the latest erasure time; a
record appended before the mark is skipped on arrival, and its batch succeeds.
Each check writes with explicit times through ``write_batch`` and reads through
a new instance, as ``_contract`` does; times are arbitrary numbers, far from
now, so nothing here depends on the clock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._records import MessageRecord
from .backends._base import SessionGroup, implements

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from uuid import UUID

    from .backends._base import ArchiveBackend

__all__ = ["check_erasure_marks"]

#: The erasure time the checks turn around (unix seconds; 1970-01-12).
_T = 1_000_000.0


def _record(session: UUID, tag: str) -> MessageRecord:
    ts = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return MessageRecord(session=session, ts=ts, role="user", content_md=tag)


def _appended(session: UUID, *timed: tuple[MessageRecord, float]) -> SessionGroup:
    """One group of ``session``: each record with its journal time."""
    return SessionGroup(
        session,
        tuple(r for r, _ in timed),
        appended_at=tuple(t for _, t in timed),
    )


def _erased(session: UUID, at: float) -> SessionGroup:
    return SessionGroup(session, (), erase=True, erased_at=at)


class _Marks:
    def __init__(
        self,
        make_backend: Callable[[], ArchiveBackend],
        expect: Callable[[UUID, Sequence[MessageRecord], str], Awaitable[None]],
    ) -> None:
        self._make = make_backend
        self._expect = expect

    async def write(self, *batches: Sequence[SessionGroup]) -> None:
        """Deliver each batch in turn, through one new instance."""
        async with self._make() as backend:
            for batch in batches:
                await backend.write_batch(batch)

    async def expect_count(self, session: UUID, want: int, what: str) -> None:
        async with self._make() as backend:
            if implements(backend, "count"):
                got = await backend.count(session)
                if got != want:
                    raise AssertionError(
                        f"{what}: count({session}) read {got}, expected {want}"
                    )

    async def erase_keeps_later(self) -> None:
        session = uuid.uuid4()
        early, late = _record(session, "T-1"), _record(session, "T-0.5")
        at, after = _record(session, "T"), _record(session, "T+1")
        await self.write(
            [_appended(session, (early, _T - 1), (late, _T - 0.5))],
            [_appended(session, (at, _T), (after, _T + 1))],
            [_erased(session, _T)],
        )
        what = "an erasure at T must delete only records appended before T"
        await self._expect(session, [at, after], what)
        await self.expect_count(session, 2, what)

    async def late_record_skipped(self) -> None:
        session, other = uuid.uuid4(), uuid.uuid4()
        kept, stale = _record(session, "T+1"), _record(session, "T-1 late")
        elsewhere, later = _record(other, "other T-1"), _record(session, "T+2")
        try:
            await self.write(
                [_appended(session, (kept, _T + 1))],
                [_erased(session, _T)],
                # Arrives after the erasure, from a journal that lagged behind.
                [
                    _appended(session, (stale, _T - 1)),
                    _appended(other, (elsewhere, _T - 1)),
                ],
                [_appended(session, (later, _T + 2))],
            )
        except Exception as exc:
            raise AssertionError(
                "a record appended before its session's erasure mark must be"
                f" skipped, and its batch succeed: write_batch raised {exc!r}"
            ) from exc
        await self._expect(
            session,
            [kept, later],
            "a record appended before the erasure mark must be skipped on"
            " arrival, one appended after it stored",
        )
        await self._expect(
            other, [elsewhere], "an erasure mark must hold for its session only"
        )

    async def older_erasure_later(self) -> None:
        session = uuid.uuid4()
        old, newer = _T, _T + 10
        first, mid = _record(session, "T+1"), _record(session, "T+5")
        kept, last = _record(session, "T+10"), _record(session, "T+12")
        between = _record(session, "T+7 late")
        await self.write(
            [_appended(session, (first, _T + 1), (mid, _T + 5))],
            [_appended(session, (kept, newer), (last, _T + 12))],
            [_erased(session, newer)],
            # The older erasure arrives last, from a journal that lagged behind.
            [_erased(session, old)],
            [_appended(session, (between, _T + 7))],
        )
        what = (
            "an older erasure arriving after a newer one must neither lower the"
            " mark nor delete what the newer one kept"
        )
        await self._expect(session, [kept, last], what)
        await self.expect_count(session, 2, what)

    async def redelivery(self) -> None:
        session = uuid.uuid4()
        before, after = _record(session, "T-1"), _record(session, "T+1")
        batches = (
            [_appended(session, (before, _T - 1))],
            [_erased(session, _T)],
            [_appended(session, (after, _T + 1))],
        )
        await self.write(*batches)
        await self.write(*batches)  # the whole sequence, redelivered
        await self.write(batches[1], batches[0], batches[2])  # and reordered
        what = "erasure marks must keep redelivery idempotent"
        await self._expect(session, [after], what)
        await self.expect_count(session, 1, what)


async def check_erasure_marks(
    make_backend: Callable[[], ArchiveBackend],
    expect: Callable[[UUID, Sequence[MessageRecord], str], Awaitable[None]],
) -> None:
    """Check the erasure-mark rule with explicit times (see the module docstring).

    ``expect(session, records, what)`` raises ``AssertionError`` naming ``what``
    if ``session`` does not read back as ``records``.
    """
    marks = _Marks(make_backend, expect)
    for check in (
        marks.erase_keeps_later,
        marks.late_record_skipped,
        marks.older_erasure_later,
        marks.redelivery,
    ):
        await check()
