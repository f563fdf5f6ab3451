"""Disk-full torture, short: the journal on a small filesystem that fills up and
goes read-only.

A real end-to-end run of ``python -m tools.torture.diskfull`` (its ``main``): one
cycle of full, resume and read-only. It mounts a filesystem, so it needs root;
without it (or when mounting fails) the tool says SKIP and so does this test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist
from journal_archivist.testing import MockBackend
from tests.helpers import query, record, registration
from tools.torture import diskfull

if TYPE_CHECKING:
    from uuid import UUID


def test_a_full_then_read_only_disk_loses_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = diskfull.main(["--cycles", "1", "--seed", "5", "--dir", str(tmp_path)])
    output = capsys.readouterr().out
    verdict = output.strip().splitlines()[-1]
    if verdict.startswith("diskfull: SKIP"):
        pytest.skip(verdict.removeprefix("diskfull: "))
    assert code == 0, output
    assert verdict.startswith("diskfull: PASS 1 cycles"), output


async def test_done_marks_of_large_records_fit_in_half_the_reserve(
    tmp_path: Path, session: UUID
) -> None:
    """Deleting a delivered entry costs the WAL a few pages, not its size.

    SQLite built with ``SECURE_DELETE`` (Debian's is) zeroes every page a delete
    frees, so marking a 4 MiB entry done would write 4 MiB to the WAL, more than
    is left of the reserve once something else took half of it: ``wait_drained``
    would wait until the disk had room again. The journal deletes with
    ``secure_delete=FAST``, which costs no I/O of its own.
    """
    fs = diskfull.Filesystem("ext4", 48, str(tmp_path))
    try:
        fs.mount()
    except diskfull.MountUnavailable as exc:
        pytest.skip(str(exc))
    journal = os.path.join(fs.mountpoint, "journal.db")
    filler = os.path.join(fs.mountpoint, "filler")
    reserve = 4 * diskfull.MIB
    big = [record(session, f"{i}" * 500_000) for i in range(8)]  # one 4 MiB entry
    try:
        # The entry is journaled, undelivered, and checkpointed into the file at
        # close: the next open starts with an empty WAL.
        held = MockBackend()
        held.hold()
        async with Archivist.open(
            journal, [registration(held)], free_space_reserve=reserve
        ) as archivist:
            await archivist.append_messages(session, big)
            await held.wait_held()
            await archivist.shutdown(timeout=0)

        mock = MockBackend()
        mock.hold()
        async with Archivist.open(
            journal, [registration(mock)], free_space_reserve=reserve
        ) as archivist:
            await mock.wait_held()
            await anyio.to_thread.run_sync(diskfull.fill, filler)
            mock.release()
            with anyio.fail_after(10):
                await mock.wait_for_records(session, len(big))
            await anyio.to_thread.run_sync(diskfull.shrink, filler, reserve // 2)
            assert diskfull.free_bytes(fs.mountpoint) < reserve
            with anyio.fail_after(10):
                await archivist.wait_drained()
        assert query(Path(journal), "SELECT count(*) FROM entries") == [(0,)]
    finally:
        fs.unmount()
