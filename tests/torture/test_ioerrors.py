"""I/O errors on the journal, short: ``ioerrors`` itself, and one failed fsync
played step by step.

- ``python -m tools.torture.ioerrors`` passes a few cycles of write errors
  (``EIO``/``ENOSPC`` on the journal's writes), then a power cut each.
- One failed fsync, scripted: the append whose commit it failed is refused, the
  archivist resumes, and what it acknowledged afterwards must survive a power
  cut. (The failed fsync may drop the done-marks' unsynced WAL frames, and every
  later commit would chain its WAL checksums onto them: the journal is rewritten
  before anything is acknowledged again, ``Journal.rewrite``.)

Everything skips, with the tool's reason, where the shim cannot be built.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from journal_archivist import Archivist, Registration
from journal_archivist.testing import MockBackend
from tests.helpers import ROOT
from tools.torture import _shim, ioerrors

if TYPE_CHECKING:
    from pathlib import Path


def test_ioerrors_write_faults_cycles_lose_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], library: Path
) -> None:
    code = ioerrors.main(
        [
            *("--cycles", "3", "--seed", "1", "--faults", "write"),
            *("--min-run", "0.8", "--max-run", "1.2", "--settle", "1.5"),
            *("--dir", str(tmp_path)),
        ]
    )
    output = capsys.readouterr().out
    verdict = output.strip().splitlines()[-1]
    assert code == 0, output
    assert verdict.startswith("ioerrors: PASS full, 3 cycles"), output
    assert " 0 lost," in verdict, output
    failed_writes = re.search(r"\((\d+) writes and \d+ syncs failed\)", verdict)
    assert failed_writes is not None, verdict
    assert int(failed_writes.group(1)) > 0, output  # the faults hit the journal


# -- one failed fsync, step by step -------------------------------------------------

#: Under the shim: append 1 and let its done-marks be written (a NORMAL commit, no
#: fsync), make the next commit's fsync fail (append 2), append 3, then die.
SCRIPT = r"""
import errno, mmap, os, sys, uuid
import anyio
from journal_archivist import (
    Archivist, JournalWriteFailed, MessageRecord, Registration,
)
from journal_archivist.testing import MockBackend

control = mmap.mmap(os.open(os.environ["TORTURE_SHIM_CTL"], os.O_RDWR), 4096)

def sync_fault(code):
    control[12:16] = code.to_bytes(4, "little")

async def main():
    down = MockBackend()
    down.go_down()
    registrations = [
        Registration(name="up", backend=MockBackend()),
        Registration(name="down", backend=down),
    ]
    async with Archivist.open(sys.argv[1], registrations) as archivist:
        session = uuid.UUID(int=1)

        async def append(n):
            record = MessageRecord(session=session, role="user", content_md=str(n))
            await archivist.append_messages(session, [record])

        await append(1)
        print("A 1", flush=True)
        await archivist.wait_drained("up")  # its done-marks committed, not fsynced
        sync_fault(errno.EIO)
        try:
            await append(2)
            print("A 2", flush=True)
        except JournalWriteFailed:
            print("F 2", flush=True)
        sync_fault(0)
        await append(3)
        print("A 3", flush=True)
        os.kill(os.getpid(), 9)

anyio.run(main)
"""


@pytest.fixture(scope="module")
def one_failed_fsync(
    tmp_path_factory: pytest.TempPathFactory, library: Path
) -> tuple[str, Path]:
    """Run ``SCRIPT`` once; its op log and the journal, after the power cut."""
    machine = _shim.Machine(
        tmp_path_factory.mktemp("fsync"), library, ["journal.db", "journal.db-wal"]
    )
    journal = machine.run / "journal.db"
    try:
        child = machine.spawn(
            [sys.executable, "-c", SCRIPT, str(journal)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        out, _ = child.communicate(timeout=60)
        machine.power_cut()
    finally:
        machine.close()
    return out.decode(), journal


async def pending_for_down(journal: Path) -> int:
    down = MockBackend()
    down.go_down()  # the journal keeps every entry for it
    registrations = [
        Registration(name="up", backend=MockBackend()),
        Registration(name="down", backend=down),
    ]
    async with Archivist.open(journal, registrations, close_timeout=0) as archivist:
        return archivist.health().backends["down"].lag_entries


def test_a_failed_fsync_refuses_its_append_and_the_archivist_resumes(
    one_failed_fsync: tuple[str, Path],
) -> None:
    lines, _ = one_failed_fsync
    assert lines.split("\n")[:3] == ["A 1", "F 2", "A 3"], lines


async def test_what_is_acknowledged_after_a_failed_fsync_survives_a_power_cut(
    one_failed_fsync: tuple[str, Path],
) -> None:
    lines, journal = one_failed_fsync
    assert "A 3" in lines, lines
    assert await pending_for_down(journal) == 2  # appends 1 and 3
