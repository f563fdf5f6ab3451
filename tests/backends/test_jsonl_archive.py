"""JsonlArchive: one JSON Lines file per session, durable, idempotent, repairable."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import msgspec
import pytest

from journal_archivist import Archivist, BackendError
from journal_archivist.backends import SessionGroup
from journal_archivist.backends._codec import encode_record
from journal_archivist.backends.jsonl import JsonlArchive
from journal_archivist.testing import check_backend
from tests.helpers import record, records, registration, texts


def lines_of(archive: JsonlArchive, session: UUID) -> list[bytes]:
    with open(archive.path_of(session), "rb") as file:
        return file.read().splitlines(keepends=True)


def append_to(path: str, data: bytes) -> None:
    """Append ``data`` to a file by hand, as a crash or an editor would."""
    with open(path, "ab") as file:
        file.write(data)


# A record of some other session, as one line; the shapes below are made from it.
_STRANGER = record(uuid4(), "caf\u00e9")
_STRANGER_LINE = encode_record(_STRANGER)

#: Newline-ended lines that are not a record of the file's session, with what the
#: error says about each.
BAD_LINES = [
    # JSON, but not a record
    pytest.param(b"12345\n", "Expected `object`, got `int`", id="a-number"),
    pytest.param(b"[1, 2]\n", "Expected `object`, got `array`", id="a-list"),
    pytest.param(b"null\n", "Expected `object`, got `null`", id="null"),
    pytest.param(b"\n", "Input data was truncated", id="an-empty-line"),
    pytest.param(
        _STRANGER_LINE.replace(b'"role":"user",', b"") + b"\n",
        "Object missing required field `role`",
        id="a-record-missing-a-field",
    ),
    pytest.param(
        _STRANGER_LINE.replace(b'"role":"user"', b'"role":5') + b"\n",
        r"Expected `str`, got `int` - at `\$.role`",
        id="a-field-of-the-wrong-type",
    ),
    # bytes that are not UTF-8 inside a string
    pytest.param(
        _STRANGER_LINE.replace("\u00e9".encode(), b"\xff") + b"\n",
        "Invalid UTF-8 encoded string",
        id="invalid-utf-8",
    ),
    # zeros where a block never reached the disk, and the next line's newline
    pytest.param(
        b"\0" * 100 + b"\n", "malformed.*; it holds NUL bytes", id="nul-filled"
    ),
    # nested deeper than msgspec decodes (RecursionError, not a DecodeError)
    pytest.param(
        _STRANGER_LINE.replace(
            b'"metadata":null', b'"metadata":' + b"[" * 5000 + b"]" * 5000
        )
        + b"\n",
        "maximum recursion depth exceeded",
        id="nested-too-deep",
    ),
    # a good record, but of another session: never returned as this one's
    pytest.param(
        _STRANGER_LINE + b"\n",
        f"a record of session {_STRANGER.session}, not of",
        id="another-sessions-record",
    ),
]


async def test_meets_the_backend_contract(directory: Path) -> None:
    await check_backend(lambda: JsonlArchive(directory))


class TestFormat:
    async def test_one_line_per_record_in_a_file_named_after_the_session(
        self, directory: Path, session: UUID
    ) -> None:
        written = records(session, 3)
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, written)
        assert os.listdir(directory) == [f"{session}.jsonl"]
        path = directory / f"{session}.jsonl"
        assert path.read_bytes() == b"".join(encode_record(r) + b"\n" for r in written)

    async def test_paths_come_only_from_the_session_uuid(
        self, tmp_path: Path, directory: Path, session: UUID
    ) -> None:
        hostile = record(
            session,
            "../../escape/../x",
            author="../../../etc/passwd",
            metadata={"path": "/tmp/evil", "name": "..\\..\\evil.jsonl"},
            content_parts=["/", "../", "\n", "a/b/c"],
        )
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, [hostile])
            assert await archive.read_session(session) == [hostile]
        assert sorted(os.listdir(tmp_path)) == ["archive"]
        assert os.listdir(directory) == [f"{session}.jsonl"]
        # The record is one line: JSON escapes the newline inside it.
        assert len((directory / f"{session}.jsonl").read_bytes().splitlines()) == 1

    async def test_session_must_be_a_uuid(self, directory: Path) -> None:
        async with JsonlArchive(directory) as archive:
            with pytest.raises(
                TypeError, match=r"session must be a uuid\.UUID, got str"
            ):
                await archive.read_session("../../etc")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"session must be a uuid\.UUID"):
                await archive.delete_session("x")  # type: ignore[arg-type]
        assert not directory.exists()

    async def test_a_record_of_another_session_is_refused_for_good(
        self, directory: Path, session: UUID
    ) -> None:
        stranger = record(uuid4())
        async with JsonlArchive(directory) as archive:
            with pytest.raises(BackendError, match="belongs to session") as caught:
                await archive.append_messages(session, [stranger])
        assert caught.value.retryable is False

    async def test_a_record_that_cannot_be_encoded_is_refused_for_good(
        self, directory: Path, session: UUID
    ) -> None:
        # Only a direct caller can send one: the journal refuses such records.
        bad = record(session, "\ud800")  # a lone surrogate has no UTF-8 form
        other = uuid4()
        batch = [
            SessionGroup(other, tuple(records(other, 2))),
            SessionGroup(session, (record(session), bad)),
        ]
        async with JsonlArchive(directory) as archive:
            match = f"cannot archive record {bad.message_id} of session {session}"
            with pytest.raises(BackendError, match=match) as caught:
                await archive.write_batch(batch)
        assert caught.value.retryable is False
        assert not directory.exists()  # nothing of the batch was written

    async def test_files_are_0600_and_a_created_directory_0700(
        self, directory: Path, session: UUID
    ) -> None:
        old = os.umask(0)  # a permissive umask must not widen the modes
        try:
            async with JsonlArchive(directory) as archive:
                await archive.append_messages(session, records(session, 1))
        finally:
            os.umask(old)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        mode = (directory / f"{session}.jsonl").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600


class TestIdempotence:
    async def test_the_same_batch_twice_is_archived_once(
        self, directory: Path, session: UUID
    ) -> None:
        batch = [SessionGroup(session, tuple(records(session, 4)))]
        async with JsonlArchive(directory) as archive:
            await archive.write_batch(batch)
            await archive.write_batch(batch)
            assert len(lines_of(archive, session)) == 4

    async def test_a_new_instance_skips_what_the_file_already_holds(
        self, directory: Path, session: UUID
    ) -> None:
        written = records(session, 5)
        batch = [SessionGroup(session, tuple(written))]
        archive = JsonlArchive(directory)
        await archive.write_batch(batch)
        await archive.aclose()
        async with JsonlArchive(directory) as restarted:
            await restarted.write_batch(batch)  # redelivered after a restart
            assert texts(await restarted.read_session(session)) == texts(written)
            assert len(lines_of(restarted, session)) == 5

    async def test_a_file_changed_behind_the_cache_is_read_again(
        self, directory: Path, session: UUID
    ) -> None:
        first, second = records(session, 2)
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, [first])
            async with JsonlArchive(directory) as other:
                await other.append_messages(session, [second])
            await archive.append_messages(session, [first, second])
            assert await archive.read_session(session) == [first, second]
            assert len(lines_of(archive, session)) == 2

    async def test_read_session_drops_duplicate_lines(
        self, directory: Path, session: UUID
    ) -> None:
        first, second = records(session, 2)
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, [first, second])
            append_to(archive.path_of(session), encode_record(first) + b"\n")
            assert await archive.read_session(session) == [first, second]

    async def test_the_cache_stays_within_its_bound_and_stays_idempotent(
        self, directory: Path
    ) -> None:
        sessions = [uuid4() for _ in range(12)]
        batches = [
            [SessionGroup(s, tuple(records(s, 3, prefix=f"{i}-")))]
            for i, s in enumerate(sessions)
        ]
        async with JsonlArchive(directory, max_cached_sessions=3) as archive:
            for batch in batches:
                await archive.write_batch(batch)
                assert archive.cached_sessions <= 3
            for batch in batches:  # most of these were evicted: read from the file
                await archive.write_batch(batch)
                assert archive.cached_sessions <= 3
            for session in sessions:
                assert len(lines_of(archive, session)) == 3
                assert len(await archive.read_session(session)) == 3


class TestOrderAndErasure:
    async def test_records_read_in_append_order_across_batches(
        self, directory: Path, session: UUID
    ) -> None:
        a, b, c = (records(session, 3, prefix=p) for p in "abc")
        other = uuid4()
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, a)
            await archive.write_batch(
                [
                    SessionGroup(session, tuple(b)),
                    SessionGroup(other, tuple(records(other, 2))),
                    SessionGroup(session, tuple(c)),
                ]
            )
            assert texts(await archive.read_session(session)) == texts(a + b + c)

    async def test_an_erasing_group_erases_then_writes_its_records(
        self, directory: Path, session: UUID
    ) -> None:
        old, new = records(session, 3, "old"), records(session, 2, "new")
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, old)
            await archive.write_batch([SessionGroup(session, tuple(new), erase=True)])
            assert texts(await archive.read_session(session)) == ["new0", "new1"]
            # Erased ids are forgotten: an old record appended again is new.
            await archive.append_messages(session, old[:1])
            assert texts(await archive.read_session(session)) == [
                "new0",
                "new1",
                "old0",
            ]

    async def test_erasing_an_unknown_session_is_a_no_op(
        self, directory: Path, session: UUID
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.delete_session(session)
            await archive.write_batch([SessionGroup(session, (), erase=True)])
            assert await archive.read_session(session) == []
            assert os.listdir(directory) == []

    async def test_groups_of_one_session_apply_in_the_order_given(
        self, directory: Path, session: UUID
    ) -> None:
        a, b, c = (records(session, 2, prefix=p) for p in "abc")
        async with JsonlArchive(directory) as archive:
            await archive.write_batch(
                [
                    SessionGroup(session, tuple(a)),
                    SessionGroup(session, tuple(b), erase=True),
                    SessionGroup(session, tuple(c)),
                ]
            )
            assert texts(await archive.read_session(session)) == texts(b + c)

    async def test_delete_session_removes_only_that_file(
        self, directory: Path, session: UUID
    ) -> None:
        kept = uuid4()
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 2))
            await archive.append_messages(kept, records(kept, 2))
            await archive.delete_session(session)
            assert os.listdir(directory) == [f"{kept}.jsonl"]
            assert len(await archive.read_session(kept)) == 2

    async def test_a_deleted_file_is_emptied_for_whoever_still_has_it_open(
        self, directory: Path, session: UUID
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 2))
            reader = os.open(archive.path_of(session), os.O_RDONLY)
            try:
                await archive.delete_session(session)
                assert os.read(reader, 1024) == b""
            finally:
                os.close(reader)


class TestTornTail:
    @pytest.mark.parametrize(
        "tail",
        [
            # half a line: the crash came in the middle of a write
            pytest.param(b'{"version":1,"message_id":"01', id="fragment"),
            # a whole record but no newline: not acknowledged either
            pytest.param(None, id="record-without-newline"),
            # zeros where unsynced data never reached the disk, then a newline
            pytest.param(b"\x00" * 40 + b"\n", id="undecodable-last-line"),
            # a power cut after the file grew: its last block reads as zeros
            pytest.param(b"\x00" * 4096, id="nul-filled-block"),
            pytest.param(
                b'{"version":1,"mess' + b"\x00" * 4000, id="fragment-then-nuls"
            ),
            # a whole last line of any other bad shape is torn the same way
            *[pytest.param(p.values[0], id=f"last-line-{p.id}") for p in BAD_LINES],
        ],
    )
    async def test_a_torn_last_line_is_cut_and_the_record_redelivered(
        self,
        directory: Path,
        session: UUID,
        tail: bytes | None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        acknowledged = records(session, 2)
        torn = record(session, "torn")
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, acknowledged)
            path = archive.path_of(session)
        good = Path(path).read_bytes()
        tail = encode_record(torn) if tail is None else tail
        append_to(path, tail)

        async with JsonlArchive(directory) as restarted:
            # Reading skips the torn line and changes nothing.
            assert await restarted.read_session(session) == acknowledged
            assert Path(path).read_bytes() == good + tail
            with caplog.at_level(logging.WARNING, "journal_archivist"):
                await restarted.append_messages(session, [torn])
            assert await restarted.read_session(session) == [*acknowledged, torn]
        assert Path(path).read_bytes() == good + encode_record(torn) + b"\n"
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert f"cut {len(tail)} bytes" in warning.getMessage()
        assert path in warning.getMessage()

    async def test_a_corrupt_middle_line_is_refused_for_good_naming_the_line(
        self, directory: Path, session: UUID
    ) -> None:
        written = records(session, 3)
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, written)
            path = archive.path_of(session)
        lines = Path(path).read_bytes().splitlines(keepends=True)
        lines[1] = b'{"not": "a record"}\n'
        damaged = b"".join(lines)
        Path(path).write_bytes(damaged)
        other = uuid4()

        async with JsonlArchive(directory) as restarted:
            match = rf"{path}: line 2 \(at byte {len(lines[0])}\) is corrupt"
            with pytest.raises(BackendError, match=match) as reading:
                await restarted.read_session(session)
            with pytest.raises(BackendError, match=match) as appending:
                await restarted.append_messages(session, [record(session)])
            assert reading.value.retryable is False
            assert appending.value.retryable is False
            assert Path(path).read_bytes() == damaged
            # Other sessions are unaffected, and erasure still works.
            await restarted.append_messages(other, records(other, 1))
            await restarted.delete_session(session)
            assert await restarted.read_session(session) == []

    @pytest.mark.parametrize(("line", "detail"), BAD_LINES)
    async def test_a_bad_middle_line_of_any_shape_is_refused_naming_file_and_offset(
        self, directory: Path, session: UUID, line: bytes, detail: str
    ) -> None:
        first, second = (encode_record(r) + b"\n" for r in records(session, 2))
        directory.mkdir()
        async with JsonlArchive(directory) as archive:
            path = archive.path_of(session)
            damaged = first + line + second
            Path(path).write_bytes(damaged)
            os.chmod(path, 0o600)  # as the archive makes its files
            match = (
                rf"{re.escape(path)}: line 2 \(at byte {len(first)}\) is corrupt and"
                rf" cannot be repaired automatically \(.*{detail}"
            )
            with pytest.raises(BackendError, match=match) as reading:
                await archive.read_session(session)
            with pytest.raises(BackendError, match=match) as appending:
                await archive.append_messages(session, [record(session)])
            assert reading.value.retryable is appending.value.retryable is False
            assert Path(path).read_bytes() == damaged

    async def test_a_file_of_zeros_reads_empty_and_is_cut_on_the_next_write(
        self, directory: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Created, then a power cut kept its new size but none of its data.
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
            path = archive.path_of(session)
            Path(path).write_bytes(b"\0" * 8192)
            os.chmod(path, 0o600)  # as the archive made it
            assert await archive.read_session(session) == []
            recs = records(session, 2)
            with caplog.at_level(logging.WARNING, "journal_archivist"):
                await archive.append_messages(session, recs)
            assert await archive.read_session(session) == recs
        assert Path(path).read_bytes() == b"".join(
            encode_record(r) + b"\n" for r in recs
        )
        assert "cut 8192 bytes" in caplog.text

    async def test_zeros_inside_an_unacknowledged_write_name_where_to_cut(
        self, directory: Path, session: UUID
    ) -> None:
        # A power loss during a write of three lines, never acknowledged: a page in
        # its middle never reached the disk (zeros), its last line did.
        acknowledged, lost = records(session, 2), records(session, 3, "lost")
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, acknowledged)
            path = archive.path_of(session)
        good = Path(path).read_bytes()
        first, second, third = (encode_record(r) + b"\n" for r in lost)
        hole = b"\0" * len(first[10:] + second[:10])
        damaged = good + first[:10] + hole + second[10:] + third
        Path(path).write_bytes(damaged)

        async with JsonlArchive(directory) as restarted:
            # It cannot tell this from damage to acknowledged lines: it refuses...
            offset = len(good)
            match = (
                rf"line 3 \(at byte {offset}\) is corrupt .*NUL bytes.*"
                rf"truncate the file to {offset} bytes"
            )
            with pytest.raises(BackendError, match=match) as caught:
                await restarted.append_messages(session, lost)  # the redelivery
            assert caught.value.retryable is False
            assert Path(path).read_bytes() == damaged
            # ...and the operator's cut, as the message says, lets it through.
            os.truncate(path, offset)
            await restarted.append_messages(session, lost)
            assert await restarted.read_session(session) == acknowledged + lost


class TestDurability:
    @pytest.fixture
    def fsyncs(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """Every fsync, as the path of the file or directory it synced."""
        if not os.path.isdir("/proc/self/fd"):
            pytest.skip("needs /proc/self/fd to name what an fsync synced")
        synced: list[str] = []
        lock = threading.Lock()
        real = os.fsync

        def fsync(fd: Any) -> None:
            with lock:
                synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        return synced

    async def test_each_touched_file_is_synced_once_per_batch(
        self, directory: Path, fsyncs: list[str]
    ) -> None:
        sessions = [uuid4() for _ in range(3)]
        async with JsonlArchive(directory) as archive:
            await archive.health_check()  # creates the directory
            fsyncs.clear()
            batch = [
                SessionGroup(s, tuple(records(s, 2, prefix=f"{i}-{n}")))
                for n in range(2)
                for i, s in enumerate(sessions)
            ]
            await archive.write_batch(batch)
            files = sorted(archive.path_of(s) for s in sessions)
            # Every file once, then the directory once (the files are new).
            assert sorted(fsyncs[:-1]) == files
            assert fsyncs[-1] == str(directory)

            fsyncs.clear()
            more = [SessionGroup(s, tuple(records(s, 1))) for s in sessions]
            await archive.write_batch(more)
            assert sorted(fsyncs) == files  # no file created: no directory sync

            fsyncs.clear()
            await archive.write_batch(more)  # all already there, and synced
            assert fsyncs == []

    async def test_a_restarted_instance_syncs_what_it_finds_before_acknowledging(
        self, directory: Path, session: UUID, fsyncs: list[str]
    ) -> None:
        # A crashed writer may have left lines in the page cache, never synced, and
        # created the file without syncing the directory.
        batch = [SessionGroup(session, tuple(records(session, 2)))]
        async with JsonlArchive(directory) as archive:
            await archive.write_batch(batch)
        fsyncs.clear()
        async with JsonlArchive(directory) as restarted:
            await restarted.write_batch(batch)
            assert fsyncs == [restarted.path_of(session), str(directory)]
            fsyncs.clear()
            await restarted.write_batch(batch)  # now known synced, both
            assert fsyncs == []

    @pytest.mark.parametrize(
        "failure",
        [
            # a new session's write fails: the rollback empties its file, which stays
            "write-of-a-new-file",
            # [erase A, append B] fails on B, after A's file was unlinked
            "write-after-an-erasure",
            # an erasure's directory fsync fails: the file is already gone
            "directory-sync-after-an-erasure",
        ],
    )
    async def test_the_retry_of_a_failed_batch_syncs_the_directory_it_changed(
        self,
        directory: Path,
        session: UUID,
        fsyncs: list[str],
        monkeypatch: pytest.MonkeyPatch,
        failure: str,
    ) -> None:
        other = uuid4()
        real_writev, recording_fsync = os.writev, os.fsync

        def fill_the_disk(fd: int, buffers: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fail_directory_fsyncs(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            recording_fsync(fd)

        async with JsonlArchive(directory) as archive:
            await archive.append_messages(other, records(other, 1))
            if failure == "write-of-a-new-file":
                batch = [SessionGroup(session, tuple(records(session, 1)))]
            else:
                await archive.append_messages(session, records(session, 1))
                batch = [SessionGroup(session, (), erase=True)]
            if failure == "write-after-an-erasure":
                batch.append(SessionGroup(other, tuple(records(other, 1, "n"))))
            if failure.startswith("write"):
                monkeypatch.setattr(os, "writev", fill_the_disk)
            else:
                monkeypatch.setattr(os, "fsync", fail_directory_fsyncs)
            with pytest.raises(BackendError, match=r"ENOSPC|EIO"):
                await archive.write_batch(batch)
            monkeypatch.setattr(os, "writev", real_writev)
            monkeypatch.setattr(os, "fsync", recording_fsync)

            fsyncs.clear()
            await archive.write_batch(batch)  # the redelivery
            assert fsyncs[-1] == str(directory)
            fsyncs.clear()
            await archive.write_batch(batch)  # once synced, never again
            assert fsyncs == []

    async def test_a_created_directory_is_synced_into_its_parent_even_after_a_failure(
        self,
        tmp_path: Path,
        directory: Path,
        fsyncs: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        recording_fsync = os.fsync

        def fail_parent_fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            recording_fsync(fd)

        async with JsonlArchive(directory) as archive:
            monkeypatch.setattr(os, "fsync", fail_parent_fsync)
            with pytest.raises(BackendError, match="EIO"):
                await archive.health_check()
            monkeypatch.setattr(os, "fsync", recording_fsync)
            assert directory.is_dir()  # created, but not yet durably
            await archive.health_check()
            assert fsyncs == [str(tmp_path)]

    async def test_removing_a_file_syncs_the_directory(
        self, directory: Path, session: UUID, fsyncs: list[str]
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            fsyncs.clear()
            await archive.delete_session(session)
            assert fsyncs == [str(directory)]
            fsyncs.clear()
            await archive.delete_session(session)  # nothing to remove
            assert fsyncs == []

    async def test_short_writes_still_write_every_line_whole(
        self, directory: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A writev may write less than asked, ending anywhere, even mid-line.
        real_write = os.write

        def write_seven_bytes(fd: int, buffers: Any) -> int:
            data = b"".join(bytes(buffer) for buffer in buffers)
            return real_write(fd, data[:7])

        recs = records(session, 3, "short")
        async with JsonlArchive(directory) as archive:
            monkeypatch.setattr(os, "writev", write_seven_bytes)
            await archive.append_messages(session, recs)
            monkeypatch.undo()
            assert await archive.read_session(session) == recs
            lines = Path(archive.path_of(session)).read_bytes().split(b"\n")
        assert lines[-1] == b""
        assert [msgspec.json.decode(line)["content_md"] for line in lines[:-1]] == [
            "short0",
            "short1",
            "short2",
        ]

    async def test_a_failed_write_is_rolled_back_and_redelivered_once(
        self, directory: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first, second = records(session, 2, "a"), records(session, 2, "b")
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, first)
            before = Path(archive.path_of(session)).read_bytes()
            real_write, real_writev = os.write, os.writev

            def write_half_then_fill_the_disk(fd: int, buffers: Any) -> int:
                # Short writes that end in the middle of a line, then a full disk.
                data = b"".join(bytes(buffer) for buffer in buffers)
                if len(data) > 1:
                    return real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "writev", write_half_then_fill_the_disk)
            with pytest.raises(BackendError, match="ENOSPC") as caught:
                await archive.append_messages(session, second)
            assert caught.value.retryable is True
            assert Path(archive.path_of(session)).read_bytes() == before
            monkeypatch.setattr(os, "writev", real_writev)
            await archive.append_messages(session, second)  # the redelivery
            assert await archive.read_session(session) == first + second


class TestHealthAndErrors:
    async def test_health_check_creates_a_missing_directory(
        self, directory: Path
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
        assert directory.is_dir()
        assert os.listdir(directory) == []  # the probe file is gone

    @pytest.mark.parametrize(
        "make_broken",
        [
            # the directory path is taken by a regular file
            pytest.param(lambda d: d.write_bytes(b"x") and d, id="path-is-a-file"),
            # the parent is missing: a mount point that is not there is not created
            pytest.param(lambda d: d / "missing" / "archive", id="parent-missing"),
        ],
    )
    async def test_an_unusable_directory_is_a_retryable_error(
        self, directory: Path, session: UUID, make_broken: Any
    ) -> None:
        where = make_broken(directory)
        async with JsonlArchive(where) as archive:
            with pytest.raises(BackendError, match=str(where)) as health:
                await archive.health_check()
            with pytest.raises(BackendError) as writing:
                await archive.append_messages(session, records(session, 1))
        assert health.value.retryable is True
        assert writing.value.retryable is True

    @pytest.mark.skipif(
        os.geteuid() == 0, reason="root ignores permission bits: nothing to refuse"
    )
    async def test_a_read_only_directory_is_a_retryable_error(
        self, directory: Path, session: UUID
    ) -> None:
        directory.mkdir(mode=0o500)
        try:
            async with JsonlArchive(directory) as archive:
                with pytest.raises(BackendError, match="EACCES") as caught:
                    await archive.health_check()
            assert caught.value.retryable is True
        finally:
            directory.chmod(0o700)

    async def test_the_directory_comes_back_after_it_was_fixed(
        self, directory: Path, session: UUID
    ) -> None:
        directory.write_bytes(b"in the way")
        async with JsonlArchive(directory) as archive:
            with pytest.raises(BackendError):
                await archive.append_messages(session, records(session, 1))
            directory.unlink()  # the operator's fix
            await archive.health_check()
            await archive.append_messages(session, records(session, 1))
            assert len(await archive.read_session(session)) == 1

    async def test_repr_shows_the_directory(self, directory: Path) -> None:
        archive = JsonlArchive(directory, max_cached_sessions=7)
        assert (
            repr(archive) == f"JsonlArchive({str(directory)!r}, max_cached_sessions=7)"
        )
        assert archive.directory == str(directory)

    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "match"),
        [
            # bytes paths are not supported
            ((b"/tmp/x",), {}, TypeError, "directory must be a str or os.PathLike"),
            ((None,), {}, TypeError, "directory must be a str"),
            (("",), {}, ValueError, "directory must not be empty"),
            # a bool is not a count
            (("d",), {"max_cached_sessions": True}, TypeError, "max_cached_sessions"),
            (("d",), {"max_cached_sessions": 0}, ValueError, "at least 1, got 0"),
            (("d",), {"fsync_threads": 2.0}, TypeError, "fsync_threads must be an int"),
            (("d",), {"fsync_threads": 0}, ValueError, "between 1 and 64, got 0"),
        ],
    )
    def test_bad_arguments_are_named(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str
    ) -> None:
        with pytest.raises(error, match=match):
            JsonlArchive(*args, **kwargs)


class TestOwnedPaths:
    def test_the_directory_is_owned_with_symlinks_resolved(
        self, tmp_path: Path
    ) -> None:
        real = tmp_path / "real"
        real.mkdir()
        (tmp_path / "link").symlink_to(real)
        want = (os.path.realpath(real / "archive"),)
        # Through a symlinked parent, to a directory not created yet...
        assert JsonlArchive(tmp_path / "link" / "archive").owned_paths() == want
        # ...and through a symlink to the directory itself.
        (real / "archive").mkdir()
        (tmp_path / "to-archive").symlink_to(real / "archive")
        assert JsonlArchive(tmp_path / "to-archive").owned_paths() == want

    def test_a_relative_directory_is_owned_as_an_absolute_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        archive = JsonlArchive("archive")
        monkeypatch.chdir("/")  # made absolute when constructed, not when asked
        assert archive.owned_paths() == (os.path.realpath(tmp_path / "archive"),)


async def test_an_archivist_delivers_to_it_and_reads_back(
    journal_path: Path, directory: Path, session: UUID
) -> None:
    archive = JsonlArchive(directory)
    other = uuid4()
    reg = registration(archive, name="files")
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, records(session, 3))
        await archivist.append_messages(other, records(other, 2))
        await archivist.append_messages(session, records(session, 2, prefix="n"))
        with anyio.fail_after(10):
            await archivist.wait_drained()
        got = await archivist.read_session(session)
        assert texts(got) == ["m0", "m1", "m2", "n0", "n1"]
    # What was acknowledged is in the files after shutdown, read by a new instance.
    async with JsonlArchive(directory) as reopened:
        assert texts(await reopened.read_session(session)) == texts(got)
        assert len(await reopened.read_session(other)) == 2


async def test_aclose_does_not_wait_for_a_batch_stuck_in_the_disk(
    tmp_path: Path,
) -> None:
    archive = JsonlArchive(tmp_path / "archive")
    held, stuck = threading.Event(), threading.Event()

    def batch_in_a_hung_disk() -> None:
        with archive._lock:  # as a batch's worker thread holds it
            held.set()
            stuck.wait(timeout=2.0)  # the disk "returns" after 2 s at the latest

    holder = threading.Thread(target=batch_in_a_hung_disk)
    holder.start()
    try:
        held.wait()
        started = anyio.current_time()
        with anyio.move_on_after(0.2):
            await archive.aclose()
        # Waiting for the lock would take the full 2 s.
        assert anyio.current_time() - started < 1.0
    finally:
        stuck.set()
        holder.join()
