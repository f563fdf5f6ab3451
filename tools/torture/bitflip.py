"""Bit-flip torture: flip one bit of a journal holding a backlog, open, deliver, judge.

Commands::

    python -m tools.torture.bitflip [--cycles 1000] [--seed 1] [--jobs N]
    python -m tools.torture.bitflip --seed 1 --trial 17         # replay one, verbosely
    python -m tools.torture.bitflip --seed 1 --flip payload-text  # a named flip

The promise under test (docs/guarantees.md, "Detection of damage"): whatever single
bit of the journal is flipped, opening it and delivering its backlog ends in one of

- **clean**: every appended record delivered, byte for byte;
- **refused**: ``Archivist.open`` raises a ``JournalError`` (e.g. ``JournalCorrupt``);
- **quarantined and counted**: some entries are not delivered, and ``health()``
  counts at least as many entries as are missing, per backend.

and never in a **crash** (another exception at open, an archivist whose loops died,
a child that exits badly), a **hang** (not drained within ``--drain-timeout``, or a
child that outlives ``--timeout``), a **corrupted** delivery (a record that differs
from what was appended, one an erasure should have removed, an erasure of a
session never erased, or a session's entries out of order), or an **uncounted
loss** (entries missing that no counter accounts for).

How:

1. Once per seed, a pristine journal is built by child processes (``--build-step``)
   from a workload derived from the seed alone: a few hundred appends over 8
   sessions (some records over 4 KiB, so entries have overflow pages; some with
   binary attachments), one erasure in each of 4 sessions, two backends (``alpha``
   REQUIRED, ``bravo`` BEST_EFFORT), so ``targets`` has several bits. Along the way
   it leaves one entry of each kind the side tables hold: bravo dead-letters a
   poisoned entry; the journal is closed and one backlog entry's ``crc`` damaged
   with ``sqlite3`` (alpha quarantines it on the next open); one append is made
   and the child SIGKILLed, and the WAL frames of that append are cut off (a real
   lost WAL tail: ``lost_entries`` and a ``meta`` row). Then alpha delivers while
   bravo is down, alpha is held at a gate with a batch in flight, and the child is
   SIGKILLed with both backlogs undelivered.
2. Two pristine variants of that crashed journal are kept: ``wal/`` (the database
   file, its live WAL and the lock file as the crash left them; the ``-shm`` is
   dropped, SQLite rebuilds it) and ``ckpt/`` (the same, checkpointed by
   ``sqlite3``, no WAL). ``pristine.json`` records what was appended (per session,
   in order, each record's msgpack bytes), what each backend received during the
   build, which entries the build itself made undeliverable (excused, counted in
   the baseline), and the byte offsets of every row's cell header, record header
   (serial types) and routing fields, found by walking the b-trees of the file
   (https://www.sqlite.org/fileformat2.html). Unflipped, both variants must come
   out clean; their counters are the baseline.
3. Trial ``n`` of seed ``s`` draws its flip from ``random.Random(f"...{s}:{n}")``:
   60 % a uniform bit of a database file (ckpt 3/4, wal's 1/4), 20 % a uniform
   bit of the WAL, 20 % targeted at ``ckpt/``: the serial types and cell headers of
   ``entries`` rows, their ``targets``/``origin`` values and other fields (op,
   size, crc, session, time), and rows of ``backends`` (cursor, counters),
   ``dead_letters``, ``quarantine`` and ``meta``. The files are copied to a
   scratch directory, the bit flipped, and a child (``--child-trial``) opens the
   journal with two recording backends, waits until drained (bounded), and writes
   what each backend received and ``health()`` as JSON. The parent judges.

Oracle points: a delivered record is compared byte for byte (its msgpack
encoding) with what was appended; idempotent redelivery is fine; a record
appended before its session's erasure must not reach a backend after that
backend got the erasure; missing is counted per entry (one ``append_messages``
or ``delete_session`` call), per backend, and is "counted" when the growth over
the baseline of that backend's counters (every integer field of ``BackendHealth``
but ``delivered``, lags and failures) plus the journal's (every integer field of
``JournalHealth`` but ``free_bytes`` and ``commit_failures``; its ``quarantined``
only beyond what the backends' own ``quarantined`` already count) is at least the
number missing. So a counter a later version adds (say, repaired rows) counts
without changing this tool.

The pristine files are cached per seed under ``--workdir`` and reused, so
``--trial N`` replays exactly the flip trial N made; ``--rebuild`` makes new ones
(other bytes, so other offsets). Every trial's flip and verdict of the last run go
to ``<workdir>/seed-<s>/last-run.json``. Exit status: 0 on a pass, 1 on any
violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
import msgspec

from journal_archivist import (
    Archivist,
    Attachment,
    BackendError,
    FailureMode,
    JournalError,
    MessageRecord,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import ArchiveBackend

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

ROOT: Final = Path(__file__).resolve().parents[2]
#: Bumped when the pristine layout changes, so cached pristine files are rebuilt.
FORMAT: Final = 1
JOURNAL: Final = "journal.db"
NAMES: Final = ("alpha", "bravo")
SESSIONS: Final = 8
#: Sessions 0..3 are erased once each; 4..7 never (the side-table entries live there).
ERASED: Final = 4
DEFAULT_OPS: Final = 300
TRIAL_TIMEOUT: Final = 30.0
DRAIN_TIMEOUT: Final = 10.0

KINDS: Final = (
    "clean",
    "refused",
    "quarantined",
    "crashed",
    "hung",
    "corrupted",
    "uncounted",
)
LABELS: Final = {"quarantined": "quarantined+counted", "uncounted": "uncounted loss"}
ACCEPTABLE: Final = frozenset({"clean", "refused", "quarantined"})
#: Flips the tests name: each is one deterministic bit of ``ckpt/journal.db``.
NAMED_FLIPS: Final = (
    "payload-text",
    "payload-int",
    "op",
    "targets-clear",
    "origin-negative",
    "cursor-up",
)

# Targeted flips: how often each group of sites is picked.
_TARGET_WEIGHTS: Final = {
    "entries-serial": 40,
    "entries-cell": 8,
    "entries-routing": 20,
    "entries-value": 12,
    "backends": 12,
    "side": 8,
}
# Health fields that are not counts of undelivered entries.
_NOT_JOURNAL_COUNTERS: Final = {"free_bytes", "commit_failures"}
_NOT_BACKEND_COUNTERS: Final = {
    "delivered",
    "consecutive_failures",
    "lag_entries",
    "lag_bytes",
}

_encode: Final = msgspec.msgpack.Encoder(uuid_format="bytes").encode
_decode_records: Final = msgspec.msgpack.Decoder(list[MessageRecord]).decode


class BuildError(RuntimeError):
    """The pristine journal could not be built as the tool needs it."""


# -- the workload ----------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """Where the build's phases start, as op indices."""

    count: int

    @property
    def phase2(self) -> int:
        """First op made while alpha is down (bravo delivers; step 1)."""
        return int(self.count * 0.4)

    @property
    def lost(self) -> int:
        """The op whose WAL frames are cut off (step 2)."""
        return int(self.count * 0.5)

    @property
    def phase4(self) -> int:
        """First op made while alpha is held at its gate (bravo still down)."""
        return int(self.count * 0.75)

    @property
    def dead(self) -> int:
        """The op bravo dead-letters (its record is poison to bravo in step 1)."""
        return int(self.count * 0.1)

    @property
    def erasures(self) -> tuple[int, ...]:
        """The ops erasing sessions 0..3: in phases 1, 2, 3 and 4."""
        return tuple(int(self.count * f) for f in (0.2, 0.45, 0.62, 0.87))


#: One op of the workload: ``(session, is_erasure, records)``.
PlannedOp: TypeAlias = tuple[uuid.UUID, bool, list[MessageRecord]]

_TEXT: Final = "abcdefghijklmnopqrstuvwxyz      .,\n#*`éßø漢字🙂"


def plan_workload(seed: int, count: int) -> list[PlannedOp]:
    """The ops of the build: ``(session, is_erasure, records)``, in order.

    Derived from ``seed`` alone (ids and timestamps included), so every build step
    and the parent agree on it.
    """
    if count < 60:
        raise ValueError(f"the workload needs at least 60 ops, got {count}")
    rng = random.Random(f"bitflip-workload:{seed}")
    sessions = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(SESSIONS)]
    bounds = Bounds(count)
    erasing = {op: sessions[k] for k, op in enumerate(bounds.erasures)}
    base = datetime(2024, 1, 1, tzinfo=UTC)
    ops: list[PlannedOp] = []
    for index in range(count):
        if index in erasing:
            ops.append((erasing[index], True, []))
            continue
        if index in (bounds.dead, bounds.lost):
            # One small record in a session never erased, so the side-table row
            # (dead letter, lost entry) is never purged by an erasure.
            session, size = sessions[ERASED + rng.randrange(SESSIONS - ERASED)], 1
        else:
            session, size = rng.choice(sessions), rng.choice((1, 1, 1, 2, 3))
        when = base + timedelta(seconds=index)
        records = [
            _record(rng, session, when + timedelta(microseconds=i)) for i in range(size)
        ]
        if index in (bounds.dead, bounds.lost):
            records = [
                msgspec.structs.replace(records[0], content_md="small", attachments=())
            ]
        ops.append((session, False, records))
    return ops


def _record(rng: random.Random, session: uuid.UUID, when: datetime) -> MessageRecord:
    roll = rng.random()
    if roll < 0.08:
        length = rng.randrange(5_000, 12_000)  # overflow pages
    elif roll < 0.3:
        length = rng.randrange(300, 1_500)
    else:
        length = rng.randrange(0, 120)
    attachments: tuple[Attachment, ...] = ()
    if rng.random() < 0.1:
        data = rng.randbytes(rng.randrange(1, 600))
        attachments = (
            Attachment(
                name="blob.bin",
                media_type="application/octet-stream",
                size=len(data),
                data=data,
            ),
        )
    return MessageRecord(
        message_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        session=session,
        ts=when,
        role=rng.choice(("user", "assistant", "tool")),
        content_md="".join(rng.choices(_TEXT, k=length)),
        attachments=attachments,
        metadata={"n": rng.randrange(1000)} if rng.random() < 0.3 else None,
    )


# -- the backends of the build and of each trial -----------------------------------


class Recorder(ArchiveBackend):
    """Logs every call it applies; can be taken down, poisoned, or held at a gate.

    The log holds ``["a", session, [[message_id, msgpack hex], ...]]`` per append
    and ``["e", session]`` per erasure, in the order they were applied. Must be
    made inside the event loop (it holds anyio events).
    """

    def __init__(self, log: list[list[Any]]) -> None:
        self.log = log
        self.down = False
        self.poison: set[uuid.UUID] = set()
        self._gate: anyio.Event | None = None
        self._held = anyio.Event()

    def hold(self) -> None:
        """Make every call wait at a gate that never opens (the build is killed)."""
        self._gate = anyio.Event()

    async def wait_held(self) -> None:
        """Return once a call waits at the gate."""
        await self._held.wait()

    async def _arrive(self) -> None:
        if self._gate is not None:
            self._held.set()
            await self._gate.wait()
        if self.down:
            raise BackendError("down (bitflip build)", retryable=True)

    async def append_messages(
        self, session: uuid.UUID, records: Sequence[MessageRecord]
    ) -> None:
        await self._arrive()
        if any(record.message_id in self.poison for record in records):
            raise BackendError("poison (bitflip build)", retryable=False)
        self.log.append(
            [
                "a",
                str(session),
                [[str(r.message_id), _encode(r).hex()] for r in records],
            ]
        )

    async def delete_session(self, session: uuid.UUID) -> None:
        await self._arrive()
        self.log.append(["e", str(session)])

    async def health_check(self) -> None:
        if self.down:
            raise BackendError("down (bitflip build)", retryable=True)


def _registrations(alpha: Recorder, bravo: Recorder) -> list[Registration]:
    # Small batches, so the backlog spans many batches and erasures share some.
    policy = Queued(batch_window_ms=2, max_batch=8)
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_attempts=2)
    return [
        Registration(
            name="alpha",
            backend=alpha,
            write_policy=policy,
            retry=retry,
            readable=False,
        ),
        Registration(
            name="bravo",
            backend=bravo,
            write_policy=policy,
            retry=retry,
            failure_mode=FailureMode.BEST_EFFORT,
            readable=False,
        ),
    ]


async def _apply(archivist: Archivist, ops: Sequence[PlannedOp]) -> None:
    for session, erase, records in ops:
        if erase:
            await archivist.delete_session(session)
        else:
            await archivist.append_messages(session, records)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def _die() -> None:
    # A crash, not a shutdown: nothing is checkpointed or marked done on the way.
    os.kill(os.getpid(), signal.SIGKILL)


async def build_step(step: int, directory: Path, seed: int, count: int) -> None:
    """One child step of the build (see the module docstring); steps 2 and 3 end
    in SIGKILL after writing ``events-<step>.json``."""
    ops = plan_workload(seed, count)
    bounds = Bounds(count)
    events: dict[str, list[list[Any]]] = {name: [] for name in NAMES}
    alpha, bravo = Recorder(events["alpha"]), Recorder(events["bravo"])
    archivist = await Archivist.open(
        directory / JOURNAL, _registrations(alpha, bravo), close_timeout=0
    )
    out = directory / f"events-{step}.json"
    if step == 1:
        bravo.poison = {ops[bounds.dead][2][0].message_id}
        await _apply(archivist, ops[: bounds.phase2])
        with anyio.fail_after(60):
            await archivist.wait_drained()
        alpha.down = True
        await _apply(archivist, ops[bounds.phase2 : bounds.lost])
        with anyio.fail_after(60):
            await archivist.wait_drained("bravo")
        _write_json(out, {"events": events})
        await archivist.shutdown(timeout=0)
    elif step == 2:
        alpha.down = bravo.down = True
        await _apply(archivist, ops[bounds.lost : bounds.lost + 1])
        _write_json(out, {"events": events})
        _die()
    else:
        with anyio.fail_after(60):
            await archivist.wait_drained()
        bravo.down = True
        await _apply(archivist, ops[bounds.lost + 1 : bounds.phase4])
        with anyio.fail_after(60):
            await archivist.wait_drained("alpha")
        alpha.hold()
        await _apply(archivist, ops[bounds.phase4 :])
        with anyio.fail_after(60):
            await alpha.wait_held()
        _write_json(out, {"events": events})
        _die()


# -- the trial child ---------------------------------------------------------------


def _describe(exc: BaseException) -> dict[str, str]:
    """The error, its root cause, and where that was raised (in our code, and at
    the innermost frame)."""
    root, seen = exc, set()
    while id(root) not in seen:
        seen.add(id(root))
        if isinstance(root, BaseExceptionGroup) and root.exceptions:
            root = root.exceptions[0]
        elif root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        else:
            break
    frames = traceback.extract_tb(root.__traceback__)
    ours = [f for f in frames if "journal_archivist" in f.filename]
    where = []
    for frame in (ours[-1] if ours else None, frames[-1] if frames else None):
        if frame is not None:
            name = os.path.relpath(frame.filename, ROOT)
            where.append(f"{name}:{frame.lineno} in {frame.name}")
    return {
        "error": f"{type(exc).__name__}: {exc}"[:500],
        "root": f"{type(root).__name__}: {root}"[:500],
        "where": " / ".join(dict.fromkeys(where)),
        "traceback": "".join(traceback.format_exception(exc))[-6000:],
    }


async def trial_child(directory: Path, drain_timeout: float) -> dict[str, Any]:
    """Open the journal in ``directory``, deliver, and say what happened."""
    events: dict[str, list[list[Any]]] = {name: [] for name in NAMES}
    alpha, bravo = Recorder(events["alpha"]), Recorder(events["bravo"])
    result: dict[str, Any] = {"outcome": "ok", "events": events, "health": None}
    started = time.monotonic()
    try:
        archivist = await Archivist.open(
            directory / JOURNAL, _registrations(alpha, bravo), close_timeout=0
        )
    except JournalError as exc:
        return {**result, "outcome": "refused", **_describe(exc)}
    except Exception as exc:
        return {**result, "outcome": "open-crash", **_describe(exc)}
    result["open_seconds"] = round(time.monotonic() - started, 3)
    try:
        deadline = time.monotonic() + drain_timeout
        while True:
            # In slices: each call first checks that the loops are alive.
            with anyio.move_on_after(0.5) as scope:
                await archivist.wait_drained()
            if not scope.cancelled_caught:
                break
            if time.monotonic() > deadline:
                result["outcome"] = "drain-timeout"
                break
    except Exception as exc:
        result.update(outcome="dead", **_describe(exc))
    result["drain_seconds"] = round(time.monotonic() - started, 3)
    result["health"] = msgspec.to_builtins(archivist.health())
    try:
        with anyio.fail_after(15):
            await archivist.shutdown(timeout=1)
    except Exception as exc:
        if result["outcome"] == "ok":
            result.update(outcome="shutdown-crash", **_describe(exc))
    return result


# -- the SQLite file format, as far as locating rows needs it ------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | data[pos + 8], pos + 9


def _serial_size(serial: int) -> int:
    if serial >= 12:
        return (serial - 12) // 2
    return (0, 1, 2, 3, 4, 6, 8, 8, 0, 0, 0, 0)[serial]


def _serial_value(serial: int, raw: bytes) -> object:
    if 1 <= serial <= 6:
        return int.from_bytes(raw, "big", signed=True)
    if serial == 7:
        return float(struct.unpack(">d", raw)[0])
    if serial in (8, 9):
        return serial - 8
    if serial >= 12 and serial % 2 == 0:
        return raw
    if serial >= 13:
        return raw.decode("utf-8", "replace")
    return None


def _fields(record: bytes) -> list[tuple[int, int, int, int, int]]:
    """``(serial, header start, header end, body start, body end)`` per column, as
    indices into ``record``."""
    size, pos = _varint(record, 0)
    body = size
    fields = []
    while pos < size:
        start = pos
        serial, pos = _varint(record, pos)
        width = _serial_size(serial)
        fields.append((serial, start, pos, body, body + width))
        body += width
    return fields


@dataclass
class _Cell:
    table: str
    key: int | None  # the rowid (table b-trees)
    head: list[int]  # file offsets of the cell's own varints
    offsets: list[int]  # file offset of each byte of the record
    record: bytes


class _SqliteFile:
    """A read-only walk over a database file: its b-trees, their cells, their pages."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        size = int.from_bytes(data[16:18], "big")
        self.page_size = 65536 if size == 1 else size
        self.usable = self.page_size - data[20]
        #: What each known page is.
        self.pages: dict[int, str] = {}
        self._freelist()
        if int.from_bytes(data[52:56], "big"):  # auto-vacuum: pointer-map pages
            step = self.usable // 5 + 1
            for number in range(2, len(data) // self.page_size + 1, step):
                self.pages[number] = "pointer-map page"

    def _freelist(self) -> None:
        trunk = int.from_bytes(self.data[32:36], "big")
        while trunk and trunk not in self.pages:
            self.pages[trunk] = "freelist trunk page"
            base = (trunk - 1) * self.page_size
            count = int.from_bytes(self.data[base + 4 : base + 8], "big")
            for i in range(count):
                at = base + 8 + 4 * i
                self.pages[int.from_bytes(self.data[at : at + 4], "big")] = "free page"
            trunk = int.from_bytes(self.data[base : base + 4], "big")

    def walk(self, root: int, table: str) -> list[_Cell]:
        """Every cell holding a record in the b-tree rooted at ``root``."""
        data, cells, stack = self.data, [], [root]
        while stack:
            number = stack.pop()
            base = (number - 1) * self.page_size
            header = base + (100 if number == 1 else 0)
            kind = data[header]
            interior = kind in (0x02, 0x05)
            self.pages[number] = f"{table} b-tree {'interior' if interior else 'leaf'}"
            count = int.from_bytes(data[header + 3 : header + 5], "big")
            pointers = header + (12 if interior else 8)
            if interior:
                stack.append(int.from_bytes(data[header + 8 : header + 12], "big"))
            for i in range(count):
                at = pointers + 2 * i
                pos = base + int.from_bytes(data[at : at + 2], "big")
                if interior:
                    stack.append(int.from_bytes(data[pos : pos + 4], "big"))
                    pos += 4
                    if kind == 0x05:
                        continue  # a table interior cell holds a key, no record
                start = pos
                length, pos = _varint(data, pos)
                key = None
                if kind == 0x0D:
                    key, pos = _varint(data, pos)
                offsets = self._payload(pos, length, kind in (0x02, 0x0A), table)
                record = bytes(data[o] for o in offsets)
                cells.append(
                    _Cell(table, key, list(range(start, pos)), offsets, record)
                )
        return cells

    def _payload(self, pos: int, length: int, index: bool, table: str) -> list[int]:
        usable = self.usable
        most = (usable - 12) * 64 // 255 - 23 if index else usable - 35
        if length <= most:
            return list(range(pos, pos + length))
        least = (usable - 12) * 32 // 255 - 23
        local = least + (length - least) % (usable - 4)
        if local > most:
            local = least
        offsets = list(range(pos, pos + local))
        page = int.from_bytes(self.data[pos + local : pos + local + 4], "big")
        left = length - local
        while left > 0 and page:
            self.pages[page] = f"{table} overflow page"
            base = (page - 1) * self.page_size
            take = min(left, usable - 4)
            offsets.extend(range(base + 4, base + 4 + take))
            left -= take
            page = int.from_bytes(self.data[base : base + 4], "big")
        return offsets


_CONSTRAINT: Final = re.compile(r"(PRIMARY|UNIQUE|CHECK|FOREIGN|CONSTRAINT)\b", re.I)


def _columns(sql: str) -> list[str]:
    """Column names of a ``CREATE TABLE`` statement (as sqlite_schema keeps it,
    ``ALTER TABLE ... ADD COLUMN`` included)."""
    body = sql[sql.index("(") + 1 : sql.rindex(")")]
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    names = [part.split()[0].strip('"`[]') for part in parts if part.split()]
    return [name for name in names if not _CONSTRAINT.fullmatch(name)]


@dataclass(frozen=True)
class Site:
    """One byte of a row that a targeted flip may hit."""

    offset: int
    group: str
    table: str
    key: object
    column: str
    part: str  # "cell header", "header size", "serial type" or "value"
    index: int  # which byte of that part
    width: int  # how many bytes the part has
    value: object  # the serial type, or the stored value (ints), else None
    row: str  # the row, described
    utf8: bool = True  # for a payload's serial type: whether the payload is UTF-8

    def describe(self) -> str:
        what = f"{self.part} of {self.column}" if self.column else self.part
        shown = f" = {self.value}" if isinstance(self.value, int) else ""
        byte = f" (byte {self.index + 1} of {self.width})" if self.width > 1 else ""
        return f"{self.row}: {what}{shown}{byte}"


_ROUTING: Final = {"targets", "origin"}
_NOT_SITES: Final = {"payload", "error", "reason", "failed_at", "quarantined_at"}


def _sites(
    path: Path, mids: dict[bytes, int], erase_ops: dict[bytes, int]
) -> tuple[list[Site], dict[int, str], dict[int, int]]:
    """The sites of every live row of the journal tables in the file at ``path``,
    the map of its pages, and the seq of each op found in ``entries``."""
    db = _SqliteFile(path.read_bytes())
    schema = []
    for cell in db.walk(1, "sqlite_schema"):
        kind, name, _, root, sql = (
            _serial_value(s, cell.record[b0:b1])
            for s, _, _, b0, b1 in _fields(cell.record)
        )
        schema.append((kind, name, root, sql))
    sites: list[Site] = []
    seqs: dict[int, int] = {}
    for kind, name, root, sql in schema:
        if not isinstance(root, int) or not root or not isinstance(name, str):
            continue
        cells = db.walk(root, name)
        if kind != "table" or name not in (
            "entries",
            "backends",
            "dead_letters",
            "quarantine",
            "meta",
        ):
            continue
        columns = _columns(str(sql))
        for cell in cells:
            sites.extend(_row_sites(name, columns, cell, mids, erase_ops, seqs))
    return sites, db.pages, seqs


def _row_sites(
    table: str,
    columns: list[str],
    cell: _Cell,
    mids: dict[bytes, int],
    erase_ops: dict[bytes, int],
    seqs: dict[int, int],
) -> list[Site]:
    fields = _fields(cell.record)
    values: dict[str, object] = {}
    for j, (serial, _, _, b0, b1) in enumerate(fields):
        column = columns[j] if j < len(columns) else f"column {j}"
        values[column] = _serial_value(serial, cell.record[b0:b1])
    utf8 = True
    if table == "entries":
        group, key = "entries", cell.key
        session, payload = values.get("session"), values.get("payload")
        op: int | None = None
        if values.get("op") == 2 and isinstance(session, bytes):
            op = erase_ops.get(session)
        elif isinstance(payload, bytes):
            try:
                op = mids.get(_decode_records(payload)[0].message_id.bytes)
            except (msgspec.DecodeError, IndexError):
                op = None
            try:
                payload.decode()
            except UnicodeDecodeError:
                utf8 = False
        if op is not None and key is not None:
            seqs[op] = key
        row = f"entries seq={key} (op {op}, targets={values.get('targets')})"
    elif table == "backends":
        group, key = "backends", values.get("name")
        row = f"backends row {key!r}"
    else:
        group = "side"
        key = cell.key if cell.key is not None else values.get(columns[0])
        row = f"{table} row {key!r}" + (
            f" (seq {values['seq']})" if "seq" in values else ""
        )

    def site(
        offset: int,
        sub: str,
        column: str,
        part: str,
        index: int,
        width: int,
        value: object,
    ) -> Site:
        return Site(
            offset, sub, table, key, column, part, index, width, value, row, utf8
        )

    sub = {"entries": "entries-cell"}.get(group, group)
    out = [
        site(o, sub, "", "cell header", i, len(cell.head), None)
        for i, o in enumerate(cell.head)
    ]
    sub = {"entries": "entries-serial"}.get(group, group)
    _, first = _varint(cell.record, 0)
    out += [
        site(cell.offsets[i], sub, "", "header size", i, first, None)
        for i in range(first)
    ]
    for j, (serial, h0, h1, b0, b1) in enumerate(fields):
        column = columns[j] if j < len(columns) else f"column {j}"
        out += [
            site(cell.offsets[i], sub, column, "serial type", i - h0, h1 - h0, serial)
            for i in range(h0, h1)
        ]
        if column in _NOT_SITES:
            continue
        if group == "entries":
            if column in _ROUTING:
                kind = "entries-routing"
            elif column == "payload":
                continue
            else:
                kind = "entries-value"
        else:
            kind = group
        value = values[column] if isinstance(values[column], int) else None
        out += [
            site(cell.offsets[i], kind, column, "value", i - b0, b1 - b0, value)
            for i in range(b0, b1)
        ]
    return out


# -- the pristine journal ------------------------------------------------------------


@dataclass
class Pristine:
    """A built pristine journal (both variants) and everything the oracle needs."""

    dir: Path
    seed: int
    count: int
    #: Per op: ``session``, ``erase``, ``records`` (``[message_id, msgpack hex]``).
    ops: list[dict[str, Any]]
    #: Per backend, ops the build itself made undeliverable there (counted in the
    #: baseline): the lost op, alpha's quarantined entry, bravo's dead letter.
    excused: dict[str, list[int]]
    #: Per backend, what it received during the build, in order.
    events: dict[str, list[list[Any]]]
    #: ``health()`` of an unflipped trial: what the counters start from.
    baseline: dict[str, Any]
    #: Seq of each op still in ``ckpt/journal.db``.
    seqs: dict[int, int]
    #: Size of each pristine file, by path relative to ``dir``.
    files: dict[str, int]
    #: Sites of each database file, and what each of its pages is.
    sites: dict[str, list[Site]]
    pages: dict[str, dict[int, str]]
    records: dict[str, tuple[int, str]] = field(init=False)
    erase_op: dict[str, int] = field(init=False)
    site_at: dict[str, dict[int, Site]] = field(init=False)

    def __post_init__(self) -> None:
        self.records = {
            mid: (i, data)
            for i, op in enumerate(self.ops)
            for mid, data in op["records"]
        }
        self.erase_op = {
            op["session"]: i for i, op in enumerate(self.ops) if op["erase"]
        }
        self.site_at = {
            name: {site.offset: site for site in sites}
            for name, sites in self.sites.items()
        }

    def save(self) -> None:
        value = asdict(self)
        for name in ("records", "erase_op", "site_at"):
            del value[name]
        value.update(dir=None, format=FORMAT)
        (self.dir / "pristine.json").write_text(json.dumps(value))

    @classmethod
    def load(cls, directory: Path) -> Pristine:
        value = json.loads((directory / "pristine.json").read_text())
        if value.pop("format", None) != FORMAT:
            raise ValueError("pristine files of another format")
        value["dir"] = directory
        value["seqs"] = {int(k): v for k, v in value["seqs"].items()}
        value["pages"] = {
            n: {int(k): v for k, v in p.items()} for n, p in value["pages"].items()
        }
        value["sites"] = {n: [Site(**s) for s in v] for n, v in value["sites"].items()}
        return cls(**value)

    def describe(self, file: str, offset: int) -> str:
        """What the byte at ``offset`` of the pristine ``file`` is, as far as known."""
        site = self.site_at.get(file, {}).get(offset)
        if site is not None:
            return site.describe()
        path = self.dir / file
        if file.endswith("-wal"):
            with path.open("rb") as wal:
                header = wal.read(32)
                page_size = int.from_bytes(header[8:12], "big")
                if offset < 32:
                    return f"WAL header byte {offset}"
                frame, within = divmod(offset - 32, 24 + page_size)
                wal.seek(32 + frame * (24 + page_size))
                head = wal.read(24)
            page = int.from_bytes(head[:4], "big")
            commit = " (commit)" if int.from_bytes(head[4:8], "big") else ""
            stale = "" if head[8:16] == header[16:24] else " (stale salt)"
            if within < 24:
                return (
                    f"WAL frame {frame}{commit}{stale} header byte {within}"
                    f" (page {page})"
                )
            return f"WAL frame {frame}{commit}{stale}: page {page} byte {within - 24}"
        page_size = _page_size(path)
        page, within = divmod(offset, page_size)
        if page == 0 and within < 100:
            return f"database header byte {within}"
        what = self.pages.get(file, {}).get(page + 1, "a page of no b-tree")
        return f"page {page + 1} ({what}) byte {within}"


def _page_size(path: Path) -> int:
    with path.open("rb") as db:
        db.seek(16)
        size = int.from_bytes(db.read(2), "big")
    return 65536 if size == 1 else size


def _run_child(
    args: list[str], timeout: float, stderr: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "tools.torture.bitflip", *args]
    if stderr is None:
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, timeout=timeout, check=False
        )
    with stderr.open("wb") as err:
        return subprocess.run(
            command, cwd=ROOT, stdout=err, stderr=err, timeout=timeout, check=False
        )


def _build_step_in_child(step: int, directory: Path, seed: int, count: int) -> None:
    done = _run_child(
        [
            "--build-step",
            str(step),
            str(directory),
            "--seed",
            str(seed),
            "--ops",
            str(count),
        ],
        timeout=180,
    )
    expected = 0 if step == 1 else -signal.SIGKILL
    if done.returncode != expected:
        tail = done.stderr.decode(errors="replace")[-3000:]
        raise BuildError(f"build step {step} exited with {done.returncode}:\n{tail}")
    # SQLite rebuilds the wal-index of a crashed journal; keep none of the dead one's.
    (directory / f"{JOURNAL}-shm").unlink(missing_ok=True)


def _damage_one_entry(journal: Path, ops: list[PlannedOp]) -> int:
    """Flip bit 0 of the crc of alpha's first pending append in a never-erased
    session (the journal is closed); return its op."""
    mids = {
        records[0].message_id.bytes: i
        for i, (_, _, records) in enumerate(ops)
        if records
    }
    clean = {session for session, erase, _ in ops if not erase} - {
        s for s, e, _ in ops if e
    }
    with closing(sqlite3.connect(journal)) as db:
        (bit,) = db.execute("SELECT bit FROM backends WHERE name = 'alpha'").fetchone()
        rows = db.execute(
            "SELECT seq, payload FROM entries WHERE targets & ? AND op = 1"
            " ORDER BY seq",
            (1 << bit,),
        ).fetchall()
        for seq, payload in rows:
            op = mids.get(_decode_records(payload)[0].message_id.bytes)
            if op is not None and ops[op][0] in clean:
                db.execute(
                    "UPDATE entries SET crc = crc + 1 - 2 * (crc & 1) WHERE seq = ?",
                    (seq,),
                )
                db.commit()
                return op
    raise BuildError("no pending entry of alpha to damage after step 1")


def _cut_wal_tail(wal: Path, mid: bytes) -> None:
    """Cut the WAL before the transaction whose frames first hold ``mid``: the
    append of step 2 is lost as a damaged WAL tail would lose it."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    frame = 24 + page_size
    commits, target = [], None
    for i in range((len(data) - 32) // frame):
        at = 32 + i * frame
        if data[at + 8 : at + 16] != data[16:24]:
            break
        if target is None and mid in data[at + 24 : at + frame]:
            target = i
        if int.from_bytes(data[at + 4 : at + 8], "big"):
            commits.append(i)
    if target is None:
        raise BuildError("step 2's append is not in the WAL")
    previous = max((c for c in commits if c < target), default=-1)
    with wal.open("r+b") as out:
        out.truncate(32 + (previous + 1) * frame)


def build_pristine(directory: Path, seed: int, count: int = DEFAULT_OPS) -> Pristine:
    """Build the pristine journal of ``seed`` in ``directory`` (replacing it)."""
    shutil.rmtree(directory, ignore_errors=True)
    build = directory / "build"
    build.mkdir(parents=True)
    ops = plan_workload(seed, count)
    bounds = Bounds(count)
    _build_step_in_child(1, build, seed, count)
    damaged = _damage_one_entry(build / JOURNAL, ops)
    _build_step_in_child(2, build, seed, count)
    _cut_wal_tail(build / f"{JOURNAL}-wal", ops[bounds.lost][2][0].message_id.bytes)
    _build_step_in_child(3, build, seed, count)

    for variant in ("wal", "ckpt"):
        (directory / variant).mkdir()
        for name in (JOURNAL, f"{JOURNAL}-wal", f"{JOURNAL}.lock"):
            if (build / name).exists():
                _copy_private(build / name, directory / variant / name)
    with closing(sqlite3.connect(directory / "ckpt" / JOURNAL)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    for name in (f"{JOURNAL}-wal", f"{JOURNAL}-shm"):
        (directory / "ckpt" / name).unlink(missing_ok=True)
    if not (directory / "wal" / f"{JOURNAL}-wal").exists():
        raise BuildError("the crashed build left no WAL")

    events: dict[str, list[list[Any]]] = {name: [] for name in NAMES}
    for step in (1, 2, 3):
        step_events = json.loads((build / f"events-{step}.json").read_text())["events"]
        for name in NAMES:
            events[name].extend(step_events[name])
    mids = {
        records[0].message_id.bytes: i
        for i, (_, _, records) in enumerate(ops)
        if records
    }
    erase_ops = {session.bytes: i for i, (session, erase, _) in enumerate(ops) if erase}
    sites, pages, seqs = {}, {}, {}
    for file in ("ckpt/journal.db", "wal/journal.db"):
        sites[file], pages[file], found = _sites(directory / file, mids, erase_ops)
        if file.startswith("ckpt"):
            seqs = found
    pristine = Pristine(
        dir=directory,
        seed=seed,
        count=count,
        ops=[
            {
                "session": str(session),
                "erase": erase,
                "records": [[str(r.message_id), _encode(r).hex()] for r in records],
            }
            for session, erase, records in ops
        ],
        excused={"alpha": [bounds.lost, damaged], "bravo": [bounds.lost, bounds.dead]},
        events=events,
        baseline={},
        seqs=seqs,
        files={
            str(path.relative_to(directory)): path.stat().st_size
            for variant in ("ckpt", "wal")
            for path in sorted((directory / variant).iterdir())
        },
        sites=sites,
        pages=pages,
    )
    _check_unflipped(pristine)
    pristine.save()
    return pristine


def _check_unflipped(pristine: Pristine) -> None:
    """Both variants, unflipped, must be clean; the first sets the baseline."""
    scratch = pristine.dir / "trials" / "unflipped"
    for variant in ("ckpt", "wal"):
        result = _trial_result(
            pristine, Flip.none(variant), scratch, TRIAL_TIMEOUT, DRAIN_TIMEOUT
        )
        if not pristine.baseline and result.get("health"):
            pristine.baseline = result["health"]
        verdict = judge(pristine, result)
        if verdict.kind != "clean":
            raise BuildError(
                f"the unflipped {variant} journal is {verdict.kind}: {verdict.detail}"
            )
    journal = pristine.baseline["journal"]
    backends = pristine.baseline["backends"]
    if (
        journal["lost_entries"] < 1
        or backends["alpha"]["quarantined"] < 1
        or backends["bravo"]["dead_lettered"] < 1
    ):
        raise BuildError(
            "the build did not leave a lost entry, a quarantined entry and a dead"
            f" letter: {json.dumps(pristine.baseline)}"
        )
    shutil.rmtree(scratch, ignore_errors=True)


def ensure_pristine(
    directory: Path, seed: int, count: int = DEFAULT_OPS, *, rebuild: bool = False
) -> Pristine:
    """The cached pristine journal of ``seed`` in ``directory``, built if missing."""
    if not rebuild:
        try:
            pristine = Pristine.load(directory)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        else:
            if pristine.seed == seed and pristine.count == count:
                return pristine
    return build_pristine(directory, seed, count)


# -- flips -------------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    """One bit to flip in one pristine file (``offset`` -1: none)."""

    file: str  # relative to the pristine directory, e.g. "ckpt/journal.db"
    offset: int
    bit: int
    category: str  # db, wal, targeted, named:<name>, none
    where: str = ""

    @property
    def variant(self) -> str:
        return self.file.split("/")[0]

    @classmethod
    def none(cls, variant: str) -> Flip:
        return cls(f"{variant}/{JOURNAL}", -1, 0, "none", "no flip")

    def describe(self) -> str:
        if self.offset < 0:
            return f"{self.file}: no flip"
        return (
            f"{self.file} offset {self.offset} bit {self.bit}"
            f" [{self.category}: {self.where}]"
        )


def plan_flip(pristine: Pristine, seed: int, trial: int) -> Flip:
    """The flip of trial ``trial`` of ``seed``: the same for the same pristine files."""
    rng = random.Random(f"bitflip-trial:{seed}:{trial}")
    roll = rng.random()
    wal_file = f"wal/{JOURNAL}-wal"
    if roll < 0.8:
        if roll < 0.6 or not pristine.files.get(wal_file):
            file = f"ckpt/{JOURNAL}" if rng.random() < 0.75 else f"wal/{JOURNAL}"
            category = "db"
        else:
            file, category = wal_file, "wal"
        offset = rng.randrange(pristine.files[file])
        bit = rng.randrange(8)
    else:
        file, category = f"ckpt/{JOURNAL}", "targeted"
        groups = {s.group for s in pristine.sites[file]}
        weights = {g: w for g, w in _TARGET_WEIGHTS.items() if g in groups}
        group = rng.choices(list(weights), list(weights.values()))[0]
        site = rng.choice([s for s in pristine.sites[file] if s.group == group])
        offset, bit = site.offset, rng.randrange(8)
    return Flip(file, offset, bit, category, pristine.describe(file, offset))


def named_flip(pristine: Pristine, name: str) -> Flip:
    """One of ``NAMED_FLIPS``, on a backlog row of ``ckpt/journal.db``.

    - ``payload-text``: an entry's payload BLOB becomes TEXT of the same length
      (bit 0 of its serial type), on a payload that is not valid UTF-8;
    - ``payload-int``: an entry's payload becomes an INTEGER (the continuation bit
      of its 2-byte serial type; the header that follows shifts);
    - ``op``: an append's op 1 (serial type 9) becomes 0 (serial type 8);
    - ``targets-clear``: alpha's bit cleared from an entry owed to both backends;
    - ``origin-negative``: the sign bit of an entry's ``origin`` set (schema 2 on);
    - ``cursor-up``: alpha's ``cursor`` jumps past part of its backlog.
    """
    file = f"ckpt/{JOURNAL}"
    sites = pristine.sites[file]
    backends = {s.key: s for s in sites if s.table == "backends" and s.column == "bit"}
    alpha_bit = 0
    if "alpha" in backends and isinstance(backends["alpha"].value, int):
        alpha_bit = backends["alpha"].value
    chosen: tuple[Site, int] | None = None
    for site in sites:
        if site.table != "entries" and name != "cursor-up":
            continue
        serial = site.part == "serial type"
        if name == "payload-text" and serial and site.column == "payload":
            if site.index == site.width - 1 and not site.utf8:
                chosen = (site, 0)
        elif name == "payload-int" and serial and site.column == "payload":
            # A 2-byte varint whose first byte is 0x81..0x86 loses its
            # continuation bit: serial type 1..6, an INTEGER.
            value = site.value if isinstance(site.value, int) else 0
            if site.width == 2 and site.index == 0 and 1 <= value >> 7 <= 6:
                chosen = (site, 7)
        elif name == "op" and serial and site.column == "op" and site.value == 9:
            chosen = (site, 0)
        elif (
            name == "targets-clear"
            and site.column == "targets"
            and site.part == "value"
        ):
            if site.value == 3 and site.index == site.width - 1 and alpha_bit < 8:
                chosen = (site, alpha_bit)
        elif (
            name == "origin-negative"
            and (site.column, site.part, site.index) == ("origin", "value", 0)
            and site.value == 3
        ):
            chosen = (site, 7)
        elif (
            name == "cursor-up"
            and (site.table, site.key, site.column) == ("backends", "alpha", "cursor")
            and (site.part, site.index) == ("value", 0)
        ):
            # The highest clear bit of the top byte, below the sign bit.
            value = site.value if isinstance(site.value, int) else 0
            top = value >> 8 * (site.width - 1) & 0xFF
            bits = [b for b in range(6, -1, -1) if not top >> b & 1]
            if bits:
                chosen = (site, bits[0])
        if chosen is not None:
            break
    if chosen is None:
        raise LookupError(f"no site for the named flip {name!r} in {file}")
    site, bit = chosen
    return Flip(file, site.offset, bit, f"named:{name}", site.describe())


def apply_flip(directory: Path, flip: Flip) -> tuple[int, int]:
    """Flip the bit in ``directory``'s copy of the file; return the byte before
    and after."""
    if flip.offset < 0:
        return 0, 0
    path = directory / Path(flip.file).name
    with path.open("r+b") as out:
        out.seek(flip.offset)
        (before,) = out.read(1)
        after = before ^ (1 << flip.bit)
        out.seek(flip.offset)
        out.write(bytes((after,)))
    return before, after


# -- one trial -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How one trial ended: a kind (``KINDS``) and what happened."""

    kind: str
    detail: str = ""
    #: Something acceptable worth a look (a lost erasure, a loss counted only
    #: journal-wide).
    note: str = ""


def _copy_private(source: Path, target: Path) -> None:
    """Copy a journal file as the service's own: 0600 (a copy takes the umask's
    mode, and a journal others can read is refused; docs/security.md)."""
    shutil.copyfile(source, target)
    target.chmod(0o600)


def _trial_result(
    pristine: Pristine,
    flip: Flip,
    scratch: Path,
    timeout: float,
    drain_timeout: float,
) -> dict[str, Any]:
    """Copy, flip, run the child; its result, or a stand-in for a dead or hung one."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for path in (pristine.dir / flip.variant).iterdir():
        _copy_private(path, scratch / path.name)
    apply_flip(scratch, flip)
    stderr = scratch / "stderr.txt"
    try:
        done = _run_child(
            ["--child-trial", str(scratch), "--drain-timeout", str(drain_timeout)],
            timeout=timeout,
            stderr=stderr,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": "child-timeout", "error": f"the child ran over {timeout}s"}
    result_path = scratch / "result.json"
    if done.returncode != 0 or not result_path.exists():
        tail = stderr.read_text(errors="replace").strip().splitlines()[-12:]
        return {
            "outcome": "child-died",
            "error": f"the child exited with {done.returncode}",
            "where": " | ".join(tail),
        }
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def run_trial(
    pristine: Pristine,
    flip: Flip,
    scratch: Path,
    *,
    timeout: float = TRIAL_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> Verdict:
    """Run one trial in ``scratch`` and judge it."""
    result = _trial_result(pristine, flip, scratch, timeout, drain_timeout)
    verdict = judge(pristine, result)
    if verdict.kind == "uncounted":
        left = _rows_left(scratch / JOURNAL)
        if left:
            verdict = replace(verdict, detail=f"{verdict.detail}; {left}")
    return verdict


def _rows_left(journal: Path) -> str:
    """What the journal still holds after the trial (a diagnostic)."""
    try:
        with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            (rows,) = db.execute("SELECT count(*) FROM entries").fetchone()
            backends = db.execute(
                "SELECT name, cursor, pending FROM backends"
            ).fetchall()
    except sqlite3.Error as exc:
        return f"journal unreadable after the trial ({exc})"
    shown = ", ".join(f"{n}: cursor {c} pending {p}" for n, c, p in backends)
    return f"after shutdown the journal holds {rows} entries ({shown})"


# -- the oracle --------------------------------------------------------------------


def _counters(health: dict[str, Any], name: str) -> tuple[int, int, int]:
    """(backend counters, journal counters but quarantined, journal quarantined)."""

    def total(values: dict[str, Any], skip: set[str] | frozenset[str]) -> int:
        return sum(
            v
            for k, v in values.items()
            if k not in skip and isinstance(v, int) and not isinstance(v, bool)
        )

    journal = health["journal"]
    backend = health["backends"].get(name, {})
    return (
        total(backend, _NOT_BACKEND_COUNTERS),
        total(journal, _NOT_JOURNAL_COUNTERS | {"quarantined"}),
        int(journal.get("quarantined", 0)),
    )


def _counted(pristine: Pristine, health: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per backend, how many missing entries the counters account for: with the
    journal's ``quarantined`` in full (the promise), and with it only beyond what
    the backends' own ``quarantined`` count (strict: each backend's loss shows in
    its own counters, or in a journal-wide count no backend already has)."""
    grown = {}
    for name in NAMES:
        now, base = _counters(health, name), _counters(pristine.baseline, name)
        grown[name] = (now[0] - base[0], now[1] - base[1], now[2] - base[2])
    by_backends = sum(
        health["backends"].get(n, {}).get("quarantined", 0)
        - pristine.baseline["backends"].get(n, {}).get("quarantined", 0)
        for n in NAMES
    )
    extra = max(0, grown[NAMES[0]][2] - by_backends)
    return {name: (b + j + q, b + j + extra) for name, (b, j, q) in grown.items()}


@dataclass
class _Replayed:
    """What a backend's calls did to a model of its archive."""

    problems: list[str] = field(default_factory=list)
    #: Ops owed and not in the archive (excused ones left out).
    missing: list[int] = field(default_factory=list)
    #: Per erased session: ops from before its erasure still in the archive at
    #: the end, and whether the erasure reached the backend during the trial.
    resurrected: dict[str, tuple[list[int], bool]] = field(default_factory=dict)


def _replay(
    pristine: Pristine, name: str, build: list[list[Any]], trial: list[list[Any]]
) -> _Replayed:
    """Apply a backend's calls (of the build, then of the trial) to a model archive.

    Redelivery is fine: an entry or an erasure delivered again only repeats its
    effect, and the archive is judged at the end. Order is judged on first
    deliveries: per session, each entry first arrives after the ones before it.
    """
    ops, erase_op = pristine.ops, pristine.erase_op
    out = _Replayed()
    archive: dict[str, dict[str, int]] = {}
    erased: dict[str, bool] = {}  # session -> whether (also) erased in the trial
    last: dict[str, int] = {}  # per session, the latest op first delivered
    seen: set[str] = set()
    for at, event in enumerate([*build, *trial]):
        session = event[1]
        if event[0] == "e":
            erasure = erase_op.get(session)
            if erasure is None:
                out.problems.append(
                    f"{name}: erasure of session {session[:8]}, never erased"
                )
                continue
            if session not in erased and last.get(session, -1) > erasure:
                out.problems.append(
                    f"{name}: session {session[:8]}: op {last[session]} delivered"
                    f" before its erasure (op {erasure}) (out of order)"
                )
            archive[session] = {}
            erased[session] = erased.get(session, False) or at >= len(build)
            last[session] = max(last.get(session, -1), erasure)
            continue
        for mid, data in event[2]:
            known = pristine.records.get(mid)
            if known is None:
                out.problems.append(f"{name}: record {mid[:8]} was never appended")
                continue
            op, expected = known
            if data != expected or ops[op]["session"] != session:
                difference = _difference(expected, data, ops[op]["session"], session)
                out.problems.append(
                    f"{name}: record {mid[:8]} of op {op} differs from what was"
                    f" appended ({difference})"
                )
                continue
            if mid not in seen:
                seen.add(mid)
                if op < last.get(session, -1):
                    out.problems.append(
                        f"{name}: session {session[:8]}: op {op} first delivered"
                        f" after op {last[session]} (out of order)"
                    )
                last[session] = max(last.get(session, -1), op)
            archive.setdefault(session, {})[mid] = op
    for session, in_trial in erased.items():
        early = sorted(
            {op for op in archive.get(session, {}).values() if op < erase_op[session]}
        )
        if early:
            out.resurrected[session] = (early, in_trial)
    excused = set(pristine.excused[name])
    for index, op in enumerate(ops):
        session = op["session"]
        erasure = erase_op.get(session)
        if index in excused:
            continue
        if op["erase"]:
            if session not in erased:
                out.missing.append(index)
        elif erasure is not None and index < erasure:
            # Erased if the erasure arrived; if it did not, the erasure is the
            # entry missing (and counted), whatever became of these.
            continue
        elif not all(mid in archive.get(session, {}) for mid, _ in op["records"]):
            out.missing.append(index)
    return out


def _difference(expected: str, got: str, session: str, called: str) -> str:
    if session != called:
        return f"delivered under session {called[:8]}, appended under {session[:8]}"
    a, b = bytes.fromhex(expected), bytes.fromhex(got)
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
        min(len(a), len(b)),
    )
    return f"{len(b)} bytes, not {len(a)}; first difference at byte {at}"


def judge(pristine: Pristine, result: dict[str, Any]) -> Verdict:
    """Classify one trial's result (see the module docstring)."""
    outcome = result["outcome"]
    if outcome == "refused":
        message = result.get("error", "")
        if not message.split(":", 1)[-1].strip():
            return Verdict("crashed", f"refused without a message: {message!r}")
        return Verdict("refused", message)
    if outcome == "child-timeout":
        return Verdict("hung", result["error"])
    if outcome != "ok" and outcome != "drain-timeout":
        where = f" at {result['where']}" if result.get("where") else ""
        root = result.get("root", "")
        cause = f" (root: {root})" if root and root != result.get("error") else ""
        return Verdict("crashed", f"{outcome}: {result.get('error')}{cause}{where}")
    health = result["health"]
    lost = health["journal"]["lost_entries"] - pristine.baseline["journal"].get(
        "lost_entries", 0
    )
    problems: list[str] = []
    notes: list[str] = []
    missing: dict[str, list[int]] = {}
    for name in NAMES:
        replayed = _replay(
            pristine, name, pristine.events[name], result["events"][name]
        )
        problems += replayed.problems
        missing[name] = replayed.missing
        for session, (early, in_trial) in replayed.resurrected.items():
            erasure = pristine.erase_op[session]
            text = (
                f"{name}: session {session[:8]}: ops {early[:4]} from before its"
                f" erasure (op {erasure}) are in the archive again"
            )
            if lost > 0 and not in_trial:
                # The journal lost the erasure with a WAL tail (counted in
                # lost_entries) and redelivered what came before it.
                notes.append(f"{text}: the erasure was lost (lost_entries +{lost})")
            else:
                problems.append(text)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Verdict("corrupted", "; ".join(problems[:3]) + more)
    if outcome == "drain-timeout":
        lags = ", ".join(
            f"{n}: lag {b.get('lag_entries')}"
            f" ({b.get('status')}, {b.get('last_error')})"
            for n, b in health["backends"].items()
        )
        return Verdict(
            "hung", f"not drained after {result.get('drain_seconds')}s: {lags}"
        )
    both = _counted(pristine, health) if pristine.baseline else {}
    counted = {name: both.get(name, (0, 0))[0] for name in NAMES}
    short = [
        name for name in NAMES if missing[name] and len(missing[name]) > counted[name]
    ]
    if short:
        return Verdict(
            "uncounted",
            "; ".join(
                f"{name}: {len(missing[name])} entries missing"
                f" ({_ops_text(pristine, missing[name])}), counters account for"
                f" {counted[name]}"
                for name in short
            ),
        )
    notes += [
        f"{name}: counters fell below the baseline (by {-counted[name]})"
        for name in NAMES
        if counted[name] < 0
    ]
    notes += [
        f"{name}: {len(missing[name])} missing ({_ops_text(pristine, missing[name])})"
        f" counted only by the journal's quarantined, not by {name}'s own counters"
        for name in NAMES
        if len(missing[name]) > both.get(name, (0, 0))[1]
    ]
    if any(missing.values()) or lost > 0:
        return Verdict(
            "quarantined",
            "; ".join(
                f"{n}: {len(missing[n])} missing, {counted[n]} counted" for n in NAMES
            ),
            "; ".join(notes),
        )
    return Verdict("clean", note="; ".join(notes))


def _ops_text(pristine: Pristine, ops: list[int]) -> str:
    shown = []
    for op in ops[:6]:
        kind = "erasure" if pristine.ops[op]["erase"] else "append"
        seq = pristine.seqs.get(op)
        shown.append(f"op {op} {kind}" + (f" seq {seq}" if seq is not None else ""))
    return ", ".join(shown) + (", ..." if len(ops) > 6 else "")


# -- many trials -------------------------------------------------------------------


@dataclass
class Report:
    """The outcome of a run of trials."""

    seed: int
    verdicts: dict[int, tuple[Flip, Verdict]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def violations(self) -> list[int]:
        return sorted(
            n for n, (_, v) in self.verdicts.items() if v.kind not in ACCEPTABLE
        )

    def verdict_line(self) -> str:
        counts = Counter(v.kind for _, v in self.verdicts.values())
        status = "FAIL" if self.violations else "PASS"
        parts = ", ".join(f"{counts[k]} {LABELS.get(k, k)}" for k in KINDS)
        return (
            f"bitflip: {status} {len(self.verdicts)} trials: {parts},"
            f" {self.seconds:.1f}s"
        )

    def violation_lines(self) -> list[str]:
        lines = []
        for n in self.violations:
            flip, verdict = self.verdicts[n]
            lines.append(
                f"violation: seed={self.seed} trial={n}"
                f" {LABELS.get(verdict.kind, verdict.kind)}: {flip.describe()}:"
                f" {verdict.detail}"
            )
        return lines

    def note_lines(self) -> list[str]:
        return [
            f"note: seed={self.seed} trial={n} {flip.describe()}: {verdict.note}"
            for n, (flip, verdict) in sorted(self.verdicts.items())
            if verdict.note
        ]

    def category_lines(self) -> list[str]:
        by: dict[str, Counter[str]] = {}
        for flip, verdict in self.verdicts.values():
            by.setdefault(flip.category, Counter())[verdict.kind] += 1
        return [
            f"  {category}: "
            + ", ".join(f"{c[k]} {LABELS.get(k, k)}" for k in KINDS if c[k])
            for category, c in sorted(by.items())
        ]


def run_trials(
    pristine: Pristine,
    trials: Iterable[int],
    *,
    scratch: Path,
    jobs: int,
    timeout: float = TRIAL_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
    keep: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run ``trials`` of ``pristine.seed``, ``jobs`` at a time."""
    numbers = list(trials)
    report = Report(pristine.seed)
    started = time.monotonic()
    lock = threading.Lock()

    def one(n: int) -> None:
        flip = plan_flip(pristine, pristine.seed, n)
        directory = scratch / f"trial-{n}"
        verdict = run_trial(
            pristine, flip, directory, timeout=timeout, drain_timeout=drain_timeout
        )
        if not keep and verdict.kind in ACCEPTABLE:
            shutil.rmtree(directory, ignore_errors=True)
        with lock:
            report.verdicts[n] = (flip, verdict)
            if progress is not None:
                progress(len(report.verdicts), len(numbers))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, n) for n in numbers]:
            future.result()
    report.seconds = time.monotonic() - started
    return report


def _replay_one(
    pristine: Pristine, flip: Flip, scratch: Path, args: argparse.Namespace
) -> int:
    """Run one flip verbosely; keep its scratch directory."""
    print(f"pristine: {pristine.dir} (seed {pristine.seed}, {pristine.count} ops)")
    print(f"flip: {flip.describe()}")
    if flip.offset >= 0:
        with (pristine.dir / flip.file).open("rb") as src:
            src.seek(flip.offset)
            (before,) = src.read(1)
        print(f"byte: {before:#04x} -> {before ^ (1 << flip.bit):#04x}")
    result = _trial_result(pristine, flip, scratch, args.timeout, args.drain_timeout)
    verdict = judge(pristine, result)
    if verdict.kind == "uncounted":
        verdict = replace(
            verdict, detail=f"{verdict.detail}; {_rows_left(scratch / JOURNAL)}"
        )
    print(f"outcome: {result['outcome']}")
    for key in ("error", "root", "where", "open_seconds", "drain_seconds"):
        if result.get(key):
            print(f"{key}: {result[key]}")
    if result.get("health"):
        print(f"health: {json.dumps(result['health'])}")
        print(f"baseline: {json.dumps(pristine.baseline)}")
    if result.get("traceback"):
        print(result["traceback"].rstrip())
    stderr = scratch / "stderr.txt"
    if stderr.exists():
        lines = stderr.read_text(errors="replace").splitlines()
        print(f"child stderr ({len(lines)} lines, head):")
        print("\n".join(f"  {line}" for line in lines[:40]))
    print(f"scratch: {scratch}")
    print(f"verdict: {LABELS.get(verdict.kind, verdict.kind)}: {verdict.detail}")
    if verdict.note:
        print(f"note: {verdict.note}")
    return 0 if verdict.kind in ACCEPTABLE else 1


# -- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.bitflip",
        description="Flip one bit of a journal with a backlog, open, deliver, judge.",
    )
    parser.add_argument("--cycles", type=int, default=1000, help="trials to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--trial", type=int, help="replay trial N verbosely")
    parser.add_argument(
        "--flip", choices=NAMED_FLIPS, help="run a named flip verbosely"
    )
    parser.add_argument(
        "--ops", type=int, default=DEFAULT_OPS, help="ops in the workload"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "journal-archivist-bitflip",
        help="where pristine files (per seed) and scratch directories live",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the pristine files"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep every trial's scratch"
    )
    parser.add_argument("--timeout", type=float, default=TRIAL_TIMEOUT)
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT)
    parser.add_argument("--child-trial", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--build-step", nargs=2, metavar=("STEP", "DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.child_trial is not None:
        result = anyio.run(trial_child, args.child_trial, args.drain_timeout)
        _write_json(args.child_trial / "result.json", result)
        return 0
    if args.build_step is not None:
        step, directory = args.build_step
        anyio.run(build_step, int(step), Path(directory), args.seed, args.ops)
        return 0

    directory = args.workdir / f"seed-{args.seed}"
    pristine = ensure_pristine(directory, args.seed, args.ops, rebuild=args.rebuild)
    if args.trial is not None or args.flip is not None:
        if args.flip is not None:
            flip, label = named_flip(pristine, args.flip), args.flip
        else:
            flip, label = (
                plan_flip(pristine, args.seed, args.trial),
                f"trial-{args.trial}",
            )
        return _replay_one(pristine, flip, directory / "trials" / label, args)

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"bitflip: {done}/{total} trials", file=sys.stderr, flush=True)

    report = run_trials(
        pristine,
        range(args.cycles),
        scratch=directory / "trials",
        jobs=args.jobs,
        timeout=args.timeout,
        drain_timeout=args.drain_timeout,
        keep=args.keep,
        progress=progress,
    )
    # Every trial's flip and verdict, for a look at more than the summary.
    (directory / "last-run.json").write_text(
        json.dumps(
            {
                str(n): {"flip": asdict(flip), "verdict": asdict(verdict)}
                for n, (flip, verdict) in sorted(report.verdicts.items())
            },
            indent=1,
        )
    )
    notes = report.note_lines()
    for line in notes[:20]:
        print(line)
    if len(notes) > 20:
        print(f"note: {len(notes) - 20} more trials with notes")
    for line in report.violation_lines():
        print(line)
    if report.violations:
        print(
            f"replay one: python -m tools.torture.bitflip --seed {args.seed} --trial N"
        )
    print("by flip kind:")
    print("\n".join(report.category_lines()))
    print(report.verdict_line())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
