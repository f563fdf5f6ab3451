"""A file or directory has one writer: ``Archivist.open`` refuses registrations
that would share one with the journal or with each other (``owned_paths``).

Accepted, such a registration used to fail and retry forever (or write into the
journal itself). Refused, it names both sides, and nothing is created.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from journal_archivist import Archivist, Registration
from journal_archivist.backends import JsonlArchive, SqliteArchive
from journal_archivist.testing import MockBackend
from tests.helpers import registration

if TYPE_CHECKING:
    from pathlib import Path


def sqlite(path: Path | str, name: str = "archive") -> Registration:
    return Registration(name=name, backend=SqliteArchive(path))


def jsonl(path: Path | str, name: str = "files") -> Registration:
    return Registration(name=name, backend=JsonlArchive(path))


async def refused(journal: Path, regs: list[Registration], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await Archivist.open(journal, regs)
    assert not journal.exists(), "a refused open creates nothing"


class TestTheJournalIsNobodysArchive:
    async def test_an_archive_at_the_journals_own_path(self, tmp_path: Path) -> None:
        journal = tmp_path / "journal.db"
        await refused(
            journal,
            [sqlite(journal)],
            rf"registration 'archive' writes {journal}, which is {journal},"
            rf" written by the journal",
        )

    @pytest.mark.parametrize("suffix", ["-wal", "-shm", ".lock"])
    async def test_an_archive_on_the_journals_companion_files(
        self, tmp_path: Path, suffix: str
    ) -> None:
        journal = tmp_path / "journal.db"
        await refused(journal, [sqlite(f"{journal}{suffix}")], "written by the journal")

    async def test_an_archive_reaching_the_journal_through_a_symlink(
        self, tmp_path: Path
    ) -> None:
        journal = tmp_path / "journal.db"
        alias = tmp_path / "alias.db"
        alias.symlink_to(journal)  # dangling until the journal exists
        await refused(journal, [sqlite(alias)], f"which is {journal}")

    async def test_a_jsonl_directory_holding_the_journal(self, tmp_path: Path) -> None:
        journal = tmp_path / "data" / "journal.db"
        await refused(journal, [jsonl(tmp_path / "data")], f"which holds {journal}")


class TestOneWriterPerArchive:
    async def test_two_registrations_on_one_archive_file(self, tmp_path: Path) -> None:
        journal = tmp_path / "journal.db"
        archive = tmp_path / "archive.db"
        await refused(
            journal,
            [sqlite(archive, "a"), sqlite(archive, "b")],
            rf"registration 'b' writes {archive}, which is {archive},"
            r" written by registration 'a'",
        )

    async def test_a_relative_spelling_of_the_same_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        journal = tmp_path / "journal.db"
        await refused(
            journal,
            [sqlite(tmp_path / "archive.db", "a"), sqlite("./x/../archive.db", "b")],
            "written by registration 'a'",
        )

    async def test_a_hard_link_to_another_registrations_file(
        self, tmp_path: Path
    ) -> None:
        journal = tmp_path / "journal.db"
        archive = tmp_path / "archive.db"
        archive.write_bytes(b"")
        os.link(archive, tmp_path / "linked.db")
        await refused(
            journal,
            [sqlite(archive, "a"), sqlite(tmp_path / "linked.db", "b")],
            "written by registration 'a'",
        )

    async def test_two_registrations_on_one_jsonl_directory(
        self, tmp_path: Path
    ) -> None:
        journal = tmp_path / "journal.db"
        await refused(
            journal,
            [jsonl(tmp_path / "files", "a"), jsonl(tmp_path / "files", "b")],
            "written by registration 'a'",
        )

    async def test_an_archive_file_inside_a_jsonl_directory(
        self, tmp_path: Path
    ) -> None:
        journal = tmp_path / "journal.db"
        files = tmp_path / "files"
        await refused(
            journal,
            [jsonl(files, "files"), sqlite(files / "archive.db", "archive")],
            f"which lies inside {files}, written by registration 'files'",
        )


class TestWhatIsAllowed:
    async def test_the_journal_and_its_archives_side_by_side(
        self, tmp_path: Path
    ) -> None:
        regs = [sqlite(tmp_path / "archive.db"), jsonl(tmp_path / "files")]
        async with Archivist.open(tmp_path / "journal.db", regs):
            pass

    async def test_backends_that_own_no_files_may_be_shared(
        self, tmp_path: Path
    ) -> None:
        shared = MockBackend()
        regs = [registration(shared, name="a"), registration(shared, name="b")]
        async with Archivist.open(tmp_path / "journal.db", regs):
            pass
