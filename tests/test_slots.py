"""Slot journals: a journal directory shared by processes, and orphan adoption.

Each test's "processes" are archivists of this process: a slot's lock is taken
per open, so two opens of one directory claim two slots, as two processes
would. An orphan is made as a dead worker leaves one: its archivist shuts down
without delivering (``timeout=0``) while its archive is down, so the slot is
unlocked with a backlog.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, ClassVar

import anyio
import pytest

from journal_archivist import (
    Archivist,
    JournalLocked,
    NoFreeSlot,
    Registration,
    Slots,
)
from journal_archivist._slots import claim, slot_indexes, slot_journal
from journal_archivist.backends import JsonlArchive
from journal_archivist.testing import MockBackend
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    from journal_archivist import MessageRecord


#: Safety net for waits; never the assertion.
WAIT = 30.0


class SharedMock(MockBackend):
    """A mock archive that may take writes from several journals."""

    erasure_marks: ClassVar[bool] = True


class Fleet:
    """The registrations factory of a fleet of workers: every backend it made."""

    def __init__(self) -> None:
        self.made: list[SharedMock] = []
        self.down = False

    def __call__(self) -> list[Registration]:
        backend = SharedMock()
        if self.down:
            backend.go_down("archive down")
        self.made.append(backend)
        return [registration(backend)]

    def archived(self, session: UUID) -> list[str]:
        """Every content archived for ``session`` by any backend made."""
        return sorted(r.content_md for b in self.made for r in b.records(session))


def journal_entries(directory: Path, index: int) -> int:
    """Entries left in the journal of slot ``index``."""
    with closing(sqlite3.connect(slot_journal(str(directory), index))) as db:
        (count,) = db.execute("SELECT count(*) FROM entries").fetchone()
    return int(count)


async def leave_orphan(
    directory: Path, session: UUID, batch: list[MessageRecord], **slots: object
) -> int:
    """Open a slot with its archive down, journal ``batch``, and die: the slot
    it held (now an orphan with a backlog)."""
    fleet = Fleet()
    fleet.down = True
    archivist = await Archivist.open(
        directory, fleet, slots=Slots(adopt_orphans=False, **slots)
    )
    await archivist.append_messages(session, batch)
    slot = archivist.slot
    assert slot is not None
    await archivist.shutdown(timeout=0)
    return slot


async def test_each_process_claims_the_lowest_free_slot(tmp_path: Path) -> None:
    fleet = Fleet()
    slots = Slots(max_slots=2, adopt_orphans=False)
    first = await Archivist.open(tmp_path, fleet, slots=slots)
    second = await Archivist.open(tmp_path, fleet, slots=slots)
    try:
        assert (first.slot, second.slot) == (0, 1)
        assert first.health().journal.path.endswith(os.path.join("slot-0", "journal"))
        with pytest.raises(NoFreeSlot, match="all 2 slots") as info:
            await Archivist.open(tmp_path, fleet, slots=slots)
        assert isinstance(info.value, JournalLocked)
        assert info.value.pids == (os.getpid(), os.getpid())
        assert str(os.getpid()) in str(info.value)
        await first.shutdown()
        again = await Archivist.open(tmp_path, fleet, slots=slots)
        assert again.slot == 0  # numbers are reused: no files pile up
        await again.shutdown()
    finally:
        await first.shutdown()
        await second.shutdown()
    assert slot_indexes(str(tmp_path)) == [0, 1]


async def test_a_restarted_worker_takes_over_the_backlog_of_its_slot(
    tmp_path: Path, session: UUID
) -> None:
    slot = await leave_orphan(tmp_path, session, records(session, 5))
    assert (slot, journal_entries(tmp_path, slot)) == (0, 1)
    fleet = Fleet()
    async with Archivist.open(
        tmp_path, fleet, slots=Slots(adopt_orphans=False)
    ) as archivist:
        assert archivist.slot == 0
        with anyio.fail_after(10):
            await archivist.wait_drained()
    assert fleet.archived(session) == [f"m{i}" for i in range(5)]
    assert journal_entries(tmp_path, 0) == 0


async def test_a_live_worker_adopts_an_orphan_and_releases_its_slot(
    tmp_path: Path, session: UUID
) -> None:
    fleet = Fleet()
    # No look of its own before the hour is up: the calls below do the looking.
    slots = Slots(adopt_interval=3600.0)
    async with Archivist.open(tmp_path, fleet, slots=slots) as live:
        with anyio.fail_after(10):
            assert await live.adopt_orphans() == 0  # waits for the look at open
        orphan = await leave_orphan(tmp_path, session, records(session, 3))
        assert (live.slot, orphan) == (0, 1)
        with anyio.fail_after(10):
            assert await live.adopt_orphans() == 1
        # Drained by a backend of its own, and released: the next worker to
        # start takes slot 1 again, with nothing left in it.
        assert fleet.archived(session) == ["m0", "m1", "m2"]
        assert journal_entries(tmp_path, orphan) == 0
        async with Archivist.open(
            tmp_path, Fleet(), slots=Slots(adopt_orphans=False)
        ) as newcomer:
            assert newcomer.slot == 1
        with anyio.fail_after(10):
            assert await live.adopt_orphans() == 0  # nothing left to adopt


async def test_the_background_look_waits_one_look_before_adopting(
    tmp_path: Path, session: UUID
) -> None:
    """An orphan is drained by the background only once two looks in a row found
    it, so a worker restarted at once takes its own slot back."""
    quiet = Slots(adopt_orphans=False)
    first = await Archivist.open(tmp_path, Fleet(), slots=quiet)
    second = await Archivist.open(tmp_path, Fleet(), slots=quiet)
    assert (first.slot, second.slot) == (0, 1)
    assert await leave_orphan(tmp_path, session, [record(session, "left")]) == 2
    await second.shutdown()
    assert await leave_orphan(tmp_path, session, [record(session, "back")]) == 1
    await first.shutdown()
    fleet = Fleet()
    # Its first look (which the open waits for) finds slots 1 and 2 and drains
    # neither; no other look of its own for an hour.
    slots = Slots(adopt_interval=3600.0)
    async with Archivist.open(tmp_path, fleet, slots=slots) as live:
        assert live.slot == 0
        assert fleet.archived(session) == []
        # Slot 1's worker comes back before the next look and takes its slot.
        async with Archivist.open(tmp_path, fleet, slots=quiet) as restarted:
            assert restarted.slot == 1
            with anyio.fail_after(10):
                await restarted.wait_drained()
                adopter = live._adopter  # the background's own look, called here
                assert adopter is not None
                assert await adopter.adopt_now(patient=True) == 1  # slot 2 only
    assert fleet.archived(session) == ["back", "left"]
    assert live.orphans_adopted == 1


async def test_slots_past_max_slots_are_adopted_too(
    tmp_path: Path, session: UUID
) -> None:
    """Workers restarted with fewer slots than before still drain the old ones."""
    held = [
        await Archivist.open(tmp_path, Fleet(), slots=Slots(adopt_orphans=False))
        for _ in range(3)
    ]
    orphan = await leave_orphan(tmp_path, session, [record(session, "far")])
    assert orphan == 3
    for archivist in held:
        await archivist.shutdown()
    fleet = Fleet()
    async with Archivist.open(tmp_path, fleet, slots=Slots(max_slots=1)) as live:
        with anyio.fail_after(10):
            await live.adopt_orphans()
        assert fleet.archived(session) == ["far"]
    assert journal_entries(tmp_path, 3) == 0


async def test_an_orphan_that_cannot_be_drained_never_fails_the_live_worker(
    tmp_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet()
    async with Archivist.open(
        tmp_path, fleet, slots=Slots(adopt_orphans=False)
    ) as holder:
        assert holder.slot == 0
        damaged = tmp_path / "slot-1"
        damaged.mkdir()
        (damaged / "journal").write_bytes(b"not a journal at all" * 100)
    async with Archivist.open(tmp_path, fleet, slots=Slots()) as live:
        with caplog.at_level(logging.WARNING, "journal_archivist.slots"):
            with anyio.fail_after(10):
                assert await live.adopt_orphans() == 0
        assert "cannot adopt orphan slot 1" in caplog.text
        assert (damaged / "journal").read_bytes() == b"not a journal at all" * 100
        await live.append_messages(session, [record(session)])
        with anyio.fail_after(10):
            await live.wait_drained()
        assert not live.is_closed


async def test_slots_refuse_an_archive_without_erasure_marks(tmp_path: Path) -> None:
    jsonl = JsonlArchive(tmp_path / "archive")
    with pytest.raises(ValueError, match=r"'jsonl' \(JsonlArchive\) keeps no erasure"):
        Archivist.open(
            tmp_path / "journals",
            lambda: [registration(jsonl, name="jsonl")],
            slots=Slots(),
        )


async def test_adoption_needs_a_registrations_factory(tmp_path: Path) -> None:
    regs = [registration(SharedMock())]
    with pytest.raises(TypeError, match="registrations must be a function"):
        Archivist.open(tmp_path, regs, slots=Slots())
    async with Archivist.open(
        tmp_path, regs, slots=Slots(adopt_orphans=False)
    ) as archivist:
        assert archivist.slot == 0
        with pytest.raises(ValueError, match="adopt_orphans needs"):
            await archivist.adopt_orphans()


async def test_an_archive_inside_the_journal_directory_is_refused(
    tmp_path: Path,
) -> None:
    from journal_archivist.backends import SqliteArchive

    inside = SqliteArchive(tmp_path / "slot-9" / "archive.db")
    if not type(inside).erasure_marks:
        pytest.skip("SqliteArchive keeps no erasure marks yet")
    with pytest.raises(ValueError, match="lies inside"):
        Archivist.open(tmp_path, lambda: [registration(inside)], slots=Slots())


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"max_slots": 0}, ValueError, "max_slots must be 1 to 100000, got 0"),
        ({"max_slots": True}, TypeError, "max_slots must be an int"),
        ({"adopt_interval": 0.0}, ValueError, "adopt_interval must be > 0"),
        ({"adopt_interval": float("nan")}, ValueError, "adopt_interval must be"),
        ({"adopt_orphans": 1}, TypeError, "adopt_orphans must be a bool"),
        ({"claim_timeout": -1}, ValueError, "claim_timeout must be >= 0 and finite"),
        ({"claim_timeout": float("inf")}, ValueError, "claim_timeout must be >= 0"),
        ({"claim_timeout": "5"}, TypeError, "claim_timeout must be a number"),
    ],
)
def test_bad_slot_options_are_named(
    fields: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Slots(**fields)  # type: ignore[arg-type]


def test_a_plain_journal_has_no_slot(journal_path: Path) -> None:
    async def main() -> None:
        async with Archivist.open(journal_path, [registration()]) as archivist:
            assert archivist.slot is None

    anyio.run(main)


async def test_a_claim_waits_for_a_slot_to_come_free() -> None:
    tries: list[int] = []

    async def open_slot(index: int) -> int:
        tries.append(index)
        if len(tries) <= 2:  # both slots held at the first look
            raise JournalLocked("slot", pid=4321)
        return index

    assert await claim("journals", 2, open_slot, timeout=WAIT) == 0
    assert tries == [0, 1, 0]


async def test_a_claim_gives_up_after_its_timeout_naming_the_wait() -> None:
    async def held(index: int) -> int:
        raise JournalLocked("slot", pid=4321 + index)

    with pytest.raises(NoFreeSlot, match=r"\(by pids 4321, 4322\) after waiting 0\.2s"):
        await claim("journals", 2, held, timeout=0.2)


async def test_open_waits_claim_timeout_before_no_free_slot(tmp_path: Path) -> None:
    fleet = Fleet()
    holder = await Archivist.open(
        tmp_path, fleet, slots=Slots(max_slots=1, adopt_orphans=False)
    )
    try:
        waiting = Slots(max_slots=1, adopt_orphans=False, claim_timeout=0.2)
        with pytest.raises(NoFreeSlot, match=r"after waiting 0\.2s") as info:
            await Archivist.open(tmp_path, fleet, slots=waiting)
        assert info.value.waited == 0.2
        assert "claim_timeout" in str(info.value)
    finally:
        await holder.shutdown()
    async with Archivist.open(tmp_path, fleet, slots=waiting) as again:
        assert again.slot == 0
