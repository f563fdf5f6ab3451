"""Opening a journal's state: load it, repair what open can, reconcile the backends.

Rules and theory:
- ``load`` runs once, inside ``Journal.open``, after the file is checked and
  migrated and before anything else uses it. It reads the backend rows, the
  journal-wide counters and the quarantined seqs; what it repairs or brings up to
  date it writes back in one transaction, so a journal that opened is consistent.
- Sequence numbers are never reused: ``last_seq`` is at least every seq still in
  ``entries``, every exact backend row's ``counted_through`` and the high-water
  mark in the lock file. Entries acknowledged under that mark and missing (a lost
  WAL tail) are counted in ``lost_entries``.
- A backend row repaired exactly (one flipped bit undone) is written back at open.
  One whose values cannot be trusted gets its position rebuilt from the entries
  (``_derive_position``) and is written by ``reconcile``, once its name is known
  to be registered: its entries are never released on the word of a damaged row.
- Counters are written lazily, so open adds the entries journaled after a
  backend's ``counted_through`` (one scan of that tail).
- The reading is sans-IO (``read_state`` yields its queries), so open, on
  aiosqlite, and the offline reader (``_offline``, on a read-only ``sqlite3``
  connection, ``read_state_sync``) share every query and every sum: ``status``
  reports what open would find.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from ._errors import JournalCorrupt
from ._journal_file import is_corruption, write_failed
from ._rows import BACKEND_COLUMNS, BackendRow, decode_text, typed
from ._schema import MAX_BACKENDS
from ._transaction import (
    ADD_TO_META,
    DELETE_ORPHAN_PAYLOADS,
    LAST_ERASURE_US,
    from_micros,
    store_backend_rows,
)

if TYPE_CHECKING:
    import aiosqlite

    from ._lockfile import LockFile

__all__ = [
    "OWED",
    "Loaded",
    "Query",
    "Rows",
    "State",
    "load",
    "read_state",
    "read_state_sync",
    "reconcile",
]

logger = logging.getLogger("journal_archivist.journal")


#: A query step of ``read_state``: SQL and its parameters.
Query: TypeAlias = tuple[str, tuple[object, ...]]
#: What running a ``Query`` gives back: its rows, each a sequence of values.
Rows: TypeAlias = list[Sequence[object]]
#: Appends a backend is owed among the rows it selects: journaled for it
#: (``origin``) and not dropped under its DROP_OLDEST floor. Parameters: its mask,
#: its floor, its mask.
OWED: Final = "origin & ? AND NOT (op = 1 AND seq <= ? AND NOT targets & ?)"


@dataclass(slots=True)
class State:
    """A journal's state as stored, brought up to date in memory (``read_state``).

    ``backends`` have exact counters as of ``last_seq`` (their ``damage`` says
    which rows open repairs); ``lost`` counts acknowledged entries newly found
    missing (above ``last_seq`` in the lock file's high-water), which
    ``meta["lost_entries"]`` does not include yet.
    """

    backends: list[BackendRow]
    meta: dict[str, int]
    #: The stored keys (as bytes) of damaged ``meta`` rows, to delete.
    damaged_meta: list[bytes | None]
    quarantined: set[int]
    last_seq: int
    lost: int
    #: The latest journal time handed out (``stamp_times``): the newest entry's,
    #: or the newest erasure's if later (``meta[LAST_ERASURE_US]``).
    last_stamp: float


@dataclass(slots=True)
class Loaded:
    """A journal's state as ``load`` found (and repaired) it."""

    backends: dict[str, BackendRow]
    last_seq: int
    lost_entries: int
    repaired_rows: int
    last_stamp: float
    #: Seqs of entries quarantined (by any backend), to count each once.
    quarantined: set[int]


def read_state(recorded: int | None) -> Generator[Query, Rows, State]:
    """Read a journal's state, one query at a time: sans-IO, so open (aiosqlite)
    and the offline reader (``read_state_sync``) share every query and sum.

    Send each yielded query's rows back; the return value is the ``State``.
    ``recorded`` is the lock file's high-water (None: none or unknown). Nothing is
    written: a damaged backend row gets its position derived from the entries
    (``_derive_position``) and every row's counters are brought up to
    ``last_seq`` in memory (counters are written lazily: the entries journaled
    after a row's ``counted_through`` are added, one scan of that tail each).
    """
    rows = [
        BackendRow.from_stored(tuple(row))
        for row in (yield (f"SELECT {BACKEND_COLUMNS} FROM backends", ()))
    ]
    meta: dict[str, int] = {}
    damaged_meta: list[bytes | None] = []  # their stored keys, as bytes
    for raw_key, value in (
        yield (
            f"SELECT {typed('key', 'text')}, {typed('value', 'integer')} FROM meta",
            (),
        )
    ):
        key = decode_text(raw_key)
        if key is None or type(value) is not int:
            damaged_meta.append(raw_key if isinstance(raw_key, bytes) else None)
        else:
            meta[key] = value
    quarantined = {
        seq
        for (seq,) in (
            yield (f"SELECT DISTINCT {typed('seq', 'integer')} FROM quarantine", ())
        )
        if type(seq) is int
    }
    ((max_seq, max_stamp),) = yield (
        f"SELECT max(seq), max({typed('enqueued_at', 'real')}) FROM entries",
        (),
    )
    last_stamp = max(
        max_stamp if type(max_stamp) is float else 0.0,
        from_micros(meta.get(LAST_ERASURE_US, 0)),
    )
    counted = [row.counted_through for row in rows if row.exact]
    last_seq = max([_int(max_seq), *counted])
    lost = 0
    if recorded is not None and recorded > last_seq:
        lost = recorded - last_seq
        last_seq = recorded  # never reuse a seq that was acknowledged
    for row in rows:
        if row.damage is not None and not row.exact:
            yield from _derive_position(row, last_seq)
    for row in rows:
        if row.counted_through < last_seq:
            ((count, nbytes),) = yield (
                f"SELECT count(*), total({typed('size', 'integer')}) FROM entries"
                f" WHERE seq > ? AND {OWED}",
                (row.counted_through, row.mask, row.drop_floor, row.mask),
            )
            row.pending += _int(count)
            row.pending_bytes += _int(nbytes)
            row.counted_through = last_seq
    return State(rows, meta, damaged_meta, quarantined, last_seq, lost, last_stamp)


def read_state_sync(conn: sqlite3.Connection, recorded: int | None) -> State:
    """``read_state`` run on a plain ``sqlite3`` connection (the offline reader).

    Raises:
        sqlite3.Error: reading failed.
    """
    steps = read_state(recorded)
    try:
        query = next(steps)
        while True:
            query = steps.send(conn.execute(*query).fetchall())
    except StopIteration as done:
        state: State = done.value
        return state


async def _read_state_async(conn: aiosqlite.Connection, recorded: int | None) -> State:
    steps = read_state(recorded)
    try:
        query = next(steps)
        while True:
            query = steps.send(list(await conn.execute_fetchall(*query)))
    except StopIteration as done:
        state: State = done.value
        return state


def _int(value: object) -> int:
    """An aggregate's value as an int (NULL, from no rows, is 0)."""
    return int(value) if isinstance(value, int | float) else 0


async def load(conn: aiosqlite.Connection, path: str, lock: LockFile) -> Loaded:
    """Read the journal's state on ``conn``, repair it, and persist the repairs.

    Raises:
        sqlite3.Error: reading failed (``Journal.open`` classifies it).
        JournalCorrupt: a damaged page was met while writing the repairs.
        JournalWriteFailed: writing the repairs failed; nothing was written.
    """
    state = await _read_state_async(conn, lock.read_high_water())
    last_seq, lost = state.last_seq, state.lost
    if lost:
        logger.error(
            "journal %s: %d acknowledged entries (seq %d..%d) are missing; the WAL"
            " tail was lost or damaged (health().journal.lost_entries counts them)",
            path,
            lost,
            last_seq - lost + 1,
            last_seq,
        )
    rows = state.backends
    loaded = Loaded(
        backends={row.name: row for row in rows},
        last_seq=last_seq,
        lost_entries=state.meta.get("lost_entries", 0),
        repaired_rows=state.meta.get("repaired_rows", 0),
        last_stamp=state.last_stamp,
        quarantined=state.quarantined,
    )
    repaired = [row for row in rows if row.damage is not None]
    for row in repaired:
        logger.error(
            "journal %s: the stored state of backend %r (bit %d) was damaged (%s);"
            " repaired%s (health().journal.repaired_rows counts it)",
            path,
            row.name,
            row.bit,
            row.damage,
            ""
            if row.exact
            else ": its position was rebuilt from the journal's entries and its"
            " delivered/dropped/dead-lettered/quarantined counts may be off",
        )
    if state.damaged_meta:
        logger.error(
            "journal %s: %d damaged rows of journal-wide counters were reset",
            path,
            len(state.damaged_meta),
        )
    await _store_state(conn, path, loaded, lost, len(repaired), state.damaged_meta)
    lock.write_high_water(last_seq)
    return loaded


def _derive_position(row: BackendRow, last_seq: int) -> Generator[Query, Rows, None]:
    """Rebuild a damaged backend row's position from the entries.

    An entry keeps a backend's bit in ``targets`` until that backend settles
    it, and settling moves the cursor in the same transaction, so the cursor
    is just below the first entry that still has the bit. Above it, an append
    the backend was journaled for (``origin``) that lost the bit was dropped by
    DROP_OLDEST. What is pending is counted again.
    """
    mask = row.mask
    ((first,),) = yield ("SELECT min(seq) FROM entries WHERE targets & ?", (mask,))
    row.cursor = last_seq if first is None else _int(first) - 1
    ((floor,),) = yield (
        "SELECT max(seq) FROM entries WHERE seq > ? AND origin & ?"
        " AND NOT targets & ? AND op = 1",
        (row.cursor, mask, mask),
    )
    row.drop_floor = _int(floor)
    row.pending = row.pending_bytes = 0
    row.counted_through = row.cursor


async def _store_state(
    conn: aiosqlite.Connection,
    path: str,
    loaded: Loaded,
    lost: int,
    repaired: int,
    damaged_meta: list[bytes | None],
) -> None:
    """Persist the backends' up-to-date counters, with the journal-wide counters
    and the rows repaired on the way.

    A repaired row whose name cannot be trusted is written by ``reconcile`` once
    the name is known to be registered.
    """
    trusted = [row for row in loaded.backends.values() if row.exact]
    try:
        await store_backend_rows(conn, trusted)
        if damaged_meta:
            await conn.execute(
                "DELETE FROM meta WHERE typeof(key) != 'text'"
                " OR typeof(value) != 'integer'"
            )
            await conn.executemany(
                "DELETE FROM meta WHERE CAST(key AS BLOB) = ?",
                [(key,) for key in damaged_meta if key is not None],
            )
        repaired += len(damaged_meta)
        for key, added in (("lost_entries", lost), ("repaired_rows", repaired)):
            if added:
                await conn.execute(ADD_TO_META, (key, added))
        await conn.commit()
    except sqlite3.Error as exc:
        await conn.rollback()
        if is_corruption(exc):  # a damaged page met while writing
            raise JournalCorrupt(path, str(exc)) from exc
        raise write_failed(path, str(exc), exc) from exc
    loaded.lost_entries += lost
    loaded.repaired_rows += repaired
    for row in trusted:
        row.damage = None


async def reconcile(
    conn: aiosqlite.Connection,
    path: str,
    backends: dict[str, BackendRow],
    last_seq: int,
    names: Sequence[str],
) -> tuple[list[str], dict[str, int]]:
    """Make the ``backends`` table, and ``backends``, match the registered ``names``.

    ``backends`` is the journal's, changed in place once the change is committed.
    See ``Journal.reconcile``.
    """
    doubtful = [row for row in backends.values() if not row.exact]
    for row in doubtful:
        if row.name not in names:
            raise JournalCorrupt(
                path,
                f"the stored state of backend bit {row.bit} is damaged"
                f" ({row.damage}) and its name {row.name!r} is not registered;"
                " register it under its true name to keep its pending entries",
            )
    added = [name for name in names if name not in backends]
    removed = {name: row for name, row in backends.items() if name not in names}
    if not added and not removed and not doubtful:
        return [], {}
    free_bits = sorted(
        set(range(MAX_BACKENDS))
        - {row.bit for name, row in backends.items() if name not in removed}
    )
    if len(added) > len(free_bits):
        raise ValueError(
            f"a journal holds at most {MAX_BACKENDS} backends, {len(names)} registered"
        )
    new_rows = [
        BackendRow(free_bits[i], name, last_seq, 0, 0, 0, 0, 0, 0, last_seq, 0)
        for i, name in enumerate(added)
    ]
    try:
        for row in removed.values():
            await conn.execute(
                "UPDATE entries SET targets = targets & ~? WHERE targets & ?",
                (row.mask, row.mask),
            )
            await conn.execute("DELETE FROM backends WHERE bit = ?", (row.bit,))
        if removed:
            await conn.execute("DELETE FROM entries WHERE targets = 0")
            await conn.execute(DELETE_ORPHAN_PAYLOADS, (-1, last_seq))
        await store_backend_rows(conn, [*doubtful, *new_rows])
        await conn.commit()
    except sqlite3.Error as exc:
        await conn.rollback()
        raise write_failed(path, str(exc), exc) from exc
    for row in doubtful:
        row.damage, row.exact = None, True
    for name in removed:
        del backends[name]
    for row in new_rows:
        backends[row.name] = row
    return added, {name: row.pending for name, row in removed.items()}
