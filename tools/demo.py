"""A runnable tour on the embedded default: journal, lose the archive, restart,
deliver, read back, erase.

    .venv/bin/python tools/demo.py [--dir DIRECTORY]

1. Opens a journal in front of a ``SqliteArchive`` whose directory is missing (a
   volume that is not mounted: the backend is down), appends a conversation and
   shuts down. The appends were acknowledged -- they are in the journal -- but not
   delivered.
2. The directory appears; reopening the same journal delivers everything, in
   order, and the journal empties.
3. Reads the session back through the archivist, then erases it
   (``delete_session``) and shows that neither the archive nor the journal keeps it.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import tempfile
import uuid
from contextlib import closing
from pathlib import Path

import anyio

from journal_archivist import (
    Archivist,
    HealthStatus,
    MessageRecord,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import SqliteArchive

RETRY = RetryPolicy(initial_delay=0.05, max_delay=0.2)
CONVERSATION = [
    ("user", "What does journal-archivist do?"),
    ("assistant", "It journals every message before acknowledging it."),
    ("user", "And if the archive is down?"),
    ("assistant", "The journal keeps it until the archive is back."),
]


def registration(archive_path: Path) -> Registration:
    return Registration(
        name="archive", backend=SqliteArchive(archive_path), retry=RETRY
    )


async def wait_unhealthy(archivist: Archivist) -> None:
    """Poll health, as an operator's dashboard would, until the backend is down."""
    with anyio.fail_after(10):
        while (  # noqa: ASYNC110 - a dashboard polls; there is no event to await
            archivist.health().backends["archive"].status is not HealthStatus.UNHEALTHY
        ):
            await anyio.sleep(0.05)


def journal_rows(journal: Path) -> int:
    with closing(sqlite3.connect(journal)) as db:
        return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])


async def main(directory: Path) -> None:
    journal = directory / "journal.db"
    archive_path = directory / "archive" / "archive.db"
    session = uuid.uuid4()
    print(f"journal: {journal}\narchive: {archive_path}\n")

    print("1. The archive's directory is missing. Appending the conversation...")
    async with Archivist.open(
        journal, [registration(archive_path)], close_timeout=0.5
    ) as archivist:
        for role, text in CONVERSATION:
            record = MessageRecord(session=session, role=role, content_md=text)
            await archivist.append_messages(session, [record])
            print(f"   acknowledged: {role}: {text}")
        await wait_unhealthy(archivist)
        health = archivist.health().backends["archive"]
        print(f"   backend {health.status.name}: {health.last_error}")
        print(f"   {health.lag_entries} entries pending")
    print("   shut down; the undelivered entries stay in the journal.\n")

    print("2. The directory is back. Restarting...")
    archive_path.parent.mkdir(mode=0o700)
    async with Archivist.open(journal, [registration(archive_path)]) as archivist:
        with anyio.fail_after(10):
            await archivist.wait_drained()
        health = archivist.health().backends["archive"]
        print(f"   delivered {health.delivered}, pending {health.lag_entries}\n")

        print("3. Reading the session back:")
        for record in await archivist.read_session(session):
            print(f"   {record.role:>9}: {record.content_md}")
        await archivist.delete_session(session)
        with anyio.fail_after(10):
            await archivist.wait_drained()
        left = await archivist.read_session(session)
        print(f"   erased (delete_session): {len(left)} records left")

    async with SqliteArchive(archive_path) as archive:
        print(f"   in the archive file: {await archive.count(session)} records")
    print(f"   in the journal: {journal_rows(journal)} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, help="where to put the files (default: temp)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="   [log] %(message)s", stream=sys.stdout
    )
    directory = args.dir or Path(tempfile.mkdtemp(prefix="ja-demo-"))
    anyio.run(main, directory)
