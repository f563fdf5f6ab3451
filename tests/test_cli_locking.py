"""``journal-archivist``'s commands that open the archivist (and so take the
journal's lock), and ``probe`` and ``demo``, run through ``main``.

Where a live ``Archivist`` of this test holds the journal, ``main`` runs in a
worker thread: it starts an event loop of its own, as the program does.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist, FailureMode
from journal_archivist._cli import main
from journal_archivist._cli_common import ExitCode
from journal_archivist.testing import MockBackend
from tests.cli_helpers import archived, flip_byte_of, run, run_json, write_config
from tests.helpers import record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

    from tests.cli_helpers import Setup


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return write_config(tmp_path)


async def pending(setup: Setup, session: UUID, count: int = 3) -> None:
    """Journal ``count`` entries, delivered to neither backend yet."""
    down, also_down = MockBackend(), MockBackend()
    down.go_down()
    also_down.go_down()
    regs = [registration(down, "archive"), registration(also_down, "remote")]
    async with Archivist.open(setup.journal, regs, close_timeout=0) as archivist:
        for i in range(count):
            await archivist.append_messages(session, [record(session, f"m{i}")])


async def dead_letters(setup: Setup, session: UUID, *texts: str) -> None:
    """Make each of ``texts`` a dead letter of ``archive``."""
    mock = MockBackend()
    regs = [
        registration(mock, "archive", failure_mode=FailureMode.BEST_EFFORT),
        registration(MockBackend(), "remote"),
    ]
    async with Archivist.open(setup.journal, regs) as archivist:
        for text in texts:
            poison = record(session, text)
            mock.poison(poison.message_id)
            await archivist.append_messages(session, [poison])
        with anyio.fail_after(5):
            await archivist.wait_drained()


class TestDrain:
    async def test_a_down_backend_is_reported_and_fails_the_drain(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await pending(setup, session)
        code, out, err = run(capsys, "drain", "--config", setup.config, "--timeout", 1)
        assert code == ExitCode.NOT_OK
        assert "not drained after" in out
        [line] = [line for line in out.splitlines() if "remote:" in line]
        assert "3 entries" in line
        assert "does not exist" in line  # the backend's last error: the reason
        assert "draining" in err  # progress, a line a second off a terminal
        assert archived(setup.archive) == 3  # what could be delivered was

    async def test_everything_delivered_exits_zero(
        self, tmp_path: Path, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        setup = write_config(tmp_path, remote_up=True)
        await pending(setup, session)
        data = run_json(capsys, "drain", "--config", setup.config)
        assert data["drained"] is True
        assert [b["pending_entries"] for b in data["backends"]] == [0, 0]
        assert archived(setup.archive) == 3


class TestDeadLetters:
    async def test_replay_then_drain_delivers_them(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await dead_letters(setup, session, "poison")
        code, out, _ = run(
            capsys, "dead-letters", "replay", "--config", setup.config,
            "--backend", "archive",
        )  # fmt: skip
        assert (code, out) == (ExitCode.OK, "1 dead letters of archive requeued\n")
        assert run_json(capsys, "dead-letters", "list", "--config", setup.config) == []
        run(capsys, "drain", "--config", setup.config, "--timeout", 1)
        assert archived(setup.archive) == 1

    async def test_purge_by_id(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await dead_letters(setup, session, "one", "two")
        first, second = run_json(
            capsys, "dead-letters", "list", "--config", setup.config
        )
        data = run_json(
            capsys, "dead-letters", "purge", "--config", setup.config,
            "--backend", "archive", "--id", first["id"],
        )  # fmt: skip
        assert data == {"backend": "archive", "purged": 1}
        [left] = run_json(capsys, "dead-letters", "list", "--config", setup.config)
        assert left["id"] == second["id"]

    async def test_an_unknown_backend_is_a_usage_error(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await dead_letters(setup, session, "poison")
        code, _, err = run(
            capsys, "dead-letters", "replay", "--config", setup.config,
            "--backend", "nobody",
        )  # fmt: skip
        assert code == ExitCode.USAGE
        assert "no backend named 'nobody'" in err

    async def test_replay_and_purge_refuse_while_the_service_holds_the_journal(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await dead_letters(setup, session, "poison")
        regs = setup.registrations()
        async with Archivist.open(setup.journal, regs, close_timeout=0):
            for verb, method in (
                ("replay", "replay_dead_letters"),
                ("purge", "purge_dead_letters"),
            ):
                code = await anyio.to_thread.run_sync(
                    main,
                    ["dead-letters", verb, "--config", str(setup.config),
                     "--backend", "archive"],
                )  # fmt: skip
                err = capsys.readouterr().err
                assert code == ExitCode.LOCKED
                assert f"is held by process {os.getpid()}: stop it, or call" in err
                assert f"Archivist.{method}('archive') from the service" in err
        [letter] = run_json(capsys, "dead-letters", "list", "--config", setup.config)
        assert letter["backend"] == "archive"  # untouched


async def test_quarantine_purge(
    setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
) -> None:
    await pending(setup, session)
    flip_byte_of(setup.journal, b"m1")
    run(capsys, "drain", "--config", setup.config, "--timeout", 1)
    rows = run_json(capsys, "quarantine", "list", "--config", setup.config)
    assert [row["backend"] for row in rows] == ["archive"]
    code, out, _ = run(
        capsys, "quarantine", "purge", "--config", setup.config, "--backend", "archive"
    )
    assert (code, out) == (ExitCode.OK, "1 quarantined entries of archive purged\n")
    assert run_json(capsys, "quarantine", "list", "--config", setup.config) == []


class TestExport:
    async def test_archived_and_journaled_records_in_both_formats(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        regs = setup.registrations()
        async with Archivist.open(setup.journal, regs) as archivist:
            await archivist.append_messages(session, [record(session, "hello")])
            await archivist.append_messages(
                session, [record(session, "world", author="ada")]
            )
        code, out, _ = run(capsys, "export", session, "--config", setup.config)
        assert code == ExitCode.OK
        assert out.startswith(f"# Session {session}\n")
        assert "### user (ada)" in out
        code, out, _ = run(
            capsys, "export", session, "--config", setup.config, "--format", "jsonl"
        )
        assert [json.loads(line)["content_md"] for line in out.splitlines()] == [
            "hello",
            "world",
        ]

    async def test_from_a_backend(
        self, setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await pending(setup, session, count=2)
        # archive: delivered while exporting (read merged with the journal);
        # remote: down, so reading it fails.
        code, out, _ = run(
            capsys, "export", session, "--config", setup.config,
            "--from", "archive", "--json",
        )  # fmt: skip
        assert code == ExitCode.OK
        assert len(out.splitlines()) == 2
        code, _, err = run(
            capsys, "export", session, "--config", setup.config, "--from", "remote"
        )
        assert code == ExitCode.NOT_OK
        assert "no readable backend answered" in err
        code, _, err = run(
            capsys, "export", session, "--config", setup.config, "--from", "nobody"
        )
        assert code == ExitCode.USAGE
        assert "no backend named 'nobody'" in err


async def test_probe(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "probe", "--config", setup.config)
    assert code == ExitCode.NOT_OK  # remote is required and down
    [archive_line, remote_line] = out.splitlines()[1:]
    assert "reachable" in archive_line
    assert "UNREACHABLE" in remote_line
    assert "does not exist" in remote_line
    code, out, _ = run(capsys, "probe", "--config", setup.config, "--json")
    assert [p["reachable"] for p in json.loads(out)] == [True, False]


async def test_compact(
    setup: Setup, session: UUID, capsys: pytest.CaptureFixture[str]
) -> None:
    await pending(setup, session)
    code, out, _ = run(capsys, "compact", "--config", setup.config)
    assert code == ExitCode.OK
    assert "before" in out
    assert "after" in out
    data = run_json(capsys, "compact", "--config", setup.config)
    assert data["after"]["size_bytes"] <= data["before"]["size_bytes"]


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "demo", "--dir", tmp_path / "demo",
        "--sessions", 2, "--messages", 20, "--duration", 0.5,
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert out
