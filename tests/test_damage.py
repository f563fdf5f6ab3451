"""A damaged journal row never crashes or hangs the archivist.

One flipped bit can change a stored value's type (a BLOB read back as TEXT that is
not UTF-8, or as an INTEGER) without ``PRAGMA quick_check`` noticing, or change a
value under its checksum. Each test damages a journal the way such a flip would,
with SQL on the closed file, then opens it and delivers: the damaged entry is
quarantined and counted (or a bookkeeping row repaired and counted), the rest is
delivered, and nothing raises. The longer version is ``tools/torture/bitflip.py``.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import (
    Archivist,
    FailureMode,
    JournalCorrupt,
    Queued,
)
from journal_archivist._reader import Reader
from journal_archivist._schema import APPLICATION_ID, MIGRATIONS, entry_crc_v1
from journal_archivist.testing import MockBackend
from tests.helpers import query, record, registration

if TYPE_CHECKING:
    from pathlib import Path

    from journal_archivist import HealthReport

CONTENTS = ["first", "entry-0001", "entry-0002"]


def execute(path: Path, *statements: str) -> None:
    """Change the closed journal behind the archivist's back."""
    with closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def damage_row(path: Path, table: str, change: str) -> None:
    """``UPDATE table SET change``, NOT NULL constraints notwithstanding (a
    flipped type byte can leave a NULL where none may be)."""
    with closing(sqlite3.connect(path)) as db:
        (schema,) = db.execute(
            "SELECT sql FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()
        db.execute("PRAGMA writable_schema = 1")
        loose = schema.replace("NOT NULL", "")
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (loose, table))
        db.commit()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"UPDATE {table} SET {change}")
        db.execute("PRAGMA writable_schema = 1")
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (schema, table))
        db.commit()


async def backlog(path: Path, session: UUID, *backends: str) -> None:
    """Leave the three ``CONTENTS`` of ``session`` undelivered (seq 1, 2, 3)."""
    names = backends or ("mock",)
    helds = [MockBackend() for _ in names]
    for held in helds:
        held.hold()
    regs = [registration(h, name=n) for h, n in zip(helds, names, strict=True)]
    archivist = await Archivist.open(path, regs)
    for content in CONTENTS:
        await archivist.append_messages(session, [record(session, content)])
    await archivist.shutdown(timeout=0)


async def deliver(path: Path, mock: MockBackend) -> HealthReport:
    """Open the journal, deliver everything, return the health at the end."""
    async with Archivist.open(path, [registration(mock)]) as archivist:
        with anyio.fail_after(10):
            await archivist.wait_drained()
        report = archivist.health()
    assert not report.journal.failed, report.journal.failure
    return report


class TestStoredTypes:
    @pytest.mark.parametrize(
        "damage",
        [
            # The bug report's case: a BLOB read back as TEXT that is not UTF-8.
            "payload = CAST(x'fffe00' AS TEXT)",
            "payload = 12345",  # BLOB -> INTEGER
            "session = CAST(x'ff00ff00ff00ff00ff00ff00ff00ff00' AS TEXT)",
            "op = CAST(x'ff' AS TEXT)",  # INTEGER -> TEXT, not UTF-8
            "op = 1.5",  # INTEGER -> REAL
            "size = CAST(x'c3' AS TEXT)",
            "crc = 2.5",
            "payload = NULL",  # NULL where NOT NULL belongs: quick_check says so
            "size = NULL, targets = NULL",
        ],
    )
    async def test_a_value_of_the_wrong_type_is_quarantined_not_fatal(
        self, journal_path: Path, session: UUID, damage: str
    ) -> None:
        await backlog(journal_path, session)
        damage_row(journal_path, "entries", f"{damage} WHERE seq = 2")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.backends["mock"].quarantined == 1
        assert report.journal.quarantined == 1
        [(seq, reason)] = query(journal_path, "SELECT seq, reason FROM quarantine")
        assert seq == 2
        assert "wrong type" in str(reason) or "mismatch" in str(reason)

    @pytest.mark.parametrize(
        "damage",
        [
            "payload = NULL",  # quick_check lists it: one row's damage, not the file's
            "payload = CAST(x'fffe00' AS TEXT)",
            "payload = 7",
        ],
    )
    async def test_a_damaged_payload_row_is_quarantined_not_fatal(
        self, journal_path: Path, session: UUID, damage: str
    ) -> None:
        # A payload from LargeValues.THRESHOLD bytes lives in a row of its own.
        large = record(session, "L" * (1 << 20))
        held = MockBackend()
        held.hold()
        archivist = await Archivist.open(
            journal_path, [registration(held)], max_record_bytes=2 << 20
        )
        for batch in ([record(session, "first")], [large], [record(session, "last")]):
            await archivist.append_messages(session, batch)
        await archivist.shutdown(timeout=0)
        assert query(journal_path, "SELECT seq FROM payloads") == [(2,)]
        damage_row(journal_path, "payloads", damage)
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["first", "last"]
        assert report.journal.quarantined == 1
        assert query(journal_path, "SELECT seq FROM quarantine") == [(2,)]

    async def test_a_damaged_time_is_not_damage(
        self, journal_path: Path, session: UUID
    ) -> None:
        # enqueued_at only feeds the lag report: the entry is still sound.
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE entries SET enqueued_at = CAST(x'ff' AS TEXT)")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS
        assert report.journal.quarantined == 0

    async def test_a_type_flip_in_a_live_journal_does_not_kill_the_writer(
        self, journal_path: Path, session: UUID
    ) -> None:
        # The damage lands while the archivist runs: the reader meets it then.
        held = MockBackend()
        held.hold()
        reg = registration(held, write_policy=Queued(batch_window_ms=0, max_batch=1))
        async with Archivist.open(journal_path, [reg]) as archivist:
            for content in CONTENTS:
                await archivist.append_messages(session, [record(session, content)])
            await held.wait_held()  # entry 1 in flight, 2 and 3 in memory
            execute(
                journal_path,
                "UPDATE entries SET payload = CAST(x'fffe00' AS TEXT) WHERE seq = 2",
            )
            # Fallen behind: the writer forgets its in-memory copies and reads
            # the journal, as it does after a restart (white box).
            book = archivist._writers[0].book
            book.forget_memory(archivist._journal.last_seq)
            held.release()
            with anyio.fail_after(10):
                await archivist.wait_drained()
            report = archivist.health()
        assert not report.journal.failed
        assert report.journal.quarantined == 1
        assert [r.content_md for r in held.records(session)] == ["first", "entry-0002"]


class TestChecksumCoverage:
    """The checksum covers what says where an entry goes, not just its payload."""

    async def test_an_append_whose_op_turns_into_an_erasure_is_quarantined(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE entries SET op = 2 WHERE seq = 2")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        # Applied as an erasure, it would have erased "first".
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.journal.quarantined == 1

    async def test_an_entry_moved_to_another_session_is_quarantined(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        other = uuid4()
        execute(
            journal_path,
            f"UPDATE entries SET session = x'{other.hex}' WHERE seq = 2",
        )
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert mock.records(other) == []
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.journal.quarantined == 1

    async def test_an_entry_whose_seq_changed_is_quarantined(
        self, journal_path: Path, session: UUID
    ) -> None:
        # A flipped rowid would deliver it out of order, after entry 3.
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE entries SET seq = 10 WHERE seq = 2")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.journal.quarantined == 1

    async def test_an_entry_whose_origin_changed_is_quarantined(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE entries SET origin = origin | 2 WHERE seq = 2")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.journal.quarantined == 1

    async def test_damaged_targets_do_not_decide_who_is_owed_an_entry(
        self, journal_path: Path, session: UUID
    ) -> None:
        # targets only says when a row may go; origin (under the checksum) says
        # who is owed it. A flip that clears a backend's bit loses nothing.
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE entries SET targets = 0 WHERE seq = 2")
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS
        assert report.journal.quarantined == 0
        assert query(journal_path, "SELECT count(*) FROM entries") == [(0,)]


class TestMissingEntries:
    async def test_an_owed_entry_gone_from_the_journal_is_counted_as_lost(
        self, journal_path: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        # A damaged page can lose a row outright (or a flipped origin hide it):
        # the backlog count, kept with the entries, notices.
        await backlog(journal_path, session)
        execute(journal_path, "DELETE FROM entries WHERE seq = 2")
        mock = MockBackend()
        with caplog.at_level(logging.ERROR, logger="journal_archivist"):
            report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["first", "entry-0002"]
        assert report.journal.lost_entries == 1
        assert report.backends["mock"].lag_entries == 0
        assert "1 entries it is owed are missing" in caplog.text
        async with Archivist.open(journal_path, [registration()]) as archivist:
            assert archivist.health().journal.lost_entries == 1  # persisted


class TestBackendRows:
    @pytest.mark.parametrize(
        "damage",
        [
            "cursor = CAST(x'ff' AS TEXT)",  # wrong type: rebuilt from the entries
            "cursor = cursor + 3, pending = 0",  # two values: checksum fails
            "crc = NULL",
            "counted_through = -5",
            "pending_bytes = NULL",  # NULL where NOT NULL belongs
        ],
    )
    async def test_a_damaged_row_is_rebuilt_from_the_entries(
        self, journal_path: Path, session: UUID, damage: str
    ) -> None:
        await backlog(journal_path, session)
        damage_row(journal_path, "backends", damage)
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS
        assert report.journal.repaired_rows == 1
        assert report.backends["mock"].lag_entries == 0
        # Sealed again: the next open finds nothing to repair.
        async with Archivist.open(journal_path, [registration()]) as archivist:
            assert archivist.health().journal.repaired_rows == 1

    async def test_a_rebuilt_row_skips_what_drop_oldest_dropped(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        # What DROP_OLDEST leaves: the bit cleared from an append beyond the
        # cursor, under the floor. Then the row is damaged beyond one bit.
        execute(
            journal_path,
            "UPDATE entries SET targets = 0 WHERE seq = 1",
            "UPDATE backends SET drop_floor = 1, cursor = 0, crc = 7",
        )
        mock = MockBackend()
        await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS[1:]

    async def test_a_repaired_row_whose_name_is_not_registered_is_refused(
        self, journal_path: Path, session: UUID
    ) -> None:
        # Its pending entries would be released if the damaged name were trusted.
        await backlog(journal_path, session)
        execute(
            journal_path,
            "UPDATE backends SET name = 'zzzzz', pending = pending + 2",
        )
        with pytest.raises(JournalCorrupt, match="'zzzzz' is not registered"):
            await Archivist.open(journal_path, [registration()])
        # Nothing was changed: registering the name it shows keeps its entries.
        mock = MockBackend()
        async with Archivist.open(
            journal_path, [registration(mock, name="zzzzz")]
        ) as archivist:
            with anyio.fail_after(10):
                await archivist.wait_drained()
        assert [r.content_md for r in mock.records(session)] == CONTENTS

    async def test_a_name_that_is_not_text_is_refused(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        execute(journal_path, "UPDATE backends SET name = CAST(x'fffe' AS TEXT)")
        with pytest.raises(JournalCorrupt, match="unreadable name"):
            await Archivist.open(journal_path, [registration()])

    @pytest.mark.parametrize(
        "flip",
        [
            "cursor = cursor | 64",  # upwards: it would skip entries
            "name = 'lock'",  # 'mock' ^ 0x01: another valid name
            "name = CAST(x'6d6fe36b' AS TEXT)",  # 'c' ^ 0x80: not UTF-8
            "name = 'mo#k'",  # 'c' ^ 0x40: a character no name may have
            # SQLite keeps 3 in one byte: its top bit flipped reads -125.
            "pending = pending - 128",
        ],
    )
    async def test_one_flipped_bit_is_undone_exactly(
        self,
        journal_path: Path,
        session: UUID,
        flip: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # Rebuilt from the entries instead, its counters would start again from 0.
        await backlog(journal_path, session)
        assert query(journal_path, "SELECT pending FROM backends") == [(3,)]
        execute(journal_path, f"UPDATE backends SET {flip}")
        mock = MockBackend()
        with caplog.at_level(logging.ERROR, logger="journal_archivist"):
            report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS
        assert report.journal.repaired_rows == 1
        assert "one flipped bit, corrected" in caplog.text


class TestOtherTables:
    async def test_damaged_meta_and_quarantine_rows_do_not_stop_open(
        self, journal_path: Path, session: UUID
    ) -> None:
        await backlog(journal_path, session)
        execute(
            journal_path,
            "INSERT INTO meta (key, value) VALUES ('lost_entries', 2)",
            "UPDATE meta SET value = CAST(x'ff' AS TEXT)",
            "INSERT INTO quarantine (backend, seq, reason, quarantined_at)"
            " VALUES (CAST(x'ff' AS TEXT), CAST(x'fe' AS TEXT), 'x', 0)",
        )
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == CONTENTS
        assert report.journal.lost_entries == 0  # unreadable: reset, not guessed
        assert report.journal.repaired_rows == 1

    async def test_dead_letters_are_read_back_checked(
        self, journal_path: Path, session: UUID
    ) -> None:
        mock = MockBackend()
        poison, good = record(session, "poison"), record(session, "good")
        mock.poison(poison.message_id)
        reg = registration(mock, failure_mode=FailureMode.BEST_EFFORT)
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(session, [poison])
            await archivist.append_messages(session, [good])
            with anyio.fail_after(10):
                await archivist.wait_drained()
        execute(
            journal_path,
            "INSERT INTO dead_letters (backend, seq, session, op, payload, crc,"
            " origin, enqueued_at, error, attempts, failed_at)"
            " SELECT backend, seq, session, op, payload, crc, origin, enqueued_at,"
            " error, attempts, failed_at FROM dead_letters",
            "INSERT INTO dead_letters (backend, seq, session, op, payload, crc,"
            " origin, enqueued_at, error, attempts, failed_at)"
            " SELECT backend, seq, session, op, payload, crc, origin, enqueued_at,"
            " error, attempts, failed_at FROM dead_letters WHERE id = 1",
            "UPDATE dead_letters SET payload = CAST(x'fffe' AS TEXT),"
            " backend = CAST(x'ff' AS TEXT) WHERE id = 2",
            # Not the rowid here: a seq can be of any type, or NULL.
            "UPDATE dead_letters SET seq = CAST(x'ff' AS TEXT) WHERE id = 3",
        )
        from journal_archivist._journal_file import connect

        reader = Reader(
            str(journal_path), await connect(str(journal_path), synchronous="NORMAL")
        )
        try:
            sound, damaged, no_seq = await reader.dead_letters()
        finally:
            await reader.close()
        assert sound.backend == "mock"
        assert sound.entry.damage is None
        assert sound.error is not None
        assert "poison" in sound.error
        assert damaged.backend is None
        assert damaged.entry.damage == "stored with the wrong type: payload"
        assert no_seq.entry.damage == "stored with the wrong type: seq"


class TestMigration:
    async def test_a_version_1_journal_is_resealed_and_delivered(
        self, journal_path: Path, session: UUID
    ) -> None:
        good, bad = record(session, "good"), record(session, "bad")
        from journal_archivist._records import encode_append

        rows = []
        for seq, rec in ((1, good), (2, bad)):
            payload = encode_append(session, [rec], max_record_bytes=1 << 20)
            crc = entry_crc_v1(seq, session.bytes, 1, payload)
            if rec is bad:
                crc ^= 1  # damaged before the migration: must stay damaged
            rows.append((seq, session.bytes, 1, payload, len(payload), crc, 0.0, 1))
        with closing(sqlite3.connect(journal_path)) as db:
            db.executescript(MIGRATIONS[0].sql)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("PRAGMA user_version = 1")
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO backends (bit, name, cursor, pending, pending_bytes,"
                " counted_through) VALUES (0, 'mock', 0, 2, ?, 2)",
                (rows[0][4] + rows[1][4],),
            )
            # A dead letter's seq is not its rowid: it can hold text (not UTF-8).
            db.execute(
                "INSERT INTO dead_letters VALUES (1, 'mock', CAST(x'ff' AS TEXT),"
                " ?, 1, x'00', 0, 0.0, 'gave up', 1, 0.0)",
                (session.bytes,),
            )
            db.commit()
        journal_path.chmod(0o600)  # sqlite3 made it with the umask's mode
        mock = MockBackend()
        report = await deliver(journal_path, mock)
        assert [r.content_md for r in mock.records(session)] == ["good"]
        assert report.journal.quarantined == 1
        assert report.journal.repaired_rows == 0
        assert query(journal_path, "PRAGMA user_version") == [(2,)]
