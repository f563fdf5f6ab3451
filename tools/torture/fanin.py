"""The fan-in proof: worker processes on slot journals, killed and scaled down.

    python -m tools.torture.fanin [--workers 4] [--max-slots 8] [--kills 6]
        [--then-workers 2] [--then-max-slots 2] [--acks-per-kill 200]
        [--seed 1] [--dir DIR] [--keep] [--stores sqlite,postgres,jetstream]
        [--pg-dsn DSN] [--nats-url URL]

Phase 1 runs ``--workers`` workers (``tools.torture.fanin_worker``) on one journal
directory with ``--max-slots`` slots, all appending to the same sessions and
erasing some, delivering to every store. ``--kills`` times, once the workers
together acknowledged ``--acks-per-kill`` more ops, one worker chosen at random
is SIGKILLed and a new one started in its place (it claims the dead one's slot
and its backlog). Phase 2 SIGKILLs every worker and starts ``--then-workers``
with ``--then-max-slots`` slots: the slots past that are orphans, which the new
workers must adopt. Once each has acknowledged ops of its own they get SIGTERM,
adopt what is left, shut down and exit.

Then: every slot's journal must be empty, and the oracle (``fanin_oracle``) judges
each store against every worker's op log: every acknowledged record present
exactly once unless erased, no erased record back, nothing torn or unknown.
Stores get a schema and a stream of the run's own, dropped at the end unless
``--keep``. The verdict is the last line, e.g.::

    fanin: PASS 10 processes, 6 kills, 5 orphans adopted, 31702 records
    acknowledged, 0 lost, 0 duplicates, 0 resurrected, 0 torn, 0 unexpected,
    0 left in slots, 41.2s

Exit 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar, Final

import anyio

from journal_archivist._slots import slot_indexes, slot_journal

from . import fanin_oracle, fanin_stores, fanin_worker

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT: Final = Path(__file__).absolute().parents[2]
#: Seconds a worker may take to open, or to reach the acknowledgements awaited.
PROGRESS_LIMIT: Final = 60.0
#: Seconds a worker may take to stop on SIGTERM: to drain what orphans are left
#: (the slowest store sets the pace) and its own backlog.
STOP_LIMIT: Final = 600.0


class Child:
    """One worker process, its op log copied to a file as it comes."""

    #: Every worker started, so that none outlives a run that failed.
    started: ClassVar[list[Child]] = []

    def __init__(self, args: argparse.Namespace, run: str, max_slots: int) -> None:
        Child.started.append(self)
        self.run = run
        self.acks = 0
        self.opened = threading.Event()
        self.stopped_line: str | None = None
        self._progress = threading.Condition()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.torture.fanin_worker",
                args.dir,
                "--run",
                run,
                "--seed",
                str(args.seed),
                "--max-slots",
                str(max_slots),
                *store_arguments(args),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=args.stderr,
            text=True,
        )
        self._log: IO[str] = open(  # noqa: SIM115 - closed by the reader
            Path(args.dir, f"oplog-{run}.txt"), "w", encoding="utf-8"
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self._log, self.process.stdout:
            for line in self.process.stdout:
                self._log.write(line)
                if line.startswith("K "):
                    with self._progress:
                        self.acks += 1
                        self._progress.notify_all()
                elif line.startswith("O "):
                    self.opened.set()
                elif line.startswith("S "):
                    self.stopped_line = line
        self.opened.set()  # it ended (maybe before opening)
        with self._progress:
            self._progress.notify_all()

    def wait_acks(self, count: int) -> None:
        """Wait until it acknowledged ``count`` ops (or ended)."""
        with self._progress:
            self._progress.wait_for(
                lambda: self.acks >= count or self.process.poll() is not None,
                PROGRESS_LIMIT,
            )

    def end(self, how: signal.Signals) -> float:
        """Send ``how``, wait for the exit; the moment it was gone.

        Raises ``SystemExit`` if it had exited by itself (it refused to open,
        or failed), or did not stop cleanly on SIGTERM: nothing here makes
        either legitimate.
        """
        self.process.send_signal(how)
        self.process.wait(STOP_LIMIT)
        gone = time.time()
        self._reader.join()
        code = self.process.returncode
        clean = code == 0 and self.stopped_line is not None
        if code != -signal.SIGKILL and not (how == signal.SIGTERM and clean):
            raise SystemExit(
                f"worker {self.run} ended with exit {code}, not by {how.name};"
                " see workers.log"
            )
        return gone


def store_arguments(args: argparse.Namespace) -> list[str]:
    """The store options as a worker takes them."""
    return [
        "--sessions",
        str(args.sessions),
        "--stores",
        args.stores,
        "--pg-dsn",
        args.pg_dsn,
        "--pg-schema",
        args.pg_schema,
        "--nats-url",
        args.nats_url,
        "--nats-stream",
        args.nats_stream,
    ]


def left_in_slots(directory: str) -> dict[int, int]:
    """Entries still journaled, per slot that has any."""
    left = {}
    journals = str(Path(directory, "journals"))
    for index in slot_indexes(journals):
        with closing(sqlite3.connect(slot_journal(journals, index))) as db:
            (count,) = db.execute("SELECT count(*) FROM entries").fetchone()
        if count:
            left[index] = count
    return left


def run_phases(args: argparse.Namespace, ended: dict[str, float]) -> tuple[int, int]:
    """Both phases; how many processes ran and how many were killed."""
    rng = random.Random(f"fanin-kills/{args.seed}")
    runs = iter(range(1, 1_000_000))
    live = [Child(args, f"r{next(runs)}", args.max_slots) for _ in range(args.workers)]
    started, kills = len(live), 0
    for _ in range(args.kills):
        for child in live:
            child.opened.wait(PROGRESS_LIMIT)
        victim = rng.choice(live)
        victim.wait_acks(victim.acks + max(1, args.acks_per_kill // len(live)))
        ended[victim.run] = victim.end(signal.SIGKILL)
        kills += 1
        live.remove(victim)
        live.append(Child(args, f"r{next(runs)}", args.max_slots))
        started += 1
    for child in live:  # phase 2: all die, fewer come back
        child.opened.wait(PROGRESS_LIMIT)
        ended[child.run] = child.end(signal.SIGKILL)
        kills += 1
    live = [
        Child(args, f"r{next(runs)}", args.then_max_slots)
        for _ in range(args.then_workers)
    ]
    started += len(live)
    for child in live:
        child.wait_acks(max(1, args.acks_per_kill // len(live)))
    for child in live:
        ended[child.run] = child.end(signal.SIGTERM)
    return started, kills


def adopted_count(directory: str) -> int:
    """Orphans the last workers drained, from their ``S`` lines."""
    total = 0
    for path in Path(directory).glob("oplog-*.txt"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("S "):
                total += int(line.split()[2])
    return total


async def prepare_stores(args: argparse.Namespace) -> None:
    """Create each store's schema or stream, so workers only ever use them."""
    for name in fanin_stores.names(args):
        async with fanin_stores.backend(name, args, create=True) as store:
            await store.write_batch([])
            await store.health_check()


async def judge_stores(
    args: argparse.Namespace, log: fanin_oracle.FanInLog
) -> list[fanin_oracle.Verdict]:
    sessions = fanin_worker.session_ids(args.seed, args.sessions)
    verdicts = []
    for name in fanin_stores.names(args):
        held = await fanin_stores.contents(name, args, sessions)
        verdicts.append(fanin_oracle.judge(name, log, held))
    return verdicts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.torture.fanin")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-slots", type=int, default=8)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--then-workers", type=int, default=2)
    parser.add_argument("--then-max-slots", type=int, default=2)
    parser.add_argument("--acks-per-kill", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--dir")
    parser.add_argument("--keep", action="store_true")
    fanin_stores.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.then_max_slots >= args.max_slots:
        parser.error("--then-max-slots must be below --max-slots: orphans to adopt")
    if args.max_slots <= args.workers:
        # A dead worker's slot may be held by a peer adopting it when its
        # replacement starts: the replacement needs another (docs/scaling.md).
        parser.error("--max-slots must be above --workers")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    made = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="fanin-")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    suffix = f"{args.seed}_{random.randrange(1 << 30)}"
    args.pg_schema = f"{args.pg_schema}_{suffix}"
    args.nats_stream = f"{args.nats_stream}_{suffix}"
    begun = time.monotonic()
    ended: dict[str, float] = {}
    with open(Path(args.dir, "workers.log"), "wb") as args.stderr:
        anyio.run(prepare_stores, args)
        try:
            started, kills = run_phases(args, ended)
            left = left_in_slots(args.dir)
            lines = [
                line
                for path in sorted(Path(args.dir).glob("oplog-*.txt"))
                for line in path.read_text(encoding="utf-8").splitlines(True)
            ]
            log = fanin_oracle.parse_log(lines, ended)
            verdicts = anyio.run(judge_stores, args, log)
        finally:
            for child in Child.started:
                if child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
            if not args.keep:
                anyio.run(fanin_stores.drop, args)
    for verdict in verdicts:
        print(
            f"{verdict.store}: {verdict.present} records held; of the appends,"
            f" {verdict.had_to_stay} had to be there and {verdict.had_to_go} had"
            " to be erased"
        )
        for kind in ("lost", "resurrected", "duplicates", "torn", "unexpected"):
            examples = getattr(verdict, kind)
            if examples:
                print(f"{verdict.store}: {len(examples)} {kind}, e.g. {examples[:3]}")

    def total(kind: str) -> int:
        return sum(len(getattr(v, kind)) for v in verdicts)

    ok = all(v.ok for v in verdicts) and not left
    print(
        f"fanin: {'PASS' if ok else 'FAIL'} {started} processes, {kills} kills,"
        f" {adopted_count(args.dir)} orphans adopted, {log.acknowledged()} records"
        f" acknowledged, {total('lost')} lost, {total('duplicates')} duplicates,"
        f" {total('resurrected')} resurrected, {total('torn')} torn,"
        f" {total('unexpected')} unexpected, {sum(left.values())} left in slots,"
        f" {time.monotonic() - begun:.1f}s"
    )
    if made and ok and not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
