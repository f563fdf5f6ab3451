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


async def test_done_marks_of_large_entries_fit_in_half_the_reserve(
    tmp_path: Path, session: UUID
) -> None:
    """Marking an entry done costs the WAL a few pages, not the entry's size.

    Half-MiB entries for two backends, delivered while the disk is full; then
    something gives back half of the reserve, and the done-marks must fit in it.
    Two things once made them cost the entries' size again, more than was left,
    so ``wait_drained`` waited until the disk had room: SQLite built with
    ``SECURE_DELETE`` (Debian's is) zeroes every page a delete frees (the journal
    deletes with ``secure_delete=FAST``), and clearing a row's last ``targets``
    bit before deleting it rewrote the row whole (settled rows are deleted first).
    """
    fs = diskfull.Filesystem("ext4", 48, str(tmp_path))
    try:
        fs.mount()
    except diskfull.MountUnavailable as exc:
        pytest.skip(str(exc))
    journal = os.path.join(fs.mountpoint, "journal.db")
    filler = os.path.join(fs.mountpoint, "filler")
    reserve = 4 * diskfull.MIB
    entries = [[record(session, f"{i}" * 500_000)] for i in range(8)]  # 4 MiB

    async def open_held() -> tuple[Archivist, list[MockBackend]]:
        mocks = [MockBackend(), MockBackend()]
        for mock in mocks:
            mock.hold()
        regs = [registration(m, name=f"b{i}") for i, m in enumerate(mocks)]
        archivist = await Archivist.open(journal, regs, free_space_reserve=reserve)
        return archivist, mocks

    try:
        # Journaled, undelivered, and checkpointed into the file at close: the
        # next open starts with an empty WAL.
        archivist, mocks = await open_held()
        try:
            for records in entries:
                await archivist.append_messages(session, records)
            for mock in mocks:
                await mock.wait_held()
        finally:
            await archivist.shutdown(timeout=0)

        archivist, mocks = await open_held()
        try:
            for mock in mocks:
                await mock.wait_held()
            await anyio.to_thread.run_sync(diskfull.fill, filler)
            for mock in mocks:
                mock.release()
            with anyio.fail_after(10):
                for mock in mocks:
                    await mock.wait_for_records(session, len(entries))
            await anyio.to_thread.run_sync(diskfull.shrink, filler, reserve // 2)
            assert diskfull.free_bytes(fs.mountpoint) < reserve
            with anyio.fail_after(10):
                await archivist.wait_drained()
        finally:
            await archivist.shutdown(timeout=5)
        assert query(Path(journal), "SELECT count(*) FROM entries") == [(0,)]
    finally:
        fs.unmount()
