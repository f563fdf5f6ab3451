"""Power-loss torture: cut the power under the workload at random moments, restart,
judge everything.

    python -m tools.torture.powerloss --cycles 200 --seed 1 [--durability full|normal]
        [--torn] [--dir DIR] [--keep] [--min-run 0.2] [--max-run 2.0]

Each cycle starts ``python -m tools.torture.workload run DIR --cycle N`` under the
shim (``tools/torture/shim.c``, built with ``cc``; without one this prints
``SKIP <reason>`` and exits 0), with a flaky archive chosen at random, SIGKILLs it
at a random moment (after 0.2-2 s, often during the open and recovery, or after a
random number of acknowledgements), and rolls DIR back to what a power cut at that
moment leaves: every write no successful fsync covered is undone, every file
created since its directory's last fsync disappears, ``-shm`` files go (see
``_shim``). The next cycle starts on that. ``--torn`` keeps a random half of the
unsynced writes instead (the kernel may have written them back): more adversarial.
At the end ``workload drain`` delivers everything (no shim: the power is back) and
the oracle judges both archives (DIR/archive.db and DIR/jsonl, which lose power
too).

Verdict (the last line), e.g.::

    powerloss: PASS full, 200 cycles, 61234 changes undone, journal lost_entries 0,
    812.3s, 51234 acknowledged, 0 lost, 0 duplicates, 0 out of order, 0 corrupted,
    0 erasures broken, 0 unexpected

Under ``full`` any violation FAILs, and so does a child that exits by itself, a
failed drain, a drained journal with quarantined entries, drops, dead letters or
lag, or a shim that saw no write or fsync of the journal (a blind emulation). Under
``normal`` the acknowledged appends and erasures lost are the figure users trade
for speed: they are measured, with the journal's own ``lost_entries`` (its count
of a lost WAL tail, found through the high-water in its lock file), and are no
failure; every other violation still FAILs. Exit 0 on PASS, 1 on FAIL. Every draw
comes from ``--seed``; only the moments that timing decides differ between runs.

Rules and theory:
- The child writes its op log to a pipe; the parent copies each whole line to
  ``ROOT/oplog.txt`` outside the emulated disk. A line the parent has read is
  something a client saw, so power cuts never take it back.
- The child is dead (reaped, all threads) before the rollback starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import anyio

from . import oracle
from ._shim import Machine, RollbackReport, ShimUnavailable, build_shim
from .workload import (
    ARCHIVE_NAMES,
    EXIT_FAILED,
    jsonl_archive_directory,
    sqlite_archive_path,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Where ``python -m tools...`` finds this package.
ROOT: Final = Path(__file__).absolute().parents[2]
#: The journal's files, by name: the shim counts (and ioerrors faults) these.
JOURNAL_NAMES: Final = ("journal.db", "journal.db-wal")
#: Share of cycles cut after a number of acknowledgements rather than a time.
CUT_AFTER_ACKS: Final = 0.3
#: A child that has not reached its acknowledgements by then is cut anyway.
ACK_MODE_LIMIT: Final = 10.0
#: Kinds of violation that are the measured trade under ``Durability.NORMAL``.
NORMAL_LOSSES: Final = ("lost", "erasures_broken")


@dataclass
class CycleResult:
    """How one child ended, and what the power cut took back."""

    cycle: int
    returncode: int | None
    opened: bool = False
    acknowledged: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failure: str | None = None  # the reason of an X line
    faults: int = 0  # stretches of injected faults (ioerrors)
    resumed: bool = False  # an op begun after the faults cleared was acknowledged
    quiet: float = 0.0  # seconds without an answer (A or F) before the cut
    unanswered: int = 0  # ops begun and never answered
    seconds: float = 0.0
    rollback: RollbackReport = field(default_factory=RollbackReport)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def cut(self) -> bool:
        return self.returncode == -signal.SIGKILL


class Child:
    """A workload child under the shim, and what its op log said so far."""

    def __init__(
        self,
        machine: Machine,
        argv: Sequence[str],
        oplog: IO[str],
        stderr: IO[bytes],
        *,
        ack_target: int | None = None,
    ) -> None:
        self.process = machine.spawn(argv, cwd=ROOT, stderr=stderr)
        self._oplog = oplog
        self.ack_target = ack_target
        self.enough = threading.Event()  # ack target reached, or the child ended
        self.opened = False
        self.acknowledged = 0
        self.refused: Counter[str] = Counter()
        self.failure: str | None = None
        #: Monotonic times of B lines, per op, and the ops acknowledged.
        self.begun_at: dict[str, float] = {}
        self.acknowledged_ops: list[str] = []
        #: Monotonic time of the last A or F line (0: none yet), and the ops
        #: answered.
        self.answered_at = 0.0
        self.answered: set[str] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode("utf-8", "replace")
            if not line.endswith("\n"):
                break  # a child cut mid-line (it writes whole lines; belt and braces)
            self._oplog.write(line)
            kind, _, rest = line.partition(" ")
            fields = rest.split(" ", 3)
            if kind in ("A", "F"):
                self.answered_at = time.monotonic()
                self.answered.add(fields[1].strip())
            if kind == "A":
                self.acknowledged += 1
                self.acknowledged_ops.append(fields[1].strip())
                if self.ack_target is not None and self.acknowledged >= self.ack_target:
                    self.enough.set()
            elif kind == "B":
                self.begun_at[fields[1]] = time.monotonic()
            elif kind == "F":
                self.refused[fields[2].strip()] += 1
            elif kind == "O":
                self.opened = True
            elif kind == "X":
                self.failure = rest.partition(" ")[2].strip()
        self.enough.set()

    def finish(self) -> None:
        """After the child is dead: the rest of its op log, flushed."""
        self._reader.join()
        self._oplog.flush()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def resumed_after(self, moment: float) -> bool:
        """Whether an op begun after ``moment`` was acknowledged."""
        return any(self.begun_at.get(op, 0.0) > moment for op in self.acknowledged_ops)


@dataclass
class Drive:
    """What a driver did to a cycle: fault stretches, and when the last cleared."""

    faults: int = 0
    cleared_at: float | None = None


#: Runs one cycle while its child lives, as ``drive(child, machine, rng)``;
#: returning ends the cycle (the power cut follows).
Driver = Callable[[Child, Machine, random.Random], Drive]


def workload_command(*arguments: str) -> list[str]:
    """The command line of ``python -m tools.torture.workload <arguments>``."""
    return [sys.executable, "-m", "tools.torture.workload", *arguments]


def run_drain(directory: str | os.PathLike[str], timeout: float) -> tuple[int, str]:
    """``workload drain`` (no shim); its exit code and output."""
    result = subprocess.run(
        workload_command("drain", os.fspath(directory), "--timeout", str(timeout)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    return result.returncode, (
        result.stdout.strip() + "\n" + result.stderr.strip()
    ).strip()


@dataclass
class Torture:
    """The state of one run of a power-cut tool (shared with ``ioerrors``)."""

    name: str
    args: argparse.Namespace
    root: Path
    machine: Machine
    rng: random.Random
    say: Callable[[str], None]
    cycles: list[CycleResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def directory(self) -> Path:
        return self.machine.run

    def run_cycles(self, drive: Driver, *, ack_share: float = CUT_AFTER_ACKS) -> None:
        """Run every cycle: a child under the shim, ``drive``, then a power cut.

        ``ack_share``: the share of cycles that give the child an ack target
        (``Child.enough`` is set once it is reached).
        """
        oplog_path = self.root / "oplog.txt"
        torn_rng = random.Random(f"{self.name}/torn/{self.args.seed}")
        with (
            open(oplog_path, "a", encoding="utf-8") as oplog,
            open(self.root / "children.log", "ab") as stderr,
        ):
            for number in range(1, self.args.cycles + 1):
                flaky = self.rng.choice(["none", *ARCHIVE_NAMES])
                started = time.monotonic()
                argv = workload_command(
                    "run",
                    str(self.directory),
                    "--seed",
                    str(self.args.seed),
                    "--cycle",
                    str(number),
                    "--durability",
                    self.args.durability,
                    "--flaky",
                    flaky,
                )
                self.machine.control.reset_counters()
                by_acks = self.rng.random() < ack_share
                acks = self.rng.randint(1, self.args.max_acks) if by_acks else None
                child = Child(self.machine, argv, oplog, stderr, ack_target=acks)
                try:
                    drove = drive(child, self.machine, self.rng)
                finally:
                    self.machine.kill()  # never leave a child behind, even on ^C
                cut_at = time.monotonic()
                counters = self.machine.control.counters()
                report = self.machine.power_cut(
                    torn=self.args.torn,
                    rng=torn_rng if self.args.torn else None,
                    keep_log=(
                        self.root / f"undo-{number}.log"
                        if self.args.keep_logs
                        else None
                    ),
                )
                child.finish()
                cleared = drove.cleared_at
                result = CycleResult(
                    number,
                    child.process.returncode,
                    opened=child.opened,
                    acknowledged=child.acknowledged,
                    refused=child.refused,
                    failure=child.failure,
                    faults=drove.faults,
                    resumed=cleared is not None and child.resumed_after(cleared),
                    quiet=max(0.0, cut_at - max(child.answered_at, started)),
                    unanswered=len(child.begun_at.keys() - child.answered),
                    seconds=time.monotonic() - started,
                    rollback=report,
                    counters=counters,
                )
                self.cycles.append(result)
                if self.args.verbose:
                    self.say(
                        f"cycle {number}: rc {result.returncode}, {result.acknowledged}"
                        f" acks, {drove.faults} faults, quiet {result.quiet:.2f}s with"
                        f" {result.unanswered} ops unanswered, {report.summary()}"
                    )

    def drain_and_judge(
        self,
    ) -> tuple[list[str], dict[str, object], list[oracle.ArchiveVerdict], oracle.OpLog]:
        """Drain (no shim), then judge; the problems found besides the verdicts."""
        problems: list[str] = []
        facts: dict[str, object] = {}
        code, output = run_drain(self.directory, self.args.drain_timeout)
        if code != 0:
            problems.append(f"drain exited {code}: {output[-2000:]}")
        else:
            facts = json.loads(output.splitlines()[0])
            self.say(f"drain: {output.splitlines()[0]}")
        log = oracle.read_op_log(self.root / "oplog.txt")
        verdicts = anyio.run(oracle.judge_directory, self.directory, log)
        if not self.args.quiet:
            oracle.print_verdicts(verdicts, self.say)
        return problems, facts, verdicts, log

    def blind_problems(self) -> list[str]:
        """The emulation must have seen the journal being written and synced."""
        totals = self.totals()
        acknowledged = sum(c.acknowledged for c in self.cycles)
        problems = []
        if acknowledged and not totals["named_writes"]:
            problems.append("the shim saw no write to the journal: emulation is blind")
        if (
            acknowledged
            and self.args.durability == "full"
            and not totals["named_syncs"]
        ):
            problems.append("the shim saw no fsync of the journal: emulation is blind")
        return problems

    def totals(self) -> Counter[str]:
        summed: Counter[str] = Counter()
        for cycle in self.cycles:
            summed.update(cycle.counters)
        return summed

    def describe(self, log: oracle.OpLog) -> None:
        undone = sum(c.rollback.undone for c in self.cycles)
        changes = sum(c.rollback.changes for c in self.cycles)
        names = sum(c.rollback.names_undone for c in self.cycles)
        by_file: Counter[str] = Counter()
        by_entry: Counter[str] = Counter()
        for cycle in self.cycles:
            by_file.update(cycle.rollback.undone_by_file)
            by_entry.update(cycle.rollback.names_by_kind)
        totals = self.totals()
        early = sum(1 for c in self.cycles if not c.opened)
        files = ", ".join(f"{n} {name}" for name, n in by_file.most_common(6))
        entries = ", ".join(f"{n} {what}" for what, n in by_entry.most_common(6))
        self.say(
            f"{len(self.cycles)} children ({early} cut before their open finished);"
            f" the shim saw {totals['writes']} writes ({totals['named_writes']} to"
            f" the journal), {totals['syncs']} fsyncs ({totals['named_syncs']} of"
            f" the journal), {totals['dirsyncs']} directory fsyncs; the cuts undid"
            f" {undone} of {changes} changes ({files}) and {names} directory"
            f" entries ({entries})"
        )
        self.say(
            f"{sum(c.acknowledged for c in self.cycles)} acknowledged appends and"
            f" erasures, {log.count(oracle.Outcome.UNCERTAIN, erase=False)} uncertain"
            f" appends; op log {self.root / 'oplog.txt'}"
        )

    def finish(self, failed: bool, line: str) -> int:
        """Print the verdict line; clean up unless asked to keep (or failed)."""
        print(line)
        self.machine.close()
        if failed:
            print(f"kept {self.root}")
        elif not (self.args.keep or self.args.dir):
            shutil.rmtree(self.root, ignore_errors=True)
        return 1 if failed else 0


def add_common_arguments(parser: argparse.ArgumentParser, cycles: int) -> None:
    parser.add_argument("--cycles", type=int, default=cycles)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument(
        "--torn", action="store_true", help="keep a random half of the unsynced writes"
    )
    parser.add_argument("--dir", help="work here (default: a new temporary directory)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the directory even on a pass"
    )
    parser.add_argument("--max-acks", type=int, default=400)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep each cycle's undo log (ROOT/undo-N.log) for a post-mortem",
    )
    parser.add_argument("--quiet", action="store_true", help="print the verdict only")
    parser.add_argument("--verbose", action="store_true", help="one line per cycle")


def open_torture(name: str, args: argparse.Namespace) -> Torture | int:
    """The machine for a run, or the exit code after a ``SKIP`` line."""
    try:
        library = build_shim()
    except ShimUnavailable as exc:
        print(f"SKIP {exc}")
        return 0
    root = Path(args.dir or tempfile.mkdtemp(prefix=f"torture-{name}-"))
    root.mkdir(parents=True, exist_ok=True)
    machine = Machine(root, library, fault_names=JOURNAL_NAMES)
    say: Callable[[str], None] = (lambda _: None) if args.quiet else print
    return Torture(name, args, root, machine, random.Random(f"{name}/{args.seed}"), say)


def normal_violations(
    directory: Path, log: oracle.OpLog, totals: dict[str, int]
) -> tuple[int, int]:
    """Under ``Durability.NORMAL``: the violations that are not the trade, and
    the out-of-order records excused as part of it.

    Lost appends and lost erasures are the trade. A lost erasure also brings back
    records it had erased once the journal, which lost its done-marks too,
    delivers them again: after newer records of the session, so out of order.
    Out-of-order records count as the trade only in sessions with a broken
    erasure; anywhere else they are a violation.
    """
    excused = anyio.run(_out_of_order_behind_lost_erasures, directory, log)
    others = sum(n for kind, n in totals.items() if kind not in NORMAL_LOSSES)
    return others - excused, excused


async def _out_of_order_behind_lost_erasures(directory: Path, log: oracle.OpLog) -> int:
    held = await oracle.read_sqlite_archive(
        sqlite_archive_path(directory), log.sessions
    )
    raw = oracle.read_jsonl_archive(jsonl_archive_directory(directory))
    excused = 0
    for name, sessions in (("sqlite", held), ("jsonl", raw.sessions)):
        for session, records in sessions.items():
            verdict = oracle.ArchiveVerdict(name)
            oracle.judge_session(log, session, records, verdict)
            if verdict.erasures_broken:
                excused += verdict.out_of_order
    return excused


def loss_text(verdicts: Sequence[oracle.ArchiveVerdict], excused: int) -> str:
    """What a ``normal`` run lost, per archive."""
    return (
        "; ".join(
            f"{v.name} lost {v.lost} of {v.acknowledged} acknowledged records"
            f" ({100 * v.lost / max(v.acknowledged, 1):.1f} %) and"
            f" {v.erasures_broken} erased records came back"
            for v in verdicts
        )
        + f"; {excused} records out of order behind lost erasures"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.powerloss", description=__doc__.split("\n")[0]
    )
    add_common_arguments(parser, cycles=200)
    parser.add_argument("--min-run", type=float, default=0.2)
    parser.add_argument("--max-run", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.cycles < 1 or not 0 < args.min_run <= args.max_run or args.max_acks < 1:
        parser.error("need --cycles >= 1, 0 < --min-run <= --max-run, --max-acks >= 1")
    return args


def cut_at_random(min_run: float, max_run: float) -> Driver:
    """A driver that lets the child run a random time (or to its ack target)."""

    def drive(child: Child, machine: Machine, rng: random.Random) -> Drive:
        if child.ack_target is not None:
            child.enough.wait(ACK_MODE_LIMIT)
        else:
            child.enough.wait(rng.uniform(min_run, max_run))
        return Drive()

    return drive


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torture = open_torture("powerloss", args)
    if isinstance(torture, int):
        return torture
    torture.run_cycles(cut_at_random(args.min_run, args.max_run))
    problems, facts, verdicts, log = torture.drain_and_judge()
    torture.describe(log)
    problems.extend(torture.blind_problems())
    for result in torture.cycles:
        if not result.cut:
            what = "ArchivistFailed" if result.returncode == EXIT_FAILED else "exit"
            problems.append(f"cycle {result.cycle}: child {what} {result.returncode}")
    journal = facts.get("journal", {}) if facts else {}
    assert isinstance(journal, dict)
    lost_entries = int(journal.get("lost_entries", 0) or 0)
    totals = oracle.totals(verdicts)
    if args.durability == "full":
        if facts:
            problems.extend(oracle.health_problems(facts))
        failed = bool(problems) or any(v.violations for v in verdicts)
        verdict = "FAIL" if failed else "PASS"
        head = f"{verdict} full"
    else:
        # The loss is the measurement; anything else is still a violation.
        if facts:
            problems.extend(
                p for p in oracle.health_problems(facts) if "lost_entries" not in p
            )
        others, excused = normal_violations(torture.directory, log, totals)
        failed = bool(problems) or others > 0
        verdict = "FAIL" if failed else "PASS"
        losses = loss_text(verdicts, excused)
        torture.say(f"measured loss under normal: {losses}")
        head = f"{verdict} normal (loss measured, not a failure: {losses})"
    for problem in problems:
        print(f"problem: {problem}")
    undone = sum(c.rollback.undone for c in torture.cycles)
    elapsed = time.monotonic() - torture.started
    return torture.finish(
        failed,
        f"powerloss: {head}, {len(torture.cycles)} cycles"
        f"{', torn' if args.torn else ''},"
        f" {undone} changes undone, journal lost_entries {lost_entries},"
        f" {len(problems)} other problems, {elapsed:.1f}s,"
        f" {oracle.counts_text(log.acknowledged_records, verdicts)}",
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
