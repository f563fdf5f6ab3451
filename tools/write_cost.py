"""Bytes written to mark delivered entries done, against a raw SQLite outbox.

    .venv/bin/python tools/write_cost.py [--dir DIR]

For each entry size, the library journals the entries for two no-op backends held
at a gate, then opens the gates and waits until they are delivered and marked done
(``wait_drained``); what the process wrote meanwhile (``wchar`` of
``/proc/self/io``: every byte handed to ``write``, WAL and checkpoints included)
is the cost of delivery and done-marks. The reference is a raw SQLite outbox on
the same machine: a WAL table of the same rows, deleted in one transaction, with
the SQLite build's own ``secure_delete`` (Debian's build zeroes freed pages), and
with ``secure_delete=FAST`` as the journal sets it. Linux only. Run from the
repository root.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import uuid
from contextlib import closing

import anyio

from journal_archivist import Archivist, MessageRecord, Registration
from journal_archivist.testing import MockBackend

#: (content bytes per entry, entries): about 8 MiB each.
CASES = ((500_000, 16), (50_000, 160), (2_000, 4_000))


def written() -> int:
    """Bytes this process has handed to ``write`` so far."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


async def library(directory: str, size: int, count: int) -> int:
    session = uuid.uuid4()
    mocks = [MockBackend(), MockBackend()]
    for mock in mocks:
        mock.hold()
    regs = [Registration(name=f"b{i}", backend=m) for i, m in enumerate(mocks)]
    async with Archivist.open(os.path.join(directory, "journal.db"), regs) as archivist:
        for _ in range(count):
            message = MessageRecord(session=session, role="user", content_md="x" * size)
            await archivist.append_messages(session, [message])
        for mock in mocks:
            await mock.wait_held()
        before = written()
        for mock in mocks:
            mock.release()
        await archivist.wait_drained()
        return written() - before


def reference(directory: str, size: int, count: int, secure_delete: str) -> int:
    path = os.path.join(directory, "outbox.db")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        if secure_delete:
            db.execute(f"PRAGMA secure_delete = {secure_delete}")
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB)")
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO outbox (payload) VALUES (?)",
            ((b"x" * size,) for _ in range(count)),
        )
        db.execute("COMMIT")
        before = written()
        db.execute("BEGIN")
        db.execute("DELETE FROM outbox")
        db.execute("COMMIT")
        return written() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where the files go (a temp dir)")
    args = parser.parse_args()
    with closing(sqlite3.connect(":memory:")) as db:
        (default,) = db.execute("PRAGMA secure_delete").fetchone()
    print(
        "| entries | library: deliver + mark done |"
        f" raw SQLite DELETE (build default, secure_delete={default}) |"
        " raw SQLite DELETE (secure_delete=FAST) |"
    )
    print("|---|---|---|---|")
    for size, count in CASES:
        costs = []
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            costs.append(anyio.run(library, directory, size, count))
        for secure_delete in ("", "FAST"):
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                costs.append(reference(directory, size, count, secure_delete))
        cells = " | ".join(f"{cost / 2**20:.2f} MiB" for cost in costs)
        print(f"| {count:,} of {size:,} B | {cells} |")


if __name__ == "__main__":
    main()
