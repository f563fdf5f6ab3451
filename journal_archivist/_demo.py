"""The ``demo`` workload: a simulated chat service on the embedded default.

Rules and theory:
- Everything lives in one fresh directory: the journal, a ``SqliteArchive``
  (``archive``) and a ``JsonlArchive`` (``jsonl``) that is offline for the first
  ``OUTAGE_SHARE`` of the run: a regular file sits where its directory belongs,
  which the backend reports as a retryable error, so the writer retries while
  the journal holds its backlog. The file is removed mid-run and the backlog
  drains: what an operator would see during a real outage.
- ``sessions`` chat sessions run at once, each appending its share of
  ``messages`` one message per call, with think times that spread the appends
  over about ``duration`` seconds. Every append returns only once journaled.
- Progress is one line, redrawn in place (``\\r``) on a terminal and printed
  once a second otherwise; JSON output prints nothing but the summary object.
- The verdict is not taken from counters: after shutdown, every session is
  read back from each backend through a fresh backend object and compared with
  what was appended, in order. Exit code 0 if every message reached every
  backend, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
import uuid
from typing import TYPE_CHECKING, Final, TextIO

import anyio

from ._archivist import Archivist
from ._config import Registration
from ._health import HealthStatus
from ._policies import RetryPolicy
from ._records import MessageRecord
from .backends import ArchiveBackend, JsonlArchive, SqliteArchive

if TYPE_CHECKING:
    from uuid import UUID

__all__ = [
    "DEMO_DURATION",
    "OUTAGE_SHARE",
    "BackendSummary",
    "DemoSummary",
    "run_demo",
]

#: Seconds the sessions' appends are spread over by default.
DEMO_DURATION: Final = 6.0
#: Share of ``duration`` during which the JSONL archive is offline.
OUTAGE_SHARE: Final = 0.5
#: Seconds the backlog may take to drain once the appends are done.
DRAIN_TIMEOUT: Final = 30.0
#: Fast retries, so the backlog drains as soon as the archive is back.
_RETRY: Final = RetryPolicy(initial_delay=0.05, max_delay=0.5)
_BACKENDS: Final = ("archive", "jsonl")
_LINES: Final = (
    "Can you summarise the incident report from last night?",
    "The primary database failed over at 02:14 and recovered in 90 seconds.",
    "Were any customer messages lost during the failover?",
    "No: every message was journaled before it was acknowledged.",
    "How long did the archive lag behind?",
    "About a minute; the backlog drained once the archive came back.",
)


class _Tally:
    """What the run has done so far, for the progress line and the summary."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.appended = 0
        self.started = time.monotonic()
        self.peak_backlog = dict.fromkeys(_BACKENDS, 0)
        self.peak_journal_bytes = 0
        self.outage_over: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _journal_bytes(path: str) -> int:
    return sum(
        os.path.getsize(path + suffix)
        for suffix in ("", "-wal")
        if os.path.exists(path + suffix)
    )


def _progress(archivist: Archivist, tally: _Tally) -> str:
    """One line: appends so far, and each backend's delivered count and backlog."""
    health = archivist.health()
    elapsed = tally.elapsed()
    parts = [
        f"{elapsed:5.1f}s  appended {tally.appended:,}/{tally.total:,}"
        f" ({tally.appended / max(elapsed, 1e-9):,.0f}/s)"
    ]
    for name in _BACKENDS:
        backend = health.backends[name]
        tally.peak_backlog[name] = max(tally.peak_backlog[name], backend.lag_entries)
        state = "up" if backend.status is HealthStatus.HEALTHY else "DOWN"
        if backend.status is HealthStatus.DEGRADED:
            state = "degraded"
        parts.append(
            f"{name} {state}: delivered {backend.delivered:,},"
            f" backlog {backend.lag_entries:,}"
        )
    tally.peak_journal_bytes = max(
        tally.peak_journal_bytes, _journal_bytes(archivist.journal_path)
    )
    return "  |  ".join(parts)


async def _report(
    archivist: Archivist, tally: _Tally, out: TextIO, quiet: bool, done: anyio.Event
) -> None:
    """Sample progress until ``done``; show it in place on a terminal, else
    a line a second."""
    tty = out.isatty()
    width = 0
    shown = time.monotonic()
    while not done.is_set():
        with anyio.move_on_after(0.1):  # samples peaks even in short runs
            await done.wait()
        line = _progress(archivist, tally)
        if quiet or not (tty or done.is_set() or time.monotonic() - shown >= 1.0):
            continue
        shown = time.monotonic()
        if tty:
            out.write("\r" + line.ljust(width))
            width = len(line)
        else:
            out.write(line + "\n")
        out.flush()
    if tty and not quiet:
        out.write("\n")


async def _chat(
    archivist: Archivist,
    session: UUID,
    count: int,
    think: float,
    rng: random.Random,
    sent: list[MessageRecord],
    tally: _Tally,
) -> None:
    """One session: ``count`` messages, one per call, a think time before each."""
    for i in range(count):
        await anyio.sleep(rng.uniform(0, 2 * think))
        record = MessageRecord(
            session=session,
            role="user" if i % 2 == 0 else "assistant",
            content_md=f"{_LINES[i % len(_LINES)]} (#{i})",
        )
        await archivist.append_messages(session, [record])  # durable on return
        sent.append(record)
        tally.appended += 1


def _prepare(directory: str) -> tuple[str, str, str, str] | None:
    """Create ``directory`` and block the JSONL archive's path with a file;
    return the directory, journal, archive and JSONL paths (None: not empty)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.listdir(directory):
        return None
    jsonl_dir = os.path.join(directory, "jsonl")
    # The JSONL archive is offline: a file stands where its directory belongs.
    with open(jsonl_dir, "w") as blocker:
        blocker.write("the JSONL archive is offline until this file is removed\n")
    journal = os.path.join(directory, "journal.db")
    return directory, journal, os.path.join(directory, "archive.db"), jsonl_dir


def _end_outage_now(blocker: str) -> None:
    if os.path.isfile(blocker):
        os.remove(blocker)


async def _end_outage(blocker: str, at: float, tally: _Tally) -> None:
    await anyio.sleep(at)
    os.remove(blocker)  # the directory's path is free: the archive is back
    tally.outage_over = tally.elapsed()


async def _verify(
    backends: dict[str, ArchiveBackend], sent: dict[UUID, list[MessageRecord]]
) -> dict[str, int]:
    """How many appended messages each backend returns, in order, on read-back."""
    found = dict.fromkeys(backends, 0)
    for name, backend in backends.items():
        async with backend:
            for session, records in sent.items():
                got = await backend.read_session(session)
                want = [(r.message_id, r.role, r.content_md) for r in records]
                have = [(r.message_id, r.role, r.content_md) for r in got]
                if have == want:
                    found[name] += len(records)
                else:  # count what did arrive, but the order must hold too
                    found[name] += sum(a == b for a, b in zip(have, want, strict=False))
    return found


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / (1024 * 1024):,.1f} MiB"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackendSummary:
    """One backend at the end of the demo: ``delivered`` is its counter,
    ``read_back`` what reading every session back found, in order."""

    delivered: int
    peak_backlog: int
    read_back: int
    complete: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoSummary:
    """What the demo prints at the end (``--json``: this, as one object)."""

    ok: bool
    directory: str
    sessions: int
    messages: int
    appended: int
    append_seconds: float
    appends_per_second: float
    outage_seconds: float
    drained: bool
    journal_bytes: int
    peak_journal_bytes: int
    total_seconds: float
    backends: dict[str, BackendSummary]


async def run_demo(
    directory: str,
    *,
    sessions: int = 200,
    messages: int = 5000,
    out: TextIO = sys.stdout,
    json_output: bool = False,
    duration: float = DEMO_DURATION,
) -> int:
    """Run the demo workload in ``directory`` and print what happened.

    Creates ``directory`` (it must be missing or empty), runs ``sessions`` chat
    sessions appending ``messages`` messages in all over about ``duration``
    seconds into a journal with two backends, one of them offline for the first
    half, shows live progress, then a summary, and checks that every message
    reached every backend by reading each session back.

    Returns:
        The exit code: 0 if every message reached every backend, 1 if not, 2 if
        ``directory`` holds files already.

    Raises:
        ValueError: ``sessions`` or ``messages`` is below 1, or ``duration``
            is negative.
    """
    if sessions < 1 or messages < 1:
        raise ValueError(
            f"sessions and messages must be >= 1, got {sessions}, {messages}"
        )
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    paths = _prepare(directory)
    if paths is None:
        out.write(f"demo: {directory} is not empty; give a new or empty directory\n")
        return 2
    directory, journal, archive_path, jsonl_dir = paths
    registrations = [
        Registration(name="archive", backend=SqliteArchive(archive_path), retry=_RETRY),
        Registration(name="jsonl", backend=JsonlArchive(jsonl_dir), retry=_RETRY),
    ]
    if not json_output:
        out.write(
            f"journal-archivist demo: {sessions:,} sessions, {messages:,} messages,"
            f" in {directory}\n"
            f"  journal  {journal}\n"
            f"  archive  SqliteArchive {archive_path}\n"
            f"  jsonl    JsonlArchive {jsonl_dir}: offline (a file is in the way)"
            f" until {duration * OUTAGE_SHARE:.1f}s\n\n"
        )
        out.flush()

    rng = random.Random(7)
    ids = [uuid.uuid4() for _ in range(sessions)]
    shares = [messages // sessions + (i < messages % sessions) for i in range(sessions)]
    longest = max(shares)
    think = duration / longest if longest else 0.0
    sent: dict[UUID, list[MessageRecord]] = {s: [] for s in ids}
    tally = _Tally(messages)
    drained = True
    # The offline archive's retries log a warning each; the progress line and
    # the summary tell that story here, so the library's log is held back.
    library_log = logging.getLogger("journal_archivist")
    level = library_log.level
    library_log.setLevel(max(level, logging.ERROR))  # its children inherit it
    try:
        async with Archivist.open(journal, registrations) as archivist:
            done = anyio.Event()
            async with anyio.create_task_group() as outer:
                outer.start_soon(_report, archivist, tally, out, json_output, done)
                outer.start_soon(_end_outage, jsonl_dir, duration * OUTAGE_SHARE, tally)
                async with anyio.create_task_group() as chats:
                    for session, share in zip(ids, shares, strict=True):
                        chats.start_soon(
                            _chat,
                            archivist,
                            session,
                            share,
                            think,
                            random.Random(rng.random()),
                            sent[session],
                            tally,
                        )
                append_seconds = tally.elapsed()
                with anyio.move_on_after(max(DRAIN_TIMEOUT, duration)) as waiting:
                    await archivist.wait_drained()
                drained = not waiting.cancelled_caught
                done.set()
            health = archivist.health()
            journal_bytes = _journal_bytes(journal)
    finally:
        library_log.setLevel(level)
    total_seconds = tally.elapsed()
    _end_outage_now(jsonl_dir)  # a run shorter than the outage ends it here
    found = await _verify(
        {"archive": SqliteArchive(archive_path), "jsonl": JsonlArchive(jsonl_dir)},
        sent,
    )
    ok = drained and all(count == messages for count in found.values())
    summary = DemoSummary(
        ok=ok,
        directory=directory,
        sessions=sessions,
        messages=messages,
        appended=tally.appended,
        append_seconds=round(append_seconds, 3),
        appends_per_second=round(tally.appended / max(append_seconds, 1e-9), 1),
        outage_seconds=round(tally.outage_over or 0.0, 3),
        drained=drained,
        journal_bytes=journal_bytes,
        peak_journal_bytes=max(tally.peak_journal_bytes, journal_bytes),
        total_seconds=round(total_seconds, 3),
        backends={
            name: BackendSummary(
                delivered=health.backends[name].delivered,
                peak_backlog=tally.peak_backlog[name],
                read_back=found[name],
                complete=found[name] == messages,
            )
            for name in _BACKENDS
        },
    )
    if json_output:
        out.write(json.dumps(dataclasses.asdict(summary)) + "\n")
    else:
        out.write(_summary_text(summary))
    out.flush()
    return 0 if ok else 1


def _summary_text(s: DemoSummary) -> str:
    backends = s.backends.items()
    lines = [
        "",
        "Summary",
        f"  appended      {s.appended:,} messages in {s.append_seconds:.1f}s"
        f" ({s.appends_per_second:,.0f}/s, paced by think times), each journaled"
        " before its call returned",
        "  delivered     " + ", ".join(f"{n} {b.delivered:,}" for n, b in backends),
        "  peak backlog  "
        + ", ".join(f"{n} {b.peak_backlog:,}" for n, b in backends)
        + f" (jsonl was offline for the first {s.outage_seconds:.1f}s)",
        f"  journal       {_size(s.journal_bytes)} at the end"
        f" (up to {_size(s.peak_journal_bytes)})",
        f"  total time    {s.total_seconds:.1f}s",
        "",
        "Check: every session read back from every backend, in order:",
    ]
    for name, b in backends:
        verdict = "all there" if b.complete else "MISSING SOME"
        lines.append(f"  {name:<8} {b.read_back:,}/{s.messages:,}  {verdict}")
    if not s.drained:
        lines.append(f"  the backlog did not drain within {DRAIN_TIMEOUT:.0f}s")
    lines.append("OK" if s.ok else "FAILED")
    return "\n".join(lines) + "\n"
