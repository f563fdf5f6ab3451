"""``journal-archivist`` on a journal directory of slots (``Slots``): ``status``,
``check`` and ``drain`` of every slot, ``--slot N`` for the commands of one
journal, and the errors of a directory that is not one.

The directories are real, made with the library's own calls: ``fleet`` leaves
slot 0 held by a live archivist of this test (this pid), slot 1 an orphan (its
archivist shut down with its remote archive down, so it is free with a backlog)
and slot 2 free and empty. ``main`` runs in a thread (``run``); the test's loop
waits meanwhile, and its archivist holds slot 0's lock all the same.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, ClassVar

import anyio
import msgspec
import pytest

from journal_archivist import Archivist, Slots
from journal_archivist._cli_common import ExitCode
from journal_archivist._cli_slots import DirectoryCheck, DirectoryStatus
from journal_archivist._slots import slot_journal
from journal_archivist._stats import Stats
from journal_archivist.testing import MockBackend
from tests.cli_helpers import (
    archived,
    flip_byte_of,
    run,
    run_json,
    write_config,
    write_slots_config,
)
from tests.helpers import record, registration

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path
    from uuid import UUID

    from tests.cli_helpers import SlotsSetup


class SharedMock(MockBackend):
    """A mock archive that may take writes from several journals."""

    erasure_marks: ClassVar[bool] = True


async def open_slot(directory: Path, *, remote_up: bool = False) -> Archivist:
    """Claim a slot of ``directory``, its ``remote`` down unless ``remote_up``."""
    remote = SharedMock()
    if not remote_up:
        remote.go_down()
    regs = [registration(SharedMock(), "archive"), registration(remote, "remote")]
    return await Archivist.open(
        directory, regs, slots=Slots(adopt_orphans=False), close_timeout=0
    )


async def journal(archivist: Archivist, session: UUID, *texts: str) -> None:
    """Append one entry per text and wait until ``archive`` has them all."""
    for text in texts:
        await archivist.append_messages(session, [record(session, text)])
    with anyio.fail_after(5):
        await archivist.wait_drained("archive")


@contextlib.asynccontextmanager
async def fleet(setup: SlotsSetup, session: UUID) -> AsyncIterator[Archivist]:
    """Slot 0 held by the archivist yielded (2 entries pending for ``remote``),
    slot 1 an orphan (3 entries pending), slot 2 free and empty."""
    live = await open_slot(setup.directory)
    try:
        await journal(live, session, "live-0", "live-1")
        orphan = await open_slot(setup.directory)
        done = await open_slot(setup.directory, remote_up=True)
        assert (live.slot, orphan.slot, done.slot) == (0, 1, 2)
        await journal(orphan, session, "needle-1-000", "needle-1-001", "needle-1-002")
        await orphan.shutdown(timeout=0)
        await journal(done, session, "delivered")
        with anyio.fail_after(5):
            await done.wait_drained()
        await done.shutdown()
        yield live
    finally:
        await live.shutdown(timeout=0)


@pytest.fixture
def setup(tmp_path: Path) -> SlotsSetup:
    return write_slots_config(tmp_path)


class TestStatus:
    async def test_every_slot_its_holder_and_the_totals(
        self, setup: SlotsSetup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with fleet(setup, session):
            code, out, _ = run(capsys, "status", "--config", setup.config)
            data = run_json(capsys, "status", "--journal", setup.directory)
            one = run_json(capsys, "status", "--config", setup.config, "--slot", "1")
        assert code == ExitCode.OK
        assert "3 slots, 1 held, 1 orphan\n" in out
        assert f"slot-0  held by process {os.getpid()}; 2 entries held" in out
        assert "slot-1  ORPHAN: free, with a backlog" in out
        assert "slot-2  free; 0 entries held, 1 journaled in all" in out
        totals = out[out.index("all slots") :].splitlines()
        [remote] = [line for line in totals if line.startswith("remote")]
        assert remote.split()[:3] == ["remote", "yes", "5"]
        status = msgspec.convert(data, DirectoryStatus)
        assert status.directory == str(setup.directory)
        assert [s.state for s in status.slots] == ["held", "orphan", "free"]
        assert [s.holder_pid for s in status.slots] == [os.getpid(), None, None]
        assert [s.path for s in status.slots] == [
            slot_journal(str(setup.directory), i) for i in range(3)
        ]
        by_name = {b.name: b for b in status.totals}
        assert by_name["remote"].pending_entries == 5
        assert by_name["archive"].delivered_total == 6
        pending = [
            {b.name: b.pending_entries for b in s.stats.backends}
            for s in status.slots
            if s.stats is not None
        ]
        assert pending == [
            {"archive": 0, "remote": 2},
            {"archive": 0, "remote": 3},
            {"archive": 0, "remote": 0},
        ]
        # One slot is a journal file: the single-journal JSON, unchanged.
        stats = msgspec.convert(one, Stats)
        assert stats.journal.path == slot_journal(str(setup.directory), 1)
        assert {b.name: b.pending_entries for b in stats.backends}["remote"] == 3

    async def test_watch_refreshes_every_slot_until_ctrl_c(
        self,
        setup: SlotsSetup,
        session: UUID,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr("journal_archivist._cli_offline.time.sleep", sleep)
        async with fleet(setup, session):
            code, out, _ = run(
                capsys, "status", "--config", setup.config, "--watch", "3", "--json"
            )
        assert (code, sleeps) == (ExitCode.OK, [3.0, 3.0])
        snapshots = [json.loads(line) for line in out.splitlines()]
        assert [len(s["slots"]) for s in snapshots] == [3, 3]

    async def test_a_slot_that_cannot_be_read_is_shown_with_the_others(
        self, setup: SlotsSetup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with fleet(setup, session):
            (setup.directory / "slot-5").mkdir()  # a slot folder, no journal
            code, out, _ = run(capsys, "status", "--journal", setup.directory)
        assert code == ExitCode.UNREADABLE
        assert "slot-5  free; cannot read it:" in out
        assert "no such file" in out
        assert f"slot-0  held by process {os.getpid()}" in out


class TestCheck:
    async def test_every_slot_is_checked_and_the_worst_verdict_is_the_code(
        self, setup: SlotsSetup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with fleet(setup, session):
            code, out, _ = run(capsys, "check", "--config", setup.config)
            assert code == ExitCode.OK
            assert "3 slots checked: 3 OK" in out
            assert "slot-1:\ncheck of " in out
            # Damage the orphan's journal (closed, so checkpointed into the file).
            orphan = slot_journal(str(setup.directory), 1)
            flip_byte_of(setup.directory / "slot-1" / "journal", b"needle-1-001")
            code, out, _ = run(capsys, "check", "--journal", setup.directory)
            assert code == ExitCode.NOT_OK
            assert f"check of {orphan}: DAMAGED" in out
            assert "3 slots checked: 2 OK, 1 DAMAGED" in out
            # Garbage in another slot: the worst verdict wins.
            (setup.directory / "slot-2" / "journal").write_bytes(os.urandom(4096))
            code, out, _ = run(capsys, "check", "--config", setup.config, "--json")
        assert code == ExitCode.NOT_A_JOURNAL
        report = msgspec.convert(json.loads(out), DirectoryCheck)
        verdicts = [s.report.verdict.value for s in report.slots if s.report]
        assert verdicts == ["ok", "damaged", "not_a_journal"]

    async def test_salvage_needs_one_slot(
        self,
        setup: SlotsSetup,
        session: UUID,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        async with fleet(setup, session):
            code, _, err = run(
                capsys, "check", "--config", setup.config, "--salvage", tmp_path / "s"
            )
            assert code == ExitCode.USAGE
            assert "choose its slot with --slot N" in err
            code, out, _ = run(
                capsys, "check", "--config", setup.config, "--slot", "1",
                "--salvage", tmp_path / "s",
            )  # fmt: skip
        assert code == ExitCode.OK
        assert "salvaged " in out


class TestDrain:
    async def test_the_held_slot_is_skipped_and_the_orphan_drained(
        self, tmp_path: Path, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        setup = write_slots_config(tmp_path, remote_up=True)
        async with fleet(setup, session) as live:
            code, out, _ = run(capsys, "drain", "--config", setup.config)
            assert code == ExitCode.NOT_OK  # slot 0 still holds 2 entries
            assert (
                f"slot-0: held by process {os.getpid()}, 2 entries held: skipped"
            ) in out
            assert "slot-1: drained in" in out
            assert "slot-2: nothing journaled: not opened" in out
            assert out.endswith("not drained: something remains in slot-0\n")
            assert archived(setup.remote) == 3
            # The live worker stops with its backlog: now every slot drains.
            await live.shutdown(timeout=0)
            data = run_json(capsys, "drain", "--config", setup.config)
        assert data["drained"] is True
        assert [s["outcome"] for s in data["slots"]] == ["drained", "empty", "empty"]
        assert data["slots"][0]["result"]["drained"] is True
        assert archived(setup.remote) == 5

    async def test_what_remains_is_named_by_slot(
        self, setup: SlotsSetup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with fleet(setup, session):
            code, out, err = run(
                capsys, "drain", "--config", setup.config, "--timeout", "0.5"
            )
            assert code == ExitCode.NOT_OK
            assert "slot-1: not drained after" in out
            assert "  remote: 3 entries" in out
            assert "slot-1: draining (0s): pending" in err  # progress names it
            code, out, _ = run(
                capsys, "drain", "--config", setup.config, "--timeout", "0.5", "--json"
            )
        assert code == ExitCode.NOT_OK
        data = json.loads(out)
        assert [s["outcome"] for s in data["slots"]] == ["held", "not_drained", "empty"]
        assert data["slots"][0]["holder_pid"] == os.getpid()
        assert data["slots"][0]["entries"] == 2

    async def test_one_slot_with_slot(
        self, tmp_path: Path, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        setup = write_slots_config(tmp_path, remote_up=True)
        async with fleet(setup, session):
            data = run_json(capsys, "drain", "--config", setup.config, "--slot", "1")
            code, _, err = run(capsys, "drain", "--config", setup.config, "--slot", 0)
        assert data["drained"] is True
        assert archived(setup.remote) == 3
        assert code == ExitCode.LOCKED
        assert f"is held by process {os.getpid()}" in err


class TestOneSlot:
    @pytest.mark.parametrize(
        "argv",
        [
            ["dead-letters", "list"],
            ["dead-letters", "show", "1"],
            ["dead-letters", "replay", "--backend", "remote"],
            ["quarantine", "list"],
            ["quarantine", "purge", "--backend", "remote"],
            ["export", "0190a4c2-7d5e-7c1a-9b1e-3f7d2c9a8b10"],
            ["compact"],
        ],
        ids=" ".join,
    )
    async def test_a_command_of_one_journal_asks_for_a_slot(
        self,
        setup: SlotsSetup,
        session: UUID,
        argv: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        async with fleet(setup, session):
            code, out, err = run(capsys, *argv, "--config", setup.config)
        assert (code, out) == (ExitCode.USAGE, "")
        assert err == (
            f"journal-archivist: error: {setup.directory} is a journal directory"
            " (slot-0, slot-1, slot-2): this command works on one journal, choose"
            " its slot with --slot N\n"
        )

    async def test_with_slot_they_work_on_that_slot(
        self, tmp_path: Path, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        setup = write_slots_config(tmp_path, remote_up=True)
        async with fleet(setup, session):
            where = ["--config", setup.config, "--slot", "1"]
            assert run_json(capsys, "dead-letters", "list", *where) == []
            assert run_json(capsys, "quarantine", "list", *where) == []
            code, out, _ = run(
                capsys,
                "export",
                session,
                *where,
                "--from",
                "remote",
                "--format",
                "jsonl",
            )
            assert code == ExitCode.OK
            exported = [json.loads(line)["content_md"] for line in out.splitlines()]
            assert exported == ["needle-1-000", "needle-1-001", "needle-1-002"]
            compacted = run_json(capsys, "compact", *where)
            assert compacted["path"] == slot_journal(str(setup.directory), 1)
            # The live worker's slot is locked, as a journal file would be.
            code, _, err = run(capsys, "compact", "--config", setup.config, "--slot", 0)
        assert code == ExitCode.LOCKED
        assert f"held by process {os.getpid()}" in err

    async def test_a_bad_slot_is_a_usage_error(
        self,
        setup: SlotsSetup,
        session: UUID,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        async with fleet(setup, session):
            code, _, err = run(capsys, "status", "--config", setup.config, "--slot", 7)
        assert code == ExitCode.USAGE
        assert "no slot-7 in the journal directory" in err
        assert "(it holds slot-0, slot-1, slot-2)" in err
        plain = write_config(tmp_path / "plain")
        code, _, err = run(capsys, "dead-letters", "list", "--config", plain.config,
                           "--slot", 0)  # fmt: skip
        assert code == ExitCode.USAGE
        assert "--slot 0 needs a journal directory" in err
        code, _, err = run(capsys, "status", "--slot", "-1")
        assert code == ExitCode.USAGE
        assert "slot numbers start at 0" in err


async def test_probe_needs_no_slot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_slots_config(tmp_path, remote_up=True)
    data = run_json(capsys, "probe", "--config", setup.config)
    assert [(p["name"], p["reachable"]) for p in data] == [
        ("archive", True),
        ("remote", True),
    ]


class TestNotAJournalDirectory:
    @pytest.mark.parametrize("command", ["status", "check", "dead-letters list"])
    def test_a_directory_without_slots(
        self, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / "empty").mkdir()
        code, out, err = run(capsys, *command.split(), "--journal", tmp_path / "empty")
        assert (code, out) == (ExitCode.NOT_A_JOURNAL, "")
        assert err == (
            f"journal-archivist: error: {tmp_path / 'empty'} is a directory but not"
            " a journal directory: it holds no slot-N folders\n"
        )

    @pytest.mark.parametrize("command", ["status", "check", "drain"])
    def test_a_config_whose_directory_is_missing_or_empty(
        self, setup: SlotsSetup, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, command, "--config", setup.config)
        assert code == ExitCode.UNREADABLE
        assert f"no journal directory {setup.directory}" in err
        setup.directory.mkdir()
        code, _, err = run(capsys, command, "--config", setup.config)
        assert code == ExitCode.NOT_A_JOURNAL
        assert "holds no slot-N folders" in err
        assert "Traceback" not in err
