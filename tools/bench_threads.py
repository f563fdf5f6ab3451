"""Benchmark the blocking API: 64 threads through SyncArchivist against 64 tasks.

All in one run on one machine, each measurement on a fresh journal, the record
shape, backend and policy of ``tools/bench.py``'s ``appends`` section: one record
of 100-200 bytes of markdown per append to one of 100 sessions,
``Durability.FULL``, one ``Queued(batch_window_ms=25, max_batch=512)``
registration with a no-op backend (so delivery runs during the measurement).

async    64 asyncio tasks awaiting ``Archivist.append_messages`` (bench.py's
         ``appends`` at 64 producers).
threads  64 threads calling ``SyncArchivist.append_messages``.
portal   64 threads calling ``portal.call(archivist.append_messages, ...)``
         through an anyio blocking portal: the plain way to do it, for scale.
crossing 64 threads making a record and crossing into a SyncArchivist's loop
         thread with a call that does nothing: what the hand-over alone costs,
         with no append at all.
ref      bench.py's raw-SQLite group-commit reference, 64 tasks.

Each runs ``--duration`` seconds; the five alternate ``--repeat`` times. Rates
are medians; the ratio threads/async is the median of each threads run over the
async run right before it (with their range), since a shared machine drifts.
Target: threads/async >= 0.5x.

    .venv/bin/python tools/bench_threads.py
    .venv/bin/python tools/bench_threads.py --duration 2 --repeat 3 --only async,threads
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.from_thread import start_blocking_portal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from journal_archivist import (
    DEFAULT_BATCH_WINDOW_MS,
    Archivist,
    Durability,
    Queued,
    Registration,
    uuid7,
)
from journal_archivist._blocking import SyncArchivist
from tools.bench import (
    BACKEND_NAME,
    BATCH,
    CAPACITY,
    SESSIONS,
    NoopBackend,
    Run,
    drive,
    environment,
    library_append,
    library_open,
    make_record,
    median_run,
    open_reference,
    perf_counter,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    from journal_archivist import MessageRecord

    SyncAppend = Callable[[UUID, MessageRecord], None]

PRODUCERS = 64
KINDS = ("async", "threads", "portal", "ref", "crossing")


def registration(window: int) -> Registration:
    """bench.py's ``library_open`` registration, for ``SyncArchivist.open``."""
    policy = Queued(capacity=CAPACITY, max_batch=BATCH, batch_window_ms=window)
    return Registration(name=BACKEND_NAME, backend=NoopBackend(), write_policy=policy)


def drive_threads(
    append: SyncAppend, threads: int, sessions: Sequence[UUID], duration: float
) -> Run:
    """``threads`` threads appending one record per call for ``duration`` s."""
    latencies: list[float] = []
    go = threading.Barrier(threads + 1)
    deadline = [0.0]

    def producer(index: int) -> None:
        rng, mine = random.Random(index), []
        go.wait()
        end = deadline[0]
        while perf_counter() < end:
            session = sessions[rng.randrange(len(sessions))]
            record = make_record(session, rng)
            began = perf_counter()
            append(session, record)
            mine.append(perf_counter() - began)
        latencies.extend(mine)  # one list op per thread, atomic under the GIL

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start = perf_counter()
    deadline[0] = start + duration
    go.wait()
    for worker in workers:
        worker.join()
    return Run(len(latencies), perf_counter() - start, latencies)


class ThreadBench:
    def __init__(self, args: argparse.Namespace, root: str) -> None:
        self.args = args
        self.root = root
        self.sessions = [uuid7() for _ in range(SESSIONS)]
        self._n = 0

    def fresh(self, label: str) -> str:
        self._n += 1
        directory = os.path.join(self.root, f"{self._n:02d}-{label}")
        os.makedirs(directory)
        return os.path.join(directory, "journal.db")

    def run_async(self) -> Run:
        async def main() -> Run:
            path = self.fresh("async")
            async with library_open(path, NoopBackend(), self.args.window) as a:
                return await drive(
                    library_append(a),
                    PRODUCERS,
                    self.sessions,
                    duration=self.args.duration,
                )

        return anyio.run(main, backend="asyncio")

    def run_threads(self) -> Run:
        path = self.fresh("threads")
        reg = registration(self.args.window)
        with SyncArchivist.open(path, [reg], durability=Durability.FULL) as sync:
            return drive_threads(
                lambda session, record: sync.append_messages(session, [record]),
                PRODUCERS,
                self.sessions,
                self.args.duration,
            )

    def run_portal(self) -> Run:
        path = self.fresh("portal")

        async def open_detached() -> Archivist:
            return await library_open(path, NoopBackend(), self.args.window)

        with start_blocking_portal("asyncio") as portal:
            archivist = portal.call(open_detached)
            try:
                return drive_threads(
                    lambda session, record: portal.call(
                        archivist.append_messages, session, [record]
                    ),
                    PRODUCERS,
                    self.sessions,
                    self.args.duration,
                )
            finally:
                portal.call(archivist.shutdown, 0.0)

    def run_crossing(self) -> Run:
        path = self.fresh("crossing")
        reg = registration(self.args.window)
        with SyncArchivist.open(path, [reg], durability=Durability.FULL) as sync:
            cross = sync._loop_thread.call_sync
            return drive_threads(
                lambda _session, _record: cross(_nothing),
                PRODUCERS,
                self.sessions,
                self.args.duration,
            )

    def run_ref(self) -> Run:
        async def main() -> Run:
            async with open_reference(self.fresh("ref")) as ref:
                return await drive(
                    ref.append, PRODUCERS, self.sessions, duration=self.args.duration
                )

        return anyio.run(main, backend="asyncio")


def _nothing() -> None:
    """The call ``crossing`` makes in the loop."""


def _spread(ratios: Sequence[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def table(runs: dict[str, list[Run]]) -> str:
    rows = [
        "| 64 producers | appends/s (median) | runs | p50 / p99 ms | / async |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    names = {
        "async": "asyncio tasks, `Archivist`",
        "threads": "threads, `SyncArchivist`",
        "portal": "threads, anyio `BlockingPortal.call`",
        "ref": "asyncio tasks, raw-SQLite reference",
        "crossing": "threads, crossing into the loop only (no append)",
    }
    base = runs.get("async")
    for kind in KINDS:
        if not (done := runs.get(kind)):
            continue
        run = median_run(done)
        ratio = ""
        if base and kind != "async":
            ratio = _spread([x.rate / y.rate for x, y in zip(done, base, strict=True)])
        rates = ", ".join(f"{r.rate:,.0f}" for r in done)
        rows.append(
            f"| {names[kind]} | {statistics.median(r.rate for r in done):,.0f} |"
            f" {rates} | {run.ms(0.5):.2f} / {run.ms(0.99):.2f} | {ratio} |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add = parser.add_argument
    add("--only", default=",".join(KINDS), help=f"which of {KINDS} (default: all)")
    add("--duration", type=float, default=3.0, help="seconds per run")
    add("--repeat", type=int, default=5, help="runs of each, alternating")
    add("--window", type=int, default=DEFAULT_BATCH_WINDOW_MS,
        help="Queued(batch_window_ms=...)")  # fmt: skip
    add("--dir", default=None, help="where to make the temp directory")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"unknown {sorted(unknown)}; choose from {KINDS}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="journal-bench-threads-", dir=args.dir)
    print(f"{environment()}\njournals under {root}\n")
    bench = ThreadBench(args, root)
    runs: dict[str, list[Run]] = {kind: [] for kind in args.kinds}
    try:
        for i in range(args.repeat):
            for kind in KINDS:  # a fixed order: threads right after async
                if kind in runs:
                    run: Any = getattr(bench, f"run_{kind}")()
                    runs[kind].append(run)
                    print(f"run {i + 1} {kind:<8} {run.summary()}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "async" in runs and "threads" in runs:
        ratios = [
            x.rate / y.rate for x, y in zip(runs["threads"], runs["async"], strict=True)
        ]
        met = "met" if statistics.median(ratios) >= 0.5 else "NOT met"
        print(f"\nthreads / async: {_spread(ratios)} (target >= 0.5x: {met})")
    print(f"\n{environment()}\n\n{table(runs)}\n")
    print(f"Command: `{shlex.join([os.path.relpath(sys.executable), *sys.argv])}`")


if __name__ == "__main__":
    main()
