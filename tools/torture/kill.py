"""Kill torture: SIGKILL the workload at random moments, restart, judge everything.

    python -m tools.torture.kill --cycles 200 --seed 1 [--durability full|normal]
        [--dir DIR] [--keep] [--min-run 0.2] [--max-run 2.0]

Each cycle starts ``python -m tools.torture.workload run DIR --cycle N`` on the
same directory (so it first recovers what the previous child left), with a flaky
archive chosen at random (none, sqlite or jsonl), and SIGKILLs it at a random
moment, one of three kinds: 20 % within 0.6 s of the start (during the start-up,
the open and the recovery of what the last child left); 50 % a random
``--min-run`` to ``--max-run`` seconds (0.2-2) after its open finished (its ``O``
line); 30 % after a random 1 to ``--max-acks`` acknowledgements (or 10 s). The
last two are measured from the child's own progress, so a slow machine still
gets appends in every cycle of those kinds. The op logs of all children are
appended to ``DIR/oplog.txt``, their stderr to ``DIR/children.log``. At the end,
``workload drain`` delivers everything and the oracle judges both archives.

Verdict (the last line), e.g.::

    kill: PASS 200 cycles, 51234 acknowledged, 0 lost, 0 duplicates, 0 out of
    order, 0 corrupted, 0 erasures broken, 0 unexpected, 812.3s

FAIL if the oracle finds any violation, a child exits by itself (the journal
refused to open, ``ArchivistFailed``, a crash: nothing here injects I/O errors), the
drain fails, or the drained journal reports lost or quarantined entries, drops,
dead letters or lag. Exit 0 on PASS, 1 on FAIL. Every draw comes from ``--seed``;
only the moments that timing decides (how far a child got) differ between runs.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import anyio

from . import oracle
from .workload import ARCHIVE_NAMES, EXIT_FAILED

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Where ``python -m tools...`` finds this package (not resolved: a symlinked
#: tools directory runs its children against the tree it was started from).
ROOT: Final = Path(__file__).absolute().parents[2]
#: Shares of the kinds of kill moment: during start-up, a time after the open,
#: after a number of acknowledgements.
KILL_DURING_STARTUP: Final = 0.2
KILL_AFTER_ACKS: Final = 0.3
STARTUP_WINDOW: Final = 0.6
#: A child that has not opened, or not reached its acknowledgements, by then is
#: killed anyway (the oracle still judges what it did).
PROGRESS_LIMIT: Final = 10.0


@dataclass(frozen=True)
class KillMoment:
    """When to kill one child: ``seconds`` after the start (``after_open``: after
    its ``O`` line), or after ``acknowledgements``."""

    seconds: float | None = None
    after_open: bool = False
    acknowledgements: int | None = None

    @staticmethod
    def draw(rng: random.Random, args: argparse.Namespace) -> KillMoment:
        roll = rng.random()
        if roll < KILL_DURING_STARTUP:
            return KillMoment(seconds=rng.uniform(0.0, STARTUP_WINDOW))
        if roll < KILL_DURING_STARTUP + KILL_AFTER_ACKS:
            return KillMoment(acknowledgements=rng.randint(1, args.max_acks))
        return KillMoment(
            seconds=rng.uniform(args.min_run, args.max_run), after_open=True
        )


@dataclass
class CycleResult:
    """How one child ended."""

    cycle: int
    returncode: int | None
    opened: bool
    acknowledged: int
    seconds: float


@dataclass
class KillStats:
    cycles: list[CycleResult] = field(default_factory=list)

    @property
    def killed_before_open(self) -> int:
        return sum(1 for c in self.cycles if not c.opened)

    def unexpected_exits(self) -> list[CycleResult]:
        """Children that ended by themselves: nothing here makes that legitimate."""
        return [c for c in self.cycles if c.returncode != -signal.SIGKILL]


def workload_command(*arguments: str) -> list[str]:
    """The command line of ``python -m tools.torture.workload <arguments>``."""
    return [sys.executable, "-m", "tools.torture.workload", *arguments]


def run_cycle(
    directory: str,
    cycle: int,
    *,
    seed: int,
    durability: str,
    flaky: str,
    moment: KillMoment,
    oplog: IO[str],
    stderr: IO[bytes],
) -> CycleResult:
    """Start one child, kill it at the chosen moment, keep its op log lines."""
    started = time.monotonic()
    child = subprocess.Popen(
        workload_command(
            "run",
            directory,
            "--seed",
            str(seed),
            "--cycle",
            str(cycle),
            "--durability",
            durability,
            "--flaky",
            flaky,
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert child.stdout is not None
    enough = threading.Event()  # enough acknowledgements, or the child ended
    opened = threading.Event()  # the O line came, or the child ended
    state = {"acknowledged": 0, "opened": 0}

    def read_op_log() -> None:
        # Only whole lines are kept; the op log is written line by line anyway.
        assert child.stdout is not None
        for line in child.stdout:
            if not line.endswith("\n"):
                break
            oplog.write(line)
            if line.startswith("A "):
                state["acknowledged"] += 1
                wanted = moment.acknowledgements
                if wanted is not None and state["acknowledged"] >= wanted:
                    enough.set()
            elif line.startswith("O "):
                state["opened"] = 1
                opened.set()
        enough.set()  # the child ended by itself
        opened.set()

    with child:  # closes the pipe at the end
        reader = threading.Thread(target=read_op_log, daemon=True)
        reader.start()
        if moment.seconds is None:
            enough.wait(PROGRESS_LIMIT)
        else:
            if moment.after_open:
                opened.wait(PROGRESS_LIMIT)
            enough.wait(moment.seconds)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
    oplog.flush()
    return CycleResult(
        cycle,
        child.returncode,
        bool(state["opened"]),
        state["acknowledged"],
        time.monotonic() - started,
    )


def run_drain(directory: str, timeout: float) -> tuple[int, str]:
    result = subprocess.run(
        workload_command("drain", directory, "--timeout", str(timeout)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    return result.returncode, (
        result.stdout.strip() + "\n" + result.stderr.strip()
    ).strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.kill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--dir", help="work here (default: a new temporary directory)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the directory even on a pass"
    )
    parser.add_argument("--min-run", type=float, default=0.2)
    parser.add_argument("--max-run", type=float, default=2.0)
    parser.add_argument("--max-acks", type=int, default=400)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--quiet", action="store_true", help="print the verdict only")
    args = parser.parse_args(argv)
    if args.cycles < 1 or not 0 < args.min_run <= args.max_run or args.max_acks < 1:
        parser.error("need --cycles >= 1, 0 < --min-run <= --max-run, --max-acks >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    directory = args.dir or tempfile.mkdtemp(prefix="torture-kill-")
    os.makedirs(directory, exist_ok=True)
    say = (lambda _: None) if args.quiet else print
    rng = random.Random(f"kill/{args.seed}")
    stats = KillStats()
    oplog_path = os.path.join(directory, "oplog.txt")
    # A reused --dir goes on from its last cycle: (cycle, op) must stay unique.
    first = 1
    if os.path.exists(oplog_path):
        first = max(oracle.read_op_log(oplog_path).cycles, default=0) + 1
    with (
        open(oplog_path, "a", encoding="utf-8") as oplog,
        open(os.path.join(directory, "children.log"), "ab") as stderr,
    ):
        for cycle in range(first, first + args.cycles):
            flaky = rng.choice(["none", *ARCHIVE_NAMES])
            moment = KillMoment.draw(rng, args)
            result = run_cycle(
                directory,
                cycle,
                seed=args.seed,
                durability=args.durability,
                flaky=flaky,
                moment=moment,
                oplog=oplog,
                stderr=stderr,
            )
            stats.cycles.append(result)
            if result.returncode != -signal.SIGKILL:
                say(f"cycle {cycle}: the child exited by itself ({result.returncode})")

    problems: list[str] = []
    for exit_ in stats.unexpected_exits():
        what = "ArchivistFailed" if exit_.returncode == EXIT_FAILED else "exit"
        problems.append(f"cycle {exit_.cycle}: child {what} {exit_.returncode}")
    code, output = run_drain(directory, args.drain_timeout)
    if code != 0:
        problems.append(f"drain exited {code}: {output[-2000:]}")
    else:
        facts = json.loads(output.splitlines()[0])
        problems.extend(oracle.health_problems(facts))
        say(f"drain: {output.splitlines()[0]}")
    log = oracle.read_op_log(oplog_path)
    verdicts = anyio.run(oracle.judge_directory, directory, log)
    if not args.quiet:
        oracle.print_verdicts(verdicts)
    acknowledged = sum(c.acknowledged for c in stats.cycles)
    say(
        f"{len(stats.cycles)} children, {stats.killed_before_open} killed before"
        f" their open finished, {acknowledged} acknowledged calls,"
        f" {log.count(oracle.Outcome.UNCERTAIN, erase=False)} uncertain appends,"
        f" {log.count(oracle.Outcome.ACKNOWLEDGED, erase=True)} acknowledged"
        " erasures"
    )
    for problem in problems:
        print(f"problem: {problem}")
    failed = bool(problems) or any(v.violations for v in verdicts)
    elapsed = time.monotonic() - started
    print(
        f"kill: {'FAIL' if failed else 'PASS'} {len(stats.cycles)} cycles,"
        f" {oracle.counts_text(log.acknowledged_records, verdicts)},"
        f" {len(problems)} other problems, {elapsed:.1f}s"
    )
    if failed or args.keep or args.dir:
        if failed:
            print(f"kept {directory} (op log {oplog_path})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
