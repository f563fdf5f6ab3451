"""Where an append's time goes: the library's own per-append work, part by part,
and what garbage collection costs under load.

    .venv/bin/python tools/append_parts.py [--rounds 2000] [--gc-seconds 3]

Parts (no event loop, no I/O; microseconds per append, best of 5): validating and
encoding one record (``encode_append``), the ``PendingAppend``, one commit
round's pure work for 64 appends (intake, numbering with the CRC and
``EntryRow``s, the hand-over and the acknowledgement), and a writer's claim,
coalescing and settlement of a 512-entry batch. Each round and batch figure has
the cost of building its ``PendingAppend``s taken off. Then ``--gc-seconds`` of
512 producers appending into a no-op backend (``tools/bench.py``'s ``drive``),
with the collector on and off, alternating: rate, p50/p99 and the collections.
Run by hand; the figures in ``docs/performance.md`` came from it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from journal_archivist._admission import Backlog
from journal_archivist._backlog import Book
from journal_archivist._batching import coalesce
from journal_archivist._intake import (
    Intake,
    PendingAppend,
    acknowledge,
    number,
)
from journal_archivist._ledger import Ledger, added_by_backend, handover
from journal_archivist._policies import OverflowPolicy, Queued
from journal_archivist._records import encode_append
from journal_archivist._rows import BackendRow
from tools import bench

if TYPE_CHECKING:
    from collections.abc import Callable

    from journal_archivist import MessageRecord

ROUND = 64
BATCH = 512


def per_append(fn: Callable[[], object], repeat: int, appends: int) -> float:
    """Microseconds per append of ``fn`` (which handles ``appends``), best of 5."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / repeat / appends * 1e6


def parts(rounds: int) -> None:
    rng = random.Random(1)
    sessions = [uuid.uuid4() for _ in range(100)]
    calls: list[tuple[uuid.UUID, MessageRecord]] = []
    for _ in range(ROUND):
        session = sessions[rng.randrange(len(sessions))]
        calls.append((session, bench.make_record(session, rng)))
    session, record = calls[0]
    payload = encode_append(session, [record], max_record_bytes=1 << 20)

    def appends(count: int) -> list[PendingAppend]:
        made = []
        for i in range(count):
            s, r = calls[i % ROUND]
            made.append(PendingAppend(s, payload, [r]))
        return made

    def one_round() -> None:
        intake = Intake()
        for append in appends(ROUND):
            intake.push(append)
        backlog = Backlog("a", 1, OverflowPolicy.BLOCK, 1 << 30, None, 0, 0)
        decision = intake.decide(0.0, [backlog], space=lambda nbytes: None)
        numbered = number(decision.admitted, 0)
        added = added_by_backend(numbered.entries, numbered.nbytes, [0], [(0, 1)])
        handover(
            1,
            numbered.entries,
            uniform=True,
            added=added[0],
            drops=(),
            dropped_newest=0,
            tail=numbered.tail,
        )
        acknowledge(decision.admitted)

    row = BackendRow(0, "a", 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def one_batch() -> None:
        book = Book("a", Queued(), row, tail=0)
        entries = appends(BATCH)
        for seq, entry in enumerate(entries, 1):
            entry.seq = seq
        book.journaled(entries, BATCH, sum(e.size for e in entries))
        batch = book.claim(BATCH, 1 << 30)
        coalesce(batch)
        settlement, _ = book.settle(batch, [])
        Ledger().settled(0, settlement)

    print(
        "encode_append, one record      "
        f"{per_append(lambda: encode_append(session, [record], max_record_bytes=1 << 20), rounds * 10, 1):6.2f} us"  # noqa: E501
    )
    make = per_append(lambda: appends(ROUND), rounds, ROUND)
    print(f"PendingAppend                  {make:6.2f} us")
    round_cost = per_append(one_round, rounds, ROUND) - make
    print(f"a round's intake..acknowledge  {round_cost:6.2f} us")
    batch_make = per_append(lambda: appends(BATCH), max(1, rounds // 8), BATCH)
    batch_cost = per_append(one_batch, max(1, rounds // 8), BATCH) - batch_make
    print(f"a batch's claim..settlement    {batch_cost:6.2f} us")


async def loaded(seconds: float, collector: bool) -> str:
    sessions = [uuid.uuid4() for _ in range(100)]
    with tempfile.TemporaryDirectory() as directory:
        backend = bench.NoopBackend()
        path = os.path.join(directory, "journal.db")
        window = bench.DEFAULT_BATCH_WINDOW_MS
        async with bench.library_open(path, backend, window) as archivist:
            before = [s["collections"] for s in gc.get_stats()]
            if not collector:
                gc.disable()
            try:
                run = await bench.drive(
                    bench.library_append(archivist), 512, sessions, duration=seconds
                )
            finally:
                gc.enable()
            after = [s["collections"] for s in gc.get_stats()]
    counts = "/".join(str(b - a) for a, b in zip(before, after, strict=True))
    return (
        f"collector {'on ' if collector else 'off'}  {run.rate:9,.0f}/s"
        f"  p50 {run.ms(0.5):5.1f} ms  p99 {run.ms(0.99):5.1f} ms"
        f"  collections {counts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--gc-seconds", type=float, default=3.0)
    args = parser.parse_args()
    parts(args.rounds)
    for collector in (True, False, True, False):
        print(asyncio.run(loaded(args.gc_seconds, collector)))


if __name__ == "__main__":
    main()
