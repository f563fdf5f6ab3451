"""Probes of the files we open, as another local user would plant them (issue 8,
items 1-4; docs/security.md, "Files").

    .venv/bin/python -m tools.security.files [--dir DIR]

Each probe runs in a fresh folder under ``--dir`` (a temporary one by default) and
prints one line: what was planted, what the library did, and whether the victim
(a 0600 file holding a secret) kept every byte. Exit 0 if every probe held, 1
otherwise.

- lock-symlink: ``journal.db.lock`` is a symlink to the victim; open the journal.
- lock-dangling: the lock is a dangling symlink; is its target created?
- umask-0: open a journal three missing folders deep under umask 0; the modes of
  the folders and files made.
- adopt-empty: an empty ``journal.db`` (and an empty archive file) left 0644.
- journal-symlink / archive-symlink: the database file is a symlink to an empty
  file elsewhere; is it filled?
- wal-symlink: ``journal.db-wal`` is a symlink to the victim.
- shared-folder: the journal's folder is 1777 like ``/tmp``.
- umask-022: a journal, a SQLite and a JSONL archive written under umask 022; the
  number of their files and folders others can read.
"""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from journal_archivist import (
    Archivist,
    ArchivistError,
    MessageRecord,
    Registration,
)
from journal_archivist.backends import JsonlArchive, SqliteArchive

SECRET = b"victim: root's 0600 file; its first bytes must survive\n"

Probe = Callable[[Path], Awaitable[tuple[bool, str]]]


def _victim(folder: Path) -> Path:
    path = folder / "victim"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.lstat().st_mode):o}"


async def _open_journal(path: Path, *backends: SqliteArchive | JsonlArchive) -> str:
    """Open, append one record, close; return "opened" or the refusal."""
    regs = [
        Registration(name=f"b{i}", backend=backend)
        for i, backend in enumerate(backends)
    ] or [Registration(name="sqlite", backend=SqliteArchive(path.parent / "a.db"))]
    session = uuid.uuid4()
    try:
        async with Archivist.open(path, regs) as archivist:
            await archivist.append_messages(
                session, [MessageRecord(session=session, role="user", content_md="hi")]
            )
            await archivist.wait_drained()
    except ArchivistError as exc:
        return f"refused ({type(exc).__name__}: {str(exc)[:90]}...)"
    return "opened"


async def lock_symlink(folder: Path) -> tuple[bool, str]:
    victim = _victim(folder)
    Path(folder / "journal.db.lock").symlink_to(victim)
    outcome = await _open_journal(folder / "journal.db")
    intact = victim.read_bytes() == SECRET
    return intact and outcome != "opened", f"{outcome}; victim intact: {intact}"


async def lock_dangling(folder: Path) -> tuple[bool, str]:
    target = folder / "created-through-the-link"
    Path(folder / "journal.db.lock").symlink_to(target)
    outcome = await _open_journal(folder / "journal.db")
    created = target.exists()
    return not created, f"{outcome}; target created: {created}"


async def umask_0(folder: Path) -> tuple[bool, str]:
    path = folder / "a" / "b" / "c" / "journal.db"
    old = os.umask(0)
    try:
        outcome = await _open_journal(path)
    finally:
        os.umask(old)
    modes = {
        name: _mode(p)
        for name, p in [
            ("a", folder / "a"),
            ("a/b", folder / "a" / "b"),
            ("a/b/c", path.parent),
            ("journal.db", path),
            ("journal.db.lock", Path(f"{path}.lock")),
        ]
    }
    held = set(modes.values()) <= {"700", "600"}
    return held, f"{outcome}; modes {modes}"


async def adopt_empty(folder: Path) -> tuple[bool, str]:
    journal, archive = folder / "journal.db", folder / "archive.db"
    for path in (journal, archive):
        path.touch()
        path.chmod(0o644)
    outcome = await _open_journal(journal, SqliteArchive(archive))
    modes = {"journal.db": _mode(journal), "archive.db": _mode(archive)}
    return set(modes.values()) == {"600"}, f"{outcome}; modes after {modes}"


async def journal_symlink(folder: Path) -> tuple[bool, str]:
    # An empty target: a followed link would fill it with a journal.
    target = folder / "elsewhere.db"
    target.touch(mode=0o600)
    (folder / "journal.db").symlink_to(target)
    outcome = await _open_journal(folder / "journal.db")
    size = target.stat().st_size
    return size == 0 and outcome != "opened", f"{outcome}; bytes written: {size}"


async def archive_symlink(folder: Path) -> tuple[bool, str]:
    target = folder / "elsewhere.db"
    target.touch(mode=0o600)
    (folder / "archive.db").symlink_to(target)
    archive = SqliteArchive(folder / "archive.db")
    try:
        await archive.health_check()
        outcome = "opened"
    except ArchivistError as exc:
        outcome = f"refused ({str(exc)[:90]}...)"
    finally:
        await archive.aclose()
    size = target.stat().st_size
    return size == 0 and outcome != "opened", f"{outcome}; bytes written: {size}"


async def wal_symlink(folder: Path) -> tuple[bool, str]:
    victim = _victim(folder)
    (folder / "journal.db-wal").symlink_to(victim)
    outcome = await _open_journal(folder / "journal.db")
    intact = victim.read_bytes() == SECRET
    return intact and outcome != "opened", f"{outcome}; victim intact: {intact}"


async def shared_folder(folder: Path) -> tuple[bool, str]:
    shared = folder / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    outcome = await _open_journal(shared / "journal.db")
    return outcome != "opened", outcome


async def umask_022(folder: Path) -> tuple[bool, str]:
    old = os.umask(0o022)
    try:
        outcome = await _open_journal(
            folder / "data" / "journal.db",
            SqliteArchive(folder / "archive.db"),
            JsonlArchive(folder / "jsonl"),
        )
    finally:
        os.umask(old)
    made = [p for p in folder.rglob("*") if p.name != "victim"]
    readable = [str(p.relative_to(folder)) for p in made if p.lstat().st_mode & 0o044]
    return not readable, (
        f"{outcome}; {len(made)} files and folders, readable by others:"
        f" {len(readable)} {readable[:5]}"
    )


PROBES: dict[str, Probe] = {
    "lock-symlink": lock_symlink,
    "lock-dangling": lock_dangling,
    "umask-0": umask_0,
    "adopt-empty": adopt_empty,
    "journal-symlink": journal_symlink,
    "archive-symlink": archive_symlink,
    "wal-symlink": wal_symlink,
    "shared-folder": shared_folder,
    "umask-022": umask_022,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ja-files-", dir=args.dir))
    failed = 0
    for name, probe in PROBES.items():
        folder = base / name
        folder.mkdir(mode=0o700)
        held, detail = anyio.run(probe, folder)
        failed += not held
        print(f"{name}: {'HELD' if held else 'FAILED'}: {detail}")
    print(f"files: {len(PROBES) - failed}/{len(PROBES)} probes held (in {base})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
