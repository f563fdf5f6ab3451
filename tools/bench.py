"""Benchmark journal_archivist against a minimal hand-written group-commit journal.

Both run on the same machine in the same run, each measurement on a fresh journal in
a new temporary directory (under /tmp, or ``--dir``). Records carry 100-200 bytes of
``content_md`` and go to 100 sessions at random, one record per append call.

appends  Durable appends/s and p50/p99 append latency with 1, 64 and 512 producers,
         ``--duration`` seconds each. The library runs ``Durability.FULL`` with one
         no-op backend, so delivery runs concurrently; the reference's reader too.
e2e      Records/s from the first append until all ``--e2e`` records (64 producers)
         were delivered to a no-op backend and marked done (``wait_drained``) or,
         for the reference, deleted.
         Both alternate library and reference runs ``--repeat`` times: the rates
         shown are the medians, the ratio is the median of the ratios of each
         library run to the reference run right after it (with their range),
         since a shared machine drifts between runs.
backlog  Library only. ``--backlog`` entries are journaled while the backend is held
         at a gate, the archivist is shut down, then a child process (a clean RSS)
         reopens the journal with a no-op backend under the same registration name
         and drains it: time from ``Archivist.open`` to the first delivery, drain
         rate (open to drained), peak RSS (VmHWM) and its growth over the VmRSS
         before the open.
naive    One transaction and one fsync per append, one producer: the baseline.
backends End to end into each built-in backend (``--backends``): records/s from the
         first of ``--backend-records`` appends (64 producers, 100 sessions) until
         ``wait_drained``, median of ``--repeat`` runs, each right after the same
         run into the no-op backend (the ratio shows the backend's own cost, free
         of the machine's drift); beside it, the naive rate of
         the same backend taking one record per call, one call after another (one
         INSERT and COMMIT per record for SQLite and PostgreSQL, one fsync for
         JSONL, one POST for the webhook, one publish (and its mark check) for
         JetStream, each awaited before the next; ``webhook-batch`` is the
         webhook with ``per_batch=True``). PostgreSQL:
         ``$JOURNAL_ARCHIVIST_BENCH_PG_DSN`` (default
         postgresql://postgres@127.0.0.1:5432/test), a fresh schema per run,
         dropped after. Webhook: a minimal HTTP sink answering 200 in a child
         process on 127.0.0.1. JetStream: ``$JOURNAL_ARCHIVIST_BENCH_NATS_URL``
         (default nats://127.0.0.1:4222), a fresh stream per run, deleted after.

The reference (``Reference``): aiosqlite, WAL, synchronous=FULL. Appenders put
``(payload, future)`` on a queue and await it; one committer takes all that is
queued (at most 512), runs BEGIN IMMEDIATE / executemany INSERT / COMMIT and
resolves the futures. One reader selects ``seq > last ORDER BY seq LIMIT 512``,
hands the rows to a no-op and deletes that range on its own synchronous=NORMAL
connection (an asyncio lock keeps that DELETE and the committer's transactions
apart, so neither sleeps in SQLite's busy handler).

Run from the repository root (the default run takes about 2-3 minutes, most of it
building the 1,000,000-entry backlog); the Markdown table printed at the end is
meant for docs/performance.md:

    .venv/bin/python tools/bench.py
    .venv/bin/python tools/bench.py --only appends,e2e --duration 2
    .venv/bin/python tools/bench.py --only backlog --backlog 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio
import msgspec

from journal_archivist import (
    DEFAULT_BATCH_WINDOW_MS,
    Archivist,
    Durability,
    MessageRecord,
    OpeningArchivist,
    Queued,
    Registration,
    uuid7,
)
from journal_archivist.backends import ArchiveBackend
from journal_archivist.testing import MockBackend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from uuid import UUID

    from journal_archivist.backends import SessionGroup

    Append = Callable[[UUID, MessageRecord], Awaitable[None]]

SECTIONS = ("appends", "e2e", "backlog", "naive", "backends")
BACKENDS = ("sqlite", "jsonl", "postgres", "webhook", "webhook-batch", "jetstream")
PG_DSN = os.environ.get(
    "JOURNAL_ARCHIVIST_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
NATS_URL = os.environ.get("JOURNAL_ARCHIVIST_BENCH_NATS_URL", "nats://127.0.0.1:4222")
SESSIONS = 100
BATCH = 512  # the reference's group and read size; the library's max_batch
CAPACITY = 2_000_000  # large enough that no backlog here is refused
BACKEND_NAME = "sink"
E2E_PRODUCERS = 64
BUILD_PRODUCERS = 512
MB = 1024 * 1024
SCHEMA = (  # the reference's (and the naive baseline's) table
    # AUTOINCREMENT: once the reader empties the table, a plain rowid would start
    # again at 1, below the reader's last seq, and read_loop would never see it.
    "CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " session BLOB NOT NULL,"
    " payload BLOB NOT NULL)"
)
perf_counter = time.perf_counter

_TEXT = (
    "the journal keeps every message durable until each backend archived it so a"
    " crash restart or outage loses nothing that was acknowledged to a caller"
)


def _contents(count: int = 256) -> list[str]:
    rng = random.Random(42)
    pool = []
    for _ in range(count):
        size, text = rng.randint(100, 200), ""
        while len(text) < size:
            text += rng.choice(_TEXT.split()) + " "
        pool.append(text[:size])
    return pool


CONTENTS = _contents()


def make_record(session: UUID, rng: random.Random) -> MessageRecord:
    """A realistic record: 100-200 bytes of markdown, default id and timestamp."""
    role = "user" if rng.random() < 0.5 else "assistant"
    return MessageRecord(session=session, role=role, content_md=rng.choice(CONTENTS))


# -- driving producers ------------------------------------------------------------


@dataclass
class Run:
    """What one driven run measured."""

    count: int
    elapsed: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def ms(self, q: float) -> float:
        """The ``q`` quantile of the append latency, in milliseconds."""
        ordered = sorted(self.latencies)
        return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.rate:>9,.0f}/s  p50 {self.ms(0.5):6.2f} ms  p99"
            f" {self.ms(0.99):6.2f} ms  ({self.count:,} appends)"
        )


async def drive(
    append: Append,
    producers: int,
    sessions: Sequence[UUID],
    *,
    duration: float | None = None,
    total: int | None = None,
) -> Run:
    """Run ``producers`` tasks appending one record per call, each call timed.

    Stops after ``duration`` seconds or ``total`` appends in all, whichever is set.
    """
    latencies: list[float] = []
    issued = 0
    start = perf_counter()
    deadline = start + duration if duration is not None else float("inf")
    limit = total if total is not None else float("inf")

    async def producer(index: int) -> None:
        nonlocal issued
        rng = random.Random(index)
        while issued < limit and perf_counter() < deadline:
            issued += 1
            session = sessions[rng.randrange(len(sessions))]
            record = make_record(session, rng)
            began = perf_counter()
            await append(session, record)
            latencies.append(perf_counter() - began)

    async with anyio.create_task_group() as group:
        for index in range(producers):
            group.start_soon(producer, index)
    return Run(len(latencies), perf_counter() - start, latencies)


def _spread(ratios: Sequence[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def median_run(runs: Sequence[Run]) -> Run:
    """The run with the median rate."""
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


# -- the library's side -----------------------------------------------------------


class NoopBackend(ArchiveBackend):
    """Accepts every batch at once; remembers when it was first called."""

    def __init__(self) -> None:
        self.first_call: float | None = None
        self.records = 0

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        if self.first_call is None:
            self.first_call = perf_counter()
        self.records += sum(len(group.records) for group in groups)

    async def append_messages(self, session: UUID, records: Sequence[Any]) -> None:
        raise AssertionError("write_batch is overridden")

    async def delete_session(self, session: UUID) -> None:
        raise AssertionError("write_batch is overridden")

    async def health_check(self) -> None:
        return None


def library_open(path: str, backend: ArchiveBackend, window: int) -> OpeningArchivist:
    policy = Queued(capacity=CAPACITY, max_batch=BATCH, batch_window_ms=window)
    reg = Registration(name=BACKEND_NAME, backend=backend, write_policy=policy)
    return Archivist.open(path, [reg], durability=Durability.FULL)


def library_append(archivist: Archivist) -> Append:
    return lambda session, record: archivist.append_messages(session, [record])


# -- the reference ----------------------------------------------------------------


class Reference:
    """The minimal group-commit journal the library is measured against."""

    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        self._writer, self._reader = writer, reader
        self._queue: asyncio.Queue[tuple[bytes, bytes, asyncio.Future[None]]]
        self._queue = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
        self._committed_event = asyncio.Event()
        self._deleted_event = asyncio.Event()
        self.committed = 0
        self.deleted = 0

    async def append(self, session: UUID, record: MessageRecord) -> None:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((session.bytes, self._encoder.encode(record), future))
        await future

    async def commit_loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < BATCH and not self._queue.empty():
                group.append(self._queue.get_nowait())
            async with self._write_lock:
                try:
                    await self._writer.execute("BEGIN IMMEDIATE")
                    await self._writer.executemany(
                        "INSERT INTO entries (session, payload) VALUES (?, ?)",
                        [(session, payload) for session, payload, _ in group],
                    )
                    await self._writer.execute("COMMIT")
                except sqlite3.Error as exc:
                    await self._writer.execute("ROLLBACK")
                    for *_, future in group:
                        future.set_exception(exc)
                    continue
            self.committed += len(group)
            self._committed_event.set()
            for *_, future in group:
                future.set_result(None)

    async def read_loop(self) -> None:
        last = 0
        while True:
            rows = list(
                await self._reader.execute_fetchall(
                    "SELECT seq, session, payload FROM entries WHERE seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (last, BATCH),
                )
            )
            if not rows:
                self._committed_event.clear()
                if self.deleted >= self.committed:
                    await self._committed_event.wait()
                continue
            await self.deliver(rows)
            async with self._write_lock:
                await self._reader.execute(
                    "DELETE FROM entries WHERE seq > ? AND seq <= ?",
                    (last, rows[-1][0]),
                )
            last = rows[-1][0]
            self.deleted += len(rows)
            self._deleted_event.set()

    async def deliver(self, rows: Sequence[Any]) -> None:
        """The no-op backend."""

    async def wait_deleted(self, count: int) -> None:
        while self.deleted < count:
            self._deleted_event.clear()
            await self._deleted_event.wait()


@contextlib.asynccontextmanager
async def open_reference(path: str) -> AsyncIterator[Reference]:
    async with (
        aiosqlite.connect(path, isolation_level=None) as writer,
        aiosqlite.connect(path, isolation_level=None) as reader,
    ):
        await writer.execute("PRAGMA journal_mode = WAL")
        await writer.execute("PRAGMA synchronous = FULL")
        await writer.execute(SCHEMA)
        await reader.execute("PRAGMA synchronous = NORMAL")
        ref = Reference(writer, reader)
        async with anyio.create_task_group() as group:
            group.start_soon(ref.commit_loop)
            group.start_soon(ref.read_loop)
            yield ref
            group.cancel_scope.cancel()


# -- sections ---------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, root: str) -> None:
        self.args = args
        self.window = args.batch_window_ms
        self.root = root
        self.sessions = [uuid7() for _ in range(SESSIONS)]
        self.results: dict[str, Any] = {}
        self._n = 0

    def fresh(self, label: str) -> str:
        """A journal path in a new directory of its own."""
        self._n += 1
        directory = os.path.join(self.root, f"{self._n:02d}-{label}")
        os.makedirs(directory)
        return os.path.join(directory, "journal.db")

    async def appends(self) -> None:
        duration = self.args.duration
        for n in self.args.producers:
            # Alternate library and reference runs and keep the median of each:
            # this machine's speed drifts by tens of percent between seconds.
            libs, refs = [], []
            for i in range(self.args.repeat):
                async with library_open(
                    self.fresh(f"lib-appends-{n}-{i}"), NoopBackend(), self.window
                ) as a:
                    libs.append(
                        await drive(
                            library_append(a), n, self.sessions, duration=duration
                        )
                    )
                async with open_reference(self.fresh(f"ref-appends-{n}-{i}")) as ref:
                    refs.append(
                        await drive(ref.append, n, self.sessions, duration=duration)
                    )
            lib, reference = median_run(libs), median_run(refs)
            ratios = [x.rate / y.rate for x, y in zip(libs, refs, strict=True)]
            self.results[f"appends-{n}"] = (lib, reference, ratios)
            print(f"appends  {n:>3} producers  library   {lib.summary()}")
            print(f"appends  {n:>3} producers  reference {reference.summary()}")
            print(f"appends  {n:>3} producers  ratios of the pairs {_spread(ratios)}")

    async def e2e(self) -> None:
        total = self.args.e2e
        libs, refs = [], []
        for i in range(self.args.repeat):
            backend = NoopBackend()
            path = self.fresh(f"lib-e2e-{i}")
            async with library_open(path, backend, self.window) as a:
                start = perf_counter()
                await drive(
                    library_append(a), E2E_PRODUCERS, self.sessions, total=total
                )
                await a.wait_drained()
                libs.append(total / (perf_counter() - start))
            assert backend.records == total, (backend.records, total)
            async with open_reference(self.fresh(f"ref-e2e-{i}")) as ref:
                start = perf_counter()
                await drive(ref.append, E2E_PRODUCERS, self.sessions, total=total)
                await ref.wait_deleted(total)
                refs.append(total / (perf_counter() - start))
        lib, reference = statistics.median(libs), statistics.median(refs)
        ratios = [x / y for x, y in zip(libs, refs, strict=True)]
        self.results["e2e"] = (lib, reference, ratios)
        print(
            f"e2e      {total:,} records: library {lib:,.0f}/s, ref {reference:,.0f}/s"
            f" (medians of {self.args.repeat}); ratios of the pairs {_spread(ratios)}"
        )

    async def naive(self) -> None:
        encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
        async with aiosqlite.connect(self.fresh("naive")) as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute(SCHEMA)

            async def append(session: UUID, record: MessageRecord) -> None:
                await db.execute(
                    "INSERT INTO entries (session, payload) VALUES (?, ?)",
                    (session.bytes, encoder.encode(record)),
                )
                await db.commit()

            run = await drive(append, 1, self.sessions, duration=self.args.duration)
        self.results["naive"] = run
        print(f"naive      1 producer   naive     {run.summary()}")

    async def backlog(self) -> None:
        path, held = self.fresh("backlog"), MockBackend()
        held.hold()  # the writer takes one batch, then waits at the gate
        a = await library_open(path, held, self.window)
        try:
            run = await drive(
                library_append(a),
                BUILD_PRODUCERS,
                self.sessions,
                total=self.args.backlog,
            )
        finally:
            await a.shutdown(timeout=0)
        size = journal_mb(path)
        print(
            f"backlog  built {run.count:,} entries in {run.elapsed:.1f} s"
            f" ({run.rate:,.0f}/s, backend held); journal {size:,.0f} MB"
        )
        command = [sys.executable, __file__, "--drain-child", path]
        child = await anyio.run_process(
            [*command, "--batch-window-ms", str(self.window)], check=False
        )
        if child.returncode != 0:
            raise RuntimeError(f"drain child failed:\n{child.stderr.decode()}")
        d = json.loads(child.stdout.decode().strip().splitlines()[-1])
        self.results["backlog"] = d
        print(
            f"backlog  drained {d['entries']:,} entries: opened in {d['open_s']:.3f} s,"
            f" first delivery {d['first_delivery']:.3f} s after open, drained in"
            f" {d['drain_s']:.1f} s ({d['rate']:,.0f} rows/s), peak RSS"
            f" {d['peak_mb']:.0f} MB (+{d['growth_mb']:.0f} MB)"
        )

    async def into(self, backend: ArchiveBackend, directory: str) -> float:
        """End-to-end records/s of ``--backend-records`` appends into ``backend``."""
        total = self.args.backend_records
        path = os.path.join(directory, "journal.db")
        async with library_open(path, backend, self.window) as a:
            start = perf_counter()
            await drive(library_append(a), E2E_PRODUCERS, self.sessions, total=total)
            await a.wait_drained()
            return total / (perf_counter() - start)

    async def backends(self) -> None:
        total, duration = self.args.backend_records, self.args.duration
        for kind in self.args.backends:
            rates, noops = [], []
            for i in range(self.args.repeat):
                # A no-op backend right before, as the yardstick for drift.
                noop_dir = os.path.dirname(self.fresh(f"{kind}-noop-{i}"))
                noops.append(await self.into(NoopBackend(), noop_dir))
                directory = os.path.dirname(self.fresh(f"{kind}-{i}"))
                async with archive_of(kind, directory) as make:
                    rates.append(await self.into(make(), directory))
            directory = os.path.dirname(self.fresh(f"{kind}-naive"))
            async with archive_of(kind, directory) as make, make() as backend:

                async def one_call(session: UUID, record: MessageRecord) -> None:
                    await backend.append_messages(session, [record])

                naive = await drive(one_call, 1, self.sessions, duration=duration)
            rate, noop = statistics.median(rates), statistics.median(noops)
            ratios = [x / y for x, y in zip(rates, noops, strict=True)]
            self.results[f"backend-{kind}"] = (rate, rates, noop, ratios, naive.rate)
            print(
                f"backends {kind:<13} {total:,} records: {rate:,.0f}/s end to end"
                f" (median of {len(rates)}: {', '.join(f'{r:,.0f}' for r in rates)});"
                f" no-op backend {noop:,.0f}/s, ratios {_spread(ratios)};"
                f" naive one record per call {naive.rate:,.0f}/s"
            )


@contextlib.asynccontextmanager
async def archive_of(
    kind: str, directory: str
) -> AsyncIterator[Callable[[], ArchiveBackend]]:
    """A factory of backends of ``kind`` over one fresh store; the store is
    removed (PostgreSQL schema) or stopped (HTTP sink) afterwards."""
    from journal_archivist.backends import JsonlArchive, SqliteArchive

    if kind == "sqlite":
        yield lambda: SqliteArchive(os.path.join(directory, "archive.db"))
    elif kind == "jsonl":
        yield lambda: JsonlArchive(os.path.join(directory, "archive"))
    elif kind == "postgres":
        import asyncpg  # type: ignore[import-untyped]

        from journal_archivist.backends import PostgresArchive

        schema = f"bench_{os.urandom(6).hex()}"
        try:
            yield lambda: PostgresArchive(PG_DSN, schema=schema, create_schema=True)
        finally:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
    elif kind in ("webhook", "webhook-batch"):
        from journal_archivist.backends import WebhookArchive

        per_batch = kind == "webhook-batch"

        sink = await anyio.open_process([sys.executable, __file__, "--http-sink"])
        try:
            assert sink.stdout is not None
            port = int((await sink.stdout.receive()).decode().split()[0])
            url = f"http://127.0.0.1:{port}/archive"
            yield lambda: WebhookArchive(url, per_batch=per_batch)
        finally:
            sink.terminate()
            await sink.wait()
    elif kind == "jetstream":
        import nats
        import nats.js.errors

        from journal_archivist.backends import JetStreamArchive

        suffix = os.urandom(6).hex()
        stream, prefix = f"bench_{suffix}", f"bench.{suffix}"
        try:
            yield lambda: JetStreamArchive(
                NATS_URL, stream=stream, subject_prefix=prefix, create_stream=True
            )
        finally:
            nc = await nats.connect(NATS_URL, allow_reconnect=False)
            try:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await nc.jetstream().delete_stream(stream)
            finally:
                await nc.close()
    else:
        raise ValueError(f"unknown backend {kind!r}; choose from {BACKENDS}")


async def http_sink() -> None:
    """Answer every POST with 200 (HTTP/1.1 keep-alive) until killed."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def journal_mb(path: str) -> float:
    files = [path + suffix for suffix in ("", "-wal")]
    return sum(os.path.getsize(f) for f in files if os.path.exists(f)) / MB


def status_mb(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


async def drain_child(path: str, window: int) -> dict[str, float]:
    """Reopen a backlog with a no-op backend and drain it (in a fresh process)."""
    backend = NoopBackend()
    before = status_mb("VmRSS")
    start = perf_counter()
    async with library_open(path, backend, window) as a:
        opened = perf_counter()
        entries = a.health().backends[BACKEND_NAME].lag_entries
        await a.wait_drained()
        drained = perf_counter()
    peak = status_mb("VmHWM")
    return {
        "entries": entries,
        "open_s": opened - start,
        "first_delivery": (backend.first_call or drained) - start,
        "drain_s": drained - start,
        "rate": entries / (drained - start),
        "peak_mb": peak,
        "growth_mb": peak - before,
    }


# -- report -----------------------------------------------------------------------


def table(results: dict[str, Any], producers: Sequence[int]) -> str:
    """The results as a Markdown table; targets and whether they are met."""
    rows = [
        "| measurement | library | reference | library / reference | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]

    def add(what: str, lib: str, ref: str = "", ratio: str = "", target: str = "",
            ok: bool | None = None) -> None:  # fmt: skip
        met = "" if ok is None else "yes" if ok else "**no**"
        rows.append(f"| {what} | {lib} | {ref} | {ratio} | {target} | {met} |")

    for n in producers:
        if (pair := results.get(f"appends-{n}")) is None:
            continue
        lib, ref, ratios = pair
        ratio, key, who = (
            statistics.median(ratios),
            n == 64,
            f"{n} producer" + "s" * (n > 1),
        )
        add(f"durable appends/s, {who}", f"{lib.rate:,.0f}",
            f"{ref.rate:,.0f}", _spread(ratios), "≥ 0.8x" if key else "",
            ratio >= 0.8 if key else None)  # fmt: skip
        add(f"append latency p50 / p99, {who}",
            f"{lib.ms(0.5):.2f} / {lib.ms(0.99):.2f} ms",
            f"{ref.ms(0.5):.2f} / {ref.ms(0.99):.2f} ms",
            f"{lib.ms(0.99) / ref.ms(0.99):.2f}x (p99)", "p99 ≤ 20 ms" if key else "",
            lib.ms(0.99) <= 20 if key else None)  # fmt: skip
    if (pair := results.get("e2e")) is not None:
        lib_rate, ref_rate, ratios = pair
        add(f"end-to-end records/s, {E2E_PRODUCERS} producers, {SESSIONS} sessions",
            f"{lib_rate:,.0f}", f"{ref_rate:,.0f}", _spread(ratios),
            "≥ 0.8x", statistics.median(ratios) >= 0.8)  # fmt: skip
    for kind in BACKENDS:
        if (result := results.get(f"backend-{kind}")) is None:
            continue
        rate, rates, noop, ratios, naive = result
        target = {"sqlite": 20_000, "postgres": 15_000}.get(kind)
        add(f"end to end into {kind}, {E2E_PRODUCERS} producers, {SESSIONS} sessions"
            f" (records/s; runs {min(rates):,.0f}-{max(rates):,.0f}; naive one"
            f" record per call {naive:,.0f}/s)",
            f"{rate:,.0f}", f"no-op backend {noop:,.0f}",
            f"{_spread(ratios)} of no-op", f"≥ {target:,}/s" if target else "",
            rate >= target if target else None)  # fmt: skip
    if (run := results.get("naive")) is not None:
        add("naive: 1 transaction + fsync per append, 1 producer (appends/s; p99)",
            "", f"{run.rate:,.0f}; {run.ms(0.99):.2f} ms")  # fmt: skip
    if (b := results.get("backlog")) is not None:
        what = f"{b['entries']:,}-entry backlog:"
        add(f"{what} open → first delivery", f"{b['first_delivery']:.2f} s",
            target="≤ 1 s", ok=b["first_delivery"] <= 1.0)  # fmt: skip
        add(f"{what} drain rate (open → drained)", f"{b['rate']:,.0f} rows/s",
            target="≥ 100,000 rows/s", ok=b["rate"] >= 100_000)  # fmt: skip
        add(f"{what} peak RSS (growth while draining)",
            f"{b['peak_mb']:.0f} MB (+{b['growth_mb']:.0f} MB)",
            target="growth ≤ 100 MB", ok=b["growth_mb"] <= 100)  # fmt: skip
    return "\n".join(rows)


def environment() -> str:
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" {os.cpu_count()} CPUs ({platform.machine()}),"
        f" {platform.system()} {platform.release()}"
    )


# -- main -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add = parser.add_argument
    add("--only", default=",".join(SECTIONS), help="sections to run (default: all)")
    add("--producers", default="1,64,512", help="appends: producer counts")
    add("--duration", type=float, default=3.0, help="appends/naive: seconds each")
    add("--e2e", type=int, default=100_000, help="e2e: records (default 100000)")
    add("--repeat", type=int, default=5,
        help="appends/e2e: runs of each, alternating; medians")  # fmt: skip
    add("--backlog", type=int, default=1_000_000, help="backlog: entries to drain")
    add("--batch-window-ms", type=int, default=DEFAULT_BATCH_WINDOW_MS,
        help="the library's Queued(batch_window_ms=...)")  # fmt: skip
    add("--dir", default=None, help="where to make the temp directory (default /tmp)")
    add("--keep", action="store_true", help="keep the journals after the run")
    add("--backends", default=",".join(BACKENDS), help="backends: which ones")
    add("--backend-records", type=int, default=50_000,
        help="backends: records per run (default 50000)")  # fmt: skip
    add("--drain-child", metavar="JOURNAL", help=argparse.SUPPRESS)
    add("--http-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.producers = [int(n) for n in args.producers.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    return args


async def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    bench = Bench(args, root)
    for section in SECTIONS:  # a fixed order, whatever the order in --only
        if section in args.sections:
            await getattr(bench, section)()
    return bench.results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.http_sink:
        asyncio.run(http_sink())
        return
    if args.drain_child:
        result = anyio.run(
            drain_child, args.drain_child, args.batch_window_ms, backend="asyncio"
        )
        print(json.dumps(result))
        return
    root = tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir)
    print(f"{environment()}\njournals under {root}\n")
    try:
        results = anyio.run(run, args, root, backend="asyncio")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    python = os.path.relpath(sys.executable)
    command = shlex.join([sys.executable if python.startswith("..") else python,
                          *sys.argv])  # fmt: skip
    print(f"\n{environment()}\n\n{table(results, args.producers)}\n")
    print(f"Command: `{command}`")


if __name__ == "__main__":
    main()
