"""The journal's stored format: SQL schema, migrations, and the entry checksum.

Rules:
- ``PRAGMA application_id`` marks a file as ours; ``PRAGMA user_version`` is the
  schema version. ``MIGRATIONS[n]`` upgrades a journal from version ``n`` to
  ``n + 1`` and runs inside one transaction with the version bump.
- ``auto_vacuum`` must be chosen before the first table exists, so it is set by the
  first migration's caller, not by a migration.
- Tables:
  ``entries``       one row per journaled operation; ``targets`` is a bit set of the
                    backends that still owe it; ``crc`` is ``entry_crc`` of its
                    seq, session, op and payload. No secondary index: an index is
                    paid for on each insert and each delete of a queue that does
                    little else.
  ``backends``      one row per registered backend: its bit, its ``cursor`` (every
                    entry it owed with ``seq <= cursor`` is settled) and counters.
                    The counters are written lazily; they are exact as of
                    ``counted_through`` (the last seq they account for), and open
                    adds the entries journaled after it. The highest seq ever used is
                    the larger of ``max(counted_through)`` and ``max(entries.seq)``.
  ``dead_letters``  entries a BEST_EFFORT backend gave up on, kept for inspection.
  ``quarantine``    rows whose checksum did not match, moved aside per backend.
  ``meta``          journal-wide counters (``lost_entries``).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "entry_crc"]

#: "JRNL" in ASCII: marks a SQLite file as a journal_archivist journal.
APPLICATION_ID: Final = 0x4A524E4C

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

#: Statements that take a journal from version ``n`` (the key) to ``n + 1``.
MIGRATIONS: Final[dict[int, str]] = {0: _V1}
SCHEMA_VERSION: Final = len(MIGRATIONS)


_CRC_HEADER: Final = struct.Struct(">Q16sB")


def entry_crc(seq: int, session: bytes, op: int, payload: bytes) -> int:
    """The checksum stored with an entry: crc32 of its seq, session, op, payload."""
    return zlib.crc32(payload, zlib.crc32(_CRC_HEADER.pack(seq, session, op)))
