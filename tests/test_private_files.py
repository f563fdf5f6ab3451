"""The files and folders we open are ours (docs/security.md, "Files").

An attacker here is another local user who could write the folder or plant a
name in it before the service starts: a symlink or hard link where our file goes,
a loose mode, a folder others can write. Each test plants one and checks it is
refused with a message that says why, and that the victim is untouched.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from uuid import uuid4

import pytest

from journal_archivist import (
    Archivist,
    BackendError,
    JournalError,
    JournalLocked,
    Registration,
)
from journal_archivist._private_files import make_folders
from journal_archivist.backends import JsonlArchive, SqliteArchive

from .helpers import NOBODY, needs_root, record, registration

VICTIM = b"root's secret, mode 0600, must keep its first bytes\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "victim"
    path.parent.mkdir(mode=0o700)
    path.write_bytes(VICTIM)
    path.chmod(0o600)
    return path


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o700)
    return folder / "journal.db"


async def make_journal(path: Path) -> dict[str, int]:
    """A journal with one record in it, closed; return the modes its files had
    while it was open, by suffix."""
    session = uuid4()
    async with Archivist.open(path, [registration()]) as archivist:
        await archivist.append_messages(session, [record(session)])
        return {s: mode(Path(f"{path}{s}")) for s in ("", "-wal", "-shm", ".lock")}


class TestTheLockFile:
    async def test_a_symlink_is_refused_and_its_target_untouched(
        self, journal: Path, victim: Path
    ) -> None:
        Path(f"{journal}.lock").symlink_to(victim)
        with pytest.raises(JournalError, match=r"lock file .* is a symbolic link"):
            await Archivist.open(journal, [registration()])
        assert victim.read_bytes() == VICTIM

    async def test_a_dangling_symlink_creates_nothing(
        self, journal: Path, tmp_path: Path
    ) -> None:
        target = tmp_path / "created-by-us"
        Path(f"{journal}.lock").symlink_to(target)
        with pytest.raises(JournalError, match="is a symbolic link"):
            await Archivist.open(journal, [registration()])
        assert not target.exists()

    async def test_a_hard_link_is_refused(self, journal: Path, victim: Path) -> None:
        os.link(victim, f"{journal}.lock")
        with pytest.raises(JournalError, match="has 2 hard links"):
            await Archivist.open(journal, [registration()])
        assert victim.read_bytes() == VICTIM

    @needs_root
    async def test_another_users_lock_file_is_refused(self, journal: Path) -> None:
        lock = Path(f"{journal}.lock")
        lock.touch(mode=0o600)
        os.chown(lock, NOBODY, NOBODY)
        with pytest.raises(JournalError, match="belongs to another user"):
            await Archivist.open(journal, [registration()])

    async def test_a_fifo_is_refused_without_blocking(self, journal: Path) -> None:
        os.mkfifo(f"{journal}.lock", 0o600)
        with pytest.raises(JournalError, match="not a regular file"):
            await Archivist.open(journal, [registration()])

    async def test_a_loose_lock_file_is_tightened(self, journal: Path) -> None:
        lock = Path(f"{journal}.lock")
        lock.touch()
        lock.chmod(0o666)
        async with Archivist.open(journal, [registration()]):
            assert mode(lock) == 0o600


class TestFolders:
    @pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
    async def test_created_folders_are_owner_only_whatever_the_umask(
        self, tmp_path: Path, umask: int
    ) -> None:
        path = tmp_path / "a" / "b" / "c" / "journal.db"
        old = os.umask(umask)
        try:
            modes = await make_journal(path)
        finally:
            os.umask(old)
        for folder in (tmp_path / "a", tmp_path / "a" / "b", path.parent):
            assert mode(folder) == 0o700, folder
        assert set(modes.values()) == {0o600}, modes

    def test_make_folders_says_what_it_created(self, tmp_path: Path) -> None:
        (tmp_path / "a").mkdir()
        created = make_folders(str(tmp_path / "a" / "b" / "c"))
        assert created == [str(tmp_path / "a" / "b"), str(tmp_path / "a" / "b" / "c")]
        assert make_folders(str(tmp_path / "a" / "b" / "c")) == []

    async def test_a_folder_everyone_can_write_is_refused(self, journal: Path) -> None:
        journal.parent.chmod(0o1777)  # sticky like /tmp: names can still be planted
        with pytest.raises(JournalError, match="writable by every user"):
            await Archivist.open(journal, [registration()])
        assert not journal.exists()

    async def test_a_group_writable_folder_is_a_warning(
        self, journal: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        journal.parent.chmod(0o770)
        with caplog.at_level(logging.WARNING, "journal_archivist.files"):
            await make_journal(journal)
        assert "is writable by its group (mode 770)" in caplog.text

    @needs_root
    async def test_another_users_folder_is_a_warning(
        self, journal: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        os.chown(journal.parent, NOBODY, NOBODY)
        with caplog.at_level(logging.WARNING, "journal_archivist.files"):
            await make_journal(journal)
        assert f"belongs to another user (uid {NOBODY})" in caplog.text

    async def test_a_symlinked_folder_on_the_way_is_resolved_once(
        self, journal: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "link").symlink_to(journal.parent)
        await make_journal(tmp_path / "link" / "journal.db")
        assert journal.exists()
        assert Path(f"{journal}.lock").exists()


class TestTheJournalFile:
    async def test_a_symlink_is_refused(self, journal: Path, victim: Path) -> None:
        journal.symlink_to(victim)
        with pytest.raises(JournalError, match=r"journal file .* is a symbolic link"):
            await Archivist.open(journal, [registration()])
        assert victim.read_bytes() == VICTIM

    async def test_a_hard_link_is_refused(self, journal: Path, tmp_path: Path) -> None:
        await make_journal(journal)
        os.link(journal, tmp_path / "other-name.db")
        with pytest.raises(JournalError, match="has 2 hard links"):
            await Archivist.open(journal, [registration()])

    async def test_an_empty_adopted_file_is_tightened(self, journal: Path) -> None:
        journal.touch()
        journal.chmod(0o644)
        modes = await make_journal(journal)
        assert set(modes.values()) == {0o600}, modes

    async def test_a_journal_others_can_read_is_refused_untouched(
        self, journal: Path
    ) -> None:
        await make_journal(journal)
        journal.chmod(0o644)
        before = journal.read_bytes()
        with pytest.raises(JournalError, match=r"can be read or written by other"):
            await Archivist.open(journal, [registration()])
        assert journal.read_bytes() == before
        assert mode(journal) == 0o644  # the operator decides, not us

    @pytest.mark.parametrize("suffix", ["-wal", "-shm"])
    async def test_a_symlinked_wal_or_shm_is_refused(
        self, journal: Path, victim: Path, suffix: str
    ) -> None:
        Path(f"{journal}{suffix}").symlink_to(victim)
        with pytest.raises(JournalError, match=f"{suffix} file .* symbolic link"):
            await Archivist.open(journal, [registration()])
        assert victim.read_bytes() == VICTIM

    async def test_a_loose_non_empty_wal_is_refused(self, journal: Path) -> None:
        wal = Path(f"{journal}-wal")
        wal.write_bytes(b"frames somebody else could have read")
        wal.chmod(0o644)
        with pytest.raises(JournalError, match=r"-wal file .* other users"):
            await Archivist.open(journal, [registration()])


class TestTheSqliteArchive:
    @pytest.fixture
    def archive_path(self, tmp_path: Path) -> Path:
        folder = tmp_path / "archive"
        folder.mkdir(mode=0o700)
        return folder / "archive.db"

    async def refused(self, path: Path, match: str) -> BackendError:
        archive = SqliteArchive(path)
        try:
            with pytest.raises(BackendError, match=match) as info:
                await archive.health_check()
        finally:
            await archive.aclose()
        return info.value

    async def test_a_symlink_is_refused(self, archive_path: Path, victim: Path) -> None:
        archive_path.symlink_to(victim)
        error = await self.refused(archive_path, r"archive file .* is a symbolic link")
        assert not error.retryable
        assert victim.read_bytes() == VICTIM

    async def test_a_hard_link_is_refused(
        self, archive_path: Path, victim: Path
    ) -> None:
        os.link(victim, archive_path)
        await self.refused(archive_path, "has 2 hard links")
        assert victim.read_bytes() == VICTIM

    async def test_a_folder_everyone_can_write_is_refused(
        self, archive_path: Path
    ) -> None:
        archive_path.parent.chmod(0o777)
        await self.refused(archive_path, "writable by every user")
        assert not archive_path.exists()

    async def test_an_empty_adopted_file_is_tightened(self, archive_path: Path) -> None:
        archive_path.touch()
        archive_path.chmod(0o644)
        archive = SqliteArchive(archive_path)
        try:
            await archive.health_check()
        finally:
            await archive.aclose()
        assert mode(archive_path) == 0o600

    async def test_an_archive_others_can_read_is_refused(
        self, archive_path: Path
    ) -> None:
        archive = SqliteArchive(archive_path)
        session = uuid4()
        try:
            await archive.append_messages(session, [record(session)])
        finally:
            await archive.aclose()
        archive_path.chmod(0o640)
        await self.refused(archive_path, "can be read or written by other users")


async def test_nothing_is_readable_by_others_under_a_usual_umask(
    tmp_path: Path,
) -> None:
    # What held before the fixes above, and must keep holding: the journal and
    # both file archives, written under umask 022, leave nothing others can read.
    old = os.umask(0o022)
    try:
        regs = [
            Registration(name="sqlite", backend=SqliteArchive(tmp_path / "a.db")),
            Registration(name="jsonl", backend=JsonlArchive(tmp_path / "jsonl")),
        ]
        session = uuid4()
        async with Archivist.open(tmp_path / "data" / "journal.db", regs) as archivist:
            await archivist.append_messages(session, [record(session)])
            await archivist.wait_drained()
            made = list(tmp_path.rglob("*"))
            readable = [p for p in made if p.lstat().st_mode & 0o044]
    finally:
        os.umask(old)
    assert len(made) >= 8  # folders, journal and its -wal/-shm/.lock, archives
    assert readable == []


def _posix_locks_on(path: Path) -> list[str]:
    """This process's POSIX locks on ``path`` (from /proc/locks).

    Without each line's leading ordinal: it shifts as other processes take locks.
    """
    info = path.stat()
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return [
        line.partition(":")[2].strip()
        for line in Path("/proc/locks").read_text().splitlines()
        if " POSIX " in line and f" {os.getpid()} " in line and inode in line
    ]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")
async def test_a_refused_second_open_keeps_the_owners_sqlite_locks(
    journal: Path,
) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds
    # on it, SQLite's too: a second open must not open the journal's files
    # before it knows the lock is free, or another process's SQLite could take
    # the live journal for an idle one.
    async with Archivist.open(journal, [registration()]):
        shm = Path(f"{journal}-shm")
        held = _posix_locks_on(shm)
        assert held
        with pytest.raises(JournalLocked):
            await Archivist.open(journal, [registration()])
        assert _posix_locks_on(shm) == held


async def test_a_failed_chmod_of_a_new_journal_leaks_no_descriptor(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted (a vfat mount, say)")

    monkeypatch.setattr(os, "fchmod", refuse)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(JournalError, match="Operation not permitted"):
            await Archivist.open(journal, [registration()])
        journal.unlink()  # made before the chmod failed
    assert len(os.listdir("/proc/self/fd")) == before
