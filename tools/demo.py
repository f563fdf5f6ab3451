"""A runnable tour: journal some messages, lose the backend, restart, deliver.

    .venv/bin/python tools/demo.py [--journal PATH]

1. Opens a journal with one backend (a small JSON-lines archive defined below)
   while that backend is down, appends a conversation, and shuts down: the appends
   were acknowledged (they are in the journal) but not delivered.
2. Reopens the same journal with the backend up: the writer delivers everything,
   in order, and the journal empties.
It prints what happens at each step and the archive's contents at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from journal_archivist import (
    Archivist,
    BackendError,
    MessageRecord,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import ArchiveBackend

if TYPE_CHECKING:
    from collections.abc import Sequence


class JsonLinesArchive(ArchiveBackend):
    """Appends each record as one JSON line (fsynced), skipping ids it has."""

    def __init__(self, path: Path, *, up: bool = True) -> None:
        self.path = path
        self.up = up
        self.refusals = 0
        self.refused_thrice = anyio.Event()

    def _refuse(self) -> None:
        self.refusals += 1
        if self.refusals >= 3:
            self.refused_thrice.set()
        raise BackendError("archive is down")

    async def append_messages(
        self, session: uuid.UUID, records: Sequence[MessageRecord]
    ) -> None:
        if not self.up:
            self._refuse()
        seen = set()
        if self.path.exists():
            seen = {json.loads(line)["message_id"] for line in self.path.open()}
        with self.path.open("a") as out:
            for record in records:
                if str(record.message_id) not in seen:
                    out.write(json.dumps(_as_json(record)) + "\n")
            out.flush()
            os.fsync(out.fileno())

    async def health_check(self) -> None:
        if not self.up:
            self._refuse()


def _as_json(record: MessageRecord) -> dict[str, object]:
    return {
        "message_id": str(record.message_id),
        "session": str(record.session),
        "ts": record.ts.isoformat(),
        "role": record.role,
        "content_md": record.content_md,
    }


async def main(journal: Path) -> None:
    archive = journal.with_name("archive.jsonl")
    session = uuid.uuid4()
    conversation = [
        ("user", "What does journal-archivist do?"),
        ("assistant", "It journals every message before acknowledging it."),
        ("user", "And if the archive is down?"),
        ("assistant", "The journal keeps it until the archive is back."),
    ]
    retry = RetryPolicy(initial_delay=0.05, max_delay=0.2)

    print(f"journal: {journal}\narchive: {archive}\n")
    print("1. The archive is down. Appending the conversation...")
    down = JsonLinesArchive(archive, up=False)
    registration = Registration(name="archive", backend=down, retry=retry)
    async with Archivist.open(journal, [registration], close_timeout=0.5) as archivist:
        for role, text in conversation:
            record = MessageRecord(session=session, role=role, content_md=text)
            await archivist.append_messages(session, [record])
            print(f"   acknowledged: {role}: {text}")
        with anyio.fail_after(5):  # let the writer try (and fail) a few times
            await down.refused_thrice.wait()
        health = archivist.health().backends["archive"]
        print(f"   backend {health.status.name} ({health.last_error}),", end=" ")
        print(f"{health.lag_entries} entries pending")
    print("   shut down; the undelivered entries stay in the journal.\n")

    print("2. Restarting with the archive up...")
    up = JsonLinesArchive(archive, up=True)
    registration = Registration(name="archive", backend=up, retry=retry)
    async with Archivist.open(journal, [registration]) as archivist:
        with anyio.fail_after(10):
            await archivist.wait_drained()
        health = archivist.health().backends["archive"]
        print(f"   delivered {health.delivered}, pending {health.lag_entries}\n")

    print(f"3. The archive ({archive.name}) now holds:")
    for line in archive.read_text().splitlines():
        row = json.loads(line)
        print(f"   {row['role']:>9}: {row['content_md']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal", type=Path, help="journal file (default: temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="   [log] %(message)s")
    path = args.journal or Path(tempfile.mkdtemp(prefix="ja-demo-")) / "journal.db"
    anyio.run(main, path)
