"""JsonlArchive against a hostile neighbour (issue 8): what it refuses to follow or
touch, how many files it holds open, and what characters its lines may hold.

Every test uses real files under ``tmp_path``. Tests of another owner need root
(CI runs as root): they ``chown`` a file to uid 65534 (nobody).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
import msgspec
import pytest
from hypothesis import given, strategies as st

from journal_archivist import (
    Archivist,
    BackendError,
    MessageRecord,
    Queued,
)
from journal_archivist.backends import SessionGroup, jsonl
from journal_archivist.backends._codec import decode_record, encode_record
from journal_archivist.backends._jsonl_files import (
    PROBE_PREFIX,
    encode_line,
    escape_line_breaks,
)
from journal_archivist.backends.jsonl import MAX_OPEN_FILES, JsonlArchive
from tests.helpers import NOBODY, needs_root, record, records, registration
from tools.security.jsonl import Gated, counting_session_files, fd_limit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

#: What a victim file holds: no newline, so the old torn-tail repair cut it to 0.
VICTIM = b"someone else's file, not a record"
needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd"
)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the archive that must never change."""
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


def calls_on(archive: JsonlArchive, session: UUID) -> dict[str, Callable[[], Any]]:
    """Every call that opens ``session``'s file, by name."""
    return {
        "append": lambda: archive.append_messages(session, [record(session)]),
        "read": lambda: archive.read_session(session),
        "delete": lambda: archive.delete_session(session),
    }


async def refused(call: Callable[[], Awaitable[object]], match: str) -> BackendError:
    with pytest.raises(BackendError, match=match) as caught:
        await call()
    assert caught.value.retryable is False
    return caught.value


class TestDirectory:
    @pytest.mark.parametrize("call", ["health", "append", "read", "delete"])
    async def test_a_symlinked_directory_is_refused_and_nothing_goes_through_it(
        self, tmp_path: Path, session: UUID, call: str
    ) -> None:
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        link = tmp_path / "link"
        link.symlink_to(real)
        async with JsonlArchive(link) as archive:
            calls = {"health": archive.health_check, **calls_on(archive, session)}
            error = await refused(calls[call], "JSONL directory is a symbolic link")
        assert str(link) in str(error)
        assert "configure the real directory's path" in str(error)
        assert os.listdir(real) == []

    async def test_a_dangling_symlink_is_refused_and_its_target_not_created(
        self, tmp_path: Path, session: UUID
    ) -> None:
        (tmp_path / "link").symlink_to(tmp_path / "target")
        async with JsonlArchive(tmp_path / "link") as archive:
            await refused(archive.health_check, "is a symbolic link")
            await refused(calls_on(archive, session)["append"], "is a symbolic link")
        assert not (tmp_path / "target").exists()

    async def test_a_directory_swapped_for_a_symlink_after_first_use_is_refused(
        self, tmp_path: Path, directory: Path, session: UUID
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            directory.rename(tmp_path / "moved")
            directory.symlink_to(elsewhere)
            await refused(calls_on(archive, session)["append"], "symbolic link")
        assert os.listdir(elsewhere) == []

    async def test_a_symlink_above_the_directory_is_followed(
        self, tmp_path: Path, session: UUID
    ) -> None:
        # Only the last component is checked: parents belong to the deployment.
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        async with JsonlArchive(tmp_path / "link" / "archive") as archive:
            await archive.append_messages(session, records(session, 1))
        assert os.listdir(tmp_path / "real" / "archive") == [f"{session}.jsonl"]

    @needs_root
    async def test_a_directory_of_another_user_is_used_with_a_warning(
        self, directory: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        # As for the journal's folder: that user controls which files are in it.
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
        with caplog.at_level(logging.WARNING, "journal_archivist.backends.jsonl"):
            async with JsonlArchive(directory) as archive:
                await archive.health_check()
                await archive.append_messages(session, records(session, 1))
        [warning] = [
            r.getMessage()
            for r in caplog.records
            if r.name == "journal_archivist.backends.jsonl"
        ]
        assert f"{directory}: the JSONL directory is owned by uid {NOBODY}" in warning

    @pytest.mark.parametrize(
        "mode",
        [
            # writable by every user: anyone could remove or rename our files
            pytest.param(0o777, id="0777"),
            # the sticky bit (as /tmp has) stops removals, not planted names
            pytest.param(0o1777, id="1777"),
            # only "others" may write: still everyone
            pytest.param(0o703, id="0703"),
        ],
    )
    async def test_a_directory_every_user_may_write_to_is_refused(
        self, directory: Path, session: UUID, mode: int
    ) -> None:
        directory.mkdir()
        directory.chmod(mode)
        async with JsonlArchive(directory) as archive:
            match = rf"writable by every user \(mode {mode:04o}\)"
            await refused(archive.health_check, match)
            for call in calls_on(archive, session).values():
                await refused(call, match)
        assert os.listdir(directory) == []

    async def test_a_directory_its_group_may_write_to_is_used_with_a_warning(
        self, directory: Path, session: UUID, caplog: pytest.LogCaptureFixture
    ) -> None:
        directory.mkdir()
        directory.chmod(0o770)
        with caplog.at_level(logging.WARNING, "journal_archivist.backends.jsonl"):
            async with JsonlArchive(directory) as archive:
                await archive.health_check()
                await archive.append_messages(session, records(session, 2))
                assert len(await archive.read_session(session)) == 2  # warned once
                directory.chmod(0o700)  # fixed: quiet
                await archive.health_check()
                directory.chmod(0o2775)  # loose again: warned again
                await archive.health_check()
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "journal_archivist.backends.jsonl"
        ]
        assert len(warnings) == 2
        assert (
            f"{directory}: the JSONL directory is writable by its group"
            in (warnings[0])
        )
        assert "(mode 0770)" in warnings[0]
        assert "(mode 2775)" in warnings[1]


# How a session's file can be something this backend must not touch; each makes
# the file at ``path`` and returns the message the refusal must hold.
def _hard_link(path: Path, victim: Path) -> str:
    # a victim elsewhere, linked in: the old torn-tail repair truncated it
    os.link(victim, path)
    return "has 2 hard links"


def _symlink(path: Path, victim: Path) -> str:
    # a symlink to the victim: never followed
    path.symlink_to(victim)
    return "is a symbolic link"


def _dangling_symlink(path: Path, victim: Path) -> str:
    # a symlink to nothing: an append must not create its target
    path.symlink_to(victim.with_name("created-through-a-link"))
    return "is a symbolic link"


def _directory(path: Path, victim: Path) -> str:
    # a directory where the file should be
    path.mkdir()
    return "is a directory"


def _socket(path: Path, victim: Path) -> str:
    # a Unix socket: open() fails with ENXIO, which is not a disk failure
    here = os.getcwd()
    os.chdir(path.parent)  # a socket's path must be short: bind the bare name
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path.name)
    finally:
        os.chdir(here)
    return "is a socket"


PLANTED = [
    pytest.param(_hard_link, id="hard-link"),
    pytest.param(_symlink, id="symlink"),
    pytest.param(_dangling_symlink, id="dangling-symlink"),
    pytest.param(_directory, id="directory"),
    pytest.param(_socket, id="socket"),
]


class TestSessionFiles:
    @pytest.mark.parametrize("plant", PLANTED)
    @pytest.mark.parametrize("call", ["append", "read", "delete"])
    async def test_a_planted_session_file_is_refused_and_left_as_it_is(
        self,
        tmp_path: Path,
        directory: Path,
        victim: Path,
        session: UUID,
        plant: Callable[[Path, Path], str],
        call: str,
    ) -> None:
        directory.mkdir(mode=0o700)
        async with JsonlArchive(directory) as archive:
            path = Path(archive.path_of(session))
            what = plant(path, victim)
            error = await refused(calls_on(archive, session)[call], what)
        assert str(error).startswith(f"{path}: refused: the session file ")
        assert "nothing in it was read or changed" in str(error)
        assert victim.read_bytes() == VICTIM
        assert os.path.lexists(path)  # not erased either
        assert sorted(os.listdir(tmp_path)) == ["archive", "victim"]

    @pytest.mark.parametrize("call", ["append", "read", "delete"])
    async def test_session_files_are_opened_without_following_or_blocking(
        self,
        directory: Path,
        session: UUID,
        call: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # O_NONBLOCK: a FIFO or device planted there cannot hang the open before
        # fstat refuses it (testing that with a FIFO would hang on a regression).
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            flags: list[int] = []
            real = os.open

            def watching(path: Any, how: int, *args: Any, **kwargs: Any) -> int:
                if os.fspath(path).endswith(".jsonl"):
                    flags.append(how)
                return real(path, how, *args, **kwargs)

            monkeypatch.setattr(os, "open", watching)
            await calls_on(archive, session)[call]()
        assert flags
        for how in flags:
            assert how & os.O_NOFOLLOW
            assert how & os.O_NONBLOCK
            assert how & os.O_CLOEXEC

    @needs_root
    @pytest.mark.parametrize("call", ["append", "read", "delete"])
    async def test_a_session_file_of_another_user_is_refused(
        self, directory: Path, session: UUID, call: str
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            path = Path(archive.path_of(session))
            before = path.read_bytes()
            os.chown(path, NOBODY, NOBODY)
            await refused(
                calls_on(archive, session)[call],
                rf"belongs to another user \(uid {NOBODY}",
            )
        assert path.read_bytes() == before

    @pytest.mark.parametrize("call", ["append", "read"])
    async def test_a_session_file_others_can_read_is_refused_and_left_as_it_is(
        self, directory: Path, session: UUID, call: str
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            path = Path(archive.path_of(session))
            before = path.read_bytes()
            path.chmod(0o640)  # restored from a backup without its mode, say
            error = await refused(
                calls_on(archive, session)[call],
                r"can be read or written by other users \(mode 640\)",
            )
        assert "chmod 600 it" in str(error)
        assert path.read_bytes() == before
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    async def test_a_session_file_others_can_read_is_still_erased(
        self, directory: Path, session: UUID
    ) -> None:
        # Refusing the erasure would keep the content others may read.
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            path = Path(archive.path_of(session))
            path.chmod(0o644)
            await archive.delete_session(session)
            assert await archive.read_session(session) == []
        assert not path.exists()

    @pytest.mark.parametrize("call", ["append", "read"])
    async def test_an_empty_session_file_with_a_loose_mode_is_set_to_0600(
        self, directory: Path, session: UUID, call: str
    ) -> None:
        directory.mkdir(mode=0o700)
        path = directory / f"{session}.jsonl"
        path.touch()
        path.chmod(0o666)
        async with JsonlArchive(directory) as archive:
            await calls_on(archive, session)[call]()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    async def test_a_file_linked_after_it_was_cached_is_refused(
        self, tmp_path: Path, directory: Path, session: UUID
    ) -> None:
        # A backup by hard link (cp -al, rsync --link-dest) makes every file
        # refused: an append would change the backup's copy too.
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, records(session, 1))
            path = archive.path_of(session)
            os.link(path, tmp_path / "backup.jsonl")
            before = Path(path).read_bytes()
            error = await refused(calls_on(archive, session)["append"], "2 hard links")
        assert "back up by copying, not hard-linking" in str(error)
        assert (tmp_path / "backup.jsonl").read_bytes() == before

    async def test_a_refused_session_leaves_the_other_sessions_usable(
        self, directory: Path, victim: Path, session: UUID
    ) -> None:
        other = uuid4()
        directory.mkdir(mode=0o700)
        async with JsonlArchive(directory) as archive:
            os.link(victim, archive.path_of(session))
            await archive.append_messages(other, records(other, 2))
            assert len(await archive.read_session(other)) == 2
            await archive.health_check()


class TestHealthProbe:
    @pytest.fixture
    def probe_opens(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
        """The name and flags of every ``os.open`` of a probe file."""
        seen: list[tuple[str, int]] = []
        real = os.open

        def watching(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if "health-probe" in os.fspath(path):
                seen.append((os.fspath(path), flags))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", watching)
        return seen

    async def test_the_probe_is_created_exclusively_under_a_random_name(
        self, directory: Path, probe_opens: list[tuple[str, int]]
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
            await archive.health_check()
        names = [os.path.basename(path) for path, _ in probe_opens]
        assert len(names) == 2
        assert names[0] != names[1]
        for name in names:
            assert re.fullmatch(r"\.jsonl-archive-health-probe-[0-9a-f]{32}", name)
        for _, flags in probe_opens:
            assert flags & os.O_EXCL
            assert flags & os.O_CREAT
            assert not flags & os.O_TRUNC
        assert os.listdir(directory) == []

    @pytest.mark.parametrize("planted", ["file", "symlink"])
    async def test_what_is_planted_at_the_old_fixed_probe_name_is_left_alone(
        self, directory: Path, victim: Path, planted: str
    ) -> None:
        directory.mkdir(mode=0o700)
        fixed = directory / ".jsonl-archive-health-probe"
        if planted == "file":
            fixed.write_bytes(b"keep me")
        else:
            fixed.symlink_to(victim)
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
        assert os.listdir(directory) == [fixed.name]
        if planted == "file":
            assert fixed.read_bytes() == b"keep me"
        assert victim.read_bytes() == VICTIM

    async def test_a_probe_left_behind_is_never_taken_for_a_session(
        self, directory: Path, session: UUID
    ) -> None:
        # A crash between creating and removing the probe leaves it behind.
        name = PROBE_PREFIX + "0" * 32
        assert not name.endswith(".jsonl")
        with pytest.raises(ValueError, match="badly formed"):
            UUID(name.removesuffix(".jsonl"))
        directory.mkdir(mode=0o700)
        (directory / name).write_bytes(b"\n")
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
            await archive.append_messages(session, records(session, 1))
            assert len(await archive.read_session(session)) == 1


def _highest_open_fd() -> int:
    return max(int(name) for name in os.listdir("/proc/self/fd"))


def _room_for_one_chunk() -> int:
    """A descriptor limit that leaves room for one chunk (and the directory, and
    some slack), but not for one file per session of a batch of that many + 1."""
    return _highest_open_fd() + 1 + MAX_OPEN_FILES + 32


@pytest.fixture
def session_files_open() -> Iterator[list[int]]:
    """``[open now, most open at once]`` of session files (``*.jsonl``)."""
    with counting_session_files() as counts:
        yield counts


def one_record_each(count: int, prefix: str = "m") -> list[SessionGroup]:
    sessions = [uuid4() for _ in range(count)]
    return [SessionGroup(s, (record(s, prefix),)) for s in sessions]


class TestOpenFiles:
    @needs_proc
    async def test_a_batch_of_more_sessions_than_the_descriptor_limit_is_written(
        self, directory: Path
    ) -> None:
        async with JsonlArchive(directory) as archive:
            await archive.health_check()
            limit = _room_for_one_chunk()
            batch = one_record_each(limit + 1)
            with fd_limit(limit):
                await archive.write_batch(batch)
                await archive.write_batch(batch)  # redelivered: skipped
            assert len(os.listdir(directory)) == limit + 1
            for group in batch[:: MAX_OPEN_FILES // 4]:
                assert await archive.read_session(group.session) == list(group.records)

    async def test_at_most_max_open_files_session_files_are_open_at_once(
        self, directory: Path, session_files_open: list[int]
    ) -> None:
        batch = one_record_each(2 * MAX_OPEN_FILES + 1)
        async with JsonlArchive(directory) as archive:
            await archive.write_batch(batch)
            assert session_files_open == [0, MAX_OPEN_FILES]
            await archive.write_batch(batch)  # all cached: still in chunks
            assert session_files_open == [0, MAX_OPEN_FILES]
        assert len(os.listdir(directory)) == len(batch)

    @needs_proc
    async def test_each_chunk_is_synced_and_closed_before_the_next_the_directory_last(
        self, directory: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(jsonl, "MAX_OPEN_FILES", 2)
        events: list[tuple[str, str]] = []
        real_fsync, real_close = os.fsync, os.close

        def fsync(fd: int) -> None:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def close(fd: int) -> None:
            with contextlib.suppress(OSError):
                events.append(("close", os.readlink(f"/proc/self/fd/{fd}")))
            real_close(fd)

        batch = one_record_each(5)
        async with JsonlArchive(directory, fsync_threads=1) as archive:
            await archive.health_check()
            monkeypatch.setattr(os, "fsync", fsync)
            monkeypatch.setattr(os, "close", close)
            await archive.write_batch(batch)
            monkeypatch.undo()
            paths = [archive.path_of(g.session) for g in batch]
        files = [(what, path) for what, path in events if path.endswith(".jsonl")]
        chunks = [paths[0:2], paths[2:4], paths[4:5]]
        assert files == [
            (what, path)
            for chunk in chunks
            for what in ("fsync", "close")
            for path in chunk
        ]
        assert events[-2:] == [("fsync", str(directory)), ("close", str(directory))]

    @needs_proc
    async def test_a_batch_failing_in_a_later_chunk_is_redelivered_without_duplicates(
        self, directory: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(jsonl, "MAX_OPEN_FILES", 2)
        batch = one_record_each(5)
        async with JsonlArchive(directory) as archive:
            failing = archive.path_of(batch[3].session)
            real_fsync = os.fsync

            def fail_one_file(fd: int) -> None:
                if os.readlink(f"/proc/self/fd/{fd}") == failing:
                    raise OSError(5, "Input/output error")
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fail_one_file)
            with pytest.raises(BackendError, match="EIO") as caught:
                await archive.write_batch(batch)
            assert caught.value.retryable is True
            monkeypatch.setattr(os, "fsync", real_fsync)
            # The first chunk is written and synced; the failed one was cut back.
            assert Path(archive.path_of(batch[0].session)).read_bytes() != b""
            assert Path(failing).read_bytes() == b""
            await archive.write_batch(batch)  # the redelivery
            for group in batch:
                path = Path(archive.path_of(group.session))
                assert path.read_bytes() == encode_line(group.records[0]) + b"\n"

    @needs_proc
    async def test_an_archivist_delivers_a_max_batch_of_4096_under_the_fd_limit(
        self, journal_path: Path, directory: Path
    ) -> None:
        gated = Gated(JsonlArchive(directory))
        policy = Queued(batch_window_ms=1, max_batch=4096)
        reg = registration(gated, name="files", write_policy=policy)
        async with Archivist.open(journal_path, [reg]) as archivist:
            first = uuid4()
            await archivist.append_messages(first, [record(first)])  # held
            limit = _room_for_one_chunk()
            batch = one_record_each(limit + 1)
            async with anyio.create_task_group() as tg:
                for group in batch:
                    tg.start_soon(
                        archivist.append_messages, group.session, group.records
                    )
            with fd_limit(limit):
                gated.release.set()
                with anyio.fail_after(60):
                    await archivist.wait_drained()
            health = archivist.health().backends["files"]
            assert health.delivered == len(batch) + 1
            assert gated.failures == []
            assert gated.batches == [1, len(batch)]  # all in one batch
        assert len(os.listdir(directory)) == len(batch) + 1


#: Every character ``str.splitlines()`` ends a line at.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
#: The C1 controls (U+0085 is one).
C1 = "".join(map(chr, range(0x80, 0xA0)))
MUST_BE_ESCAPED = frozenset(LINE_BREAKS + C1)


def test_line_breaks_is_every_character_splitlines_splits_at() -> None:
    splits = {c for c in map(chr, range(0x110000)) if len(f"a{c}b".splitlines()) > 1}
    assert splits == set(LINE_BREAKS)


def hostile_record(session: UUID, text: str) -> MessageRecord:
    """``text`` in every string field a record has, and as a metadata key."""
    return record(
        session,
        text,
        author=text,
        metadata={text: [text, {"k": text}]},
        content_parts=[text],
    )


def raw_breaks(line: bytes) -> set[str]:
    return set(line.decode()) & MUST_BE_ESCAPED


class TestLineBreaks:
    @pytest.mark.parametrize(
        "char",
        [
            # U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: raw in JSON
            "\u2028",
            "\u2029",
            # NEL, the C1 control that splitlines also splits at
            "\x85",
            # other C1 controls: CSI (a terminal escape) and the first and last
            "\x9b",
            "\x80",
            "\x9f",
            # ASCII separators splitlines splits at: JSON escapes them already
            "\x0b",
            "\x0c",
            "\x1c",
            "\x1d",
            "\x1e",
        ],
    )
    async def test_a_line_holds_no_raw_line_break_and_reads_back_exactly(
        self, directory: Path, session: UUID, char: str
    ) -> None:
        written = [hostile_record(session, f"a{char}b{char}"), record(session, "next")]
        async with JsonlArchive(directory) as archive:
            await archive.append_messages(session, written)
            assert await archive.read_session(session) == written
            data = Path(archive.path_of(session)).read_bytes()
        lines = data.split(b"\n")
        assert lines.pop() == b""
        assert len(lines) == len(written) == len(data.decode().splitlines())
        assert [raw_breaks(line) for line in lines] == [set(), set()]
        # JSON's own short form for U+000C; \u00XX / \u20XX for the rest
        assert (b"\\f" if char == "\x0c" else f"\\u{ord(char):04x}".encode()) in data

    async def test_a_file_with_raw_line_breaks_from_before_still_reads_and_dedupes(
        self, directory: Path, session: UUID
    ) -> None:
        old = [hostile_record(session, f"x{c}y") for c in "\u2028\u2029\x85\x9b"]
        directory.mkdir(mode=0o700)
        path = directory / f"{session}.jsonl"
        path.write_bytes(b"".join(encode_record(r) + b"\n" for r in old))
        path.chmod(0o600)
        assert raw_breaks(path.read_bytes().replace(b"\n", b""))  # as written before
        new = record(session, "new\u2028")
        async with JsonlArchive(directory) as archive:
            assert await archive.read_session(session) == old
            await archive.append_messages(session, [*old, new])  # a redelivery
            assert await archive.read_session(session) == [*old, new]
        lines = path.read_bytes().split(b"\n")
        assert len(lines) == len(old) + 2  # the old lines, the new one, ""
        assert lines[-2] == encode_line(new)

    def test_a_line_without_such_characters_is_returned_as_it_is(self) -> None:
        # The escaping pass costs nothing where there is nothing to escape.
        for text in [
            "plain ascii",
            "caf\u00e9 \u2014 \u201cquoted\u201d \u00a0 \u4f60",
        ]:
            line = encode_record(record(uuid4(), text))
            assert escape_line_breaks(line) is line

    @given(
        text=st.text(
            alphabet=st.one_of(
                st.sampled_from(sorted(MUST_BE_ESCAPED | {"\\", '"', "\u00a0"})),
                st.characters(codec="utf-8"),
            )
        )
    )
    def test_any_text_makes_one_line_that_decodes_to_the_same_record(
        self, text: str
    ) -> None:
        written = hostile_record(UUID(int=1), text)
        line = encode_line(written)
        assert raw_breaks(line) == set()
        assert len((line + b"\n").decode().splitlines()) == 1
        assert decode_record(line) == written

    @given(value=st.recursive(st.text(), lambda inner: st.lists(inner, max_size=3)))
    def test_escaping_keeps_any_json_value(self, value: object) -> None:
        encoded = msgspec.json.encode(value)
        assert msgspec.json.decode(escape_line_breaks(encoded)) == value
