"""What the JSONL archive does with hostile files and input (issue 8's probes).

    .venv/bin/python -m tools.security.jsonl [--sessions 4096] [--fd-limit 1024]
                                             [--timeout 60] [--only NAME ...]

Each probe runs in a fresh temporary directory and prints one line of figures:

symlinked-dir   ``JsonlArchive`` on a path that is a symlink to a real directory,
                and on a dangling symlink: are ``health_check``, an append and a
                read refused (and retryable?), how many files appeared through the
                link, and whether the dangling link's target was created.
hardlink        A session's file planted as a hard link to a "victim" file
                (25 bytes, no newline: a torn tail to the old repair). An append,
                a read and an erasure, each on a fresh setup: refused?, and the
                victim's bytes before and after.
probe-name      ``health_check`` twice, watching ``os.open``: the probe file's
                flags (``O_EXCL``? ``O_TRUNC``?), whether its name is random, and
                whether a file planted at the old fixed name survives.
emfile          RLIMIT_NOFILE lowered to ``--fd-limit`` (1,024). First one
                ``write_batch`` of ``--sessions`` (4,096) sessions, then an
                ``Archivist`` (REQUIRED, ``Queued(max_batch=4096)``) delivering one
                batch of as many sessions: ok?, delivered entries, failed attempts,
                and the most session files open at once.
line-breaks     Records whose text holds U+2028, U+2029, U+0085, the other C1
                controls and the ASCII characters ``str.splitlines`` splits on:
                records written, ``\\n`` lines, ``splitlines()`` lines, raw
                line-breaking characters left in the file, and whether
                ``read_session`` returns exactly what was written.
encode-cost     Time to encode one line (``_jsonl_files.encode_line``) against the
                bare ``encode_record``, for a typical record, one with ordinary
                non-ASCII text (no escaping pass), one with a no-break space (the
                pass runs, finds nothing) and one holding U+2028 (escaped).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import resource
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio

from journal_archivist import (
    Archivist,
    BackendError,
    MessageRecord,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import (
    ArchiveBackend,
    SessionGroup,
    _jsonl_files as files,
)
from journal_archivist.backends._codec import encode_record
from journal_archivist.backends.jsonl import JsonlArchive

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

PROBES = (
    "symlinked-dir",
    "hardlink",
    "probe-name",
    "emfile",
    "line-breaks",
    "encode-cost",
)
#: What the victim of the hard-link probe holds (no newline: a "torn tail").
VICTIM = b"victim data, not a record"
#: Every character ``str.splitlines`` splits on, and the C1 controls.
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
C1 = "".join(map(chr, range(0x80, 0xA0)))
TYPICAL = (
    "Here is the summary you asked for. The deployment failed because the"
    " migration ran before the new schema was applied; rerun it with --force"
    " after checking the backup. Let me know if you want the full log."
) * 2


def record(session: UUID, text: str = "hi") -> MessageRecord:
    return MessageRecord(session=session, role="user", content_md=text)


async def outcome(call: Callable[[], Awaitable[object]]) -> str:
    """``ok``, ``refused(retryable=...)`` or the name of another exception."""
    try:
        await call()
    except BackendError as exc:
        return f"refused(retryable={exc.retryable})"
    except Exception as exc:
        return type(exc).__name__
    return "ok"


# -- the probes -------------------------------------------------------------------


async def symlinked_dir(tmp: Path) -> str:
    real = tmp / "real"
    real.mkdir(mode=0o700)
    (tmp / "link").symlink_to(real)
    session = uuid4()
    archive = JsonlArchive(tmp / "link")
    health = await outcome(archive.health_check)
    append = await outcome(lambda: archive.append_messages(session, [record(session)]))
    read = await outcome(lambda: archive.read_session(session))
    await archive.aclose()
    (tmp / "dangling").symlink_to(tmp / "target")
    dangling = JsonlArchive(tmp / "dangling")
    dangling_append = await outcome(
        lambda: dangling.append_messages(session, [record(session)])
    )
    await dangling.aclose()
    created = "yes" if (tmp / "target").exists() else "no"
    return (
        f"health={health} append={append} read={read}"
        f" files-through-link={len(os.listdir(real))}"
        f" dangling-append={dangling_append} dangling-target-created={created}"
    )


def _plant_hard_link(where: Path) -> tuple[Path, JsonlArchive, UUID]:
    """A victim file, and a session file in a new archive hard-linked to it."""
    where.mkdir()
    victim = where / "victim"
    victim.write_bytes(VICTIM)
    archive = JsonlArchive(where / "archive")
    (where / "archive").mkdir(mode=0o700)
    session = uuid4()
    os.link(victim, archive.path_of(session))
    return victim, archive, session


async def _hardlinked(where: Path, name: str) -> str:
    """One call on a session file hard-linked to a victim, on a fresh setup."""
    victim, archive, session = _plant_hard_link(where)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "append": lambda: archive.append_messages(session, [record(session)]),
        "read": lambda: archive.read_session(session),
        "delete": lambda: archive.delete_session(session),
    }
    result = await outcome(calls[name])
    await archive.aclose()
    after = await anyio.Path(victim).read_bytes()
    same = "untouched" if after == VICTIM else "CHANGED"
    return f"{name}={result} victim={len(VICTIM)}->{len(after)}B {same}"


async def hardlink(tmp: Path) -> str:
    calls = ("append", "read", "delete")
    return " ".join([await _hardlinked(tmp / name, name) for name in calls])


async def probe_name(tmp: Path) -> str:
    archive = JsonlArchive(tmp / "archive")
    await archive.health_check()
    fixed = tmp / "archive" / ".jsonl-archive-health-probe"
    fixed.write_bytes(b"planted, keep me")
    seen: list[tuple[str, int]] = []
    real_open = os.open

    def watching_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if "health-probe" in os.fspath(path):
            seen.append((os.fspath(path), flags))
        return real_open(path, flags, *args, **kwargs)

    os.open = watching_open
    try:
        for _ in range(2):
            await archive.health_check()
    finally:
        os.open = real_open
    await archive.aclose()
    names = {os.path.basename(path) for path, _ in seen}
    excl = all(flags & os.O_EXCL for _, flags in seen)
    trunc = any(flags & os.O_TRUNC for _, flags in seen)
    kept = fixed.exists() and fixed.read_bytes() == b"planted, keep me"
    left = sorted(set(os.listdir(tmp / "archive")) - {fixed.name})
    example = min(names) if names else "-"
    return (
        f"opens={len(seen)} O_EXCL={'yes' if excl else 'no'}"
        f" O_TRUNC={'yes' if trunc else 'no'} distinct-names={len(names)}"
        f" e.g.={example} planted-fixed-name={'untouched' if kept else 'CLOBBERED'}"
        f" left-behind={len(left)}"
    )


class Gated(ArchiveBackend):
    """Holds the first batch until released; counts batches and failures."""

    def __init__(self, inner: JsonlArchive) -> None:
        self.inner = inner
        self.release = anyio.Event()
        self.batches: list[int] = []  # sessions per delivered batch
        self.failures: list[str] = []

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        await self.write_batch([SessionGroup(session, tuple(records))])

    async def delete_session(self, session: UUID) -> None:
        await self.inner.delete_session(session)

    async def health_check(self) -> None:
        await self.inner.health_check()

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        await self.release.wait()
        try:
            await self.inner.write_batch(groups)
        except BackendError as exc:
            self.failures.append(str(exc))
            raise
        self.batches.append(len({g.session for g in groups}))

    def owned_paths(self) -> tuple[str, ...]:
        return self.inner.owned_paths()

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.contextmanager
def fd_limit(limit: int) -> Iterator[None]:
    """Lower the soft RLIMIT_NOFILE to ``limit`` inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def counting_session_files() -> Iterator[list[int]]:
    """Count session files open at once; yields ``[now, peak]``."""
    counts = [0, 0]
    session_fds: set[int] = set()
    lock = threading.Lock()
    real_open, real_close = os.open, os.close

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if os.fspath(path).endswith(".jsonl"):
            with lock:
                session_fds.add(fd)
                counts[0] += 1
                counts[1] = max(counts)
        return fd

    def counting_close(fd: int) -> None:
        with lock:
            if fd in session_fds:
                session_fds.discard(fd)
                counts[0] -= 1
        real_close(fd)

    os.open, os.close = counting_open, counting_close
    try:
        yield counts
    finally:
        os.open, os.close = real_open, real_close


async def emfile(tmp: Path, sessions: int, limit: int, wait: float) -> str:
    groups = [SessionGroup(s, (record(s),)) for s in (uuid4() for _ in range(sessions))]
    direct = JsonlArchive(tmp / "direct")
    await direct.health_check()
    with counting_session_files() as direct_open, fd_limit(limit):
        started = time.perf_counter()
        direct_result = await outcome(lambda: direct.write_batch(groups))
        direct_seconds = time.perf_counter() - started
    await direct.aclose()

    gated = Gated(JsonlArchive(tmp / "archivist"))
    registration = Registration(
        name="jsonl",
        backend=gated,
        write_policy=Queued(batch_window_ms=1, max_batch=4096),
        retry=RetryPolicy(initial_delay=0.01, max_delay=0.1),
    )
    delivered = failures = 0
    last_error = None
    async with Archivist.open(tmp / "journal.db", [registration]) as archivist:
        first = uuid4()
        await archivist.append_messages(first, [record(first)])  # held by the gate
        async with anyio.create_task_group() as tg:
            for group in groups:
                tg.start_soon(archivist.append_messages, group.session, group.records)
        with counting_session_files() as via_open, fd_limit(limit):
            gated.release.set()
            started = time.perf_counter()
            with anyio.move_on_after(wait):
                await archivist.wait_drained()
            seconds = time.perf_counter() - started
        health = archivist.health().backends["jsonl"]
        delivered, last_error = health.delivered, health.last_error
        failures = len(gated.failures)
        await archivist.shutdown(timeout=0)
    error = (last_error or "-")[:60]
    return (
        f"fd-limit={limit} sessions={sessions}"
        f" direct-write_batch={direct_result} in {direct_seconds:.1f}s"
        f" direct-peak-open={direct_open[1]}"
        f" | archivist max_batch=4096: delivered={delivered}/{sessions + 1} entries"
        f" batches={len(gated.batches)} largest={max(gated.batches, default=0)}"
        f" failed-attempts={failures} in {seconds:.1f}s peak-open={via_open[1]}"
        f" last-error={error!r}"
    )


async def line_breaks(tmp: Path) -> str:
    session = uuid4()
    texts = [f"a{c}b" for c in BREAKS + C1] + [BREAKS + C1, "plain"]
    written = [record(session, text) for text in texts]
    async with JsonlArchive(tmp / "archive") as archive:
        await archive.append_messages(session, written)
        got = await archive.read_session(session)
        data = await anyio.Path(archive.path_of(session)).read_bytes()
    text = data.decode()
    raw = sum(text.count(c) for c in set(BREAKS + C1) - {"\n"})
    newlines = data.count(b"\n")
    return (
        f"records={len(written)} newline-lines={newlines}"
        f" splitlines={len(text.splitlines())} raw-break-or-C1-chars={raw}"
        f" roundtrip={'exact' if got == written else 'DIFFERS'}"
    )


def _per_call_ns(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, repeat=5, number=number)) / number * 1e9


async def encode_cost(tmp: Path) -> str:
    session = uuid4()
    cases = {
        "typical": TYPICAL,
        "accents": TYPICAL.replace("e", "\u00e9").replace("'", "\u2019"),
        "nbsp": TYPICAL.replace(" ", "\u00a0", 3),
        "u2028": TYPICAL.replace(". ", ".\u2028", 1),
    }
    parts = [f"({len(encode_record(record(session, TYPICAL)))}B line)"]
    for name, text in cases.items():
        rec = record(session, text)
        bare = line = float("inf")
        encode_bare = functools.partial(encode_record, rec)
        encode_line = functools.partial(files.encode_line, rec)
        for _ in range(5):  # interleaved, best of each: less noise than one run
            bare = min(bare, _per_call_ns(encode_bare, 20_000))
            line = min(line, _per_call_ns(encode_line, 20_000))
        parts.append(
            f"{name}: encode_record={bare / 1000:.2f}us"
            f" encode_line={line / 1000:.2f}us (+{(line - bare) / bare:.0%})"
        )
    return " ".join(parts)


async def run(args: argparse.Namespace) -> None:
    for name in args.only or PROBES:
        with tempfile.TemporaryDirectory(prefix=f"jsonl-{name}-") as tmp:
            path = Path(tmp)
            if name == "symlinked-dir":
                line = await symlinked_dir(path)
            elif name == "hardlink":
                line = await hardlink(path)
            elif name == "probe-name":
                line = await probe_name(path)
            elif name == "emfile":
                line = await emfile(path, args.sessions, args.fd_limit, args.timeout)
            elif name == "line-breaks":
                line = await line_breaks(path)
            else:
                line = await encode_cost(path)
        print(f"{name:<14} {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.security.jsonl",
        description="Rerun the JSONL-archive probes of issue 8; one line each.",
    )
    parser.add_argument("--sessions", type=int, default=4096)
    parser.add_argument("--fd-limit", type=int, default=1024)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for delivery"
    )
    parser.add_argument("--only", nargs="+", choices=PROBES)
    parser.add_argument(
        "--verbose", action="store_true", help="show the library's log lines too"
    )
    args = parser.parse_args(argv)
    if not args.verbose:  # the writer's retry warnings would bury the figures
        logging.getLogger("journal_archivist").setLevel(logging.CRITICAL)
    if args.sessions < 1 or args.fd_limit < 64:
        parser.error("--sessions must be >= 1 and --fd-limit >= 64")
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
