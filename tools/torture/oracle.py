"""The torture oracle: what the archives must hold, and may hold, given the op log.

Input: the op log of one or more workload runs (``tools.torture.workload``; runs
appended together, each a cycle of its own) and the archives as they are on disk
after a final drain. Output: a verdict per archive with counts of each kind of
violation, and a few examples of each.

Rules and theory (docs/guarantees.md, contracts 1, 2, 3 and 11):
- Each op ends in one of three outcomes:
  *acknowledged* (``A``: the call returned, so the entry is durable);
  *refused* (``F`` with an error after which nothing was journaled:
  ``ValidationError``, ``QueueFull``, ``JournalFull``, ``ArchivistClosed``,
  ``ArchivistFailed``);
  *uncertain* (begun and never answered, because the child was killed or stopped
  mid-call; or ``F`` with ``JournalWriteFailed``, whose commit may still have
  reached the disk after a failed fsync, so the oracle does not hold the
  guarantees' "journaled nothing" against it; or ``F`` with any error the
  guarantees do not list).
- Appends: every acknowledged record is delivered, and every delivered record is
  acknowledged or uncertain (as sets: acknowledged <= delivered <= acknowledged +
  uncertain). An uncertain append is one journal entry, so it is delivered whole
  or not at all: some of its records present and some missing counts the missing
  ones as lost.
- Erasures, per session. Its ops are totally ordered (one producer, one call at a
  time). Some erasure *took effect last*: the last acknowledged one, or an
  uncertain one after it. Records of appends before that point must be absent,
  records of acknowledged appends after it present. The oracle picks the latest
  candidate point that lies before every record present (the reading that excuses
  the most), so a present record is "erasure broken" only if it comes before the
  last *acknowledged* erasure. No candidate, no erasure: the point is the start.
- Order: per session, the records present (first copy of each) must read back in
  append order: by op, then by index within the op. A record that reads back
  before one it came after counts once as out of order.
- Duplicates: the same ``message_id`` more than once in one archive (the JSONL
  files are read raw, line by line, so a second copy is visible; the SQLite
  archive is read through ``read_session``).
- Corrupted: a record whose ``role``, ``content_md``, ``metadata`` or ``session``
  differs from what was appended (recomputed with ``workload.expected_fields``), or
  a JSONL line before the end of its file that does not decode.
- Unexpected: a record whose ``message_id`` was never begun, or whose append was
  refused.
- A torn JSONL tail (a last fragment without a newline, or a last line that does
  not decode) is what ``JsonlArchive`` itself skips when reading and cuts before
  its next write: it is counted (``torn_tails``) but is no violation.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final
from uuid import UUID

import anyio
import msgspec

from journal_archivist import MessageRecord
from journal_archivist.backends import SqliteArchive

from .workload import (
    ARCHIVE_NAMES,
    expected_fields,
    jsonl_archive_directory,
    sqlite_archive_path,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "REFUSALS",
    "ArchiveVerdict",
    "Op",
    "OpLog",
    "OpLogError",
    "Outcome",
    "judge_archive",
    "judge_directory",
    "parse_op_log",
    "read_jsonl_archive",
    "read_sqlite_archive",
]

#: Errors after which the guarantees say nothing was journaled.
REFUSALS: Final = frozenset(
    {
        "ValidationError",
        "QueueFull",
        "JournalFull",
        "ArchivistClosed",
        "ArchivistFailed",
    }
)
#: Examples kept per kind of violation.
MAX_EXAMPLES: Final = 5


class OpLogError(ValueError):
    """The op log is not well formed (a tool's bug, not the archivist's)."""


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"
    UNCERTAIN = "uncertain"


@dataclass
class Op:
    """One append or erasure, as the op log tells it."""

    cycle: int
    number: int
    session: UUID
    erase: bool
    message_ids: tuple[UUID, ...]
    outcome: Outcome = Outcome.UNCERTAIN
    error: str | None = None
    answered: bool = False

    def __str__(self) -> str:
        what = "erasure" if self.erase else f"append of {len(self.message_ids)}"
        return f"op {self.cycle}/{self.number} ({what}, {self.outcome.value})"


@dataclass
class OpLog:
    """Every op of the log, per session in order, and every record begun."""

    ops: dict[tuple[int, int], Op] = field(default_factory=dict)
    #: session -> its ops in the order they were begun.
    sessions: dict[UUID, list[Op]] = field(default_factory=dict)
    #: message_id -> (the op that carried it, its index in the op).
    records: dict[UUID, tuple[Op, int]] = field(default_factory=dict)
    #: The reasons of ``X`` lines (the child gave up), in order.
    failures: list[str] = field(default_factory=list)
    cycles: set[int] = field(default_factory=set)

    def count(self, outcome: Outcome, *, erase: bool) -> int:
        return sum(
            1 for op in self.ops.values() if op.outcome is outcome and op.erase == erase
        )

    @property
    def acknowledged_records(self) -> int:
        return sum(
            len(op.message_ids)
            for op in self.ops.values()
            if op.outcome is Outcome.ACKNOWLEDGED
        )


_LINE: Final = re.compile(r"[A-Z]+ ")


def parse_op_log(lines: Iterable[str]) -> OpLog:
    """Read op log lines (``O``/``B``/``A``/``F``/``X``; others are ignored).

    Raises:
        OpLogError: an op begun twice, answered twice or answered before begun, or
            a malformed ``B``/``A``/``F`` line.
    """
    log = OpLog()
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not _LINE.match(line):
            continue
        kind, _, rest = line.partition(" ")
        try:
            if kind == "B":
                _begin(log, rest.split(" "))
            elif kind in ("A", "F"):
                _answer(log, kind, rest.split(" "))
            elif kind == "X":
                log.failures.append(rest.partition(" ")[2])
        except (ValueError, IndexError) as exc:
            raise OpLogError(f"op log line {number}: {exc}: {line[:200]!r}") from exc
    return log


def _begin(log: OpLog, fields: list[str]) -> None:
    cycle, number, session, kind, ids = fields
    key = (int(cycle), int(number))
    if key in log.ops:
        raise ValueError(f"op {key} begun twice")
    if kind not in ("a", "e"):
        raise ValueError(f"unknown op kind {kind!r}")
    erase = kind == "e"
    message_ids = () if erase else tuple(UUID(i) for i in ids.split(","))
    op = Op(key[0], key[1], UUID(session), erase, message_ids)
    log.ops[key] = op
    log.cycles.add(op.cycle)
    log.sessions.setdefault(op.session, []).append(op)
    for index, message_id in enumerate(message_ids):
        if message_id in log.records:
            raise ValueError(f"message_id {message_id} begun twice")
        log.records[message_id] = (op, index)


def _answer(log: OpLog, kind: str, fields: list[str]) -> None:
    key = (int(fields[0]), int(fields[1]))
    op = log.ops.get(key)
    if op is None:
        raise ValueError(f"op {key} answered but never begun")
    if op.answered:
        raise ValueError(f"op {key} answered twice")
    op.answered = True
    if kind == "A":
        op.outcome = Outcome.ACKNOWLEDGED
    else:
        op.error = fields[2]
        op.outcome = Outcome.REFUSED if op.error in REFUSALS else Outcome.UNCERTAIN


# -- judging ------------------------------------------------------------------------


@dataclass
class ArchiveVerdict:
    """What one archive holds against what it must and may hold."""

    name: str
    acknowledged: int = 0  # records of acknowledged appends
    delivered: int = 0  # distinct records present
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    corrupted: int = 0
    unexpected: int = 0
    erasures_broken: int = 0
    uncertain_present: int = 0  # records of uncertain appends that are there
    torn_tails: int = 0
    sessions: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    KINDS: ClassVar[tuple[str, ...]] = (
        "lost",
        "duplicates",
        "out_of_order",
        "corrupted",
        "erasures_broken",
        "unexpected",
    )

    @property
    def violations(self) -> int:
        return sum(getattr(self, kind) for kind in self.KINDS)

    def note(self, kind: str, example: str, count: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + count)
        kept = self.examples.setdefault(kind, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example)

    def summary(self) -> str:
        """One line: the counts, then examples of each violation found."""
        counts = ", ".join(
            f"{getattr(self, kind)} {kind.replace('_', ' ')}" for kind in self.KINDS
        )
        line = (
            f"{self.name}: {self.acknowledged} acknowledged, {self.delivered}"
            f" delivered ({self.uncertain_present} of uncertain appends) in"
            f" {self.sessions} sessions, {counts}, {self.torn_tails} torn tails"
        )
        for kind, examples in self.examples.items():
            line += f"\n  {kind}: " + "; ".join(examples)
        return line


def _fields_differ(record: MessageRecord, op: Op, index: int, session: UUID) -> str:
    role, content, metadata = expected_fields(op.cycle, op.number, index)
    wrong = []
    if record.session != op.session or session != op.session:
        wrong.append(f"session {record.session} in file of {session}")
    if record.role != role:
        wrong.append(f"role {record.role!r}")
    if record.content_md != content:
        at = next(
            (
                i
                for i, (a, b) in enumerate(
                    zip(record.content_md, content, strict=False)
                )
                if a != b
            ),
            min(len(record.content_md), len(content)),
        )
        wrong.append(
            f"content differs at char {at} (length {len(record.content_md)},"
            f" expected {len(content)})"
        )
    if record.metadata != metadata:
        wrong.append(f"metadata {record.metadata!r:.80}")
    return ", ".join(wrong)


def judge_session(
    log: OpLog,
    session: UUID,
    delivered: Sequence[MessageRecord],
    verdict: ArchiveVerdict,
) -> None:
    """Judge one session's records, in the order the archive holds them."""
    ops = log.sessions.get(session, [])
    position = {id(op): i for i, op in enumerate(ops)}
    first_seen: set[UUID] = set()
    # (position of its op in the session, index in the op) per record present.
    present: list[tuple[int, int, UUID, Op]] = []
    for record in delivered:
        message_id = record.message_id
        if message_id in first_seen:
            verdict.note("duplicates", f"{message_id} in session {session}")
            continue
        first_seen.add(message_id)
        found = log.records.get(message_id)
        if found is None:
            verdict.note("unexpected", f"{message_id} in session {session} never begun")
            continue
        op, index = found
        wrong = _fields_differ(record, op, index, session)
        if wrong:
            verdict.note("corrupted", f"{message_id} of {op}: {wrong}")
            if op.session != session:
                continue
        if op.outcome is Outcome.REFUSED:
            verdict.note("unexpected", f"{message_id} of {op} refused with {op.error}")
            continue
        present.append((position[id(op)], index, message_id, op))
    verdict.delivered += len(present)
    verdict.uncertain_present += sum(
        1 for *_, op in present if op.outcome is Outcome.UNCERTAIN
    )

    # Order: first copies, in the order read, must follow append order.
    highest = (-1, -1)
    for op_position, index, message_id, op in present:
        if (op_position, index) < highest:
            verdict.note("out_of_order", f"{message_id} of {op} in session {session}")
        highest = max(highest, (op_position, index))

    # The erasure that took effect last: see the module docstring.
    last_acknowledged = max(
        (
            position[id(op)]
            for op in ops
            if op.erase and op.outcome is Outcome.ACKNOWLEDGED
        ),
        default=-1,
    )
    candidates = [last_acknowledged] + [
        position[id(op)]
        for op in ops
        if op.erase
        and op.outcome is Outcome.UNCERTAIN
        and position[id(op)] > last_acknowledged
    ]
    earliest_present = min((p for p, *_ in present), default=len(ops))
    before_present = [c for c in candidates if c < earliest_present]
    erased_upto = max(before_present) if before_present else last_acknowledged
    for op_position, _, message_id, op in present:
        if op_position < erased_upto:
            verdict.note(
                "erasures_broken",
                f"{message_id} of {op} present after the erasure"
                f" {ops[erased_upto]} of session {session}",
            )

    # Acknowledged appends after that point must be whole; so must uncertain ones
    # that were delivered at all (one entry is delivered whole).
    present_ids = {message_id for _, _, message_id, _ in present}
    for op in ops[erased_upto + 1 :]:
        if op.erase or op.outcome is Outcome.REFUSED:
            continue
        missing = [m for m in op.message_ids if m not in present_ids]
        if not missing:
            continue
        if op.outcome is Outcome.UNCERTAIN and len(missing) == len(op.message_ids):
            continue
        verdict.note(
            "lost",
            f"{len(missing)} of {len(op.message_ids)} records of {op} in session"
            f" {session}, e.g. {missing[0]}",
            len(missing),
        )


def judge_archive(
    log: OpLog,
    name: str,
    sessions: Iterable[tuple[UUID, Sequence[MessageRecord]]],
    *,
    torn_tails: int = 0,
    corrupted_lines: Sequence[str] = (),
) -> ArchiveVerdict:
    """The verdict on one archive, given every session it holds.

    ``sessions`` yields ``(session, records in archive order)``; a session of the
    log it does not yield is judged empty (everything acknowledged in it is lost).
    """
    verdict = ArchiveVerdict(name, acknowledged=log.acknowledged_records)
    verdict.torn_tails = torn_tails
    for line in corrupted_lines:
        verdict.note("corrupted", line)
    judged: set[UUID] = set()
    for session, records in sessions:
        judged.add(session)
        judge_session(log, session, records, verdict)
    for session in log.sessions:
        if session not in judged:
            judge_session(log, session, [], verdict)
    verdict.sessions = len(judged | log.sessions.keys())
    return verdict


# -- reading the archives -----------------------------------------------------------

_jsonl_decoder: Final = msgspec.json.Decoder(MessageRecord)


@dataclass
class JsonlContents:
    """Every session file of a ``JsonlArchive`` directory, read raw."""

    sessions: dict[UUID, list[MessageRecord]] = field(default_factory=dict)
    torn_tails: int = 0
    corrupted_lines: list[str] = field(default_factory=list)


def read_jsonl_archive(directory: str | os.PathLike[str]) -> JsonlContents:
    """Read every ``<session>.jsonl`` file line by line, duplicates included."""
    contents = JsonlContents()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return contents
    for name in names:
        stem, dot, extension = name.partition(".")
        if extension != "jsonl" or not dot:
            continue
        try:
            session = UUID(stem)
        except ValueError:
            continue
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            data = file.read()
        lines = data.split(b"\n")
        if lines[-1]:
            contents.torn_tails += 1  # a last fragment without a newline
        lines.pop()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(_jsonl_decoder.decode(line))
            except msgspec.DecodeError as exc:
                if number == len(lines):
                    contents.torn_tails += 1  # a last line that does not decode
                else:
                    contents.corrupted_lines.append(f"{path} line {number}: {exc}")
        contents.sessions[session] = records
    return contents


async def read_sqlite_archive(
    path: str | os.PathLike[str], sessions: Iterable[UUID]
) -> dict[UUID, list[MessageRecord]]:
    """Every session the archive lists, and ``sessions``, as ``read_session``
    returns them (a session it does not hold reads as empty)."""
    if not await anyio.Path(path).exists():
        return {}
    archive = SqliteArchive(path)
    try:
        wanted = {info.session for info in await archive.list_sessions()}
        wanted.update(sessions)
        return {session: await archive.read_session(session) for session in wanted}
    finally:
        await archive.aclose()


async def judge_directory(
    directory: str | os.PathLike[str],
    log: OpLog,
    archives: Sequence[str] = ARCHIVE_NAMES,
) -> list[ArchiveVerdict]:
    """The verdicts on the archives of a torture directory (after a drain)."""
    verdicts = []
    for name in archives:
        if name == "sqlite":
            held = await read_sqlite_archive(
                sqlite_archive_path(directory), log.sessions
            )
            verdicts.append(judge_archive(log, name, held.items()))
        elif name == "jsonl":
            raw = read_jsonl_archive(jsonl_archive_directory(directory))
            verdicts.append(
                judge_archive(
                    log,
                    name,
                    raw.sessions.items(),
                    torn_tails=raw.torn_tails,
                    corrupted_lines=raw.corrupted_lines,
                )
            )
        else:
            raise ValueError(f"no archive named {name!r} in a torture directory")
    return verdicts


def read_op_log(path: str | os.PathLike[str]) -> OpLog:
    """Parse the op log file at ``path``."""
    with open(path, encoding="utf-8") as file:
        return parse_op_log(file)


def totals(verdicts: Sequence[ArchiveVerdict]) -> dict[str, int]:
    """Each kind of violation summed over the archives."""
    return {
        kind: sum(getattr(v, kind) for v in verdicts) for kind in ArchiveVerdict.KINDS
    }


def counts_text(acknowledged: int, verdicts: Sequence[ArchiveVerdict]) -> str:
    """``N acknowledged, 0 lost, 0 duplicates, ...``: the end of a verdict line."""
    summed = totals(verdicts)
    return f"{acknowledged} acknowledged, " + ", ".join(
        f"{summed[kind]} {kind.replace('_', ' ')}" for kind in ArchiveVerdict.KINDS
    )


def health_problems(facts: Mapping[str, object]) -> Iterator[str]:
    """What a drained journal's ``health_facts`` should not show, for a tool whose
    run damages nothing: lost or quarantined entries, drops, dead letters, lag."""
    journal = facts.get("journal", {})
    assert isinstance(journal, Mapping)
    for key in ("lost_entries", "quarantined"):
        if journal.get(key):
            yield f"journal {key} = {journal[key]}"
    backends = facts.get("backends", {})
    assert isinstance(backends, Mapping)
    for name, backend in backends.items():
        for key in ("lag_entries", "dropped", "dead_lettered", "quarantined"):
            if backend.get(key):
                yield f"backend {name} {key} = {backend[key]}"


def print_verdicts(
    verdicts: Sequence[ArchiveVerdict], out: Callable[[str], None] = print
) -> None:
    """One summary line per archive (with examples of violations)."""
    for verdict in verdicts:
        out(verdict.summary())
