"""JetStreamArchive against a real NATS server with JetStream.

The server comes from ``JOURNAL_ARCHIVIST_TEST_NATS_URL`` (default: the local test
server at nats://127.0.0.1:4222, which ``.ci/run`` starts). Without one the tests
skip, except in CI, where they fail. Each test works in a stream and subject
prefix of its own (random suffix), deleted afterwards. Tests that stop a server
run a private one (``tests/backends/nats_server.py``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import random
import subprocess
import sys
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
import nats
import nats.js.errors
import pytest

from journal_archivist import Archivist, BackendError, MessageRecord
from journal_archivist._config_file import load_config
from journal_archivist.backends import (
    JetStreamArchive,
    SessionGroup,
    _jetstream_ops as ops,
)
from journal_archivist.backends._codec import decode_record, encode_record
from journal_archivist.backends._jetstream_conn import Conn
from journal_archivist.backends._jetstream_wire import covers
from journal_archivist.testing import check_backend
from tests.backends.nats_server import NATS_SERVER, NatsServer, free_port
from tests.helpers import record, records, registration, texts
from tests.services import DEFAULT_NATS_URL, unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from nats.aio.client import Client

PASSWORD = "hunter2-Sekr3t-pw"


@pytest.fixture
def nats_binary() -> str:
    """The nats-server binary, for a private server; skips (fails in CI) if none."""
    if NATS_SERVER is None:
        unavailable("nats-server is not installed (apt-get install nats-server)")
    return NATS_SERVER


@pytest.fixture
async def admin(nats_url: str) -> AsyncIterator[Client]:
    """A plain nats connection for looking behind the archive's back."""
    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


class Names:
    def __init__(self) -> None:
        suffix = uuid4().hex[:12]
        self.stream = f"ja_test_{suffix}"
        self.prefix = f"ja_test.{suffix}"


@pytest.fixture
async def names(admin: Client) -> AsyncIterator[Names]:
    """A fresh stream name and subject prefix; the stream is deleted afterwards."""
    made = Names()
    try:
        yield made
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await admin.jetstream().delete_stream(made.stream)


@pytest.fixture
async def make_archive(
    nats_url: str, names: Names
) -> AsyncIterator[Callable[..., JetStreamArchive]]:
    """Build archives on this test's stream; closes every one at the end."""
    made: list[JetStreamArchive] = []

    def make(**options: Any) -> JetStreamArchive:
        options.setdefault("stream", names.stream)
        options.setdefault("subject_prefix", names.prefix)
        options.setdefault("create_stream", True)
        archive = JetStreamArchive(options.pop("servers", nats_url), **options)
        made.append(archive)
        return archive

    try:
        yield make
    finally:
        for archive in made:
            await archive.aclose()


async def _api(admin: Client, subject: str, request: dict[str, Any] | None) -> Any:
    payload = b"" if request is None else json.dumps(request).encode()
    answer = json.loads((await admin.request(f"$JS.API.{subject}", payload)).data)
    assert "error" not in answer, answer
    return answer


async def _state(admin: Client, names: Names, subjects: str = "") -> dict[str, Any]:
    """The stream's state, with per-subject counts for ``subjects`` if given."""
    request = {"subjects_filter": subjects} if subjects else None
    answer = await _api(admin, f"STREAM.INFO.{names.stream}", request)
    state: dict[str, Any] = answer["state"]
    return state


async def _subjects(admin: Client, names: Names, session: UUID) -> dict[str, int]:
    state = await _state(admin, names, f"{names.prefix}.{session}.*")
    return dict(state.get("subjects") or {})


async def _mark(admin: Client, names: Names, session: UUID) -> bytes:
    answer = await _api(
        admin,
        f"STREAM.MSG.GET.{names.stream}",
        {"last_by_subj": f"{names.prefix}.{session}.erased"},
    )
    return base64.b64decode(answer["message"]["data"])


def _group(
    session: UUID,
    batch: list[MessageRecord],
    at: float,
    *,
    erased_at: float | None = None,
) -> SessionGroup:
    """A group of ``batch`` journaled at ``at`` (erasing at ``erased_at`` if set)."""
    return SessionGroup(
        session,
        tuple(batch),
        erase=erased_at is not None,
        erased_at=erased_at,
        appended_at=(at,) * len(batch),
    )


def _error_texts(exc: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        current = current.__cause__ or current.__context__


# -- packaging and configuration -------------------------------------------------------


def test_the_package_imports_without_nats_and_the_module_names_the_extra() -> None:
    code = (
        "import sys\n"
        "import journal_archivist, journal_archivist.backends\n"
        "import journal_archivist.testing\n"
        "assert 'nats' not in sys.modules, 'journal_archivist imported nats'\n"
        "sys.modules['nats'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    journal_archivist.backends.JetStreamArchive\n"
        "except ImportError as exc:\n"
        "    assert isinstance(exc.__cause__, ImportError)\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without nats')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'journal-archivist[nats]'" in result.stdout


@pytest.mark.parametrize(
    ("options", "error", "complaint"),
    [
        ({"stream": "a.b"}, ValueError, "stream must be"),  # a dot: a subject token
        ({"stream": "a b"}, ValueError, "stream must be"),  # whitespace
        ({"stream": "x" * 65}, ValueError, "stream must be"),  # too long
        ({"subject_prefix": "a.*"}, ValueError, "subject_prefix"),  # a wildcard
        ({"subject_prefix": "a..b"}, ValueError, "subject_prefix"),  # empty token
        ({"subject_prefix": "$JS"}, ValueError, "subject_prefix"),  # system subjects
        ({"replicas": 0}, ValueError, "replicas must be 1 to 5"),
        ({"replicas": 2.0}, TypeError, "replicas must be an int"),
        ({"max_age": 0}, ValueError, "max_age must be"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1"),
        ({"tls": True}, TypeError, "tls must be an ssl.SSLContext"),
    ],
)
def test_bad_options_are_refused(
    options: dict[str, Any], error: type[Exception], complaint: str
) -> None:
    with pytest.raises(error, match=complaint):
        JetStreamArchive(DEFAULT_NATS_URL, **options)


@pytest.mark.parametrize(
    "servers",
    [
        "http://127.0.0.1:4222",  # not a NATS scheme
        "nats://",  # no host
        "",  # nothing
        ["nats://127.0.0.1:4222", f"u:{PASSWORD}@127.0.0.1:4222"],  # no scheme
    ],
)
def test_bad_servers_are_refused_without_showing_a_password(
    servers: str | list[str],
) -> None:
    with pytest.raises(ValueError, match="servers must") as raised:
        JetStreamArchive(servers)
    assert PASSWORD not in str(raised.value)


def test_repr_masks_passwords_and_tokens() -> None:
    archive = JetStreamArchive(
        f"nats://alice:{PASSWORD}@a.invalid:4222,tls://{PASSWORD}@b.invalid:4222"
    )
    text = repr(archive)
    assert PASSWORD not in text
    assert "nats://alice:***@a.invalid:4222,tls://***@b.invalid:4222" in text


def test_a_config_file_builds_a_jetstream_archive_with_its_password_masked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "archivist.toml"
    path.write_text(
        '[journal]\njournal_path = "j.db"\n'
        '[[backends]]\nname = "stream"\ntype = "jetstream"\n'
        "settings = { servers = ["
        '"nats://archivist:${NATS_PASSWORD}@127.0.0.1:4222", "nats://127.0.0.2:4222"],'
        ' stream = "CHAT", subject_prefix = "chat.archive", create_stream = true,'
        " replicas = 3, max_age = 86400.0, timeout = 5.0, max_in_flight = 64,"
        ' name = "chat-archivist" }\n'
    )
    config = load_config(path, environ={"NATS_PASSWORD": PASSWORD})
    [reg] = config.registrations()
    assert isinstance(reg.backend, JetStreamArchive)
    assert repr(reg.backend) == (
        "JetStreamArchive('nats://archivist:***@127.0.0.1:4222,nats://127.0.0.2:4222',"
        " stream='CHAT', subject_prefix='chat.archive')"
    )
    assert PASSWORD not in repr(reg)


@pytest.mark.parametrize(
    ("filters", "prefix", "covered"),
    [
        (["a.b.>"], "a.b", True),
        ([">"], "a.b", True),
        (["a.>"], "a.b", True),
        (["a.*.*.*"], "a.b", True),
        (["a.b.*.*"], "a.b", True),
        (["a.b.*"], "a.b", False),  # one token short
        (["a.b.*.x"], "a.b", False),  # only one message id
        (["a.c.>"], "a.b", False),  # another prefix
        (["a.b"], "a.b", False),  # the prefix alone
        (["x.>", "a.b.>"], "a.b", True),  # any one of them
    ],
)
def test_which_stream_subjects_cover_a_prefix(
    filters: list[str], prefix: str, covered: bool
) -> None:
    assert covers(filters, prefix) is covered


# -- the contract and idempotence ------------------------------------------------------


async def test_contract(make_archive: Callable[..., JetStreamArchive]) -> None:
    await check_backend(make_archive)


async def test_a_redelivered_record_is_refused_by_the_server_and_counted_as_stored(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    a, b = uuid4(), uuid4()
    batch = [
        SessionGroup(a, tuple(records(a, 3))),
        SessionGroup(b, tuple(records(b, 2))),
    ]
    archive = make_archive()
    await archive.write_batch(batch)
    stored = await _state(admin, names)
    assert stored["messages"] == 5
    await archive.write_batch(batch)  # redelivered: the server refuses each (10071)
    await archive.aclose()
    await make_archive().write_batch(batch)  # and after a restart
    again = await _state(admin, names)
    assert (again["messages"], again["last_seq"]) == (5, stored["last_seq"])
    assert await archive.read_session(a) == list(batch[0].records)
    assert (await archive.count(a), await archive.count(b)) == (3, 2)
    # The refusal is the server's own, whatever the dedupe window: a raw publish
    # expecting an empty subject is refused with 10071.
    subject = f"{names.prefix}.{a}.{batch[0].records[0].message_id}"
    with pytest.raises(nats.js.errors.APIError) as raised:
        await admin.jetstream().publish(
            subject, b"{}", headers={"Nats-Expected-Last-Subject-Sequence": "0"}
        )
    assert raised.value.err_code == 10071


async def test_one_subject_per_record_and_the_journal_time_in_a_header(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    one = record(session, "x")
    await make_archive().write_batch([_group(session, [one], 1234.5)])
    subject = f"{names.prefix}.{session}.{one.message_id}"
    msg = await admin.jetstream().get_last_msg(names.stream, subject)
    assert msg.headers is not None
    assert msg.headers["Archivist-Appended-At"] == "1234.5"
    assert msg.data is not None
    assert decode_record(msg.data) == one  # the body: the record's JSON


# -- order -----------------------------------------------------------------------------


async def test_records_read_in_append_order_however_the_publishes_raced(
    make_archive: Callable[..., JetStreamArchive],
) -> None:
    session, other = uuid4(), uuid4()
    # Ids and timestamps run backwards; 300 concurrent publishes arrive in any order.
    first = sorted(records(session, 300, "a"), key=lambda r: r.message_id.int)[::-1]
    archive = make_archive(max_in_flight=64)
    await archive.append_messages(session, first)
    second, third = records(session, 4, "b"), records(session, 3, "c")
    await archive.write_batch(
        [
            SessionGroup(session, tuple(second)),
            SessionGroup(other, tuple(records(other, 2))),
            SessionGroup(session, tuple(third)),
        ]
    )
    assert await make_archive().read_session(session) == first + second + third


async def test_records_read_in_journal_time_order_whatever_order_they_arrived_in(
    make_archive: Callable[..., JetStreamArchive],
) -> None:
    # Two journals feed one stream: the later-journaled batch arrives first.
    session = uuid4()
    late, early = records(session, 3, "late"), records(session, 2, "early")
    archive = make_archive()
    await archive.write_batch([_group(session, late, 20.0)])
    await archive.write_batch([_group(session, early, 10.0)])
    assert texts(await archive.read_session(session)) == [
        "early0",
        "early1",
        "late0",
        "late1",
        "late2",
    ]


# -- erasure and marks -----------------------------------------------------------------


async def test_an_erasure_deletes_only_older_records_and_leaves_a_mark(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    older, newer = records(session, 2, "old"), records(session, 2, "new")
    archive = make_archive()
    await archive.write_batch([_group(session, older, 10.0)])
    await archive.write_batch([_group(session, newer, 20.0)])
    await archive.write_batch([SessionGroup(session, (), erase=True, erased_at=15.0)])
    assert await make_archive().read_session(session) == newer
    subjects = await _subjects(admin, names, session)
    assert subjects == {
        **{f"{names.prefix}.{session}.{r.message_id}": 1 for r in newer},
        f"{names.prefix}.{session}.erased": 1,
    }
    assert await _mark(admin, names, session) == b"15.0"
    assert await archive.count(session) == 2
    assert (await _state(admin, names))["consumer_count"] == 0  # scans cleaned up


async def test_a_late_older_record_is_skipped_after_the_mark(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.write_batch([SessionGroup(session, (), erase=True, erased_at=15.0)])
    before = (await _state(admin, names))["last_seq"]
    late, fresh = record(session, "late"), record(session, "fresh")
    await archive.write_batch([_group(session, [late], 12.0)])
    # Not published at all: the archive knew the mark (nothing new in the stream).
    assert (await _state(admin, names))["last_seq"] == before
    await archive.write_batch([_group(session, [fresh], 16.0)])
    assert await make_archive().read_session(session) == [fresh]


async def test_a_record_published_with_a_stale_mark_is_deleted_by_its_publisher(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    # B last saw the mark at 5; A erases at 15; then B delivers a record journaled
    # at 12. B publishes it (its mark is stale), reads the mark after the publish,
    # sees 15 and deletes it: the publish-then-check path.
    session = uuid4()
    a, b = make_archive(), make_archive()
    await b.write_batch([SessionGroup(session, (), erase=True, erased_at=5.0)])
    await a.write_batch([SessionGroup(session, (), erase=True, erased_at=15.0)])
    before = (await _state(admin, names))["last_seq"]
    late = record(session, "late")
    await b.write_batch([_group(session, [late], 12.0)])
    assert (await _state(admin, names))["last_seq"] == before + 1  # it was published
    assert f"{names.prefix}.{session}.{late.message_id}" not in await _subjects(
        admin, names, session
    )
    assert await a.read_session(session) == []
    # And B now knows the mark: the next late record is not published at all.
    await b.write_batch([_group(session, [record(session, "later")], 13.0)])
    assert (await _state(admin, names))["last_seq"] == before + 1


async def test_a_retry_that_skips_a_record_still_deletes_what_its_attempt_stored(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    # B's first attempt stored a record journaled at 12 after A's erasure at 15
    # had scanned, then failed before its mark check (done here by hand). B then
    # learns the mark; its retry skips the record but must still delete it.
    session = uuid4()
    a, b = make_archive(), make_archive()
    await a.write_batch([SessionGroup(session, (), erase=True, erased_at=15.0)])
    late = record(session, "late")
    subject = f"{names.prefix}.{session}.{late.message_id}"
    await admin.jetstream().publish(
        subject,
        encode_record(late),
        headers={"Archivist-Appended-At": "12.0", "Archivist-Position": "0"},
    )
    assert await b.read_session(session) == []  # B learns the mark (15)
    assert subject in await _subjects(admin, names, session)
    await b.write_batch([_group(session, [late], 12.0)])  # the retry
    assert subject not in await _subjects(admin, names, session)


async def test_a_record_stored_before_the_erasure_scan_is_deleted_by_the_eraser(
    make_archive: Callable[..., JetStreamArchive],
) -> None:
    session = uuid4()
    a, b = make_archive(), make_archive()
    stale, kept = record(session, "stale"), record(session, "kept")
    await b.write_batch([_group(session, [stale], 12.0), _group(session, [kept], 20.0)])
    await a.write_batch([SessionGroup(session, (), erase=True, erased_at=15.0)])
    assert await b.read_session(session) == [kept]


async def test_deleting_a_message_another_writer_deleted_first_is_no_error(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    """Erasers and publishers' after-checks of several processes race to delete
    the same messages: one already gone (the server says "sequence N not
    found", or "no message found") counts as deleted."""
    await make_archive().health_check()  # creates the stream
    js = admin.jetstream()
    seqs = [
        (await js.publish(f"{names.prefix}.{uuid4()}.{uuid4()}", b"x")).seq
        for _ in range(4)
    ]
    conn = Conn(
        nc=admin,
        js=js,
        stream=names.stream,
        prefix=names.prefix,
        timeout=5.0,
        max_message=1 << 20,
    )
    inside, first = seqs[1:3], seqs[:1]
    for gone in (inside, first):  # "sequence N not found", "no message found"
        await ops.delete(conn, gone)
        await ops.delete(conn, gone)
    assert (await _state(admin, names))["messages"] == 1


async def test_the_mark_only_rises_under_concurrent_erasers(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    times = [10.0, 20.0, 30.0, 40.0, 50.0, 25.0, 35.0, 5.0]
    random.Random(7).shuffle(times)
    erasers = [make_archive() for _ in times]
    for eraser in erasers:
        await eraser.health_check()  # connected, so they race on the mark itself
    async with anyio.create_task_group() as group:
        for eraser, at in zip(erasers, times, strict=True):
            group.start_soon(
                eraser.write_batch,
                [SessionGroup(session, (), erase=True, erased_at=at)],
            )
    assert await _mark(admin, names, session) == b"50.0"
    # An older erasure (a redelivery) leaves it as it is, and one mark is kept.
    await erasers[0].write_batch([SessionGroup(session, (), erase=True, erased_at=1.0)])
    assert await _mark(admin, names, session) == b"50.0"
    assert await _subjects(admin, names, session) == {
        f"{names.prefix}.{session}.erased": 1
    }


async def test_an_erasing_group_with_records_keeps_only_those_after_it(
    make_archive: Callable[..., JetStreamArchive],
) -> None:
    session = uuid4()
    before, after = records(session, 2, "before"), records(session, 2, "after")
    archive = make_archive()
    await archive.write_batch(
        [
            _group(session, before, 10.0),
            SessionGroup(
                session,
                tuple(after),
                erase=True,
                erased_at=15.0,
                appended_at=(16.0, 16.0),
            ),
        ]
    )
    assert await archive.read_session(session) == after


# -- failures --------------------------------------------------------------------------


async def test_a_server_that_is_down_fails_retryably_without_showing_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    session = uuid4()
    archive = JetStreamArchive(
        f"nats://alice:{PASSWORD}@127.0.0.1:{free_port()}", timeout=5
    )
    try:
        with pytest.raises(BackendError, match=r"health_check on nats://alice:\*\*\*@"):
            await archive.health_check()
        with pytest.raises(BackendError, match="ConnectionRefusedError") as raised:
            await archive.append_messages(session, records(session, 1))
    finally:
        await archive.aclose()
    assert raised.value.retryable
    texts_seen = [
        *_error_texts(raised.value),
        *(r.getMessage() for r in caplog.records),
    ]
    assert not [t for t in texts_seen if PASSWORD in t]


async def test_create_stream_false_with_a_missing_stream_names_it_retryably(
    make_archive: Callable[..., JetStreamArchive], names: Names
) -> None:
    session = uuid4()
    archive = make_archive(create_stream=False)
    with pytest.raises(
        BackendError, match=rf"stream {names.stream} does not exist.*create_stream=True"
    ) as raised:
        await archive.health_check()
    assert raised.value.retryable
    with pytest.raises(BackendError, match="does not exist") as raised:
        await archive.append_messages(session, records(session, 1))
    assert raised.value.retryable
    await make_archive(create_stream=True).health_check()  # an operator creates it
    await archive.append_messages(session, records(session, 1))
    assert await archive.count(session) == 1


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        # subjects elsewhere: the prefix's publishes would go nowhere
        ({"subjects": ["elsewhere.>"]}, "do not cover"),
        # erasure deletes messages
        ({"deny_delete": True}, "denies deletes"),
        # a memory stream loses everything at a restart
        ({"storage": "memory"}, "in memory"),
    ],
)
async def test_an_existing_stream_that_cannot_archive_is_refused_naming_why(
    make_archive: Callable[..., JetStreamArchive],
    admin: Client,
    names: Names,
    config: dict[str, Any],
    complaint: str,
) -> None:
    full = {"name": names.stream, "subjects": [f"{names.prefix}.>"], **config}
    await _api(admin, f"STREAM.CREATE.{names.stream}", full)
    with pytest.raises(BackendError, match=rf"stream {names.stream}.*{complaint}") as e:
        await make_archive(create_stream=True).health_check()
    assert e.value.retryable


async def test_a_record_too_large_for_the_server_is_refused_before_anything_is_sent(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    small, big = record(session, "small"), record(session, "x" * (1024 * 1024))
    archive = make_archive()
    await archive.health_check()
    with pytest.raises(
        BackendError, match=rf"record {big.message_id}.*max_payload"
    ) as e:
        await archive.append_messages(session, [small, big])
    assert not e.value.retryable
    assert (await _state(admin, names))["messages"] == 0
    await archive.append_messages(session, [small])  # the connection still works


async def test_a_restarted_server_fails_one_call_retryably_then_reconnects(
    nats_binary: str, tmp_path: Path
) -> None:
    session = uuid4()
    with NatsServer(tmp_path / "store") as server:
        archive = JetStreamArchive(server.url, create_stream=True, timeout=60)
        try:
            await archive.append_messages(session, records(session, 2, "before"))
            server.stop()
            # It fails at once, not after the timeout: either the loss is known
            # (a reconnection is refused), or the call in flight is failed by it.
            with pytest.raises(
                BackendError, match=r"ConnectionClosedError|ConnectionRefusedError"
            ) as raised:
                await archive.append_messages(session, records(session, 1, "lost"))
            assert raised.value.retryable
            server.start()
            after = records(session, 1, "after")
            await archive.append_messages(session, after)
            assert texts(await archive.read_session(session)) == [
                "before0",
                "before1",
                "after0",
            ]
        finally:
            await archive.aclose()


async def test_a_refused_password_fails_retryably_without_showing_it(
    nats_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with NatsServer(tmp_path / "store", "--user", "alice", "--pass", "right-pw") as srv:
        wrong = srv.url.replace("nats://", f"nats://alice:{PASSWORD}@")
        archive = JetStreamArchive(wrong, create_stream=True, timeout=5)
        try:
            with pytest.raises(BackendError, match=r"[Aa]uthorization") as raised:
                await archive.health_check()
        finally:
            await archive.aclose()
        assert raised.value.retryable
        seen = [*_error_texts(raised.value), *(r.getMessage() for r in caplog.records)]
        assert not [t for t in seen if PASSWORD in t]
        right = srv.url.replace("nats://", "nats://alice:right-pw@")
        async with JetStreamArchive(right, create_stream=True) as archive:
            await archive.health_check()


async def test_a_stream_deleted_behind_the_archives_back_is_created_again(
    make_archive: Callable[..., JetStreamArchive], admin: Client, names: Names
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.append_messages(session, records(session, 1, "before"))
    await admin.jetstream().delete_stream(names.stream)
    with pytest.raises(BackendError, match="no stream answered") as raised:
        await archive.append_messages(session, records(session, 1, "lost"))
    assert raised.value.retryable
    after = records(session, 1, "after")
    await archive.append_messages(session, after)  # checked, and created again
    assert await archive.read_session(session) == after


async def test_aclose_is_idempotent_and_a_later_call_reconnects(
    make_archive: Callable[..., JetStreamArchive],
) -> None:
    session = uuid4()
    archive = make_archive()
    await archive.append_messages(session, records(session, 1))
    await archive.aclose()
    await archive.aclose()
    assert await archive.count(session) == 1
    async with archive:
        await archive.append_messages(session, records(session, 1, "z"))
    assert await make_archive().count(session) == 2


# -- with the library ------------------------------------------------------------------


async def test_an_archivist_delivers_to_jetstream_and_reads_back(
    make_archive: Callable[..., JetStreamArchive], journal_path: Path
) -> None:
    archive = make_archive()
    sessions = [uuid4() for _ in range(5)]
    appended: dict[UUID, list[MessageRecord]] = {s: [] for s in sessions}
    reg = registration(archive, name="jetstream")
    async with Archivist.open(journal_path, [reg]) as archivist:
        for i in range(40):
            session = sessions[i % len(sessions)]
            batch = records(session, 1 + i % 3, f"{i}-")
            appended[session].extend(batch)
            await archivist.append_messages(session, batch)
        await archivist.delete_session(sessions[0])
        late = records(sessions[0], 2, "after-erasure")
        await archivist.append_messages(sessions[0], late)
        with anyio.fail_after(20):
            await archivist.wait_drained()
        for session in sessions[1:]:
            assert await archivist.read_session(session) == appended[session]
        assert await archivist.read_session(sessions[0]) == late
    reader = make_archive()
    for session in sessions[1:]:
        assert await reader.read_session(session) == appended[session]
        assert await reader.count(session) == len(appended[session])
