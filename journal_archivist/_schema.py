"""The journal's stored format: SQL schema, migrations, and the row checksums.

Rules:
- ``PRAGMA application_id`` marks a file as ours; ``PRAGMA user_version`` is the
  schema version. ``MIGRATIONS[n]`` upgrades a journal from version ``n`` to
  ``n + 1`` and runs inside one transaction with the version bump.
- ``auto_vacuum`` must be chosen before the first table exists, so it is set by the
  first migration's caller, not by a migration.
- Tables:
  ``entries``       one row per journaled operation. ``origin`` is the bit set of
                    the backends it was journaled for, never changed; ``targets``
                    starts equal and loses a backend's bit when that backend settles
                    or drops it, and the row is deleted once ``targets`` is 0. So
                    ``targets`` decides when a row may go; who is owed a row is
                    ``origin`` above the backend's ``cursor``, less the appends
                    under its ``drop_floor`` that lost its bit. (A damaged
                    ``targets`` above the floor therefore loses nothing.)
                    ``crc`` is ``entry_crc`` of seq, session, op, origin and
                    payload. No secondary index: an index is paid for on each insert
                    and each delete of a queue that does little else.
  ``backends``      one row per registered backend: its bit, its ``cursor`` (every
                    entry it owed with ``seq <= cursor`` is settled), its
                    ``drop_floor`` (DROP_OLDEST dropped the appends it owed with
                    ``cursor < seq <= drop_floor`` whose bit ``targets`` lost;
                    those still holding it were taken before the drop and are
                    owed), counters, and ``crc``
                    (``backend_crc`` of all of them). The counters are written
                    lazily; they are exact as of ``counted_through`` (the last seq
                    they account for), and open adds the entries journaled after it.
                    The highest seq ever used is the larger of
                    ``max(counted_through)`` and ``max(entries.seq)``.
  ``payloads``      the payload of an entry of at least ``LargeValues.THRESHOLD``
                    bytes, whose ``entries`` row then holds an empty one: settling
                    an entry for one backend rewrites its row (``targets``), which
                    must not mean rewriting megabytes. Deleted with its entry.
  ``dead_letters``  entries a BEST_EFFORT backend gave up on, kept for inspection
                    (``crc`` and ``origin`` copied from the entry).
  ``quarantine``    damaged rows moved aside per backend, as they were found.
  ``meta``          journal-wide counters (``lost_entries``, ``repaired_rows``).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

__all__ = [
    "APPLICATION_ID",
    "MAX_BACKENDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "Migration",
    "backend_crc",
    "entry_crc",
    "entry_crc_v1",
]

#: "JRNL" in ASCII: marks a SQLite file as a journal_archivist journal.
APPLICATION_ID: Final = 0x4A524E4C
#: Backends one journal knows at a time: each owns one bit of an entry's
#: ``targets`` (a signed 64-bit integer), numbered 0 to 61 (the ``backends.bit``
#: check below).
MAX_BACKENDS: Final = 62

_V1: Final = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE backends (
    bit           INTEGER PRIMARY KEY CHECK (bit BETWEEN 0 AND 61),
    name          TEXT NOT NULL UNIQUE,
    cursor        INTEGER NOT NULL,
    pending       INTEGER NOT NULL DEFAULT 0,
    pending_bytes INTEGER NOT NULL DEFAULT 0,
    delivered     INTEGER NOT NULL DEFAULT 0,
    dropped       INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    quarantined   INTEGER NOT NULL DEFAULT 0,
    counted_through INTEGER NOT NULL
);

CREATE TABLE entries (
    seq         INTEGER PRIMARY KEY,
    session     BLOB NOT NULL,
    op          INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    size        INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    targets     INTEGER NOT NULL
);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY,
    backend     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    session     BLOB NOT NULL,
    op          INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    crc         INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    failed_at   REAL NOT NULL
);

CREATE TABLE quarantine (
    id             INTEGER PRIMARY KEY,
    backend        TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    session        BLOB,
    op             INTEGER,
    payload        BLOB,
    size           INTEGER,
    crc            INTEGER,
    reason         TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""

# Version 2: who is owed an entry is recorded once, under the checksum (``origin``);
# DROP_OLDEST's floor survives restarts; backend rows carry a checksum.
_V2: Final = """
ALTER TABLE entries ADD COLUMN origin INTEGER NOT NULL DEFAULT 0;
UPDATE entries SET origin = targets;
ALTER TABLE dead_letters ADD COLUMN origin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quarantine ADD COLUMN origin INTEGER;
ALTER TABLE backends ADD COLUMN drop_floor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE backends ADD COLUMN crc INTEGER;
CREATE TABLE payloads (
    seq     INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
"""


class Migration(NamedTuple):
    """The SQL that takes a journal to the next version."""

    sql: str
    #: Recompute the checksums of entries, dead letters and backend rows under the
    #: new version's rules (only of rows whose old checksum still matches: a
    #: damaged row must stay damaged).
    reseal: bool = False


#: What takes a journal from version ``n`` (the key) to ``n + 1``.
MIGRATIONS: Final[dict[int, Migration]] = {0: Migration(_V1), 1: Migration(_V2, True)}
SCHEMA_VERSION: Final = len(MIGRATIONS)
#: The tables a journal of the current version has; open refuses one without.
TABLES: Final = frozenset(
    {"meta", "backends", "entries", "payloads", "dead_letters", "quarantine"}
)


_CRC_HEADER: Final = struct.Struct(">Q16sBQ")
_CRC_HEADER_V1: Final = struct.Struct(">Q16sB")


def entry_crc(seq: int, session: bytes, op: int, origin: int, payload: bytes) -> int:
    """The checksum stored with an entry: crc32 of its seq, session, op, origin and
    payload."""
    return zlib.crc32(payload, zlib.crc32(_CRC_HEADER.pack(seq, session, op, origin)))


def entry_crc_v1(seq: int, session: bytes, op: int, payload: bytes) -> int:
    """The checksum of schema version 1 (no origin), checked when migrating."""
    return zlib.crc32(payload, zlib.crc32(_CRC_HEADER_V1.pack(seq, session, op)))


_BACKEND_NUMBERS: Final = struct.Struct(">10q")


def backend_crc(name: str, numbers: tuple[int, ...]) -> int:
    """The checksum of a backend row: its ``name`` and its ten ``numbers`` (bit,
    cursor, the six counters, counted_through, drop_floor: ``BackendRow`` order)."""
    return zlib.crc32(name.encode(), zlib.crc32(_BACKEND_NUMBERS.pack(*numbers)))
