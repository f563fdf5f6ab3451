"""The torture workload: the child every torture tool drives, and its pieces.

Commands::

    python -m tools.torture.workload run DIR --seed S [--cycle N]
        [--durability full|normal] [--flaky none|sqlite|jsonl] [--sessions 32]
        [--producers 8] [--journal PATH] [--reserve BYTES] [--duration SECONDS]
    python -m tools.torture.workload drain DIR [--timeout 60] [--journal PATH]
        [--reserve BYTES]

``run`` opens ``DIR/journal.db`` (or ``--journal``) with two registrations,
``sqlite`` -> ``SqliteArchive(DIR/archive.db)`` and ``jsonl`` ->
``JsonlArchive(DIR/jsonl)`` (``--flaky X`` wraps archive X in ``FlakyBackend``),
and appends from ``--producers`` concurrent tasks over ``--sessions`` sessions
until it is killed (or for ``--duration`` seconds, then shuts down and exits 0).

The op log (stdout, one line per event, flushed at once):

    O <cycle> opened                          the archivist is open
    B <cycle> <op> <session> a <id1,id2,...>  right before append_messages
    B <cycle> <op> <session> e -              right before delete_session
    A <cycle> <op>                            the call returned: acknowledged
    F <cycle> <op> <ErrorClassName>           the call raised
    X <cycle> <reason on one line>            ArchivistFailed (or a bug): exiting

Exit codes: 0 after ``--duration``; 2 ``REFUSED <Class>: <message>`` (the open
raised a ``JournalError``); 3 after an ``X`` line for ``ArchivistFailed`` (the
parent restarts it); 5 after an ``X`` line for an unexpected exception (a bug).

``drain`` opens the same journal with the same two (never flaky) archives, waits
until everything is delivered and marked done, prints one JSON line of ``health()``
facts and exits 0; 2 with ``REFUSED ...`` if the open raises a ``JournalError``;
4 if it is not drained within ``--timeout`` seconds.

For other tools: ``build_registrations`` (and ``sqlite_registration``,
``jsonl_registration``), ``FlakyBackend``, ``make_record`` / ``expected_fields``,
``session_ids``, ``Workload`` (the producers, to run in a tool's own process),
``drain`` and ``health_facts``.

Rules and theory:
- Each line states a fact that already happened when it is written: a ``B`` line
  is flushed before the call starts, so a record that reaches an archive was always
  begun in the log; ``A`` and ``F`` are written after the call returned or raised.
  A child killed between the two leaves the op *in flight* (begun, unanswered).
- Per-session order is defined: each session belongs to exactly one producer,
  which makes one call at a time. Op numbers count up within a cycle in the order
  the ops are begun; sessions are new in every cycle (derived from seed + cycle),
  so a session's ops all belong to one child run.
- A record's content is a function of ``(cycle, op, index)`` alone
  (``expected_fields``), so the oracle can check a delivered record byte for byte
  from the op log. Sizes: mostly 20 B - 2 KiB, about 3 % 16-64 KiB, about 0.1 %
  near 512 KiB.
- A line is one ``write`` of at most a few hundred bytes to a pipe, so a SIGKILL
  never leaves half a line (a pipe write below PIPE_BUF is atomic).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio

from journal_archivist import (
    DEFAULT_FREE_SPACE_RESERVE,
    Archivist,
    ArchivistClosed,
    ArchivistFailed,
    BackendError,
    Durability,
    JournalError,
    JournalFull,
    JournalWriteFailed,
    MessageRecord,
    Queued,
    QueueFull,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import (
    ArchiveBackend,
    JsonlArchive,
    SessionGroup,
    SqliteArchive,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from journal_archivist import HealthReport

__all__ = [
    "ARCHIVE_NAMES",
    "EXIT_FAILED",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNEXPECTED",
    "FAST_RETRY",
    "FlakyBackend",
    "Workload",
    "build_registrations",
    "configure_logging",
    "drain",
    "expected_fields",
    "health_facts",
    "journal_path",
    "make_record",
    "session_ids",
]

JOURNAL_FILE: Final = "journal.db"
SQLITE_FILE: Final = "archive.db"
JSONL_DIRECTORY: Final = "jsonl"
#: The registration names; ``drain`` and the oracle rely on them.
ARCHIVE_NAMES: Final = ("sqlite", "jsonl")

EXIT_REFUSED: Final = 2
EXIT_FAILED: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_UNEXPECTED: Final = 5

#: Refusals a producer shrugs off: nothing (or, for a failed write, nothing
#: acknowledged) was journaled, and the next call may succeed.
EXPECTED_REFUSALS: Final = (JournalFull, JournalWriteFailed, QueueFull)
ERASE_PROBABILITY: Final = 0.03

#: Retries come fast, so a flaky backend catches up within a short cycle.
FAST_RETRY: Final = RetryPolicy(initial_delay=0.01, max_delay=0.2, attempt_timeout=30.0)
#: A short linger; a bounded backlog, so a slow archive pushes back (BLOCK) and
#: producers see ``QueueFull`` rather than a journal that grows without end.
WRITE_POLICY: Final = Queued(
    batch_window_ms=5,
    capacity=4000,
    capacity_bytes=96 * 1024 * 1024,
    block_timeout=1.0,
)

_SESSION_NAMESPACE: Final = uuid.UUID("6d1f0c55-61e4-4c8e-9a57-3b1f2f0e8a11")


# -- what is appended ---------------------------------------------------------------


def session_ids(seed: int, cycle: int, count: int) -> list[uuid.UUID]:
    """The sessions of one cycle: new per cycle, the same for the same seed."""
    return [uuid.uuid5(_SESSION_NAMESPACE, f"{seed}/{cycle}/{k}") for k in range(count)]


def expected_fields(cycle: int, op: int, index: int) -> tuple[str, str, Any]:
    """``(role, content_md, metadata)`` of record ``index`` of op ``op``.

    A function of its arguments alone: the oracle recomputes it to check what an
    archive delivered byte for byte.
    """
    rng = random.Random(f"{cycle}/{op}/{index}")
    roll = rng.random()
    if roll < 0.001:
        size = rng.randint(480 * 1024, 544 * 1024)
    elif roll < 0.03:
        size = rng.randint(16 * 1024, 64 * 1024)
    else:
        size = rng.randint(20, 2048)
    header = f"c{cycle}.o{op}.i{index}:"
    filler_chars = max(0, size - len(header))
    filler = rng.randbytes((filler_chars + 1) // 2).hex()[:filler_chars]
    role = "user" if index % 2 == 0 else "assistant"
    metadata = {"cycle": cycle, "op": op, "index": index}
    return role, header + filler, metadata


def make_record(session: uuid.UUID, cycle: int, op: int, index: int) -> MessageRecord:
    """Record ``index`` of op ``op``, with a fresh ``message_id``."""
    role, content, metadata = expected_fields(cycle, op, index)
    return MessageRecord(
        session=session, role=role, content_md=content, metadata=metadata
    )


# -- where it goes ------------------------------------------------------------------


def journal_path(directory: str | os.PathLike[str]) -> str:
    """The journal of a torture directory, unless a tool puts it elsewhere."""
    return os.path.join(os.fspath(directory), JOURNAL_FILE)


def sqlite_archive_path(directory: str | os.PathLike[str]) -> str:
    """Where the ``sqlite`` registration archives."""
    return os.path.join(os.fspath(directory), SQLITE_FILE)


def jsonl_archive_directory(directory: str | os.PathLike[str]) -> str:
    """Where the ``jsonl`` registration archives."""
    return os.path.join(os.fspath(directory), JSONL_DIRECTORY)


class FlakyBackend(ArchiveBackend):
    """Delegates to ``inner``, but (seeded) is slow at times and fails at times.

    Before a write it may sleep up to ``max_delay`` seconds (``slow_probability``),
    and fail with a retryable ``BackendError`` either before delegating (nothing
    applied) or after (applied, yet reported as failed: the retry must be
    idempotent). A health check fails now and then too. Reads, ``owned_paths``
    and ``aclose`` go straight to ``inner``.
    """

    def __init__(
        self,
        inner: ArchiveBackend,
        seed: str | int,
        *,
        slow_probability: float = 0.1,
        max_delay: float = 0.15,
        fail_probability: float = 0.06,
    ) -> None:
        self.inner = inner
        self._rng = random.Random(seed)
        self._slow = slow_probability
        self._max_delay = max_delay
        self._fail = fail_probability
        self.injected_failures = 0

    def __repr__(self) -> str:
        return f"FlakyBackend({self.inner!r})"

    async def _misbehave(self) -> bool:
        """Sleep and/or fail before the call; return whether to fail after it."""
        if self._rng.random() < self._slow:
            await anyio.sleep(self._rng.uniform(0, self._max_delay))
        roll = self._rng.random()
        if roll < self._fail / 2:
            self.injected_failures += 1
            raise BackendError("flaky: injected failure before the write")
        return roll < self._fail

    def _fail_after(self) -> None:
        self.injected_failures += 1
        raise BackendError("flaky: injected failure after the write was applied")

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        fail_after = await self._misbehave()
        await self.inner.write_batch(groups)
        if fail_after:
            self._fail_after()

    async def append_messages(
        self, session: uuid.UUID, records: Sequence[MessageRecord]
    ) -> None:
        fail_after = await self._misbehave()
        await self.inner.append_messages(session, records)
        if fail_after:
            self._fail_after()

    async def delete_session(self, session: uuid.UUID) -> None:
        fail_after = await self._misbehave()
        await self.inner.delete_session(session)
        if fail_after:
            self._fail_after()

    async def health_check(self) -> None:
        if self._rng.random() < self._fail:
            self.injected_failures += 1
            raise BackendError("flaky: injected health check failure")
        await self.inner.health_check()

    async def read_session(self, session: uuid.UUID) -> list[MessageRecord]:
        return await self.inner.read_session(session)

    def owned_paths(self) -> tuple[str, ...]:
        return self.inner.owned_paths()

    async def aclose(self) -> None:
        await self.inner.aclose()


def sqlite_registration(
    directory: str | os.PathLike[str], *, flaky_seed: str | None = None
) -> Registration:
    """``sqlite`` -> ``SqliteArchive(directory/archive.db)``, flaky if seeded."""
    backend: ArchiveBackend = SqliteArchive(sqlite_archive_path(directory))
    if flaky_seed is not None:
        backend = FlakyBackend(backend, flaky_seed)
    return Registration(
        name="sqlite", backend=backend, write_policy=WRITE_POLICY, retry=FAST_RETRY
    )


def jsonl_registration(
    directory: str | os.PathLike[str], *, flaky_seed: str | None = None
) -> Registration:
    """``jsonl`` -> ``JsonlArchive(directory/jsonl)``, flaky if seeded."""
    backend: ArchiveBackend = JsonlArchive(jsonl_archive_directory(directory))
    if flaky_seed is not None:
        backend = FlakyBackend(backend, flaky_seed)
    return Registration(
        name="jsonl", backend=backend, write_policy=WRITE_POLICY, retry=FAST_RETRY
    )


def build_registrations(
    directory: str | os.PathLike[str],
    *,
    flaky: str | None = None,
    seed: int = 0,
    cycle: int = 0,
) -> list[Registration]:
    """The two registrations of a torture directory (``flaky``: which to wrap)."""
    if flaky not in (None, "none", *ARCHIVE_NAMES):
        raise ValueError(f"flaky must be none, sqlite or jsonl, got {flaky!r}")
    flaky_seed = f"flaky/{seed}/{cycle}"
    return [
        sqlite_registration(
            directory, flaky_seed=flaky_seed if flaky == "sqlite" else None
        ),
        jsonl_registration(
            directory, flaky_seed=flaky_seed if flaky == "jsonl" else None
        ),
    ]


# -- the producers ------------------------------------------------------------------


@dataclass
class WorkloadCounts:
    """What the producers saw, for a tool's report."""

    begun: int = 0
    acknowledged: int = 0
    acknowledged_records: int = 0
    #: Error class name -> how many calls raised it.
    failures: dict[str, int] = field(default_factory=dict)


class Workload:
    """Concurrent producers appending to and erasing sessions of one archivist.

    Writes its op log through ``emit`` (one line, no newline). ``run()`` returns
    once ``stop()`` was called and every producer finished its call in flight, or
    once the archivist failed or closed (``failure`` then holds the reason); it
    raises what no producer expects (a bug). ``ArchivistFailed`` stops every
    producer: ``failure`` is set and an ``X`` line is emitted. ``hold()`` and
    ``release()`` pause and resume beginning new ops; ``pause`` is a sleep after
    each acknowledged op (0: flat out).
    """

    def __init__(
        self,
        archivist: Archivist,
        emit: Callable[[str], None],
        *,
        seed: int,
        cycle: int,
        sessions: int = 32,
        producers: int = 8,
        pause: float = 0.0,
    ) -> None:
        if sessions < 1 or producers < 1:
            raise ValueError("sessions and producers must be at least 1")
        self._archivist = archivist
        self._emit = emit
        self.seed = seed
        self.cycle = cycle
        self.sessions = session_ids(seed, cycle, sessions)
        self._producers = producers
        self._pause = pause
        self._next_op = 0
        self._stop = anyio.Event()
        #: producer -> monotonic time its call in flight began.
        self._in_flight: dict[int, float] = {}
        self.counts = WorkloadCounts()
        self.failure: str | None = None
        self._answered = anyio.Event()  # set (and replaced) at each A or F line
        self._go = anyio.Event()  # producers begin ops only while it is set
        self._go.set()

    def stop(self) -> None:
        """Let each producer finish its call in flight, then stop."""
        self._stop.set()
        self._go.set()

    def hold(self) -> None:
        """Begin no new op until ``release()`` (calls in flight go on)."""
        if self._go.is_set():
            self._go = anyio.Event()

    def release(self) -> None:
        """Begin ops again after ``hold()``."""
        self._go.set()

    async def next_answer(self) -> None:
        """Wait until some call in flight returns or raises."""
        await self._answered.wait()

    def _answer(self, line: str) -> None:
        self._emit(line)
        self._answered.set()
        self._answered = anyio.Event()

    def longest_in_flight(self) -> float:
        """Seconds the oldest call now in flight has been waiting (0 if none)."""
        if not self._in_flight:
            return 0.0
        return time.monotonic() - min(self._in_flight.values())

    async def run(self) -> None:
        """Run the producers until stopped (see the class docstring)."""
        async with anyio.create_task_group() as group:
            for producer in range(self._producers):
                owned = self.sessions[producer :: self._producers]
                if owned:
                    group.start_soon(self._produce, producer, owned)

    async def _produce(self, producer: int, owned: list[uuid.UUID]) -> None:
        rng = random.Random(f"producer/{self.seed}/{self.cycle}/{producer}")
        while not self._stop.is_set():
            await self._go.wait()
            if self._stop.is_set():
                return
            session = rng.choice(owned)
            self._next_op += 1
            op = self._next_op
            erase = rng.random() < ERASE_PROBABILITY
            records = []
            if erase:
                self._emit(f"B {self.cycle} {op} {session} e -")
            else:
                count = rng.randint(1, 4)
                records = [
                    make_record(session, self.cycle, op, i) for i in range(count)
                ]
                ids = ",".join(str(r.message_id) for r in records)
                self._emit(f"B {self.cycle} {op} {session} a {ids}")
            self.counts.begun += 1
            self._in_flight[producer] = time.monotonic()
            try:
                if erase:
                    await self._archivist.delete_session(session)
                else:
                    await self._archivist.append_messages(session, records)
            except EXPECTED_REFUSALS as exc:
                self._failed(op, exc)
                await anyio.sleep(rng.uniform(0.02, 0.1))
                continue
            except ArchivistFailed as exc:
                self._failed(op, exc)
                if self.failure is None:
                    self.failure = one_line(exc.reason)
                    self._emit(f"X {self.cycle} {self.failure}")
                self.stop()
                return
            except ArchivistClosed as exc:
                self._failed(op, exc)
                self.failure = self.failure or "closed"
                self.stop()
                return
            except Exception as exc:
                self._failed(op, exc)
                raise
            finally:
                self._in_flight.pop(producer, None)
            self.counts.acknowledged += 1
            self.counts.acknowledged_records += len(records)
            self._answer(f"A {self.cycle} {op}")
            if self._pause:
                await anyio.sleep(self._pause)

    def _failed(self, op: int, exc: BaseException) -> None:
        name = type(exc).__name__
        self.counts.failures[name] = self.counts.failures.get(name, 0) + 1
        self._answer(f"F {self.cycle} {op} {name}")


def one_line(text: str) -> str:
    """``text`` on one line, for the op log."""
    return " ".join(text.split())[:500]


# -- drain and health ---------------------------------------------------------------


def health_facts(report: HealthReport) -> dict[str, Any]:
    """The facts of a ``health()`` report a torture tool judges, as JSON."""
    journal = report.journal
    return {
        "journal": {
            "quarantined": journal.quarantined,
            "lost_entries": journal.lost_entries,
            "commit_failures": journal.commit_failures,
            "failed": journal.failed,
            "low_space": journal.low_space,
        },
        "backends": {
            name: {
                "status": backend.status.value,
                "lag_entries": backend.lag_entries,
                "delivered": backend.delivered,
                "dropped": backend.dropped,
                "dead_lettered": backend.dead_lettered,
                "quarantined": backend.quarantined,
                "consecutive_failures": backend.consecutive_failures,
                "last_error": backend.last_error,
            }
            for name, backend in report.backends.items()
        },
    }


async def drain(
    directory: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | None = None,
    within: float = 60.0,
    reserve: int = DEFAULT_FREE_SPACE_RESERVE,
) -> dict[str, Any]:
    """Open the torture journal with the plain archives and drain it.

    Returns ``health_facts`` once everything is delivered and marked done, with
    ``seconds`` (how long the drain took).

    Raises:
        JournalError: the open refused the journal.
        TimeoutError: not drained within ``within`` seconds.
    """
    started = time.monotonic()
    path = journal if journal is not None else journal_path(directory)
    registrations = build_registrations(directory)
    async with Archivist.open(
        path, registrations, free_space_reserve=reserve, close_timeout=5.0
    ) as archivist:
        with anyio.fail_after(within):
            await archivist.wait_drained()
        facts = health_facts(archivist.health())
    facts["seconds"] = round(time.monotonic() - started, 3)
    return facts


# -- the commands -------------------------------------------------------------------


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_command(args: argparse.Namespace) -> int:
    directory = args.directory
    os.makedirs(directory, exist_ok=True)
    registrations = build_registrations(
        directory, flaky=args.flaky, seed=args.seed, cycle=args.cycle
    )
    try:
        archivist = await Archivist.open(
            args.journal or journal_path(directory),
            registrations,
            durability=Durability(args.durability),
            free_space_reserve=args.reserve,
            close_timeout=10.0,
        )
    except JournalError as exc:
        _print_line(f"REFUSED {type(exc).__name__}: {one_line(str(exc))}")
        return EXIT_REFUSED
    _print_line(f"O {args.cycle} opened")
    workload = Workload(
        archivist,
        _print_line,
        seed=args.seed,
        cycle=args.cycle,
        sessions=args.sessions,
        producers=args.producers,
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(workload.run)
            if args.duration is not None:
                await anyio.sleep(args.duration)
                workload.stop()
    except Exception as exc:
        _print_line(f"X {args.cycle} unexpected {one_line(repr(exc))}")
        logging.getLogger(__name__).exception("the workload failed")
        os._exit(EXIT_UNEXPECTED)  # as a crash would: the journal must cope
    if workload.failure is not None and workload.failure != "closed":
        os._exit(EXIT_FAILED)
    await archivist.shutdown(timeout=10.0)
    return 0


async def drain_command(args: argparse.Namespace) -> int:
    try:
        facts = await drain(
            args.directory,
            journal=args.journal,
            within=args.timeout,
            reserve=args.reserve,
        )
    except JournalError as exc:
        _print_line(f"REFUSED {type(exc).__name__}: {one_line(str(exc))}")
        return EXIT_REFUSED
    except TimeoutError:
        _print_line(f"TIMEOUT not drained within {args.timeout}s")
        return EXIT_TIMEOUT
    _print_line(json.dumps(facts, sort_keys=True))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.workload", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="append until killed, printing the op log")
    run.add_argument("directory")
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--cycle", type=int, default=1)
    run.add_argument("--durability", choices=["full", "normal"], default="full")
    run.add_argument("--flaky", choices=["none", *ARCHIVE_NAMES], default="none")
    run.add_argument("--sessions", type=int, default=32)
    run.add_argument("--producers", type=int, default=8)
    run.add_argument("--journal", help="the journal file (default DIR/journal.db)")
    run.add_argument(
        "--reserve",
        type=int,
        default=DEFAULT_FREE_SPACE_RESERVE,
        help="free_space_reserve in bytes",
    )
    run.add_argument(
        "--duration", type=float, help="stop after this many seconds and exit 0"
    )
    drain = commands.add_parser("drain", help="deliver everything, print health")
    drain.add_argument("directory")
    drain.add_argument("--timeout", type=float, default=60.0)
    drain.add_argument("--journal", help="the journal file (default DIR/journal.db)")
    drain.add_argument("--reserve", type=int, default=DEFAULT_FREE_SPACE_RESERVE)
    args = parser.parse_args(argv)
    if args.command == "drain" and not (
        args.timeout > 0 and math.isfinite(args.timeout)
    ):
        parser.error("--timeout must be a positive number")
    return args


def configure_logging() -> None:
    """The library's WARNINGs and worse to stderr, with time and process id."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    command = run_command if args.command == "run" else drain_command
    return anyio.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
