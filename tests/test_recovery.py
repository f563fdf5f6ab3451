"""Crash recovery: nothing acknowledged is lost, whatever moment the process dies.

A child process appends and delivers until it is killed with SIGKILL, between a
commit and its delivery as often as not. Reopening the journal must then deliver
every acknowledged record, in per-session order, with no record missing (contract
1, 2, 3). Delivery is at-least-once: a record delivered just before the kill may be
delivered again, which the idempotent view removes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist, Durability
from journal_archivist.testing import MockBackend
from tests.crash_child import FileBackend
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent


def run_until_killed(
    journal: Path, durability: Durability, log: Path, acks: int, *extra: str
) -> list[str]:
    """Start the crash child, SIGKILL it after ``acks`` acknowledgements.

    Returns every line the child printed (``ack ...``, ``erased ...``), in order,
    with its first word.
    """
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash_child",
            str(journal),
            durability.value,
            str(log),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    printed: list[str] = []
    count = 0
    # A child that never acknowledges must not hang the suite: kill it, and the
    # assertion below says so.
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        for line in child.stdout:
            if line.startswith(("ack ", "erased ")):
                printed.append(line.strip())
                count += line.startswith("ack ")
                if count >= acks:
                    break
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
    assert count >= acks, f"child stopped early: {stderr}"
    return printed


@pytest.mark.parametrize("durability", [Durability.FULL, Durability.NORMAL])
async def test_sigkill_loses_no_acknowledged_record(
    tmp_path: Path, durability: Durability
) -> None:
    journal, log = tmp_path / "journal.db", tmp_path / "delivered.log"
    printed = run_until_killed(journal, durability, log, acks=300)
    acked = [line.split(" ", 1)[1] for line in printed]  # "<session> <content>"

    delivered_before = log.read_text().splitlines() if log.exists() else []
    mock = MockBackend()
    async with Archivist.open(journal, [registration(mock, name="files")]) as archivist:
        with anyio.fail_after(30):
            await archivist.wait_drained()
        assert archivist.health().journal.lost_entries == 0

    # Everything delivered, before or after the crash, once per message id.
    seen: dict[str, str] = {}
    order: dict[str, list[int]] = {}
    for line in delivered_before:
        session, message_id, content = line.split(" ")
        if message_id not in seen:
            seen[message_id] = content
            order.setdefault(session, []).append(int(content[1:]))
    for session_id, recs in mock.records_by_session().items():
        for r in recs:
            if str(r.message_id) not in seen:
                seen[str(r.message_id)] = r.content_md
                order.setdefault(str(session_id), []).append(int(r.content_md[1:]))
    contents = set(seen.values())
    missing = [a for a in acked if a.split(" ")[1] not in contents]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    for session, numbers in order.items():
        assert numbers == sorted(numbers), f"session {session} out of order"
    assert len(seen) == len(contents), "a message id was delivered with two contents"


def replay(log: Path) -> dict[str, list[str]]:
    """What an idempotent archive holds after the log's appends and erasures."""
    state: dict[str, dict[str, str]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        session, rest = line.split(" ", 1)
        if rest == "ERASE":
            state.pop(session, None)
        else:
            message_id, content = rest.split(" ")
            state.setdefault(session, {}).setdefault(message_id, content)
    return {session: list(held.values()) for session, held in state.items()}


@pytest.mark.parametrize("durability", [Durability.FULL, Durability.NORMAL])
async def test_sigkill_loses_no_acknowledged_erasure(
    tmp_path: Path, durability: Durability
) -> None:
    journal, log = tmp_path / "journal.db", tmp_path / "delivered.log"
    printed = run_until_killed(journal, durability, log, 300, "7")
    # Recover with the same kind of archive, appending to the same log.
    async with Archivist.open(
        journal, [registration(FileBackend(str(log)), name="files")]
    ) as archivist:
        with anyio.fail_after(30):
            await archivist.wait_drained()
    held = replay(log)

    # Each session's producer is sequential: what it acknowledged after its last
    # acknowledged erasure is exactly what the archive must hold, except that an
    # erasure it had started when killed (7 appends after the last one) may or
    # may not have been journaled.
    expected: dict[str, list[str]] = {}
    erasures = 0
    for line in printed:
        kind, session, *content = line.split(" ")
        if kind == "erased":
            expected[session] = []
            erasures += 1
        else:
            expected.setdefault(session, []).extend(content)
    assert erasures >= 4, "the child erased too little to test anything"
    for session, contents in expected.items():
        got = held.get(session, [])
        erased_at_kill = len(contents) == 7 and got == []
        assert got == contents or erased_at_kill, f"session {session}: {got}"


async def test_close_without_draining_then_reopen_delivers_everything_in_order(
    journal_path: Path, session: UUID
) -> None:
    held = MockBackend()
    archivist = await Archivist.open(journal_path, [registration(held)])
    held.hold()
    await archivist.append_messages(session, records(session, 50))
    await archivist.shutdown(timeout=0)
    assert held.appended_count(session) == 0

    mock = MockBackend()
    async with Archivist.open(journal_path, [registration(mock)]) as archivist:
        assert archivist.health().backends["mock"].lag_entries == 1
        await archivist.append_messages(session, [record(session, "after restart")])
        with anyio.fail_after(5):
            await archivist.wait_drained()
    assert [r.content_md for r in mock.records(session)] == [
        *(f"m{i}" for i in range(50)),
        "after restart",
    ]
    assert os.path.getsize(journal_path) > 0
