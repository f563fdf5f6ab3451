"""What the command-line tests share: a real config file, and a way to fill its
journal with the library's own calls."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from journal_archivist._cli import main
from journal_archivist.backends import SqliteArchive
from journal_archivist.testing import MockBackend
from tests.helpers import registration

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from journal_archivist import Registration


@dataclass
class Setup:
    """A config file and the paths it names."""

    config: Path
    journal: Path
    archive: Path

    def registrations(self, *, remote: MockBackend | None = None) -> list[Registration]:
        """Registrations under the config's names, for filling the journal from
        Python: ``archive`` is the real SQLite archive, ``remote`` a mock."""
        regs = [registration(SqliteArchive(self.archive), "archive")]
        regs.append(registration(remote or MockBackend(), "remote"))
        return regs


def write_config(tmp_path: Path, *, remote_up: bool = False) -> Setup:
    """A config with two backends: ``archive`` (SQLite, reachable) and ``remote``
    (SQLite in a folder that does not exist: down, unless ``remote_up``)."""
    journal = '[journal]\njournal_path = "journal.db"\n'
    folder, _ = _write(tmp_path, journal, remote_up)
    return Setup(
        folder / "archivist.toml", folder / "journal.db", folder / "archive.db"
    )


def _write(tmp_path: Path, journal: str, remote_up: bool) -> tuple[Path, str]:
    """Write ``data/archivist.toml``: ``journal`` (its tables before the
    backends), then the two backends; the folder and the remote's path."""
    folder = tmp_path / "data"
    folder.mkdir(parents=True, exist_ok=True)
    remote = "remote.db" if remote_up else "missing/remote.db"
    (folder / "archivist.toml").write_text(
        journal
        + f"""
[[backends]]
name = "archive"
type = "sqlite"
settings = {{ path = "archive.db" }}

[[backends]]
name = "remote"
type = "sqlite"
settings = {{ path = "{remote}" }}
retry = {{ initial_delay = 0.01, max_delay = 0.05 }}
"""
    )
    return folder, remote


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``main(argv)``: its exit code, stdout and stderr.

    Run in a thread of its own, as from a program's main thread: the commands
    that open the archivist start an event loop, which they cannot do inside an
    async test's. The test's loop waits meanwhile (an archivist it runs holds its
    lock all the same).
    """
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(list(map(str, argv)))))
    thread.start()
    thread.join(timeout=120)
    assert codes, "main() did not return"
    captured = capsys.readouterr()
    return codes[0], captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: object) -> Any:
    """``main([*argv, "--json"])``, which must exit 0, parsed back."""
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def flip_byte_of(path: Path, needle: bytes) -> None:
    """Flip one bit of the only copy of ``needle`` in the (checkpointed) file."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, f"{needle!r} is not in {path}"
    assert data.find(needle, at + 1) < 0, f"{needle!r} is in {path} twice"
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def archived(archive: Path) -> int:
    """How many records the SQLite archive holds."""
    with closing(sqlite3.connect(archive)) as db:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'"
            )
        ]
        assert "messages" in tables, tables
        ((count,),) = db.execute("SELECT count(*) FROM messages").fetchall()
    return int(count)


@dataclass
class SlotsSetup:
    """A config file with a ``[slots]`` table and the paths it names."""

    config: Path
    directory: Path
    archive: Path
    remote: Path


def write_slots_config(tmp_path: Path, *, remote_up: bool = False) -> SlotsSetup:
    """A config whose journal is the directory ``journals`` (``[slots]``, no
    adopter), with two SQLite backends: ``archive`` (reachable) and ``remote``
    (in a folder that does not exist: down, unless ``remote_up``)."""
    journal = '[journal]\njournal_path = "journals"\n\n[slots]\nadopt_orphans = false\n'
    folder, remote = _write(tmp_path, journal, remote_up)
    return SlotsSetup(
        folder / "archivist.toml",
        folder / "journals",
        folder / "archive.db",
        folder / remote,
    )
