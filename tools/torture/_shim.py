"""Power-cut emulation for the torture tools: build and load ``shim.c``, steer its
faults, and roll a directory back to what a power cut would leave.

    python -m tools.torture._shim victim DB --sync off|normal|full [--count N]
        a small sqlite3 program (WAL) that commits one row per transaction (forever,
        or N and then waits to be killed) and prints ``A <id>`` after each commit:
        the first victim of the shim, and the one the tests use to prove the
        emulation has teeth

Pieces:
- ``build_shim()`` compiles ``shim.c`` with the system ``cc`` into a per-user cache
  (once per version of the source); ``ShimUnavailable`` says why it cannot (no
  compiler, not Linux), which the tools print as ``SKIP <reason>``.
- ``Machine`` is one emulated computer: a directory whose files the shim tracks
  (``run/``), its undo log, a graveyard for unlinked files and the shared control
  page (``Control``) that switches faults on and off and holds the shim's counters.
  ``Machine.spawn`` starts a child under the shim; ``Machine.power_cut`` kills it
  and rolls ``run/`` back.

Rules and theory of the rollback (``power_cut``):
- The state at the start of the log is durable by definition: the previous cut
  left it, or nobody had written yet. Every change in the log is undone unless it
  is *kept*:
  - a write or truncate is kept if a later successful ``fsync``/``fdatasync`` of
    the same inode covers it (the sync's ``upto`` is past the change's sequence
    number), and no failed sync came first: a failed sync dooms every unsynced
    change before it for good, even if a later sync succeeds (Linux drops the
    dirty pages of a failed writeback: "fsyncgate");
  - a creation, unlink or rename (a directory entry) is kept if a later successful
    fsync of the directory holding it (both directories, for a rename) covers it.
    An fsync of the file does not make its name durable (POSIX; ext4 happens to be
    kinder). So a file created since the last directory sync disappears, and an
    unlinked one comes back from the graveyard with its content.
- Changes to an inode are undone newest first back to its oldest change that is
  not kept (old bytes, old size, a cut tail), then the kept ones after it are
  redone in order. That is exact even where a doomed write and a kept one overlap.
- ``torn=True`` (with an ``rng``) keeps, besides those, a random half of the
  unsynced changes (the kernel may have written any of them back before the cut)
  and a random prefix of the unsynced directory changes (filesystem metadata is
  committed in order). Never a doomed change.
- ``-shm`` files are deleted, as a reboot clears SQLite's shared memory.
- The child must be dead (all of its threads) before the rollback starts:
  ``power_cut`` SIGKILLs its process group and reaps it first.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import mmap
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

if TYPE_CHECKING:
    import random
    from collections.abc import Iterable, Sequence

__all__ = [
    "COUNTERS",
    "Control",
    "Machine",
    "Record",
    "RollbackReport",
    "ShimUnavailable",
    "build_shim",
    "read_log",
    "rollback",
]

SOURCE: Final = Path(__file__).with_name("shim.c")

# -- the wire formats (must match shim.c) ------------------------------------------

_HEADER: Final = struct.Struct("=IIQQQQqqqqqq")
_REC_MAGIC: Final = 0x31444E55
_CTL: Final = struct.Struct("=IIII240s16Q")
_CTL_MAGIC: Final = 0x4C544354
_CTL_SIZE: Final = 4096
_WRITE_ERRNO_AT: Final = 8
_SYNC_ERRNO_AT: Final = 12

#: The shim's counters, in the order of its ``counters`` array.
COUNTERS: Final = (
    "opens",
    "writes",
    "bytes",
    "syncs",
    "dirsyncs",
    "failed_syncs",
    "named_writes",
    "named_syncs",
    "fault_writes",
    "fault_syncs",
    "truncates",
    "creates",
    "unlinks",
    "renames",
    "lost_fds",
    "log_bytes",
)


class ShimUnavailable(Exception):
    """The shim cannot be built or used here; the message is the reason."""


def build_shim(cache: str | os.PathLike[str] | None = None) -> Path:
    """The shim's shared library, compiled with ``cc`` if not cached yet.

    Raises:
        ShimUnavailable: not Linux, or no ``cc``.
        RuntimeError: ``cc`` failed (a bug in ``shim.c``, not a reason to skip).
    """
    if not sys.platform.startswith("linux"):
        raise ShimUnavailable(f"the shim needs Linux (LD_PRELOAD), not {sys.platform}")
    compiler = shutil.which("cc")
    if compiler is None:
        raise ShimUnavailable("no C compiler: cc is not on PATH")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    where = Path(cache or Path(tempfile.gettempdir()) / f"torture-shim-{os.getuid()}")
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    if where.stat().st_uid != os.getuid():
        raise ShimUnavailable(f"{where} belongs to another user")
    library = where / f"shim-{digest}.so"
    if library.exists():
        return library
    partial = where / f"shim-{digest}.{os.getpid()}.tmp"
    command = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(partial)]
    result = subprocess.run(
        [*command, str(SOURCE), "-ldl", "-lpthread"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"cc failed on {SOURCE}:\n{result.stderr}")
    os.replace(partial, library)  # atomic: a concurrent build wins or loses whole
    return library


class Control:
    """The page the shim maps shared: faults to inject, and its counters.

    Faults hit only files whose base name is in ``names``. Switching one costs the
    child nothing but a memory read per call.
    """

    def __init__(self, path: str | os.PathLike[str], names: Iterable[str]) -> None:
        encoded = b"".join(name.encode() + b"\0" for name in names)
        if len(encoded) >= 240:
            raise ValueError("fault names too long for the control page")
        page = _CTL.pack(_CTL_MAGIC, 1, 0, 0, encoded, *([0] * len(COUNTERS)))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, page.ljust(_CTL_SIZE, b"\0"))
            self._map = mmap.mmap(fd, _CTL_SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.path = str(path)

    def set_faults(self, *, write: int = 0, sync: int = 0) -> None:
        """Make writes (``write``) and syncs (``sync``) fail with that errno; 0: off."""
        self._map[_WRITE_ERRNO_AT : _WRITE_ERRNO_AT + 4] = write.to_bytes(4, "little")
        self._map[_SYNC_ERRNO_AT : _SYNC_ERRNO_AT + 4] = sync.to_bytes(4, "little")

    def counters(self) -> dict[str, int]:
        values = _CTL.unpack_from(self._map)[5:]
        return dict(zip(COUNTERS, values, strict=True))

    def reset_counters(self) -> None:
        at = _CTL.size - 8 * len(COUNTERS)
        self._map[at : _CTL.size] = bytes(8 * len(COUNTERS))

    def close(self) -> None:
        self._map.close()


# -- the undo log ---------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One record of the undo log (see shim.c for the meaning of a..f)."""

    kind: str
    seq: int
    dev: int
    ino: int
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    payload: memoryview

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def strings(self) -> list[str]:
        """The NUL-separated paths of a C, O, U or M record."""
        return [part.decode() for part in bytes(self.payload).split(b"\0")]


def read_log(path: str | os.PathLike[str]) -> list[Record]:
    """Every whole record of the log; a torn last one (SIGKILL mid-write) is dropped:
    the change it announced was never made."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return []
        # Mapped, not read: a log can reach hundreds of MB. The records' payloads
        # are views of the map, which is unmapped once the last one is dropped.
        data = memoryview(mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ))
    records = []
    at = 0
    while at + _HEADER.size <= len(data):
        magic, kind, total, seq, dev, ino, a, b, c, d, e, f = _HEADER.unpack_from(
            data, at
        )
        if magic != _REC_MAGIC or total < _HEADER.size:
            raise ValueError(f"{path}: not an undo record at byte {at}")
        if at + total > len(data):
            break
        payload = data[at + _HEADER.size : at + total]
        records.append(Record(chr(kind), seq, dev, ino, a, b, c, d, e, f, payload))
        at += total
    return records


@dataclass
class RollbackReport:
    """What a power cut took back."""

    records: int = 0
    changes: int = 0  # writes and truncates in the log
    undone: int = 0  # of which undone
    undone_bytes: int = 0
    doomed: int = 0  # undone because a sync failed after them
    kept_unsynced: int = 0  # kept by torn mode although never synced
    syncs: int = 0
    failed_syncs: int = 0
    names_undone: int = 0  # creations, unlinks and renames reverted
    unrestorable: int = 0  # changes to inodes or names that could not be found
    shm_removed: int = 0
    #: Changes undone per file name (UUIDs in names shown as ``<uuid>``).
    undone_by_file: Counter[str] = field(default_factory=Counter)
    #: Directory entries undone: "created <name>", "unlinked <name>", ...
    names_by_kind: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        files = ", ".join(
            f"{n} {name}" for name, n in self.undone_by_file.most_common()
        )
        entries = ", ".join(f"{n} {what}" for what, n in self.names_by_kind.items())
        return (
            f"{self.undone}/{self.changes} changes undone ({self.undone_bytes} B;"
            f" {self.doomed} by a failed sync, {self.kept_unsynced} unsynced kept),"
            f" {self.names_undone} names undone, {self.unrestorable} unrestorable"
            + (f" [{files}]" if files else "")
            + (f" [{entries}]" if entries else "")
        )


_UUID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def _shape(path: str) -> str:
    """A file's base name with any UUID in it generalised, for counting."""
    return _UUID.sub("<uuid>", os.path.basename(path))


def rollback(
    log: str | os.PathLike[str],
    tracked: str | os.PathLike[str],
    grave: str | os.PathLike[str] | None = None,
    *,
    torn: bool = False,
    rng: random.Random | None = None,
) -> RollbackReport:
    """Leave ``tracked`` as a power cut at the end of ``log`` would (module doc).

    The writer of the log must be dead. ``grave`` is emptied afterwards.
    """
    if torn and rng is None:
        raise ValueError("torn=True needs an rng")
    records = read_log(log)
    report = RollbackReport(records=len(records))
    results = {r.a: r for r in records if r.kind == "R"}

    def failed(record: Record) -> bool:
        result = results.get(record.seq)
        return result is not None and result.b < 0

    names: dict[tuple[int, int], str] = {}
    changes: defaultdict[tuple[int, int], list[Record]] = defaultdict(list)
    pending: defaultdict[tuple[int, int], list[Record]] = defaultdict(list)
    kept: set[int] = set()
    doomed: set[int] = set()
    entries: list[Record] = []  # directory changes
    waiting: dict[int, set[tuple[int, int]]] = {}  # entry seq -> unsynced parents
    dir_pending: defaultdict[tuple[int, int], list[Record]] = defaultdict(list)

    for record in records:
        kind = record.kind
        if kind == "O":
            names[record.key] = record.strings()[0]
        elif kind in "WT":
            if not failed(record):
                changes[record.key].append(record)
                pending[record.key].append(record)
        elif kind in "SF":
            ok = kind == "S"
            report.syncs += ok
            report.failed_syncs += not ok
            queue = dir_pending if record.b else pending
            still = []
            for change in queue[record.key]:
                if change.seq >= record.a:
                    still.append(change)
                elif not ok:
                    doomed.add(change.seq)
                elif record.b:
                    waiting[change.seq].discard(record.key)
                    if waiting[change.seq]:
                        still.append(change)  # still waits for its other directory
                else:
                    kept.add(change.seq)
            queue[record.key] = still
        elif kind in "CUM" and not failed(record):
            parents = {(record.dev, record.ino)} if kind == "C" else set()
            if kind in "UM":
                parents.add((record.a, record.b))
            if kind == "M":
                parents.add((record.c, record.d))
            entries.append(record)
            waiting[record.seq] = set(parents)
            for parent in parents:
                dir_pending[parent].append(record)
    kept_entries = {
        e.seq for e in entries if not waiting[e.seq] and e.seq not in doomed
    }

    if torn:
        assert rng is not None
        for inode_changes in changes.values():
            for change in inode_changes:
                seq = change.seq
                if seq not in kept and seq not in doomed and rng.random() < 0.5:
                    kept.add(seq)
                    report.kept_unsynced += 1
        unsynced = [
            e for e in entries if e.seq not in kept_entries and e.seq not in doomed
        ]
        kept_entries.update(e.seq for e in unsynced[: rng.randint(0, len(unsynced))])

    tracked = Path(tracked)
    where = _locate(tracked, grave)
    for key, inode_changes in changes.items():
        report.changes += len(inode_changes)
        first = next(
            (i for i, c in enumerate(inode_changes) if c.seq not in kept), None
        )
        if first is None:
            continue
        tail = inode_changes[first:]
        undone = [c for c in tail if c.seq not in kept]
        report.doomed += sum(1 for c in undone if c.seq in doomed)
        path = where.get(key)
        if path is None:
            report.unrestorable += len(undone)
            continue
        report.undone += len(undone)
        report.undone_bytes += sum(c.d if c.kind == "W" else c.c for c in undone)
        report.undone_by_file[_shape(names.get(key, path))] += len(undone)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            for change in reversed(tail):
                _undo(fd, change)
            for change in tail:
                if change.seq in kept:
                    _redo(fd, change, results.get(change.seq))
        finally:
            os.close(fd)

    for entry in reversed(entries):
        if entry.seq not in kept_entries:
            report.names_undone += 1
            what = {"C": "created", "U": "unlinked", "M": "renamed"}[entry.kind]
            report.names_by_kind[f"{what} {_shape(entry.strings()[0])}"] += 1
            report.unrestorable += not _undo_entry(entry, results.get(entry.seq))

    if grave is not None:
        for name in os.listdir(grave):
            os.unlink(os.path.join(grave, name))
    for directory, _, files in os.walk(tracked):
        for name in files:
            if name.endswith("-shm"):
                os.unlink(os.path.join(directory, name))
                report.shm_removed += 1
    return report


def _locate(
    tracked: Path, grave: str | os.PathLike[str] | None
) -> dict[tuple[int, int], str]:
    """Where each regular file's inode lives now (the graveyard holds the unlinked)."""
    where: dict[tuple[int, int], str] = {}
    roots = [str(tracked)] + ([os.fspath(grave)] if grave is not None else [])
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                where.setdefault((st.st_dev, st.st_ino), path)
    return where


def _undo(fd: int, change: Record) -> None:
    if change.kind == "W":
        offset, old_size, old_len = change.a, change.b, change.c
        if old_len:
            _pwrite_all(fd, change.payload[:old_len], offset)
        os.ftruncate(fd, old_size)
    else:  # T: a = old size, b = new size, payload = the tail it cut
        old_size, new_size = change.a, change.b
        os.ftruncate(fd, old_size)
        if new_size < old_size:
            _pwrite_all(fd, change.payload, new_size)


def _redo(fd: int, change: Record, result: Record | None) -> None:
    if change.kind == "W":
        old_len, length = change.c, change.d
        if result is not None:  # a short write: only that much happened
            length = min(length, max(result.b, 0))
        _pwrite_all(fd, change.payload[old_len : old_len + length], change.a)
    else:
        os.ftruncate(fd, change.b)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _undo_entry(entry: Record, result: Record | None) -> bool:
    """Revert one directory change; False if it could not be."""
    if entry.kind == "C":
        path = entry.strings()[0]
        if not os.path.lexists(path):
            return True
        st = os.lstat(path)
        if result is not None and (st.st_dev, st.st_ino) != (result.dev, result.ino):
            return True  # something else holds the name now; its own entry decides
        if entry.a:
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True
    if entry.kind == "U":
        path, buried = entry.strings()[:2]
        if os.path.lexists(path):
            return True  # killed before the unlink happened
        if entry.c:
            os.mkdir(path, 0o700)
            return True
        if buried and os.path.lexists(buried):
            os.link(buried, path)
            return True
        return False
    old, new, buried = entry.strings()[:3]
    if os.path.lexists(new) and not os.path.lexists(old):
        os.rename(new, old)
    if buried and os.path.lexists(buried) and not os.path.lexists(new):
        os.link(buried, new)
    return True


# -- one emulated machine -------------------------------------------------------------


class Machine:
    """A directory whose files live on an emulated disk that can lose power.

    ``root/run`` is tracked (give it to the child), ``root/undo.log``,
    ``root/grave`` and ``root/control`` belong to the emulation.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        library: str | os.PathLike[str],
        fault_names: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        self.run = self.root / "run"
        self.grave = self.root / "grave"
        self.log = self.root / "undo.log"
        self.library = str(library)
        for directory in (self.root, self.run, self.grave):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.control = Control(self.root / "control", fault_names)
        self.child: subprocess.Popen[bytes] | None = None

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        preload = env.get("LD_PRELOAD")
        env["LD_PRELOAD"] = self.library + (f":{preload}" if preload else "")
        env["TORTURE_SHIM_DIR"] = str(self.run)
        env["TORTURE_SHIM_LOG"] = str(self.log)
        env["TORTURE_SHIM_GRAVE"] = str(self.grave)
        env["TORTURE_SHIM_CTL"] = self.control.path
        return env

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        stderr: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` under the shim, in a process group of its own."""
        if self.child is not None and self.child.poll() is None:
            raise RuntimeError("the previous child is still running")
        self.child = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=self.environment(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        return self.child

    def kill(self) -> int | None:
        """SIGKILL the child's process group and reap the child; its return code."""
        child = self.child
        if child is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        # wait() returns only once every thread of the child has exited, so
        # nothing of it can write after this.
        return child.wait()

    def power_cut(
        self,
        *,
        torn: bool = False,
        rng: random.Random | None = None,
        keep_log: str | os.PathLike[str] | None = None,
    ) -> RollbackReport:
        """Kill the child (if any), roll ``run/`` back, start a fresh log.

        ``keep_log``: move the log there (for a post-mortem) instead of deleting it.
        """
        self.kill()
        self.control.set_faults()
        if not self.log.exists():
            self.log.touch()
        report = rollback(self.log, self.run, self.grave, torn=torn, rng=rng)
        if keep_log is not None:
            os.replace(self.log, keep_log)
        else:
            self.log.unlink()
        return report

    def close(self) -> None:
        self.kill()
        self.control.close()


# -- the standalone victim ------------------------------------------------------------


def victim(path: str, sync: str, count: int | None = None) -> None:
    """Commit one row per transaction, forever or ``count`` times (then wait to be
    killed, writing nothing more); print ``A <id>`` after each commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync.upper()}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad BLOB)")
    (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()
    out = sys.stdout
    end = sys.maxsize if count is None else last + 1 + count
    for row in range(last + 1, end):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, randomblob(300))", (row,))
        conn.execute("COMMIT")
        out.write(f"A {row}\n")
        out.flush()
    while True:
        signal.pause()


def victim_rows(path: str | os.PathLike[str]) -> set[int]:
    """The ids a victim database holds (read outside the shim)."""
    if not os.path.exists(path):
        return set()
    conn = sqlite3.connect(path)
    try:
        try:
            return {row for (row,) in conn.execute("SELECT id FROM t")}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return set()
            raise
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.torture._shim")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("victim", help="commit rows forever (under the shim)")
    run.add_argument("database")
    run.add_argument("--sync", choices=["off", "normal", "full"], default="full")
    run.add_argument("--count", type=int, help="commit this many rows, then wait")
    args = parser.parse_args(argv)
    try:
        victim(args.database, args.sync, args.count)
    except BrokenPipeError:
        return 0
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorname", "")
        print(f"X {code} {exc}", flush=True)
        return 3
    return 0


# Used by tests and tools; keeps errno names next to the faults they switch.
FAULT_ERRNOS: Final = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC}

if __name__ == "__main__":
    sys.exit(main())
