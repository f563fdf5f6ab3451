"""Erasure marks: several journals feeding one archive never bring an erased record
back, whatever order their batches arrive in.

Each "journal" here is a writer with its own backend instance (its own
connection, as another process would have) and its own clock, strictly
increasing: it delivers its batches of one session in order, while the others
deliver theirs at the same time. The oracle depends on the times alone, never on
arrival order: once every batch arrived, a record is archived iff no erasure of a
later time was applied, that is iff its time is at least the latest erasure's.
PostgreSQL tests skip without a server, except in CI, where they fail.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID, uuid4

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import given, strategies as st

from journal_archivist.backends import (
    ArchiveBackend,
    JsonlArchive,
    SessionGroup,
    SqliteArchive,
)
from journal_archivist.backends._base import append_times, erasure_time
from journal_archivist.backends.postgres import PostgresArchive
from journal_archivist.testing import check_backend
from tests.backends.test_postgres_archive import _wait_for_lock_wait
from tests.helpers import record, records

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from journal_archivist import MessageRecord

# -- journals, batches and the oracle --------------------------------------------------

#: One step of a journal: ("append", how many records) or ("erase", 0).
Op = tuple[str, int]


@dataclass
class Journal:
    """One journal's deliveries of one session: batches of coalesced groups."""

    batches: list[list[SessionGroup]] = field(default_factory=list)
    appended: list[tuple[MessageRecord, float]] = field(default_factory=list)
    erasures: list[float] = field(default_factory=list)


def journal(
    session: UUID, index: int, count: int, ops: Sequence[Op], cuts: Sequence[int]
) -> Journal:
    """Journal ``index`` of ``count``: ``ops`` at strictly increasing times of its
    own (``index``, then every ``count``, so no two journals share a time), cut
    into batches of ``cuts`` operations each and coalesced as the core does:
    consecutive appends join one group, an erasure starts a new one."""
    result = Journal()
    ticks = iter(range(index, 10**9, count))
    sizes = iter(cuts)
    batch: list[SessionGroup] = []
    room = next(sizes, len(ops))
    for kind, n in ops:
        if kind == "erase":
            erased_at = float(next(ticks))
            result.erasures.append(erased_at)
            batch.append(SessionGroup(session, (), True, erased_at, ()))
        else:
            new = [(record(session, f"j{index}"), float(next(ticks))) for _ in range(n)]
            result.appended.extend(new)
            last = batch.pop() if batch else SessionGroup(session, ())
            batch.append(
                SessionGroup(
                    session,
                    last.records + tuple(r for r, _ in new),
                    last.erase,
                    last.erased_at,
                    last.appended_at + tuple(t for _, t in new),
                )
            )
        room -= 1
        if room == 0:
            result.batches.append(batch)
            batch, room = [], next(sizes, len(ops))
    if batch:
        result.batches.append(batch)
    return result


def survivors(journals: Sequence[Journal]) -> set[UUID]:
    """What the archive must hold once every batch arrived, in any order."""
    latest = max((t for j in journals for t in j.erasures), default=float("-inf"))
    return {r.message_id for j in journals for r, t in j.appended if t >= latest}


async def check_archive(
    backend: ArchiveBackend, session: UUID, journals: Sequence[Journal]
) -> None:
    """The archive holds exactly the survivors, each journal's in its order."""
    got = await backend.read_session(session)
    assert {r.message_id for r in got} == survivors(journals)
    assert len(got) == len(survivors(journals))  # each once
    assert await backend.count(session) == len(got)
    position = {r.message_id: i for i, r in enumerate(got)}
    for j in journals:
        kept = [
            position[r.message_id] for r, _ in j.appended if r.message_id in position
        ]
        assert kept == sorted(kept), "one journal's records must keep their order"


def random_ops(rng: random.Random, length: int) -> list[Op]:
    return [
        ("erase", 0) if rng.random() < 0.25 else ("append", rng.randint(1, 3))
        for _ in range(length)
    ]


async def race(make: Callable[[], ArchiveBackend], rounds: int, *, seed: int) -> None:
    """``rounds`` sessions, each written by two journals at once through two
    instances; check each against the oracle."""
    rng = random.Random(seed)
    async with make() as first, make() as second:
        for _ in range(rounds):
            session = uuid4()
            journals = [
                journal(
                    session,
                    i,
                    2,
                    random_ops(rng, 24),
                    [rng.randint(1, 4) for _ in range(24)],
                )
                for i in range(2)
            ]

            async def deliver(backend: ArchiveBackend, j: Journal) -> None:
                for batch in j.batches:
                    await backend.write_batch(batch)

            async with anyio.create_task_group() as group:
                group.start_soon(deliver, first, journals[0])
                group.start_soon(deliver, second, journals[1])
            await check_archive(first, session, journals)
            await check_archive(second, session, journals)


# -- the oracle's own sense ------------------------------------------------------------


def test_the_oracle_keeps_what_no_later_erasure_covers() -> None:
    session = uuid4()
    # Journal 0: times 0, 2, 4; journal 1: times 1, 3, 5.
    zero = journal(session, 0, 2, [("append", 1), ("erase", 0), ("append", 1)], [1])
    one = journal(session, 1, 2, [("append", 2), ("erase", 0)], [2])
    assert [t for _, t in zero.appended] == [0.0, 4.0]
    assert zero.erasures == [2.0]
    assert [t for _, t in one.appended] == [1.0, 3.0]
    assert one.erasures == [5.0]
    assert survivors([zero, one]) == set()
    assert survivors([zero]) == {zero.appended[1][0].message_id}
    # An erasure and the appends after it coalesce into one group.
    assert [len(b) for b in zero.batches] == [1, 1]
    assert zero.batches[1][0].erase
    assert zero.batches[1][0].appended_at == (4.0,)


# -- SQLite ----------------------------------------------------------------------------


async def test_sqlite_two_writers_racing_never_bring_an_erased_record_back(
    tmp_path: Path,
) -> None:
    await race(lambda: SqliteArchive(tmp_path / "archive.db"), 30, seed=1)


@given(
    ops=st.lists(
        st.lists(
            st.one_of(
                st.tuples(st.just("append"), st.integers(1, 3)),
                st.tuples(st.just("erase"), st.just(0)),
            ),
            max_size=8,
        ),
        min_size=1,
        max_size=3,
    ),
    cuts=st.lists(st.integers(1, 3), max_size=8),
    order=st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=40),
)
def test_sqlite_any_interleaving_of_journals_gives_the_oracle(
    ops: list[list[Op]], cuts: list[int], order: list[tuple[int, bool]]
) -> None:
    """``order`` picks whose next batch arrives, and whether it arrives twice (an
    acknowledgement lost); what ``order`` leaves is delivered journal by journal."""
    session = uuid4()
    journals = [journal(session, i, len(ops), o, cuts) for i, o in enumerate(ops)]
    pending = [list(j.batches) for j in journals]
    arrivals: list[list[SessionGroup]] = []
    for pick, twice in order:
        queue = pending[pick % len(pending)]
        if queue:
            batch = queue.pop(0)
            arrivals.extend([batch, batch] if twice else [batch])
    arrivals.extend(batch for queue in pending for batch in queue)

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory, "archive.db")
            async with SqliteArchive(path) as first, SqliteArchive(path) as second:
                for i, batch in enumerate(arrivals):
                    await (first if i % 2 else second).write_batch(batch)
                await check_archive(first, session, journals)

    anyio.run(run, backend="asyncio")


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
async def pg_make(
    pg_dsn: str, admin: Any
) -> AsyncIterator[Callable[..., PostgresArchive]]:
    """Archives over one fresh schema, dropped afterwards."""
    schema = f"ja_marks_{uuid4().hex[:12]}"
    made: list[PostgresArchive] = []

    def make(**options: Any) -> PostgresArchive:
        archive = PostgresArchive(pg_dsn, schema=schema, create_schema=True, **options)
        made.append(archive)
        return archive

    try:
        yield make
    finally:
        for archive in made:
            await archive.aclose()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_postgres_two_writers_racing_never_bring_an_erased_record_back(
    pg_make: Callable[..., PostgresArchive],
) -> None:
    await race(pg_make, 30, seed=2)


async def test_postgres_an_append_waiting_behind_an_erasure_sees_its_mark(
    pg_make: Callable[..., PostgresArchive], admin: Any, pg_dsn: str
) -> None:
    # X erases at T and holds the session's row, stopped before COMMIT: its mark
    # upsert waits on a blocker's uncommitted mark row. Z appends a record of
    # T - 1 meanwhile (a lagging journal): under READ COMMITTED alone its check
    # would not see X's uncommitted mark. It must wait for X, then skip it.
    tag = uuid4().hex[:8]
    x = pg_make(application_name=f"marks-x-{tag}")
    z = pg_make(application_name=f"marks-z-{tag}")
    session = uuid4()
    kept, late = record(session, "T+1"), record(session, "T-1")
    await x.write_batch([SessionGroup(session, (kept,), appended_at=(101.0,))])
    await z.health_check()
    blocker = await asyncpg.connect(pg_dsn)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            f"INSERT INTO {x._sql.marks} (session, erased_at) VALUES ($1, 0)", session
        )
        async with anyio.create_task_group() as group:
            erase = [SessionGroup(session, (), True, 100.0, ())]
            group.start_soon(x.write_batch, erase)
            await _wait_for_lock_wait(admin, f"marks-x-{tag}")  # X holds the row
            append = [SessionGroup(session, (late,), appended_at=(99.0,))]
            group.start_soon(z.write_batch, append)
            await _wait_for_lock_wait(admin, f"marks-z-{tag}")  # Z waits for X
            await blocking.rollback()  # X commits its mark, then Z looks
    finally:
        await blocker.close()
    assert await z.read_session(session) == [kept]
    assert await z.count(session) == 1
    mark = await admin.fetchval(
        f"SELECT erased_at FROM {x._sql.marks} WHERE session = $1", session
    )
    assert mark == 100.0


async def test_postgres_an_erasure_waiting_behind_an_append_erases_it(
    pg_make: Callable[..., PostgresArchive], admin: Any, pg_dsn: str
) -> None:
    # Z appends records of T - 2 and T + 1 and holds the session's row, stopped
    # before COMMIT: its insert waits on a blocker's uncommitted row of one of
    # its ids. X erases at T meanwhile: under READ COMMITTED alone its DELETE
    # would not see Z's uncommitted rows. It must wait for Z, then delete the
    # older record and keep the newer one.
    tag = uuid4().hex[:8]
    x = pg_make(application_name=f"marks-x-{tag}")
    z = pg_make(application_name=f"marks-z-{tag}")
    session = uuid4()
    older, newer = records(session, 2)
    await x.health_check()
    await z.health_check()
    blocker = await asyncpg.connect(pg_dsn)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            f"INSERT INTO {x._sql.messages}"
            " (message_id, session, seq, ts, role, content_md, record)"
            " VALUES ($1, $2, 0, now(), 'user', '', '')",
            newer.message_id,
            uuid4(),
        )
        async with anyio.create_task_group() as group:
            append = [SessionGroup(session, (older, newer), appended_at=(98.0, 101.0))]
            group.start_soon(z.write_batch, append)
            await _wait_for_lock_wait(admin, f"marks-z-{tag}")  # Z holds the row
            group.start_soon(x.write_batch, [SessionGroup(session, (), True, 100.0)])
            await _wait_for_lock_wait(admin, f"marks-x-{tag}")  # X waits for Z
            await blocking.rollback()  # Z commits, then X erases
    finally:
        await blocker.close()
    assert await x.read_session(session) == [newer]
    assert await x.count(session) == 1
    listed = [(i.session, i.message_count) for i in await x.list_sessions()]
    assert listed == [(session, 1)]


# -- JSONL: one writer per directory, so no marks --------------------------------------


async def test_jsonl_ignores_times_and_keeps_no_marks(directory: Path) -> None:
    assert JsonlArchive.erasure_marks is False
    session = uuid4()
    old, new, late = records(session, 3)
    async with JsonlArchive(directory) as archive:
        await archive.write_batch([SessionGroup(session, (old,), appended_at=(500.0,))])
        # An erasure deletes every record whatever the times, and leaves no mark.
        await archive.write_batch([SessionGroup(session, (), True, 100.0, ())])
        assert await archive.read_session(session) == []
        await archive.write_batch(
            [SessionGroup(session, (new, late), appended_at=(101.0, 1.0))]
        )
        assert await archive.read_session(session) == [new, late]


# -- check_backend's checks of marks ---------------------------------------------------


class MarkingBackend(ArchiveBackend):
    """In memory, keeping erasure marks as the rule says; subclasses break it."""

    erasure_marks: ClassVar[bool] = True

    def __init__(self) -> None:
        self.rows: dict[UUID, dict[UUID, tuple[MessageRecord, float]]] = {}
        self.marks: dict[UUID, float] = {}

    def erase(self, session: UUID, at: float) -> None:
        rows = self.rows.setdefault(session, {})
        for key, (_, appended_at) in list(rows.items()):
            if appended_at < at:
                del rows[key]
        self.marks[session] = max(at, self.marks.get(session, at))

    def keep(self, session: UUID, record: MessageRecord, at: float) -> None:
        if at >= self.marks.get(session, at):
            self.rows.setdefault(session, {}).setdefault(
                record.message_id, (record, at)
            )

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        now = time.time()
        for index, group in enumerate(groups):
            if group.erase:
                self.erase(group.session, erasure_time(group, now))
            rest = groups[index + 1 :]
            if any(g.erase and g.session == group.session for g in rest):
                continue  # erased by a later group of this batch
            times = append_times(group, now)
            for record_, at in zip(group.records, times, strict=True):
                self.keep(group.session, record_, at)

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        await self.write_batch([SessionGroup(session, tuple(records))])

    async def delete_session(self, session: UUID) -> None:
        await self.write_batch([SessionGroup(session, (), erase=True)])

    async def health_check(self) -> None:
        return None

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        return [r for r, _ in self.rows.get(session, {}).values()]


class ErasesEverything(MarkingBackend):
    def erase(self, session: UUID, at: float) -> None:
        self.rows.pop(session, None)
        self.marks[session] = max(at, self.marks.get(session, at))


class KeepsLateRecords(MarkingBackend):
    def keep(self, session: UUID, record: MessageRecord, at: float) -> None:
        self.rows.setdefault(session, {}).setdefault(record.message_id, (record, at))


class LowersTheMark(MarkingBackend):
    def erase(self, session: UUID, at: float) -> None:
        super().erase(session, at)
        self.marks[session] = at


class FailsOnALateRecord(MarkingBackend):
    def keep(self, session: UUID, record: MessageRecord, at: float) -> None:
        if at < self.marks.get(session, at):
            raise ValueError("record is older than the erasure mark")
        super().keep(session, record, at)


async def test_a_backend_keeping_marks_meets_the_contract() -> None:
    backend = MarkingBackend()
    await check_backend(lambda: backend)


@pytest.mark.parametrize(
    ("cls", "complaint"),
    [
        # deletes the records appended after the erasure too
        (
            ErasesEverything,
            "an erasure at T must delete only records appended before T",
        ),
        # stores a record that an erasure already covered
        (KeepsLateRecords, "must be skipped on arrival"),
        # takes the mark of whichever erasure came last
        (LowersTheMark, "must neither lower the mark"),
        # refuses the record instead of skipping it
        (FailsOnALateRecord, "and its batch succeed: write_batch raised"),
    ],
)
async def test_a_broken_erasure_mark_is_named(
    cls: type[MarkingBackend], complaint: str
) -> None:
    backend = cls()
    with pytest.raises(AssertionError, match=complaint):
        await check_backend(lambda: backend)


async def test_a_backend_without_marks_is_not_checked_for_them() -> None:
    class NoMarks(ErasesEverything):
        erasure_marks: ClassVar[bool] = False

    backend = NoMarks()
    await check_backend(lambda: backend)
