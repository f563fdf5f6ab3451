"""Checking a journal file offline: is it sound, and if not, how broken?

Rules and theory:
- Read-only, lock-free and in one snapshot, as every offline reader
  (``_offline``); safe while the owning service runs.
- Four verdicts, from the worst finding: ``NOT_A_JOURNAL`` (SQLite says it is not
  a database, or it is one of someone else's), ``CORRUPT`` (SQLite's own check
  finds the file's structure broken, or a read fails on a damaged page: open
  refuses it, ``salvage`` may copy what is readable), ``DAMAGED`` (some rows fail
  their type or checksum checks, or the bookkeeping disagrees with the rows: open
  works, quarantining or repairing them), ``OK``.
- What is checked: ``PRAGMA quick_check`` (``integrity_check`` with ``full``),
  every entry and dead letter against its checksum (``_rows.check_entries``, as
  the writers check them), the backend rows and journal-wide counters (as open
  reads them, ``_journal_load.read_state``), each backend's pending count and
  bytes against a count of the rows it is owed, and the lock file's high-water
  against the journal's (entries acknowledged and missing), while the lock is
  free.
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING, Final

import msgspec

from ._errors import JournalCorrupt
from ._journal_file import QUICK_CHECK_LIMIT, is_row_damage
from ._journal_load import OWED
from ._journal_types import StoredEntry
from ._offline import check_header, current_state, lock_of, read_only
from ._rows import DEAD_LETTER_COLUMNS, ENTRY_COLUMNS, check_entries, typed

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from ._batching import Entry
    from ._lockfile import LockPeek

__all__ = ["CheckReport", "Finding", "Verdict", "check", "with_large_payloads"]

#: Findings a report spells out; the counts cover every one.
MAX_FINDINGS: Final = 100
#: Rows read and checked at a time.
_CHUNK: Final = 1024


class Verdict(enum.Enum):
    """What ``check`` concluded, from the worst of its findings."""

    #: Nothing wrong found.
    OK = "ok"
    #: Some rows are damaged; the rest is readable and open handles them.
    DAMAGED = "damaged"
    #: SQLite finds the file broken; open refuses it (try ``salvage``).
    CORRUPT = "corrupt"
    #: Not a journal (not a SQLite database, or another application's).
    NOT_A_JOURNAL = "not_a_journal"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One problem found: ``kind`` is ``file``, ``entry``, ``dead_letter``,
    ``backend``, ``meta``, ``counters`` or ``lost``; ``where`` names the row."""

    kind: str
    where: str | None
    detail: str


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``check`` found. ``findings`` lists the first ``MAX_FINDINGS``."""

    path: str
    verdict: Verdict
    full: bool
    schema_version: int | None = None
    high_water_seq: int | None = None
    entries_checked: int = 0
    entries_damaged: int = 0
    dead_letters_checked: int = 0
    dead_letters_damaged: int = 0
    findings_total: int = 0
    findings: tuple[Finding, ...] = ()


class _Findings:
    def __init__(self) -> None:
        self.listed: list[Finding] = []
        self.total = 0
        self.corrupt = False

    def add(self, kind: str, where: str | None, detail: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_FINDINGS:
            self.listed.append(Finding(kind=kind, where=where, detail=detail))


def check(path: str | os.PathLike[str], *, full: bool = False) -> CheckReport:
    """Check the journal at ``path`` without opening it for writing.

    Raises:
        JournalIncompatible: written by another schema version (nothing checked).
        JournalError: missing, or cannot be opened at all.
    """
    full_path = os.path.abspath(os.fspath(path))
    found = _Findings()
    counts = [0, 0, 0, 0]  # entries checked, damaged; dead letters checked, damaged
    version = high_water = None
    lock = lock_of(full_path)
    try:
        with read_only(full_path) as conn:
            version = check_header(conn, full_path)
            _sqlite_check(conn, full, found)
            if not found.corrupt:
                counts[:2] = _check_entries(conn, found)
                counts[2:] = _check_dead_letters(conn, found)
                high_water = _check_bookkeeping(conn, found, lock)
    except JournalCorrupt as exc:
        if exc.detail.startswith("not a journal"):
            return CheckReport(
                path=full_path,
                verdict=Verdict.NOT_A_JOURNAL,
                full=full,
                findings_total=1,
                findings=(Finding(kind="file", where=None, detail=exc.detail),),
            )
        found.corrupt = True
        found.add("file", None, exc.detail)
    if found.corrupt:
        verdict = Verdict.CORRUPT
    else:
        verdict = Verdict.DAMAGED if found.total else Verdict.OK
    return CheckReport(
        path=full_path,
        verdict=verdict,
        full=full,
        schema_version=version,
        high_water_seq=high_water,
        entries_checked=counts[0],
        entries_damaged=counts[1],
        dead_letters_checked=counts[2],
        dead_letters_damaged=counts[3],
        findings_total=found.total,
        findings=tuple(found.listed),
    )


def _sqlite_check(conn: sqlite3.Connection, full: bool, found: _Findings) -> None:
    pragma = "integrity_check" if full else "quick_check"
    for (problem,) in conn.execute(f"PRAGMA {pragma}({QUICK_CHECK_LIMIT})"):
        text = bytes(problem).decode(errors="replace")  # StoredText: undecoded
        if text == "ok":
            continue
        if is_row_damage(text):
            found.add("entry", None, text)
        else:
            found.corrupt = True
            found.add("file", None, text)


def _check_entries(conn: sqlite3.Connection, found: _Findings) -> tuple[int, int]:
    """Every entry against its types and checksum, a chunk at a time."""
    checked = damaged = 0
    position = -1
    while True:
        rows = conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
            (position, _CHUNK),
        ).fetchall()
        if not rows:
            return checked, damaged
        position = rows[-1][0]
        for entry in with_large_payloads(conn, rows):
            checked += 1
            if entry.damage is not None:
                damaged += 1
                found.add("entry", f"seq {entry.seq}", entry.damage)


def with_large_payloads(
    conn: sqlite3.Connection, rows: Sequence[Sequence[object]]
) -> list[Entry]:
    """``check_entries`` of ``rows``, with the payloads kept in ``payloads`` put
    in place (a row whose payload row is missing stays damaged)."""
    elsewhere: list[int] = []
    entries = check_entries(rows, elsewhere)
    for index in elsewhere:
        row = StoredEntry._make(rows[index])
        payload = conn.execute(
            "SELECT payload FROM payloads WHERE seq = ?", (row.seq,)
        ).fetchall()
        if payload:
            [entries[index]] = check_entries([row._replace(payload=payload[0][0])])
    return entries


def _check_dead_letters(conn: sqlite3.Connection, found: _Findings) -> tuple[int, int]:
    checked = damaged = 0
    for row_id, *stored in conn.execute(
        f"SELECT id, {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id"
    ):
        checked += 1
        [entry] = check_entries([stored])
        if entry.damage is not None:
            damaged += 1
            found.add("dead_letter", f"id {row_id}", entry.damage)
    return checked, damaged


def _check_bookkeeping(
    conn: sqlite3.Connection, found: _Findings, lock: LockPeek
) -> int:
    """Backend rows, counters and the high-water; return the high-water seq."""
    state = current_state(conn, lock)
    for row in state.backends:
        if row.damage is not None:
            repair = "repaired exactly" if row.exact else "rebuilt from the entries"
            found.add(
                "backend",
                f"{row.name} (bit {row.bit})",
                f"{row.damage}; open: {repair}",
            )
    for key in state.damaged_meta:
        found.add("meta", repr(key), "damaged journal-wide counter; open resets it")
    if state.lost:
        found.add(
            "lost",
            f"seq {state.last_seq - state.lost + 1}..{state.last_seq}",
            f"{state.lost} acknowledged entries are missing (a lost WAL tail);"
            " open counts them in lost_entries",
        )
    for row in state.backends:
        if not row.exact:
            continue  # rebuilt by open: its counters are recounted anyway
        ((count, nbytes),) = conn.execute(
            f"SELECT count(*), total({typed('size', 'integer')}) FROM entries"
            f" WHERE seq > ? AND {OWED}",
            (row.cursor, row.mask, row.drop_floor, row.mask),
        ).fetchall()
        if (row.pending, row.pending_bytes) != (int(count), int(nbytes)):
            found.add(
                "counters",
                row.name,
                f"pending {row.pending} entries / {row.pending_bytes} bytes by the"
                f" counters, {count} / {int(nbytes)} by the rows",
            )
    return state.last_seq
