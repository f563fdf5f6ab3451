"""Crash recovery: nothing acknowledged is lost, whatever moment the process dies.

A child process appends and delivers until it is killed with SIGKILL, between a
commit and its delivery as often as not. Reopening the journal must then deliver
every acknowledged record, in per-session order, with no record missing (contract
1, 2, 3): acknowledged <= delivered <= acknowledged + in flight at the kill (an
append committed but not yet acknowledged may or may not be there). Delivery is
at-least-once: a record delivered just before the kill may be delivered again,
which the idempotent view removes. The longer version is the torture tool
``tools/torture/kill.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from journal_archivist import Archivist, Durability
from journal_archivist.testing import MockBackend
from tests.crash_child import FileBackend
from tests.helpers import ROOT, record, records, registration

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID


def run_until_killed(
    journal: Path, durability: Durability, log: Path, acks: int, *extra: str
) -> list[str]:
    """Start the crash child, SIGKILL it after ``acks`` acknowledgements.

    Returns every line the child printed (``begin``, ``ack``, ``begin-erase``,
    ``erased``) until it died, in order.
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
            printed.append(line.strip())
            count += line.startswith("ack ")
            if count >= acks:
                break
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        # What it printed before the kill landed counts too: it went on meanwhile.
        # Read through the same file object: lines it has buffered already would
        # be skipped by communicate(), which reads the pipe itself.
        rest = child.stdout.read()
        stderr = child.stderr.read() if child.stderr else ""
        child.wait(timeout=30)
        child.stdout.close()
        if child.stderr:
            child.stderr.close()
    printed.extend(line.strip() for line in rest.splitlines() if line.strip())
    assert count >= acks, f"child stopped early: {stderr}"
    return printed


def allowed_outcomes(printed: list[str]) -> dict[str, list[list[str]]]:
    """What each session's archive may hold after recovery, given what the child
    printed before it was killed: exactly what the guarantees allow.

    Each session has one sequential producer, so at most its last operation was
    in flight at the kill (begun, not acknowledged): committed or not, either
    outcome is allowed. Everything acknowledged after the session's last
    acknowledged erasure must be there, in order; nothing from before it.
    """
    acked: dict[str, list[str]] = {}
    in_flight: dict[str, str | None] = {}  # content, "ERASE", or None
    for line in printed:
        kind, session, *content = line.split(" ")
        if kind == "begin":
            in_flight[session] = content[0]
        elif kind == "begin-erase":
            in_flight[session] = "ERASE"
        elif kind == "ack":
            acked.setdefault(session, []).append(content[0])
            in_flight[session] = None
        elif kind == "erased":
            acked[session] = []
            in_flight[session] = None
    outcomes: dict[str, list[list[str]]] = {}
    for session in in_flight.keys() | acked.keys():
        held = acked.get(session, [])
        pending = in_flight.get(session)
        if pending is None:
            outcomes[session] = [held]
        elif pending == "ERASE":
            outcomes[session] = [held, []]
        else:
            outcomes[session] = [held, [*held, pending]]
    return outcomes


def test_the_oracle_allows_exactly_what_the_guarantees_allow() -> None:
    printed = [
        "begin s1 n1",
        "ack s1 n1",
        "begin s2 n2",
        "ack s2 n2",
        "begin-erase s2",
        "erased s2",
        "begin s2 n3",
        "ack s2 n3",
        "begin s1 n4",  # in flight at the kill: committed or not
        "begin s2 n5",
        "ack s2 n5",
        "begin-erase s2",  # in flight too
    ]
    assert allowed_outcomes(printed) == {
        "s1": [["n1"], ["n1", "n4"]],
        "s2": [["n3", "n5"], []],
    }


def delivered(log: Path, archive: MockBackend | None = None) -> dict[str, list[str]]:
    """What an idempotent archive holds after the log's appends and erasures (and
    then ``archive``'s records), per session, in delivery order."""
    state: dict[str, dict[str, str]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        session, rest = line.split(" ", 1)
        if rest == "ERASE":
            state.pop(session, None)
        else:
            message_id, content = rest.split(" ")
            state.setdefault(session, {}).setdefault(message_id, content)
    if archive is not None:
        for session_id, recs in archive.records_by_session().items():
            held = state.setdefault(str(session_id), {})
            for r in recs:
                held.setdefault(str(r.message_id), r.content_md)
    return {session: list(held.values()) for session, held in state.items()}


def assert_allowed(printed: list[str], held: dict[str, list[str]]) -> None:
    outcomes = allowed_outcomes(printed)
    for session in outcomes.keys() | held.keys():
        got = held.get(session, [])
        assert got in outcomes.get(session, [[]]), (
            f"session {session} holds {got}, allowed: {outcomes.get(session)}"
        )


@pytest.mark.parametrize("durability", [Durability.FULL, Durability.NORMAL])
async def test_sigkill_loses_no_acknowledged_record(
    tmp_path: Path, durability: Durability
) -> None:
    journal, log = tmp_path / "journal.db", tmp_path / "delivered.log"
    printed = run_until_killed(journal, durability, log, acks=300)
    mock = MockBackend()
    async with Archivist.open(journal, [registration(mock, name="files")]) as archivist:
        with anyio.fail_after(30):
            await archivist.wait_drained()
        assert archivist.health().journal.lost_entries == 0
    # Delivered before or after the crash, once per message id, in order.
    assert_allowed(printed, delivered(log, mock))


@pytest.mark.parametrize("durability", [Durability.FULL, Durability.NORMAL])
async def test_sigkill_loses_no_acknowledged_erasure(
    tmp_path: Path, durability: Durability
) -> None:
    journal, log = tmp_path / "journal.db", tmp_path / "delivered.log"
    printed = run_until_killed(journal, durability, log, 300, "7")
    assert sum(line.startswith("erased ") for line in printed) >= 4, (
        "the child erased too little to test anything"
    )
    # Recover with the same kind of archive, appending to the same log.
    async with Archivist.open(
        journal, [registration(FileBackend(str(log)), name="files")]
    ) as archivist:
        with anyio.fail_after(30):
            await archivist.wait_drained()
    assert_allowed(printed, delivered(log))


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
