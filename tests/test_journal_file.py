"""Creating the journal file: its name is made durable before anything is written.

An fsync of a file makes its contents durable, not its name: until the directory
holding a new file is fsync'd, a power loss can take the file away, with every
append acknowledged in it (``_journal_file.prepare_file``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from journal_archivist import Archivist
from tests.helpers import record, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``os.fsync`` from Python, as the path of what it synced."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name what an fsync synced")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: Any) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


async def test_a_new_journal_s_directory_is_synced_before_the_first_append(
    tmp_path: Path, session: UUID, fsyncs: list[str]
) -> None:
    directory = tmp_path / "journals" / "a"  # created by open, like the file
    async with Archivist.open(directory / "journal.db", [registration()]) as archivist:
        # Each new name, in the directory that holds it.
        assert fsyncs[:3] == [str(tmp_path), str(directory.parent), str(directory)]
        await archivist.append_messages(session, [record(session)])
