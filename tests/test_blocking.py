"""SyncArchivist: the blocking API, on a real journal and a real SQLite archive."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import closing
from typing import TYPE_CHECKING

import pytest

from journal_archivist import (
    ArchivistClosed,
    DeliveryFailed,
    MessageRecord,
    OverflowPolicy,
    Queued,
    QueueFull,
    Registration,
    RetryPolicy,
    Sync,
    ValidationError,
)
from journal_archivist._blocking import SyncArchivist
from journal_archivist._errors import WrongProcess
from journal_archivist.backends import SqliteArchive

from .helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Safety net for waits on threads; never the assertion.
WAIT = 30.0
FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05)


def archive_registration(path: Path) -> Registration:
    return Registration(name="archive", backend=SqliteArchive(path), retry=FAST_RETRY)


def records(session: uuid.UUID, count: int, prefix: str = "m") -> list[MessageRecord]:
    return [
        MessageRecord(session=session, role="user", content_md=f"{prefix}{i}")
        for i in range(count)
    ]


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "archive.db"


@pytest.fixture
def archivist(journal_path: Path, archive_path: Path) -> Iterator[SyncArchivist]:
    sync = SyncArchivist.open(journal_path, [archive_registration(archive_path)])
    try:
        yield sync
    finally:
        sync.close()


def test_a_round_trip_appends_drains_reads_and_erases(
    archivist: SyncArchivist, journal_path: Path, session: uuid.UUID
) -> None:
    sent = records(session, 5)
    archivist.append_messages(session, sent)
    archivist.wait_drained(timeout=WAIT)
    assert archivist.read_session(session) == sent
    assert archivist.health().backends["archive"].lag_entries == 0
    assert archivist.journal_path == str(journal_path)
    archivist.compact()
    archivist.delete_session(session)
    archivist.wait_drained("archive", timeout=WAIT)
    assert archivist.read_session(session) == []
    assert not archivist.is_closed


def test_many_threads_appending_at_once_lose_nothing(
    archivist: SyncArchivist,
) -> None:
    threads, appends = 16, 50
    sessions = [uuid.uuid4() for _ in range(threads)]
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def producer(session: uuid.UUID) -> None:
        try:
            start.wait(WAIT)
            for i in range(appends):
                archivist.append_messages(session, records(session, 1, f"{i}-"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=producer, args=(s,)) for s in sessions]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert not errors
    archivist.wait_drained(timeout=WAIT)
    for session in sessions:
        contents = [r.content_md for r in archivist.read_session(session)]
        assert contents == [f"{i}-0" for i in range(appends)]  # in append order


def test_the_with_block_closes_and_releases_the_journal(
    journal_path: Path, archive_path: Path, session: uuid.UUID
) -> None:
    with SyncArchivist.open(
        journal_path, [archive_registration(archive_path)]
    ) as archivist:
        archivist.append_messages(session, records(session, 3))
    assert archivist.is_closed
    # Closing drained within close_timeout and released the lock: reopen it.
    with SyncArchivist.open(
        journal_path, [archive_registration(archive_path)]
    ) as again:
        assert len(again.read_session(session)) == 3
        assert again.health().backends["archive"].lag_entries == 0


def test_closing_twice_is_fine(archivist: SyncArchivist) -> None:
    archivist.close()
    archivist.close()
    archivist.shutdown(timeout=0)
    assert archivist.is_closed


def test_every_call_after_close_raises_archivist_closed(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    archivist.close()
    with pytest.raises(ArchivistClosed, match="closed"):
        archivist.append_messages(session, records(session, 1))
    with pytest.raises(ArchivistClosed, match="closed"):
        archivist.read_session(session)
    with pytest.raises(ArchivistClosed, match="closed"):
        archivist.wait_drained()
    with pytest.raises(ArchivistClosed, match="closed"):
        archivist.health()


def test_the_cores_errors_propagate_unchanged(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    stranger = MessageRecord(session=uuid.uuid4(), role="user", content_md="x")
    with pytest.raises(ValidationError, match="record 0, field 'session'"):
        archivist.append_messages(session, [stranger])
    with pytest.raises(ValueError, match="no backend named 'nope'"):
        archivist.wait_drained("nope")
    with pytest.raises(TypeError, match="UUID"):
        archivist.delete_session("not a uuid")  # type: ignore[arg-type]
    archivist.append_messages(session, records(session, 1))  # still usable


def test_wait_drained_gives_up_after_its_timeout(
    journal_path: Path, tmp_path: Path, session: uuid.UUID
) -> None:
    missing = tmp_path / "unmounted" / "archive.db"  # the backend is down
    with SyncArchivist.open(
        journal_path, [archive_registration(missing)], close_timeout=0
    ) as archivist:
        archivist.append_messages(session, records(session, 1))
        with pytest.raises(TimeoutError):
            archivist.wait_drained(timeout=0.2)


def test_calls_racing_a_close_end_or_are_refused_and_none_hangs(
    journal_path: Path, archive_path: Path
) -> None:
    archivist = SyncArchivist.open(journal_path, [archive_registration(archive_path)])
    started = threading.Barrier(9)
    outcomes: list[str] = []

    def producer() -> None:
        session = uuid.uuid4()
        started.wait(WAIT)
        try:
            while True:
                archivist.append_messages(session, records(session, 1))
        except ArchivistClosed:
            outcomes.append("closed")

    workers = [threading.Thread(target=producer) for _ in range(8)]
    for worker in workers:
        worker.start()
    started.wait(WAIT)
    archivist.close()
    for worker in workers:
        worker.join(WAIT)
    assert not any(worker.is_alive() for worker in workers)
    assert outcomes == ["closed"] * 8


def test_opening_a_locked_journal_raises_and_leaves_no_thread(
    archivist: SyncArchivist, journal_path: Path, tmp_path: Path
) -> None:
    before = threading.active_count()
    with pytest.raises(Exception, match="locked") as info:
        SyncArchivist.open(journal_path, [archive_registration(tmp_path / "b.db")])
    assert type(info.value).__name__ == "JournalLocked"
    assert threading.active_count() == before


async def test_a_call_from_a_running_event_loop_is_refused(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    with pytest.raises(RuntimeError, match="running an event loop"):
        archivist.append_messages(session, records(session, 1))


def test_a_call_from_the_archivists_own_loop_is_refused_not_a_deadlock(
    archivist: SyncArchivist,
) -> None:
    # What a backend calling back into the SyncArchivist would do.
    with pytest.raises(RuntimeError, match="running an event loop"):
        archivist._loop_thread.call_sync(archivist.health)


def test_a_forked_child_gets_wrong_process_and_the_parent_is_untouched(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each call raised, then leave at once
        try:
            os.close(read_end)
            report = {}
            for name, call in {
                "append": lambda: archivist.append_messages(session, []),
                "health": archivist.health,
                "close": archivist.close,
            }.items():
                try:
                    call()
                    report[name] = "returned"
                except BaseException as exc:
                    report[name] = f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for outcome in report.values():
        assert outcome.startswith("WrongProcess: ")
        assert f"opened by process {os.getpid()}" in outcome
        assert "post_fork" in outcome
    assert issubclass(WrongProcess, RuntimeError)
    archivist.append_messages(session, records(session, 2))  # the parent's still works
    archivist.wait_drained(timeout=WAIT)
    assert len(archivist.read_session(session)) == 2


CHILD = """
import sys, uuid
from journal_archivist import MessageRecord, Registration
from journal_archivist._blocking import SyncArchivist
from journal_archivist.backends import SqliteArchive

journal, archive, session = sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3])
reg = Registration(name="archive", backend=SqliteArchive(archive))
archivist = SyncArchivist.open(journal, [reg])
for i in range(200):
    record = MessageRecord(session=session, role="user", content_md=str(i))
    archivist.append_messages(session, [record])
# no close: the interpreter's exit must close it (and drain within close_timeout)
"""


def test_an_archivist_left_open_is_closed_at_exit_without_a_warning(
    journal_path: Path, archive_path: Path, session: uuid.UUID
) -> None:
    child = subprocess.run(
        [sys.executable, "-W", "default", "-X", "dev", "-c", CHILD,
         str(journal_path), str(archive_path), str(session)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    with SyncArchivist.open(journal_path, [archive_registration(archive_path)]) as a:
        # Delivered by the close at exit: nothing was left in the journal.
        assert a.health().backends["archive"].lag_entries == 0
        contents = [r.content_md for r in a.read_session(session)]
    assert contents == [str(i) for i in range(200)]


def test_a_dropped_archivist_warns_and_closes_itself(
    journal_path: Path, archive_path: Path, session: uuid.UUID
) -> None:
    archivist = SyncArchivist.open(journal_path, [archive_registration(archive_path)])
    archivist.append_messages(session, records(session, 1))
    loop_thread = archivist._loop_thread
    with pytest.warns(ResourceWarning, match="never closed"):
        del archivist  # the last reference: collected at once
    assert loop_thread._ended.wait(WAIT)  # the loop thread closed it and ended
    with SyncArchivist.open(journal_path, [archive_registration(archive_path)]) as a:
        assert len(a.read_session(session)) == 1


def test_the_operator_calls_and_stats_are_wrapped(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    archivist.append_messages(session, records(session, 2))
    archivist.wait_drained(timeout=WAIT)
    stats = archivist.stats()
    assert stats.appends_total == 1
    assert [b.name for b in stats.backends] == ["archive"]
    assert archivist.replay_dead_letters("archive") == 0
    assert archivist.purge_dead_letters("archive", ids=[1, 2]) == 0
    assert archivist.purge_quarantine("archive") == 0
    with pytest.raises(ValueError, match="nope"):
        archivist.replay_dead_letters("nope")


def test_from_config_opens_what_the_file_says(
    tmp_path: Path, session: uuid.UUID
) -> None:
    config = tmp_path / "archivist.toml"
    config.write_text(
        '[journal]\njournal_path = "data/journal.db"\nclose_timeout = 3.0\n\n'
        '[[backends]]\nname = "archive"\ntype = "sqlite"\n\n'
        '[backends.settings]\npath = "data/archive.db"\n'
    )
    (tmp_path / "data").mkdir()
    with SyncArchivist.from_config(config) as archivist:
        assert archivist.journal_path == str(tmp_path / "data" / "journal.db")
        assert archivist._loop_thread.close_timeout == 3.0
        archivist.append_messages(session, records(session, 1))
        archivist.wait_drained(timeout=WAIT)
        assert len(archivist.read_session(session)) == 1


# -- appends: handed to the committer without a task of their own -------------


def archived(path: Path, session: uuid.UUID) -> list[str]:
    """What the SQLite archive at ``path`` holds of ``session``, in order, read
    apart from the archivist."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT content_md FROM messages WHERE session = ? ORDER BY seq",
            (str(session),),
        ).fetchall()
    return [content for (content,) in rows]


def down_registration(tmp_path: Path, policy: Queued | Sync) -> Registration:
    """A backend that cannot deliver: its folder does not exist."""
    missing = tmp_path / "unmounted" / "archive.db"
    return Registration(
        name="archive", backend=SqliteArchive(missing), write_policy=policy
    )


def test_appends_are_counted_like_async_ones_and_empty_ones_do_nothing(
    archivist: SyncArchivist, session: uuid.UUID
) -> None:
    archivist.append_messages(session, [])
    archivist.append_messages(session, iter([]))
    for _ in range(3):
        archivist.append_messages(session, records(session, 2))
    stats = archivist.stats()
    assert stats.appends_total == 3
    assert stats.append_latency_seconds is not None
    assert stats.append_latency_seconds.count == 3
    archivist.wait_drained(timeout=WAIT)
    assert len(archivist.read_session(session)) == 6


def test_a_sync_backend_is_waited_for_before_the_append_returns(
    journal_path: Path, archive_path: Path, session: uuid.UUID
) -> None:
    registration = Registration(
        name="archive",
        backend=SqliteArchive(archive_path),
        write_policy=Sync(timeout=WAIT),
    )
    with SyncArchivist.open(journal_path, [registration]) as archivist:
        archivist.append_messages(session, records(session, 2))
        # No wait_drained: returning means the archive has it.
        assert archived(archive_path, session) == ["m0", "m1"]
        latency = archivist.stats().append_latency_seconds
        assert latency is not None
        assert latency.count == 1


def test_threads_appending_through_a_sync_backend_each_return_once_archived(
    journal_path: Path, archive_path: Path
) -> None:
    registration = Registration(
        name="archive",
        backend=SqliteArchive(archive_path),
        write_policy=Sync(timeout=WAIT),
    )
    threads, appends = 8, 20
    sessions = [uuid.uuid4() for _ in range(threads)]
    start = threading.Barrier(threads)
    behind: list[str] = []  # an append that returned before it was archived

    with SyncArchivist.open(journal_path, [registration]) as archivist:

        def producer(session: uuid.UUID) -> None:
            start.wait(WAIT)
            for i in range(appends):
                archivist.append_messages(session, records(session, 1, f"{i}-"))
                # Sync: what returned is in the archive already.
                if len(archived(archive_path, session)) < i + 1:
                    behind.append(f"{session} {i}")

        workers = [threading.Thread(target=producer, args=(s,)) for s in sessions]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert not any(worker.is_alive() for worker in workers)
        stats = archivist.stats()
    assert behind == []
    assert stats.appends_total == threads * appends
    assert stats.append_latency_seconds is not None
    assert stats.append_latency_seconds.count == threads * appends
    for session in sessions:
        assert archived(archive_path, session) == [f"{i}-0" for i in range(appends)]


def test_a_required_sync_backend_that_fails_raises_delivery_failed(
    journal_path: Path, tmp_path: Path, session: uuid.UUID
) -> None:
    policy = Sync(timeout=WAIT)
    with SyncArchivist.open(
        journal_path, [down_registration(tmp_path, policy)], close_timeout=0
    ) as archivist:
        with pytest.raises(DeliveryFailed, match="archive") as info:
            archivist.append_messages(session, records(session, 1))
        assert "stays journaled" in str(info.value)
        assert archivist.stats().appends_total == 1  # journaled all the same


def test_a_refused_append_raises_queue_full_and_is_counted(
    journal_path: Path, tmp_path: Path, session: uuid.UUID
) -> None:
    policy = Queued(capacity=1, overflow=OverflowPolicy.REJECT)
    with SyncArchivist.open(
        journal_path, [down_registration(tmp_path, policy)], close_timeout=0
    ) as archivist:
        archivist.append_messages(session, records(session, 1))
        with pytest.raises(QueueFull):
            archivist.append_messages(session, records(session, 1))
        stats = archivist.stats()
        assert stats.appends_total == 1
        assert stats.append_rejections_total is not None
        assert stats.append_rejections_total["queue_full"] == 1


LOOP_DIES = """
import sys, threading, time, uuid
from journal_archivist import MessageRecord, OverflowPolicy, Queued, Registration
from journal_archivist._blocking import SyncArchivist
from journal_archivist.backends import SqliteArchive

journal, missing, session = sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3])
policy = Queued(capacity=1, overflow=OverflowPolicy.BLOCK)  # the backend is down
reg = Registration(name="archive", backend=SqliteArchive(missing), write_policy=policy)
archivist = SyncArchivist.open(journal, [reg], close_timeout=0)
record = MessageRecord(session=session, role="user", content_md="x")
archivist.append_messages(session, [record])  # fills the backlog
outcome = []

def blocked():
    try:
        archivist.append_messages(session, [record])
        outcome.append("returned")
    except BaseException as exc:
        outcome.append(type(exc).__name__)

thread = threading.Thread(target=blocked)
thread.start()
loop_thread = archivist._loop_thread
deadline = time.monotonic() + 30
while not loop_thread._handed_in and time.monotonic() < deadline:
    time.sleep(0.001)  # polls a condition: the append is queued, undecided
print("handed in:", len(loop_thread._handed_in))
# The loop ends without a shutdown, as if it died.
loop_thread._loop.call_soon_threadsafe(loop_thread._stop.set)
thread.join(30)
print("blocked caller:", outcome)
try:
    archivist.append_messages(session, [record])
except BaseException as exc:
    print("next call:", type(exc).__name__)
"""


def test_an_append_waiting_in_the_committer_when_the_loop_ends_is_not_left_hanging(
    journal_path: Path, tmp_path: Path, session: uuid.UUID
) -> None:
    # In a child interpreter: the archivist is left never shut down (its loop
    # is gone), which it says when it is collected, whenever that is.
    missing = tmp_path / "unmounted" / "archive.db"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            LOOP_DIES,
            str(journal_path),
            str(missing),
            str(session),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        cwd=ROOT,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [
        "handed in: 1",
        "blocked caller: ['ArchivistClosed']",
        "next call: ArchivistClosed",
    ]
