"""Power-cut emulation, short: the shim and its rollback, then ``powerloss`` itself.

- The rollback does what a power cut does, file by file: unsynced writes undone,
  a failed fsync dooming what it should have synced (fsyncgate), names durable
  only after their directory's fsync, unlinked files coming back.
- The emulation has teeth: victims that acknowledge without an fsync (a SQLite
  program at ``synchronous=OFF`` and ``NORMAL``, the journal at
  ``Durability.NORMAL``) lose acknowledged rows, every time; the same victims at
  ``FULL`` lose none.
- ``python -m tools.torture.powerloss`` passes a few cycles under ``FULL``.

Everything skips, with the tool's reason, where the shim cannot be built (no
``cc``, not Linux).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from journal_archivist import Archivist, Registration
from journal_archivist.testing import MockBackend
from tests.helpers import ROOT
from tools.torture import _shim, powerloss

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def machine(tmp_path: Path, library: Path) -> Iterator[_shim.Machine]:
    machine = _shim.Machine(tmp_path, library, fault_names=["s2", "s10"])
    yield machine
    machine.close()


# -- the rollback, file by file -------------------------------------------------------

#: Run under the shim with the tracked directory as argv[1]; each ``sN`` file is one
#: case. Prints what the calls it makes fail saw.
SCENARIOS = r"""
import errno, mmap, os, sys

d = sys.argv[1]
control = mmap.mmap(os.open(os.environ["TORTURE_SHIM_CTL"], os.O_RDWR), 4096)

def fault(at, code):  # 8: writes fail, 12: syncs fail (files named s2 or s10)
    control[at:at + 4] = code.to_bytes(4, "little")

def dirsync(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)

def new(name, data, flags=0):
    fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT | flags, 0o600)
    os.write(fd, data)
    os.fsync(fd)
    return fd

s1 = new("s1", b"A" * 100)
s2 = new("s2", b"X" * 10)
s4 = new("s4", b"keep")
s5 = new("s5", b"a")
os.close(s5)
s5 = os.open(os.path.join(d, "s5"), os.O_WRONLY | os.O_APPEND)
s6 = new("s6", b"0123456789")
s6b = new("s6b", b"0123456789")
new("s7", b"hello")
new("s8a", b"moved")
s10 = new("s10", b"base")
s12 = new("s12", b"")
os.mkdir(os.path.join(d, "durable"))
dirsync(d)  # every name so far is durable

os.pwrite(s1, b"B" * 50, 25)
os.write(s1, b"C" * 10)  # the offset is 100: extends the file
os.pwrite(s2, b"Y" * 5, 0)
fault(12, errno.EIO)
try:
    os.fsync(s2)
    print("s2 sync ok")
except OSError as exc:
    print("s2 sync", errno.errorcode[exc.errno])
fault(12, 0)
os.pwrite(s2, b"Z" * 4, 3)
os.fsync(s2)  # succeeds, but Y was lost with the failed one
new("s3", b"never named")  # synced, but its directory never is
os.unlink(os.path.join(d, "s4"))
os.write(s5, b"b")
os.ftruncate(s6, 4)
os.ftruncate(s6b, 4)
os.fsync(s6b)
s7 = os.open(os.path.join(d, "s7"), os.O_WRONLY)  # old bytes read through a twin
os.pwrite(s7, b"J", 0)
os.rename(os.path.join(d, "s8a"), os.path.join(d, "s8b"))
os.mkdir(os.path.join(d, "s9"))
new("s9/f", b"in a new directory")
dirsync(os.path.join(d, "s9"))  # its entries, not its own name
fault(8, errno.EIO)
try:
    os.pwrite(s10, b"NO", 0)
    print("s10 write ok")
except OSError as exc:
    print("s10 write", errno.errorcode[exc.errno])
fault(8, 0)
new("durable/s11", b"named")
dirsync(os.path.join(d, "durable"))
os.writev(s12, [b"ab", b"cd"])
os.fsync(s12)
os.writev(s12, [b"ef"])
print("done", flush=True)
"""


def run_scenarios(machine: _shim.Machine) -> str:
    child = machine.spawn(
        [sys.executable, "-c", SCENARIOS, str(machine.run)], stderr=subprocess.PIPE
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    return out.decode()


def read(machine: _shim.Machine, name: str) -> bytes | None:
    path = machine.run / name
    return path.read_bytes() if path.exists() else None


def test_rollback_leaves_what_a_power_cut_leaves(machine: _shim.Machine) -> None:
    seen = run_scenarios(machine)
    assert "s2 sync EIO" in seen
    assert "s10 write EIO" in seen
    assert "done" in seen
    counters = machine.control.counters()
    assert counters["fault_syncs"] == 1
    assert counters["fault_writes"] == 1
    report = machine.power_cut()
    assert report.unrestorable == 0
    assert report.doomed == 1  # Y
    assert read(machine, "s1") == b"A" * 100
    assert read(machine, "s2") == b"XXXZZZZXXX"  # Y undone, Z after it redone
    assert read(machine, "s3") is None
    assert read(machine, "s4") == b"keep"
    assert read(machine, "s5") == b"a"
    assert read(machine, "s6") == b"0123456789"
    assert read(machine, "s6b") == b"0123"
    assert read(machine, "s7") == b"hello"
    assert (read(machine, "s8a"), read(machine, "s8b")) == (b"moved", None)
    assert not (machine.run / "s9").exists()
    assert read(machine, "s10") == b"base"
    assert read(machine, "durable/s11") == b"named"
    assert read(machine, "s12") == b"abcd"
    assert not list(machine.grave.iterdir())


@pytest.mark.parametrize("seed", range(3))
def test_torn_rollback_keeps_some_unsynced_writes_never_doomed_ones(
    machine: _shim.Machine, seed: int
) -> None:
    run_scenarios(machine)
    report = machine.power_cut(torn=True, rng=random.Random(seed))
    assert report.doomed == 1
    assert read(machine, "s2") == b"XXXZZZZXXX"
    assert read(machine, "s6b") == b"0123"  # synced: kept whatever the draw
    assert read(machine, "durable/s11") == b"named"
    assert read(machine, "s1") in (
        b"A" * 100,
        b"A" * 25 + b"B" * 50 + b"A" * 25,
        b"A" * 100 + b"C" * 10,
        b"A" * 25 + b"B" * 50 + b"A" * 25 + b"C" * 10,
    )


# -- teeth: a victim that acknowledges without fsync loses, one that syncs does not --


def victim_cycles(
    machine: _shim.Machine, sync: str, cycles: int, acks: int
) -> tuple[int, int]:
    """Run the sqlite3 victim ``cycles`` times, cutting the power after ``acks``
    acknowledgements each; return (acknowledged, of which lost by the cuts)."""
    database = machine.run / "v.db"
    command = [sys.executable, "-m", "tools.torture._shim", "victim", str(database)]
    acknowledged = lost = 0
    for _ in range(cycles):
        # The victim stops after ``acks`` commits: running on until the cut, it
        # could reach a checkpoint (an fsync) whenever this process is slow.
        child = machine.spawn(
            [*command, "--sync", sync, "--count", str(acks)], cwd=ROOT
        )
        assert child.stdout is not None
        rows: set[int] = set()
        for line in child.stdout:
            if line.startswith(b"A "):
                rows.add(int(line.split()[1]))
                if len(rows) == acks:
                    break
        machine.power_cut()
        child.stdout.close()
        # Checked after each cut: a victim that lost rows numbers them again.
        acknowledged += len(rows)
        lost += len(rows - _shim.victim_rows(database))
    return acknowledged, lost


@pytest.mark.parametrize("sync", ["off", "normal"])
def test_a_victim_without_fsync_loses_acknowledged_rows(
    machine: _shim.Machine, sync: str
) -> None:
    # 40 one-row commits stay far below the 1000-page WAL that would make
    # synchronous=NORMAL checkpoint (its only fsync), so every row is lost.
    assert victim_cycles(machine, sync, cycles=2, acks=40) == (80, 80)


def test_a_victim_with_fsync_loses_nothing(machine: _shim.Machine) -> None:
    assert victim_cycles(machine, "full", cycles=3, acks=40) == (120, 0)


# -- teeth on the journal itself ------------------------------------------------------

#: Appends (argv[3] times, then waits to be killed, as the sqlite3 victim) to a
#: journal whose only backend is down, so every entry stays in the journal;
#: prints ``A <n>`` after each acknowledged append.
JOURNAL_VICTIM = r"""
import sys, uuid
import anyio
from journal_archivist import Archivist, Durability, MessageRecord, Registration
from journal_archivist.testing import MockBackend

async def main():
    down = MockBackend()
    down.go_down()
    registration = Registration(name="down", backend=down)
    durability = Durability[sys.argv[2]]
    async with Archivist.open(sys.argv[1], [registration], durability=durability) as a:
        session = uuid.UUID(int=1)
        for n in range(1, int(sys.argv[3]) + 1):
            record = MessageRecord(session=session, role="user", content_md=str(n))
            await a.append_messages(session, [record])
            print("A", n, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def journal_backlog(path: Path) -> int:
    down = MockBackend()
    down.go_down()  # the journal keeps every entry for it
    registration = Registration(name="down", backend=down)
    async with Archivist.open(path, [registration], close_timeout=0) as archivist:
        return archivist.health().backends["down"].lag_entries


@pytest.mark.parametrize(("durability", "loses"), [("NORMAL", True), ("FULL", False)])
async def test_the_journal_loses_acknowledged_entries_only_under_normal(
    machine: _shim.Machine, durability: str, loses: bool
) -> None:
    journal = machine.run / "journal.db"
    child = machine.spawn(
        [sys.executable, "-c", JOURNAL_VICTIM, str(journal), durability, "30"],
        cwd=ROOT,
    )
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged += line.startswith(b"A ")
        if acknowledged == 30:
            break
    machine.power_cut()
    child.stdout.close()
    backlog = await journal_backlog(journal)
    if loses:
        # No checkpoint in 30 small appends, so NORMAL never fsynced: all lost.
        assert backlog == 0
    else:
        assert backlog >= acknowledged


# -- the tool -------------------------------------------------------------------------


def test_powerloss_full_cycles_lose_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], library: Path
) -> None:
    code = powerloss.main(
        ["--cycles", "4", "--seed", "1", "--max-run", "1.5", "--dir", str(tmp_path)]
    )
    output = capsys.readouterr().out
    verdict = output.strip().splitlines()[-1]
    assert code == 0, output
    assert verdict.startswith("powerloss: PASS full, 4 cycles"), output
    assert " 0 lost," in verdict, output
    acknowledged = re.search(r"(\d+) acknowledged", verdict)
    assert acknowledged is not None
    assert int(acknowledged.group(1)) > 0, output  # the run proved something
    assert "the shim saw no" not in output
