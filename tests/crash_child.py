"""A process that appends until it is killed: the victim of the crash tests.

Usage: python -m tests.crash_child JOURNAL DURABILITY DELIVERED_LOG [ERASE_EVERY]

Appends to 4 sessions forever, one producer per session, and prints ``begin
<session> <content>`` before each append and ``ack <session> <content>`` after it
returns (the acknowledgement). With ERASE_EVERY, each session's producer also erases
its session after every ERASE_EVERY appends, printing ``begin-erase <session>``
before ``delete_session`` and ``erased <session>`` once it returns. So the parent
knows what was acknowledged, and what was in flight at the kill. Its backend appends
every record it is given (``<session> <message_id> <content>``) and every erasure
(``<session> ERASE``) to DELIVERED_LOG and fsyncs before returning, like a durable
archive, but is slow, so a SIGKILL usually lands with a backlog both journaled and
in flight.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import TYPE_CHECKING

import anyio

from journal_archivist import (
    Archivist,
    Durability,
    MessageRecord,
    Queued,
    Registration,
)
from journal_archivist.backends import ArchiveBackend

if TYPE_CHECKING:
    from collections.abc import Sequence

SESSIONS = [uuid.UUID(int=i + 1) for i in range(4)]


class FileBackend(ArchiveBackend):
    """Appends ``<session> <message_id> <content>`` lines, fsynced, per call."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def append_messages(
        self, session: uuid.UUID, records: Sequence[MessageRecord]
    ) -> None:
        await anyio.sleep(0.002)
        lines = "".join(f"{session} {r.message_id} {r.content_md}\n" for r in records)
        os.write(self.fd, lines.encode())
        os.fsync(self.fd)

    async def delete_session(self, session: uuid.UUID) -> None:
        os.write(self.fd, f"{session} ERASE\n".encode())
        os.fsync(self.fd)

    async def health_check(self) -> None:
        return None


async def main(journal: str, durability: str, log: str, erase_every: str = "0") -> None:
    reg = Registration(
        name="files",
        backend=FileBackend(log),
        write_policy=Queued(batch_window_ms=5, max_batch=16),
    )
    archivist = await Archivist.open(journal, [reg], durability=Durability(durability))
    counter = 0

    async def producer(session: uuid.UUID) -> None:
        nonlocal counter
        appended = 0
        while True:
            if int(erase_every) and appended and appended % int(erase_every) == 0:
                print(f"begin-erase {session}", flush=True)  # noqa: T201
                await archivist.delete_session(session)
                print(f"erased {session}", flush=True)  # noqa: T201
            appended += 1
            counter += 1
            content = f"n{counter}"
            print(f"begin {session} {content}", flush=True)  # noqa: T201
            await archivist.append_messages(
                session,
                [MessageRecord(session=session, role="user", content_md=content)],
            )
            print(f"ack {session} {content}", flush=True)  # noqa: T201

    async with anyio.create_task_group() as group:
        for session in SESSIONS:
            group.start_soon(producer, session)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:5])
