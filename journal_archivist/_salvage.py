"""Salvage: copy what is intact of a damaged journal into a new one.

Rules and theory:
- For a file open refuses (``JournalCorrupt``): the source is read read-only
  (``_offline``), row by row where it must be. A read that fails on a damaged
  page is stepped over one key at a time (a lookup by rowid descends the b-tree
  afresh, so it reaches the rows past the damage); what cannot be read is
  counted, never guessed.
- Only entries whose checksum holds are copied, with their seq, session, op,
  origin, payload and time: the checksum covers them, so the copy is exactly what
  was journaled. ``targets`` is not under the checksum: it keeps the stored bits
  where they are readable (within ``origin``), else all of ``origin`` (a backend
  may then get an entry again: delivery is idempotent, losing one is not).
- The new journal is created by the library's own schema code
  (``_schema.MIGRATIONS``, in the order ``_journal_file.check_and_migrate`` runs
  them), as a file of ours (0600, in a checked folder). Its backend rows keep each
  backend's cursor, DROP_OLDEST floor and totals where the stored row is sound
  (or one flipped bit from it); a row that is not gets its position rebuilt from
  the copied entries, by open's own code (``_journal_load.read_state``); a row
  whose name is unreadable is left out, and its bit cleared from the entries.
  Pending counters are recounted the same way. No seq is ever reused: every row
  is counted through the source's high-water (the largest seq, counter or lock
  file record found).
- Damaged entries (read, checksum failed) are added to ``lost_entries``.
- Any failure deletes the new files: a half-written journal is never left behind.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import TYPE_CHECKING, Final

import msgspec

from ._errors import JournalError
from ._journal_file import prepare_folder
from ._journal_load import read_state_sync
from ._journal_types import StoredEntry
from ._large_values import LargeValues
from ._offline import lock_of, read_only
from ._private_files import UnsafePath, create_file, sync_folder
from ._rows import (
    BACKEND_COLUMNS,
    DEAD_LETTER_COLUMNS,
    ENTRY_COLUMNS,
    BackendRow,
    Kind,
    check_entries,
    decode_text,
    typed,
)
from ._schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SalvageReport", "salvage"]

#: Keys stepped over past the last readable one when the table's largest key
#: cannot be read either.
SKIP_WINDOW: Final = 100_000
#: Rows inserted per statement.
_CHUNK: Final = 512


class SalvageReport(msgspec.Struct, kw_only=True):
    """What ``salvage`` copied and what it could not.

    ``entries_skipped`` were read and failed their checksum; ``unreadable_keys``
    counts rowids (of every table) whose read failed on a damaged page (each may
    or may not have held a row). ``entries_settled`` were settled everywhere
    already; ``entries_orphaned`` were owed only to backends whose rows are
    unreadable (no name to deliver them under), and are not copied.
    ``backends_rebuilt`` had their position rebuilt from the entries;
    ``backends_dropped`` (by bit) had an unreadable name.
    """

    source: str
    out: str
    high_water_seq: int = 0
    entries_copied: int = 0
    entries_skipped: int = 0
    entries_settled: int = 0
    entries_orphaned: int = 0
    unreadable_keys: int = 0
    backends_copied: list[str] = msgspec.field(default_factory=list)
    backends_rebuilt: list[str] = msgspec.field(default_factory=list)
    backends_dropped: list[int] = msgspec.field(default_factory=list)
    dead_letters_copied: int = 0
    dead_letters_skipped: int = 0
    quarantine_copied: int = 0
    quarantine_skipped: int = 0
    read_errors: list[str] = msgspec.field(default_factory=list)


def salvage(
    source: str | os.PathLike[str], out: str | os.PathLike[str]
) -> SalvageReport:
    """Copy every intact entry of the journal at ``source`` into a new journal
    at ``out``, which ``Archivist.open`` accepts with the same registrations.

    Raises:
        JournalError: ``out`` (or its -wal or -shm) exists, or cannot be created;
            or the source cannot be opened at all. Nothing is left at ``out``.
        JournalCorrupt, JournalIncompatible: the source is not a journal, or of
            another schema version.
    """
    src = os.path.abspath(os.fspath(source))
    given = os.path.abspath(os.fspath(out))
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.lexists(given + suffix):
            raise JournalError(given, f"will not overwrite {given + suffix!r}")
    report = SalvageReport(source=src, out=given)
    lock = lock_of(src)
    with read_only(src) as conn:
        created = _create(given)
        try:
            with contextlib.closing(
                sqlite3.connect(created, isolation_level=None)
            ) as new:
                new.execute("PRAGMA synchronous = FULL")
                new.execute("BEGIN IMMEDIATE")
                _copy(conn, new, report, lock.high_water)
                new.execute("COMMIT")
                new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            # The source's read errors are stepped over where they are met: this
            # one is the new journal's (read_only would call it the source's).
            _remove(created)
            raise JournalError(given, f"cannot write the journal ({exc})") from exc
        except BaseException:
            _remove(created)
            raise
    return report


def _remove(real: str) -> None:
    """Delete a journal this salvage created (a half-written one must not stay)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(real + suffix)


def _create(given: str) -> str:
    """Create the new journal's file (ours, 0600) with the current schema; return
    its real path."""
    real = prepare_folder(given)
    try:
        if not create_file(real):
            raise JournalError(given, "will not overwrite an existing file")
        sync_folder(os.path.dirname(real))
    except (OSError, UnsafePath) as exc:
        raise JournalError(given, f"cannot create the journal ({exc})") from exc
    try:
        with contextlib.closing(sqlite3.connect(real, isolation_level=None)) as conn:
            # Before the first table and the WAL header, as check_and_migrate does.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            for version in range(SCHEMA_VERSION):
                # An empty journal: no row to reseal.
                conn.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[version].sql)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _remove(real)
        raise JournalError(given, f"cannot create the journal ({exc})") from exc
    return real


def _copy(
    conn: sqlite3.Connection,
    new: sqlite3.Connection,
    report: SalvageReport,
    recorded: int | None,
) -> None:
    rows = _backend_rows(conn, report)
    high_water = max(
        [
            recorded or 0,
            _largest(conn, "entries", "seq", report) or 0,
            *(row.counted_through for row in rows if row.exact),
        ]
    )
    sound = [row for row in rows if row.damage is None or row.exact]
    doubtful = [row for row in rows if row not in sound]
    known = sum(row.mask for row in rows)
    lost = _copy_entries(conn, new, report, high_water, sound, known)
    for row in sound:
        # Counted from the cursor: open's arithmetic recounts what is pending.
        row.pending = row.pending_bytes = 0
        row.counted_through = row.cursor
    _store_rows(new, [*sound, *doubtful], seal=sound)
    state = read_state_sync(new, high_water)
    _store_rows(new, state.backends, seal=state.backends)
    report.high_water_seq = state.last_seq
    report.backends_copied = [row.name for row in sound]
    report.backends_rebuilt = [row.name for row in doubtful]
    meta = _meta(conn, report)
    meta["lost_entries"] = meta.get("lost_entries", 0) + lost
    meta["repaired_rows"] = meta.get("repaired_rows", 0) + len(doubtful)
    new.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
    _copy_dead_letters(conn, new, report)
    _copy_quarantine(conn, new, report)


def _backend_rows(conn: sqlite3.Connection, report: SalvageReport) -> list[BackendRow]:
    found = [
        BackendRow.from_stored(tuple(row))
        for row in _scan(
            conn, f"SELECT {BACKEND_COLUMNS} FROM backends", "bit", 61, report
        )
    ]
    rows = []
    for row in found:
        if row.name.startswith("<"):  # unreadable: no registration can claim it
            report.backends_dropped.append(row.bit)
        else:
            rows.append(row)
    return rows


def _copy_entries(
    conn: sqlite3.Connection,
    new: sqlite3.Connection,
    report: SalvageReport,
    high_water: int,
    sound: list[BackendRow],
    known: int,
) -> int:
    """Copy the intact entries; return how many damaged ones were owed to some
    backend (acknowledged and now lost)."""
    lost = 0
    batch: list[tuple[object, ...]] = []
    large: list[tuple[int, bytes]] = []
    select = f"SELECT {ENTRY_COLUMNS}, {typed('targets', 'integer')} FROM entries"
    for row in _scan(conn, select, "seq", high_water, report):
        stored = StoredEntry._make(row[:8])
        payload = stored.payload
        elsewhere: list[int] = []
        [entry] = check_entries([stored], elsewhere)
        if elsewhere:
            payload = _large_payload(conn, stored.seq, report)
            if payload is not None:
                [entry] = check_entries([stored._replace(payload=payload)])
        if entry.damage is not None:
            report.entries_skipped += 1
            lost += 1
            continue
        assert isinstance(stored.origin, int)
        assert isinstance(stored.crc, int)
        owed = row[8] & stored.origin if isinstance(row[8], int) else stored.origin
        targets = owed & known
        for backend in sound:
            if entry.seq <= backend.cursor:
                targets &= ~backend.mask  # settled there already
        if not targets:
            if owed & ~known:
                report.entries_orphaned += 1
            else:
                report.entries_settled += 1
            continue
        stays_inline = len(entry.payload) < LargeValues.THRESHOLD
        batch.append(
            (
                entry.seq,
                entry.session,
                entry.op,
                entry.payload if stays_inline else b"",
                entry.size,
                stored.crc,
                entry.enqueued_at,
                targets,
                stored.origin,
            )
        )
        if not stays_inline:
            large.append((entry.seq, entry.payload))
        report.entries_copied += 1
        if len(batch) >= _CHUNK:
            _insert_entries(new, batch, large)
    _insert_entries(new, batch, large)
    return lost


def _insert_entries(
    new: sqlite3.Connection,
    batch: list[tuple[object, ...]],
    large: list[tuple[int, bytes]],
) -> None:
    new.executemany(
        "INSERT INTO entries (seq, session, op, payload, size, crc, enqueued_at,"
        " targets, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )
    new.executemany("INSERT INTO payloads (seq, payload) VALUES (?, ?)", large)
    batch.clear()
    large.clear()


def _large_payload(
    conn: sqlite3.Connection, seq: object, report: SalvageReport
) -> bytes | None:
    try:
        rows = conn.execute("SELECT payload FROM payloads WHERE seq = ?", (seq,))
        found = rows.fetchall()
    except sqlite3.DatabaseError as exc:
        _note(report, f"payload of seq {seq}: {exc}")
        return None
    return bytes(found[0][0]) if found and isinstance(found[0][0], bytes) else None


def _store_rows(
    new: sqlite3.Connection, rows: list[BackendRow], *, seal: list[BackendRow]
) -> None:
    """Write ``rows``; those in ``seal`` with their checksum, the others without
    (so open's reading counts them damaged and rebuilds their position)."""
    new.executemany(
        "INSERT OR REPLACE INTO backends (bit, name, cursor, pending, pending_bytes,"
        " delivered, dropped, dead_lettered, quarantined, counted_through,"
        " drop_floor, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (row.bit, row.name, *row.numbers()[1:], row.crc() if row in seal else None)
            for row in rows
        ],
    )


def _meta(conn: sqlite3.Connection, report: SalvageReport) -> dict[str, int]:
    meta: dict[str, int] = {}
    for key, value in _scan(
        conn,
        f"SELECT {typed('key', 'text')}, {typed('value', 'integer')} FROM meta",
        None,
        0,
        report,
    ):
        name = decode_text(key)
        if name is not None and type(value) is int:
            meta[name] = value
    return meta


def _copy_dead_letters(
    conn: sqlite3.Connection, new: sqlite3.Connection, report: SalvageReport
) -> None:
    select = (
        f"SELECT id, {typed('backend', 'text')}, {DEAD_LETTER_COLUMNS},"
        f" {typed('error', 'text')}, {typed('attempts', 'integer')},"
        f" {typed('failed_at', 'real')} FROM dead_letters"
    )
    upper = _largest(conn, "dead_letters", "id", report)
    copied = []
    for row_id, backend, *stored, error, attempts, failed_at in _scan(
        conn, select, "id", upper, report
    ):
        [entry] = check_entries([stored])
        name, why = decode_text(backend), decode_text(error)
        if entry.damage or name is None or why is None or attempts is None:
            report.dead_letters_skipped += 1
            continue
        copied.append(
            (row_id, name, entry.seq, entry.session, entry.op, entry.payload,
             stored[5], entry.enqueued_at, why, attempts, failed_at or 0.0,
             stored[7])
        )  # fmt: skip
    new.executemany(
        "INSERT INTO dead_letters (id, backend, seq, session, op, payload, crc,"
        " enqueued_at, error, attempts, failed_at, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        copied,
    )
    report.dead_letters_copied = len(copied)


def _copy_quarantine(
    conn: sqlite3.Connection, new: sqlite3.Connection, report: SalvageReport
) -> None:
    columns: tuple[tuple[str, Kind], ...] = (
        ("backend", "text"), ("seq", "integer"), ("session", "blob"),
        ("op", "integer"), ("payload", "blob"), ("size", "integer"),
        ("crc", "integer"), ("reason", "text"), ("quarantined_at", "real"),
        ("origin", "integer"),
    )  # fmt: skip
    select = ", ".join(typed(name, kind) for name, kind in columns)
    upper = _largest(conn, "quarantine", "id", report)
    copied = []
    for row_id, backend, seq, *rest in _scan(
        conn, f"SELECT id, {select} FROM quarantine", "id", upper, report
    ):
        name, reason = decode_text(backend), decode_text(rest[5])
        if name is None or reason is None or seq is None or rest[6] is None:
            report.quarantine_skipped += 1
            continue
        copied.append((row_id, name, seq, *rest[:5], reason, *rest[6:]))
    new.executemany(
        "INSERT INTO quarantine (id, backend, seq, session, op, payload, size, crc,"
        " reason, quarantined_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        copied,
    )
    report.quarantine_copied = len(copied)


# -- reading past damage -------------------------------------------------------


def _largest(
    conn: sqlite3.Connection, table: str, key: str, report: SalvageReport
) -> int | None:
    try:
        ((value,),) = conn.execute(f"SELECT max({key}) FROM {table}").fetchall()
    except sqlite3.DatabaseError as exc:
        _note(report, f"largest {key} of {table}: {exc}")
        return None
    return value if type(value) is int else 0


def _scan(
    conn: sqlite3.Connection,
    select: str,
    key: str | None,
    upper: int | None,
    report: SalvageReport,
) -> Iterator[tuple[object, ...]]:
    """The rows of ``select`` (whose first column is ``key``), in key order,
    stepping over what cannot be read; ``key`` None: the table is read whole or
    not at all. ``upper`` is the largest key to step to (None: unknown)."""
    if key is None:
        try:
            yield from conn.execute(select).fetchall()
        except sqlite3.DatabaseError as exc:
            _note(report, f"{select}: {exc}")
        return
    position = -1
    while True:
        try:
            for row in conn.execute(
                f"{select} WHERE {key} > ? ORDER BY {key}", (position,)
            ):
                key_value = row[0]
                assert isinstance(key_value, int)  # an INTEGER PRIMARY KEY
                position = key_value
                yield tuple(row)
            return
        except sqlite3.DatabaseError as exc:
            _note(report, f"reading past {key} {position}: {exc}")
        last = position + SKIP_WINDOW if upper is None else upper
        while position < last:
            position += 1
            try:
                found = conn.execute(
                    f"{select} WHERE {key} = ?", (position,)
                ).fetchall()
            except sqlite3.DatabaseError:
                report.unreadable_keys += 1
                continue
            if found:
                yield tuple(found[0])
                break
        else:
            return


def _note(report: SalvageReport, error: str) -> None:
    if len(report.read_errors) < 100:
        report.read_errors.append(error)
