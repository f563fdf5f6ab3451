"""``journal-archivist``'s read-only commands, its errors and its help, run through
``main`` against a real journal and a real config file.

The commands that open the archivist are in ``test_cli_locking.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from journal_archivist import Archivist, FailureMode
from journal_archivist._cli_common import ExitCode
from journal_archivist._offline_check import CheckReport, Verdict
from journal_archivist._stats import Stats
from journal_archivist.testing import MockBackend
from tests.cli_helpers import (
    archived,
    flip_byte_of,
    run,
    run_json,
    write_config,
)
from tests.helpers import ROOT, record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    from tests.cli_helpers import Setup


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return write_config(tmp_path)


async def fill(setup: Setup, session: UUID, count: int = 3) -> None:
    """Journal ``count`` entries: delivered to ``archive``, pending for a
    ``remote`` that is down."""
    remote = MockBackend()
    remote.go_down()
    regs = setup.registrations(remote=remote)
    async with Archivist.open(setup.journal, regs, close_timeout=0) as archivist:
        for i in range(count):
            await archivist.append_messages(
                session, [record(session, f"needle-{i:03d}")]
            )
        with anyio.fail_after(5):
            await archivist.wait_drained("archive")


class TestStatus:
    async def test_a_table_and_json(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await fill(setup, session)
        code, out, _ = run(capsys, "status", "--config", setup.config)
        assert code == ExitCode.OK
        assert "not open (no process holds the lock)" in out
        assert "3 journaled in all" in out
        [remote_line] = [line for line in out.splitlines() if line.startswith("remote")]
        assert remote_line.split()[:3] == ["remote", "yes", "3"]
        stats = msgspec.convert(
            run_json(capsys, "status", "--journal", setup.journal), Stats
        )
        by_name = {b.name: b for b in stats.backends}
        assert by_name["remote"].pending_entries == 3
        assert by_name["archive"].delivered_total == 3
        assert stats.journal.lock_holder_pid is None

    async def test_works_while_the_service_holds_the_journal(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await fill(setup, session)
        regs = setup.registrations(remote=MockBackend())
        async with Archivist.open(setup.journal, regs) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
            code, out, _ = run(capsys, "status", "--config", setup.config)
            data = run_json(capsys, "status", "--config", setup.config)
        assert code == ExitCode.OK
        assert f"open by process {os.getpid()}" in out
        assert data["journal"]["lock_holder_pid"] == os.getpid()
        assert [b["pending_entries"] for b in data["backends"]] == [0, 0]

    async def test_watch_refreshes_until_ctrl_c(
        self,
        setup: Setup,
        session: UUID,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        await fill(setup, session)
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr("journal_archivist._cli_offline.time.sleep", sleep)
        code, out, _ = run(capsys, "status", "--config", setup.config, "--watch", "5")
        assert code == ExitCode.OK
        assert sleeps == [5.0, 5.0]
        assert out.count("journal   ") == 2
        sleeps.clear()
        code, out, _ = run(capsys, "status", "--config", setup.config, "--watch")
        assert sleeps == [2.0, 2.0]


class TestCheck:
    async def test_a_sound_journal(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await fill(setup, session)
        code, out, _ = run(capsys, "check", "--config", setup.config)
        assert (code, out.splitlines()[0]) == (
            ExitCode.OK,
            f"check of {setup.journal}: OK",
        )
        report = msgspec.convert(
            run_json(capsys, "check", "--journal", setup.journal, "--full"),
            CheckReport,
        )
        assert (report.verdict, report.entries_checked) == (Verdict.OK, 3)

    async def test_a_flipped_byte_is_damaged(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await fill(setup, session)
        flip_byte_of(setup.journal, b"needle-001")
        code, out, _ = run(capsys, "check", "--journal", setup.journal)
        assert code == ExitCode.NOT_OK
        assert "DAMAGED" in out
        assert "seq 2" in out
        assert "checksum mismatch" in out

    def test_garbage_is_not_a_journal(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(os.urandom(4096))
        code, out, _ = run(capsys, "check", "--journal", garbage)
        assert code == ExitCode.NOT_A_JOURNAL
        assert "NOT_A_JOURNAL" in out
        code, _, err = run(capsys, "status", "--journal", garbage)
        assert code == ExitCode.NOT_A_JOURNAL
        assert err.startswith("journal-archivist: error: journal is corrupt or not")

    async def test_salvage_then_drain_the_salvaged_journal(
        self,
        setup: Setup,
        session: UUID,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        await fill(setup, session, count=4)
        flip_byte_of(setup.journal, b"needle-002")
        out_path = tmp_path / "saved" / "journal.db"
        code, out, _ = run(capsys, "check", "--journal", setup.journal, "--json")
        assert (code, json.loads(out)["verdict"]) == (ExitCode.NOT_OK, "damaged")
        code, out, _ = run(
            capsys, "check", "--journal", setup.journal, "--salvage", out_path
        )
        assert code == ExitCode.NOT_OK  # the verdict on the source
        assert "3 copied, 1 damaged" in out
        # Drain the copy with the same backends, the remote one now reachable.
        salvaged = write_config(tmp_path / "after", remote_up=True)
        os.replace(out_path, salvaged.journal)
        assert run(capsys, "check", "--journal", salvaged.journal)[0] == ExitCode.OK
        code, out, _ = run(capsys, "drain", "--config", salvaged.config)
        assert code == ExitCode.OK, out
        assert archived(salvaged.archive.with_name("remote.db")) == 3


class TestSideTables:
    async def test_dead_letters_list_and_show(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        mock = MockBackend()
        poison = record(session, "poison")
        mock.poison(poison.message_id)
        regs = [
            registration(mock, "archive", failure_mode=FailureMode.BEST_EFFORT),
            registration(MockBackend(), "remote"),
        ]
        async with Archivist.open(setup.journal, regs) as archivist:
            await archivist.append_messages(session, [poison])
            with anyio.fail_after(5):
                await archivist.wait_drained()
        code, out, _ = run(capsys, "dead-letters", "list", "--config", setup.config)
        assert code == ExitCode.OK
        assert "poison record" in out
        config = ("--config", setup.config)
        [letter] = run_json(
            capsys, "dead-letters", "list", *config, "--backend", "archive"
        )
        assert letter["session"] == str(session)
        assert (
            run_json(capsys, "dead-letters", "list", *config, "--backend", "remote")
            == []
        )
        code, out, _ = run(
            capsys, "dead-letters", "show", letter["id"], "--config", setup.config
        )
        assert code == ExitCode.OK
        assert "records (1):" in out
        assert "    poison" in out
        shown = run_json(
            capsys, "dead-letters", "show", letter["id"], "--journal", setup.journal
        )
        assert shown["records"][0]["message_id"] == str(poison.message_id)
        code, _, err = run(
            capsys, "dead-letters", "show", 99, "--journal", setup.journal
        )
        assert code == ExitCode.NOT_OK
        assert "no dead letter with id 99" in err

    async def test_quarantine_list_and_show(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await fill(setup, session)
        flip_byte_of(setup.journal, b"needle-001")
        regs = setup.registrations(remote=MockBackend())
        async with Archivist.open(setup.journal, regs) as archivist:
            with anyio.fail_after(5):
                await archivist.wait_drained()
        code, out, _ = run(capsys, "quarantine", "list", "--config", setup.config)
        assert code == ExitCode.OK
        assert "remote" in out
        assert "checksum mismatch" in out
        [row] = run_json(capsys, "quarantine", "list", "--journal", setup.journal)
        assert (row["backend"], row["seq"]) == ("remote", 2)
        code, out, _ = run(
            capsys, "quarantine", "show", row["id"], "--journal", setup.journal
        )
        assert code == ExitCode.OK
        assert "checksum mismatch" in out


class TestErrors:
    def test_a_missing_config_is_a_usage_error_in_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = run(capsys, "status", "--config", tmp_path / "nope.toml")
        assert code == ExitCode.USAGE
        assert out == ""
        assert err.startswith("journal-archivist: error: ")
        assert err.count("\n") == 1
        code, _, err = run(
            capsys, "status", "--config", tmp_path / "nope.toml", "--debug"
        )
        assert code == ExitCode.USAGE
        assert "Traceback" in err

    def test_a_missing_journal_is_unreadable(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, "check", "--journal", tmp_path / "none.db")
        assert code == ExitCode.UNREADABLE
        assert "no such file" in err
        assert "Traceback" not in err

    @pytest.mark.parametrize(
        "argv",
        [
            ["export", "not-a-uuid"],  # a bad argument
            ["status", "--watch", "-1"],  # seconds are never negative
            ["status", "--config", "a", "--journal", "b"],  # one or the other
            ["dead-letters", "replay"],  # --backend is required
            ["dead-letters"],  # a group without its subcommand
            [],  # no command
        ],
    )
    def test_usage_errors(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(capsys, *argv)
        assert code == ExitCode.USAGE
        assert "usage: journal-archivist" in err


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == ExitCode.OK
    for command in ("demo", "status", "check", "drain", "dead-letters",
                    "quarantine", "export", "probe", "compact"):  # fmt: skip
        assert command in out
    assert "exit codes:" in out
    code, out, _ = run(capsys, "status", "--help")
    assert "example:" in out


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "journal_archivist", "--help"],
        [str(ROOT / ".venv" / "bin" / "journal-archivist"), "--help"],
    ],
    ids=["python -m", "console script"],
)
def test_runs_as_a_program(command: list[str]) -> None:
    if not os.path.exists(command[0]):
        pytest.skip(f"{command[0]} is not installed")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: journal-archivist")
