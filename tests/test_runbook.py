"""The runbook's examples (docs/operations.md, "Runbook") run as written.

Every ``journal-archivist`` line of its shell blocks runs, in order, through the
command line's ``main`` against a real journal and config file (with a dead
letter to look at and replay), and must succeed; its Python block runs against
an archivist opened from the same file.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist, FailureMode
from journal_archivist._cli import main
from journal_archivist.testing import MockBackend
from tests.helpers import ROOT, query, record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
RUNBOOK = OPERATIONS[OPERATIONS.index("## Runbook") :]

CONFIG = """
[journal]
journal_path = "data/journal.db"

[[backends]]
name = "archive"
type = "sqlite"
settings = { path = "data/archive.db" }
failure_mode = "best_effort"
"""


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", RUNBOOK, flags=re.DOTALL)


COMMANDS = [
    line
    for block in blocks("sh")
    for line in block.splitlines()
    if line.startswith("journal-archivist ")
]


@pytest.fixture
async def service_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session: UUID
) -> Path:
    """A service's folder: its config, and a journal holding one dead letter of
    the backend the config names."""
    (tmp_path / "archivist.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    mock = MockBackend()
    poison = record(session, "poison")
    mock.poison(poison.message_id)
    reg = registration(mock, "archive", failure_mode=FailureMode.BEST_EFFORT)
    async with Archivist.open(tmp_path / "data" / "journal.db", [reg]) as archivist:
        await archivist.append_messages(session, [poison])
        with anyio.fail_after(10):
            await archivist.wait_drained()
    return tmp_path


def test_the_runbook_shows_each_case() -> None:
    for case in (
        "After a crash",
        "A backend down for hours",
        "A full disk",
        "Growing lag",
        "Dead letters",
        "A damaged journal",
    ):
        assert f"### {case}" in RUNBOOK
    assert len(COMMANDS) >= 10


async def test_every_runbook_command_runs(
    service_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = service_dir / "data" / "journal.db"
    assert query(journal, "SELECT count(*) FROM dead_letters") == [(1,)]
    for line in COMMANDS:
        argv = shlex.split(line)[1:]
        code = await anyio.to_thread.run_sync(main, argv)
        out = capsys.readouterr()
        assert code == 0, f"{line}: exit {code}\n{out.out}\n{out.err}"
    # The replay delivered the dead letter to the archive the config names.
    assert query(journal, "SELECT count(*) FROM dead_letters") == [(0,)]
    archived = query(
        service_dir / "data" / "archive.db", "SELECT count(*) FROM messages"
    )
    assert archived == [(1,)]
    assert (service_dir / "salvaged.db").exists()


async def test_the_runbook_python_runs_in_a_service(service_dir: Path) -> None:
    [code] = blocks("python")
    namespace: dict[str, object] = {}
    body = textwrap.indent(code, "    ")
    exec(f"async def run(archivist):\n{body}    return replayed, purged\n", namespace)
    async with Archivist.from_config("archivist.toml") as archivist:
        run = namespace["run"]
        assert callable(run)
        replayed, purged = await run(archivist)
    assert (replayed, purged) == (1, 0)
