"""WebhookArchive against a real HTTP server on loopback (see webhook_server.py).

Every test talks HTTP to its own ``WebhookServer``; nothing is mocked. Slow answers
wait on a ``threading.Event`` the test sets, so no test sleeps to synchronise.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio
import pytest

from journal_archivist import (
    Archivist,
    BackendError,
    FailureMode,
)
from journal_archivist.backends import SessionGroup
from journal_archivist.backends._codec import encode_record
from journal_archivist.backends._webhook_wire import _parse_retry_after
from journal_archivist.backends.webhook import (
    MAX_RETRY_AFTER,
    WebhookArchive,
    _httpx_log_mask,
)
from journal_archivist.testing import check_backend
from tests.backends.webhook_server import Reply, WebhookServer
from tests.helpers import record, records, registration

if TYPE_CHECKING:
    from pathlib import Path


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the port is bound, never listened on)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def wait_for_requests(server: WebhookServer, count: int) -> None:
    await anyio.to_thread.run_sync(server.wait_for_requests, count)


def contents(server: WebhookServer, session: UUID) -> list[str]:
    return [r.content_md for r in server.records(session)]


# -- the wire format -------------------------------------------------------------------


async def test_each_group_is_one_json_post_in_batch_order(
    server: WebhookServer,
) -> None:
    a, b = uuid4(), uuid4()
    groups = [
        SessionGroup(a, tuple(records(a, 2)), appended_at=(1.5, 2.0)),
        SessionGroup(b, (record(b),), appended_at=(3.0,)),
    ]
    async with WebhookArchive(server.url) as hook:
        await hook.write_batch(groups)
    posts = server.posts()
    assert [(p.method, p.path) for p in posts] == [("POST", "/hook")] * 2
    for post, group in zip(posts, groups, strict=True):
        assert post.headers["content-type"] == "application/json"
        assert post.json() == {
            "session": str(group.session),
            "erase": False,
            "records": [json.loads(encode_record(r)) for r in group.records],
            "erased_at": None,
            "appended_at": list(group.appended_at),
        }
    assert server.records(a) == list(groups[0].records)
    assert server.records(b) == list(groups[1].records)


async def test_append_messages_posts_one_body_and_nothing_when_empty(
    server: WebhookServer, session: UUID
) -> None:
    async with WebhookArchive(server.url) as hook:
        await hook.append_messages(session, [])
        assert server.requests == []
        await hook.append_messages(session, records(session, 3))
    assert contents(server, session) == ["m0", "m1", "m2"]
    assert len(server.posts()) == 1


async def test_an_erasing_group_says_erase_and_carries_its_records(
    server: WebhookServer, session: UUID
) -> None:
    async with WebhookArchive(server.url) as hook:
        await hook.append_messages(session, records(session, 2, "old"))
        new = records(session, 1, "new")
        await hook.write_batch([SessionGroup(session, tuple(new), erase=True)])
    body = server.posts()[-1].json()
    assert (body["session"], body["erase"]) == (str(session), True)
    assert [r["content_md"] for r in body["records"]] == ["new0"]
    assert contents(server, session) == ["new0"]


async def test_delete_session_posts_an_erase_without_records(
    server: WebhookServer, session: UUID
) -> None:
    async with WebhookArchive(server.url) as hook:
        await hook.append_messages(session, records(session, 2))
        before = time.time()
        await hook.delete_session(session)
    body = server.posts()[-1].json()
    # A direct call erases at now.
    assert before <= body.pop("erased_at") <= time.time()
    assert body == {
        "session": str(session),
        "erase": True,
        "records": [],
        "appended_at": [],
    }
    assert server.records(session) == []
    assert server.erasures == [session]


async def test_groups_carry_their_times_and_an_erasure_drops_earlier_records(
    server: WebhookServer, session: UUID
) -> None:
    first, second, third = records(session, 3)
    other = record(uuid4(), "other")
    groups = [
        SessionGroup(session, (first,), appended_at=(10.0,)),  # erased below
        SessionGroup(other.session, (other,), appended_at=(11.0,)),
        SessionGroup(session, (second,), True, 12.0, (13.0,)),
        SessionGroup(session, (third,)),  # a direct call's: sent at now
    ]
    async with WebhookArchive(server.url, per_batch=True) as hook:
        before = time.time()
        await hook.write_batch(groups)
    [sent] = [p.json()["groups"] for p in server.posts()]
    *timed, untimed = sent
    assert [
        (g["session"], g["erase"], g["erased_at"], g["appended_at"]) for g in timed
    ] == [(str(other.session), False, None, [11.0]), (str(session), True, 12.0, [13.0])]
    assert before <= untimed["appended_at"][0] <= time.time()
    assert contents(server, session) == [second.content_md, third.content_md]


class TestIdempotencyKey:
    async def test_a_redelivered_group_carries_the_same_key(
        self, server: WebhookServer, session: UUID
    ) -> None:
        group = SessionGroup(session, tuple(records(session, 3)))
        server.queue(Reply(503))
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(BackendError):
                await hook.write_batch([group])
            await hook.write_batch([group])
            # A new instance (a restart) derives the same key.
            async with WebhookArchive(server.url) as again:
                await again.write_batch([group])
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(keys) == 3
        assert len(set(keys)) == 1
        assert len(keys[0]) == 64
        int(keys[0], 16)  # hex
        assert contents(server, session) == ["m0", "m1", "m2"]

    async def test_different_content_gets_a_different_key(
        self, server: WebhookServer, session: UUID
    ) -> None:
        first, second = records(session, 2)
        groups = [
            SessionGroup(session, (first, second)),
            SessionGroup(session, (first,)),  # fewer records
            SessionGroup(session, (second, first)),  # another order
            SessionGroup(session, (first, second), erase=True),  # erasing
            SessionGroup(uuid4(), (first, second)),  # another session
        ]
        async with WebhookArchive(server.url) as hook:
            for group in groups:
                await hook.write_batch([group])
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(set(keys)) == len(groups)

    async def test_each_erase_without_records_gets_a_fresh_key(
        self, server: WebhookServer, session: UUID
    ) -> None:
        # Two erasures of one session are indistinguishable by content; a receiver
        # that skipped the second by its key would keep records erased in between.
        async with WebhookArchive(server.url) as hook:
            await hook.delete_session(session)
            await hook.append_messages(session, [record(session)])
            await hook.delete_session(session)
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(set(keys)) == 3
        assert server.records(session) == []

    @pytest.mark.parametrize(
        "per_batch",
        [
            False,  # one body per session group
            True,  # one body per batch
        ],
    )
    async def test_an_erasure_re_appending_the_same_ids_gets_a_fresh_key(
        self, session: UUID, per_batch: bool
    ) -> None:
        # A message_id appended after an erasure is a new record, so "erase, then
        # archive m" can be asked twice with identical content. A receiver that
        # skipped the second body by its key would keep ``later``, archived
        # between the two erasures.
        group = SessionGroup(session, (record(session, "kept"),), erase=True)
        with WebhookServer(skip_known_keys=True) as server:
            async with WebhookArchive(server.url, per_batch=per_batch) as hook:
                await hook.write_batch([group])
                await hook.append_messages(session, [record(session, "later")])
                await hook.write_batch([group])
            assert contents(server, session) == ["kept"]
            assert server.erasures == [session, session]
            keys = [p.headers["idempotency-key"] for p in server.posts()]
            assert len(set(keys)) == 3

    @pytest.mark.parametrize("per_batch", [False, True])
    async def test_records_sent_again_after_an_erasure_reach_a_key_skipping_receiver(
        self, session: UUID, per_batch: bool
    ) -> None:
        # Found in review: the same records after an erasure hash to the same
        # key; a receiver must forget a session's keys when it erases it.
        again = record(session, "again")
        with WebhookServer(skip_known_keys=True) as server:
            async with WebhookArchive(server.url, per_batch=per_batch) as hook:
                await hook.append_messages(session, [again])
                await hook.delete_session(session)
                await hook.append_messages(session, [again])
            keys = [p.headers["idempotency-key"] for p in server.posts()]
            assert keys[0] == keys[2]  # content, not a moment
            assert contents(server, session) == ["again"]


# -- per_batch: one body per batch -----------------------------------------------------


def group_json(group: SessionGroup) -> dict[str, object]:
    """A group that carries its times, as the wire format spells it."""
    return {
        "session": str(group.session),
        "erase": group.erase,
        "records": [json.loads(encode_record(r)) for r in group.records],
        "erased_at": group.erased_at,
        "appended_at": list(group.appended_at),
    }


class TestPerBatch:
    async def test_a_batch_is_one_post_of_its_groups_in_order(
        self, server: WebhookServer
    ) -> None:
        a, b, c = uuid4(), uuid4(), uuid4()
        t = time.time() + 60  # after the direct append below
        groups = [
            SessionGroup(a, tuple(records(a, 2)), appended_at=(t, t + 1)),
            SessionGroup(b, (record(b, "new"),), True, t + 2, (t + 3,)),
            SessionGroup(c, (record(c),), appended_at=(t + 4,)),
            SessionGroup(uuid4(), ()),  # neither erases nor holds records: left out
        ]
        async with WebhookArchive(server.url, per_batch=True) as hook:
            await hook.append_messages(b, [record(b, "old")])
            await hook.write_batch(groups)
        post = server.posts()[-1]
        assert len(server.posts()) == 2
        assert post.headers["content-type"] == "application/json"
        assert post.json() == {"groups": [group_json(g) for g in groups[:3]]}
        assert server.records(a) == list(groups[0].records)
        assert contents(server, b) == ["new"]
        assert server.records(c) == list(groups[2].records)

    async def test_append_and_delete_send_a_one_group_batch_body(
        self, server: WebhookServer, session: UUID
    ) -> None:
        sent = records(session, 2)
        async with WebhookArchive(server.url, per_batch=True) as hook:
            await hook.append_messages(session, [])
            await hook.write_batch([SessionGroup(session, ())])
            await hook.write_batch([])
            assert server.requests == []
            before = time.time()
            await hook.append_messages(session, sent)
            await hook.delete_session(session)
        bodies = [p.json()["groups"] for p in server.posts()]
        [[appended], [erased]] = bodies
        # A direct call's records and erasure are at now, the erasure later.
        times = appended.pop("appended_at")
        assert before <= times[0] == times[1] <= erased.pop("erased_at")
        assert appended == {
            "session": str(session),
            "erase": False,
            "records": [json.loads(encode_record(r)) for r in sent],
            "erased_at": None,
        }
        assert erased == {
            "session": str(session),
            "erase": True,
            "records": [],
            "appended_at": [],
        }
        assert server.records(session) == []
        assert server.erasures == [session]

    async def test_groups_of_one_session_are_applied_in_order(
        self, server: WebhookServer, session: UUID
    ) -> None:
        first, second, third = records(session, 3)
        groups = [
            SessionGroup(session, (first,)),
            SessionGroup(session, (second,), erase=True),  # erases ``first``
            SessionGroup(session, (third,)),
        ]
        async with WebhookArchive(server.url, per_batch=True) as hook:
            await hook.write_batch(groups)
        assert len(server.posts()) == 1
        assert server.records(session) == [second, third]

    @pytest.mark.parametrize(
        ("status", "retryable", "retry_after"),
        [
            (503, True, 7.0),  # the whole batch is retried, after Retry-After
            (422, False, None),  # one poison record fails the whole batch
        ],
    )
    async def test_failures_are_classified_as_without_it(
        self,
        server: WebhookServer,
        status: int,
        retryable: bool,
        retry_after: float | None,
    ) -> None:
        a, b = uuid4(), uuid4()
        groups = [SessionGroup(a, tuple(records(a, 2))), SessionGroup(b, (record(b),))]
        server.queue(Reply(status, headers={"Retry-After": "7"}, body=b"no"))
        async with WebhookArchive(server.url, per_batch=True) as hook:
            with pytest.raises(
                BackendError,
                match=rf"\(2 session groups, 3 records\): answered {status}",
            ) as caught:
                await hook.write_batch(groups)
        assert (caught.value.retryable, caught.value.retry_after) == (
            retryable,
            retry_after,
        )
        assert server.records(a) == server.records(b) == []

    def test_repr_says_per_batch(self) -> None:
        assert repr(WebhookArchive("http://h/x", per_batch=True)) == (
            "WebhookArchive('http://h/x', per_batch=True, timeout=10.0)"
        )


class TestBatchIdempotencyKey:
    async def test_a_redelivered_batch_carries_the_same_key(
        self, server: WebhookServer
    ) -> None:
        a, b = uuid4(), uuid4()
        groups = [
            SessionGroup(a, tuple(records(a, 2))),
            SessionGroup(b, (record(b),)),  # stable only because nothing erases
        ]
        server.queue(Reply(503))
        async with WebhookArchive(server.url, per_batch=True) as hook:
            with pytest.raises(BackendError):
                await hook.write_batch(groups)
            await hook.write_batch(groups)
            # A new instance (a restart) derives the same key.
            async with WebhookArchive(server.url, per_batch=True) as again:
                await again.write_batch(groups)
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(keys) == 3
        assert len(set(keys)) == 1
        assert len(keys[0]) == 64
        int(keys[0], 16)  # hex
        assert contents(server, a) == ["m0", "m1"]

    async def test_different_content_gets_a_different_key(
        self, server: WebhookServer
    ) -> None:
        a, b = uuid4(), uuid4()
        x, y = records(a, 2)
        z = record(b)
        batches = [
            [SessionGroup(a, (x, y)), SessionGroup(b, (z,))],
            [SessionGroup(b, (z,)), SessionGroup(a, (x, y))],  # groups reordered
            [SessionGroup(a, (y, x)), SessionGroup(b, (z,))],  # records reordered
            [SessionGroup(a, (x,)), SessionGroup(a, (y,)), SessionGroup(b, (z,))],
            # ^ the same ids, grouped differently
            [SessionGroup(a, (x, y), erase=True), SessionGroup(b, (z,))],  # erasing
            [SessionGroup(a, (x, y))],  # fewer groups
            [SessionGroup(a, (x, y)), SessionGroup(uuid4(), (z,))],  # other session
        ]
        async with WebhookArchive(server.url, per_batch=True) as hook:
            for batch in batches:
                await hook.write_batch(batch)
            # A one-group batch body and the same group's body without per_batch
            # are different requests, so they never share a key either.
            async with WebhookArchive(server.url) as single:
                await single.write_batch(batches[-2])
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(set(keys)) == len(batches) + 1

    @pytest.mark.parametrize(
        "kinds",
        [
            ["erase"],  # an erase-only batch
            ["erase", "erase"],  # erase-only groups and nothing else
            ["append", "erase"],  # an erase without records after an append
            ["erase", "append"],  # ... and before one
            ["erase+records"],  # an erase with records: they do not pin it
            ["append", "erase+records"],  # ... nor do other groups' records
        ],
    )
    async def test_any_erase_gets_a_fresh_key(
        self, server: WebhookServer, kinds: list[str]
    ) -> None:
        # No records pin an erasure (the same ids may be appended again after
        # it): a receiver that skipped a second such body by its key could keep
        # records archived between the two erasures.
        sessions = [uuid4() for _ in kinds]
        batch = [
            SessionGroup(
                s,
                () if kind == "erase" else (record(s),),
                erase=kind.startswith("erase"),
            )
            for s, kind in zip(sessions, kinds, strict=True)
        ]
        async with WebhookArchive(server.url, per_batch=True) as hook:
            await hook.write_batch(batch)
            await hook.write_batch(batch)
            await hook.delete_session(sessions[0])
            await hook.delete_session(sessions[0])
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(set(keys)) == 4

    async def test_records_moved_to_another_group_get_another_key_even_if_bytes_align(
        self, server: WebhookServer
    ) -> None:
        # Each group's record count is hashed, so a key is never a hash of a bare
        # stream of 16-byte ids and sessions. Without it, a batch whose ids line
        # up with another batch's sessions (message_id is the caller's to choose)
        # would share that batch's key, and a receiver skipping known keys would
        # drop it unapplied.
        a = uuid4()
        b = UUID(bytes=b"\0" + uuid4().bytes[1:])  # starts like the erase flag
        x, y = records(a, 2)
        z = record(b)
        moved = UUID(bytes=y.message_id.bytes)  # y's id, as a session
        w = record(moved, message_id=UUID(bytes=b.bytes[1:] + b"\0"))
        first = [SessionGroup(a, (x, y)), SessionGroup(b, (z,))]
        # a, flag, x | y, b, flag, z  ==  a, flag, x | moved, flag, w, z
        second = [
            SessionGroup(a, (x,)),
            SessionGroup(moved, (w, record(moved, message_id=z.message_id))),
        ]
        async with WebhookArchive(server.url, per_batch=True) as hook:
            await hook.write_batch(first)
            await hook.write_batch(second)
        keys = [p.headers["idempotency-key"] for p in server.posts()]
        assert len(keys) == 2
        assert keys[0] != keys[1]


# -- failure classification ------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        200,  # OK
        201,  # Created
        202,  # Accepted: the receiver queued it durably
        204,  # No Content
    ],
)
async def test_2xx_is_delivered(
    server: WebhookServer, session: UUID, status: int
) -> None:
    server.queue(Reply(status, apply=True))
    async with WebhookArchive(server.url) as hook:
        await hook.append_messages(session, [record(session)])
    assert contents(server, session) == ["hi"]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),  # Request Timeout
        (429, True),  # Too Many Requests
        (500, True),  # Internal Server Error
        (502, True),  # Bad Gateway
        (503, True),  # Service Unavailable
        (504, True),  # Gateway Timeout
        (400, False),  # Bad Request: this body will never be accepted
        (401, False),  # Unauthorized: health_check fails too, so nothing dead-letters
        (404, False),  # Not Found
        (413, False),  # Content Too Large
        (422, False),  # Unprocessable Content: a poison record
    ],
)
async def test_status_classification(
    server: WebhookServer, session: UUID, status: int, retryable: bool
) -> None:
    body = b'{"error": "nope"}'
    server.queue(Reply(status, {"Content-Type": "application/json"}, body))
    async with WebhookArchive(server.url) as hook:
        with pytest.raises(BackendError, match=f"answered {status} ") as caught:
            await hook.append_messages(session, [record(session)])
    assert caught.value.retryable is retryable
    assert caught.value.retry_after is None
    assert ": 17 bytes of application/json (not quoted" in str(caught.value)
    assert "nope" not in str(caught.value)
    assert f"session {session}" in str(caught.value)


@pytest.mark.parametrize(
    "status",
    [
        301,  # Moved Permanently
        302,  # Found
        307,  # Temporary Redirect (would keep the POST)
        308,  # Permanent Redirect
    ],
)
async def test_a_redirect_is_not_followed_and_not_retryable(
    server: WebhookServer, session: UUID, status: int
) -> None:
    server.queue(Reply(status, headers={"Location": "/elsewhere?sig=abcdef"}))
    async with WebhookArchive(server.url) as hook:
        with pytest.raises(BackendError, match="redirects are not followed") as caught:
            await hook.append_messages(session, [record(session)])
    assert not caught.value.retryable
    assert "'/elsewhere?sig=***'" in str(caught.value)
    assert [r.path for r in server.requests] == ["/hook"]


@pytest.mark.parametrize(
    "per_batch",
    [
        False,  # one body per session group
        True,  # one body per batch
    ],
)
async def test_a_record_that_cannot_be_encoded_is_not_retryable(
    server: WebhookServer, session: UUID, per_batch: bool
) -> None:
    # A lone surrogate is a valid str but no valid UTF-8: no retry could send it.
    bad = record(session, "\ud800")
    group = SessionGroup(session, (record(session), bad))
    async with WebhookArchive(server.url, per_batch=per_batch) as hook:
        with pytest.raises(
            BackendError,
            match=rf"record {bad.message_id} of session {session} cannot be encoded",
        ) as caught:
            await hook.write_batch([group])
    assert not caught.value.retryable
    assert server.requests == []


async def test_a_long_error_body_is_truncated(
    server: WebhookServer, session: UUID
) -> None:
    server.queue(Reply(422, body=b"x" * 100_000))
    async with WebhookArchive(server.url, log_response_body=True) as hook:
        with pytest.raises(
            BackendError, match=r"answered 422 .*: 'x+\.\.\.'"
        ) as caught:
            await hook.append_messages(session, [record(session)])
    assert len(str(caught.value)) < 400


class TestRetryAfter:
    @pytest.mark.parametrize("status", [429, 503])
    async def test_seconds(
        self, server: WebhookServer, session: UUID, status: int
    ) -> None:
        server.queue(Reply(status, headers={"Retry-After": "7"}))
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(BackendError, match=f"answered {status}") as caught:
                await hook.append_messages(session, [record(session)])
        assert caught.value.retryable
        assert caught.value.retry_after == 7.0

    async def test_http_date(self, server: WebhookServer, session: UUID) -> None:
        when = datetime.now(UTC) + timedelta(seconds=120)
        server.queue(
            Reply(429, headers={"Retry-After": format_datetime(when, usegmt=True)})
        )
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(BackendError, match="answered 429") as caught:
                await hook.append_messages(session, [record(session)])
        assert caught.value.retry_after is not None
        assert 100 < caught.value.retry_after <= 120

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0.0),
            (" 12 ", 12.0),
            ("1.5", 1.5),  # lenient: fractions of a second
            ("-3", 0.0),  # never negative
            ("99999999", MAX_RETRY_AFTER),  # capped
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
            ("soon", None),  # malformed: the writer's own backoff applies
            ("nan", None),
            ("", None),
            (None, None),
        ],
    )
    def test_parsing(self, value: str | None, expected: float | None) -> None:
        assert _parse_retry_after(value) == expected

    def test_parsing_a_future_date(self) -> None:
        now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        value = "Thu, 01 Jan 2026 00:01:30 GMT"
        assert _parse_retry_after(value, now=now) == 90.0

    async def test_ignored_on_a_non_retryable_status(
        self, server: WebhookServer, session: UUID
    ) -> None:
        server.queue(Reply(400, headers={"Retry-After": "7"}))
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(BackendError) as caught:
                await hook.append_messages(session, [record(session)])
        assert (caught.value.retryable, caught.value.retry_after) == (False, None)


async def test_a_slow_answer_times_out_as_retryable(
    server: WebhookServer, session: UUID
) -> None:
    gate = threading.Event()
    server.queue(Reply(200, gate=gate))
    started = time.monotonic()
    try:
        async with WebhookArchive(server.url, timeout=0.2) as hook:
            with pytest.raises(
                BackendError, match=r"no answer within 0\.2 s"
            ) as caught:
                await hook.append_messages(session, [record(session)])
            assert caught.value.retryable
            assert time.monotonic() - started < 3
            # The receiver applied it, so the retry is a duplicate it must absorb.
            await hook.append_messages(session, [caught_record := record(session)])
    finally:
        gate.set()
    assert len(server.records(session)) == 2
    assert server.records(session)[-1] == caught_record


async def test_a_dropped_connection_is_retryable(
    server: WebhookServer, session: UUID
) -> None:
    server.queue(Reply(drop=True, apply=False))
    async with WebhookArchive(server.url) as hook:
        with pytest.raises(BackendError, match="RemoteProtocolError") as caught:
            await hook.append_messages(session, [record(session)])
        assert caught.value.retryable
        await hook.append_messages(session, [record(session)])
    assert len(server.records(session)) == 1


async def test_a_refused_connection_is_retryable(session: UUID) -> None:
    async with WebhookArchive(closed_port_url()) as hook:
        with pytest.raises(BackendError, match="ConnectError") as caught:
            await hook.append_messages(session, [record(session)])
        assert caught.value.retryable
        with pytest.raises(BackendError, match="health check OPTIONS"):
            await hook.health_check()


# -- health_check ----------------------------------------------------------------------


class TestHealthCheck:
    @pytest.mark.parametrize(
        "status",
        [
            204,  # answers OPTIONS
            200,
            404,  # some frameworks route only the POST
            405,  # Method Not Allowed: up, just not for OPTIONS
            400,
        ],
    )
    async def test_any_ordinary_answer_to_options_is_healthy(
        self, server: WebhookServer, status: int
    ) -> None:
        server.queue(Reply(status), method="OPTIONS")
        async with WebhookArchive(server.url) as hook:
            await hook.health_check()
        assert [(r.method, r.path) for r in server.requests] == [("OPTIONS", "/hook")]

    async def test_passes_while_the_receiver_rejects_a_record(
        self, server: WebhookServer, session: UUID
    ) -> None:
        poison = record(session)
        server.reject(poison.message_id)
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(BackendError, match="answered 422"):
                await hook.append_messages(session, [poison])
            await hook.health_check()

    @pytest.mark.parametrize(
        "status",
        [
            500,  # broken
            503,  # down for maintenance
            429,  # overloaded
            408,  # too slow to read our request
            401,  # our credentials are refused: every delivery would be too
            403,
            301,  # the URL moved: every POST would be redirected
        ],
    )
    async def test_fails_when_deliveries_would_fail_too(
        self, server: WebhookServer, status: int
    ) -> None:
        headers = {"Retry-After": "5", "Location": "/moved"}
        server.queue(Reply(status, headers=headers), method="OPTIONS")
        async with WebhookArchive(server.url) as hook:
            with pytest.raises(
                BackendError, match=f"health check OPTIONS .* answered {status}"
            ) as caught:
                await hook.health_check()
        assert caught.value.retryable
        if status in (503, 429):
            assert caught.value.retry_after == 5.0

    async def test_fails_on_a_timeout(self, server: WebhookServer) -> None:
        gate = threading.Event()
        server.queue(Reply(204, gate=gate), method="OPTIONS")
        try:
            async with WebhookArchive(server.url, timeout=0.2) as hook:
                with pytest.raises(BackendError, match="no answer within"):
                    await hook.health_check()
        finally:
            gate.set()

    async def test_health_url_is_fetched_with_get_and_must_answer_2xx(
        self, server: WebhookServer
    ) -> None:
        async with WebhookArchive(
            server.url, health_url=server.health_url, headers={"X-Api-Key": "k3y-v4lue"}
        ) as hook:
            await hook.health_check()
            server.queue(Reply(404, body=b"no such thing"), method="GET")
            with pytest.raises(BackendError, match=r"health check GET .* answered 404"):
                await hook.health_check()
        assert [(r.method, r.path) for r in server.requests] == [("GET", "/health")] * 2
        assert server.requests[0].headers["x-api-key"] == "k3y-v4lue"


# -- secrets ---------------------------------------------------------------------------


async def test_secrets_are_masked_in_repr_errors_and_logs(
    server: WebhookServer, session: UUID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = ["hunter2pw", "tok-in-query", "b3arer-t0ken", "api-k3y", "c00kie", "s1gn"]
    url = server.url.replace("http://", "http://alice:hunter2pw@")
    url += "?token=tok-in-query&region=eu"
    headers = {
        "X-Api-Key": "api-k3y",
        "Cookie": "sid=c00kie",
        "X-Signing-Secret": "s1gn",
        "X-Team": "ops",
    }
    hook = WebhookArchive(url, headers=headers, log_response_body=True)
    bearer = WebhookArchive(
        server.url,
        headers={"Authorization": "Bearer b3arer-t0ken"},
        timeout=0.2,
        log_response_body=True,
    )
    shown = f"{hook!r}\n{bearer!r}"
    assert "'X-Team': 'ops'" in shown
    assert "'Authorization': '***'" in shown
    assert "'http://***@127.0.0.1:" in shown
    assert "?token=***&region=***'" in shown
    # The receiver echoes our credentials back in its errors.
    echo = b"bad credentials: api-k3y for token tok-in-query (hunter2pw)"
    server.queue(Reply(401, body=echo), Reply(503, body=echo))
    server.queue(Reply(401, body=b"unknown token b3arer-t0ken"))
    async with hook, bearer:
        with pytest.raises(BackendError, match="answered 401") as refused:
            await hook.append_messages(session, [record(session)])
        with pytest.raises(BackendError, match="answered 503") as down:
            await hook.append_messages(session, [record(session)])
        with pytest.raises(BackendError, match="answered 401") as unknown:
            await bearer.append_messages(session, [record(session)])
        await hook.append_messages(session, [record(session)])
    errors = f"{refused.value}\n{down.value}\n{unknown.value}"
    assert "bad credentials: *** for token *** (***)" in errors
    assert "unknown token ***" in errors
    # The secrets were sent, and shown nowhere.
    sent = server.posts()[-1]
    assert sent.path == "/hook?token=tok-in-query&region=eu"
    assert sent.headers["authorization"].startswith("Basic ")  # alice:hunter2pw
    assert sent.headers["x-api-key"] == "api-k3y"
    assert "HTTP Request: POST" in caplog.text  # httpx's own log line, masked
    for secret in secrets:
        assert secret not in shown
        assert secret not in errors
        assert secret not in caplog.text


def basic(credentials: str) -> str:
    return base64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize(
    ("userinfo", "query", "echoed", "forms"),
    [
        # A percent-encoded query value: masked as sent and as decoded.
        (
            "",
            "?token=ab%2Bcd%2Fef%3D%3D",
            "/hook?token=*** authorization=None",
            ["ab%2Bcd%2Fef%3D%3D", "ab+cd/ef=="],
        ),
        # ``+`` in a query value: masked whole, not from the decoded space on.
        (
            "",
            "?token=ab+cdefgh",
            "/hook?token=*** authorization=None",
            ["ab+cdefgh", "ab cdefgh", "cdefgh"],
        ),
        # Credentials in the URL: the Basic header built from them, and its token.
        (
            "alice:p%40ss%2Fw0rd@",
            "",
            "/hook authorization=***",
            ["p%40ss%2Fw0rd", "p@ss/w0rd", basic("alice:p@ss/w0rd")],
        ),
    ],
    ids=["percent-encoded", "plus", "userinfo"],
)
async def test_secrets_are_masked_in_every_encoding_an_echo_shows(
    server: WebhookServer,
    session: UUID,
    userinfo: str,
    query: str,
    echoed: str,
    forms: list[str],
) -> None:
    url = server.url.replace("http://", f"http://{userinfo}") + query
    server.queue(Reply(400, echo=True))
    async with WebhookArchive(url, log_response_body=True) as hook:
        with pytest.raises(BackendError, match="answered 400") as caught:
            await hook.append_messages(session, [record(session)])
    assert str(caught.value).endswith(f": 'POST {echoed}'")
    sent = server.posts()[-1]  # the secret was sent, so echoed
    assert any(f in f"{sent.path} {sent.headers.get('authorization')}" for f in forms)
    for form in forms:
        assert form not in str(caught.value)


def test_the_log_mask_forgets_an_archive_once_it_is_collected() -> None:
    url = "http://127.0.0.1/hook?token=g0ne-s00n"

    def shown() -> list[str]:
        return [mask.urls[url] for mask in _httpx_log_mask.live if url in mask.urls]

    first, second = WebhookArchive(url), WebhookArchive(url)
    assert shown() == ["http://127.0.0.1/hook?token=***"] * 2
    del second
    gc.collect()
    assert len(shown()) == 1  # still used by ``first``
    del first
    gc.collect()
    assert shown() == []


async def test_secrets_are_masked_in_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"X-Auth-Token.*got \*\*\*") as caught:
        WebhookArchive("http://127.0.0.1/hook", headers={"X-Auth-Token": "é-s3cret"})
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="must be an http") as caught:
        WebhookArchive("ftp://bob:pa55word@127.0.0.1/x?key=v4lue")
    assert "pa55word" not in str(caught.value)
    assert "v4lue" not in str(caught.value)


# -- construction and lifecycle --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": 42}, TypeError, "url must be a str"),
        ({"url": "ftp://example.com/x"}, ValueError, "http"),
        ({"url": "http:///path-only"}, ValueError, "with a host"),
        ({"url": "example.com/hook"}, ValueError, "http"),  # no scheme
        ({"url": "http://[::1/x"}, ValueError, "not a valid URL"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": -1.0}, ValueError, "timeout must be > 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be > 0"),
        ({"timeout": float("inf")}, ValueError, "timeout must be > 0"),
        ({"timeout": "5"}, TypeError, "timeout must be a number"),
        ({"timeout": True}, TypeError, "timeout must be a number"),
        ({"headers": [("A", "b")]}, TypeError, "headers must be a mapping"),
        ({"headers": {"A": 1}}, TypeError, "must be str"),
        ({"headers": {b"A": "b"}}, TypeError, "must be str"),
        ({"headers": {"Bad Name": "x"}}, ValueError, "invalid header name"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, ValueError, "without control char"),
        ({"headers": {"X-A": "a\x1b[2J"}}, ValueError, "without control char"),
        ({"headers": {"X-A": "a\x7f"}}, ValueError, "without control char"),
        ({"headers": {"Content-Type": "text/plain"}}, ValueError, "set by Webhook"),
        ({"headers": {"idempotency-key": "k"}}, ValueError, "set by Webhook"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, ValueError, "given twice"),
        ({"health_url": "gopher://h/x"}, ValueError, "health_url must be an http"),
        ({"health_url": "http://u:p@h/x"}, ValueError, "must not carry credentials"),
        ({"max_connections": 0}, ValueError, "max_connections must be >= 1"),
        ({"max_connections": 1.5}, TypeError, "max_connections must be an int"),
        ({"verify": "yes"}, TypeError, "verify must be"),
        ({"per_batch": 1}, TypeError, "per_batch must be a bool"),
        ({"secret_path": "yes"}, TypeError, "secret_path must be a bool"),
        ({"log_response_body": 1}, TypeError, "log_response_body must be a bool"),
        (
            {"url": "http://u:p@h/x", "headers": {"Authorization": "Bearer t"}},
            ValueError,
            "give one of them",
        ),
    ],
)
def test_bad_arguments_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    kwargs.setdefault("url", "http://127.0.0.1/hook")
    with pytest.raises(error, match=match):
        WebhookArchive(**kwargs)  # type: ignore[arg-type]


async def test_aclose_is_idempotent_and_a_later_call_reopens(
    server: WebhookServer, session: UUID
) -> None:
    hook = WebhookArchive(server.url)
    closed = [hook.is_closed]
    await hook.append_messages(session, [record(session, "a")])
    closed.append(hook.is_closed)
    await hook.aclose()
    await hook.aclose()
    closed.append(hook.is_closed)
    await hook.append_messages(session, [record(session, "b")])
    await hook.aclose()
    assert closed == [True, False, True]
    assert contents(server, session) == ["a", "b"]


async def test_is_not_readable(server: WebhookServer, session: UUID) -> None:
    async with WebhookArchive(server.url) as hook:
        with pytest.raises(BackendError, match="not readable") as caught:
            await hook.read_session(session)
    assert not caught.value.retryable


def test_httpx_is_imported_only_by_the_webhook_module() -> None:
    code = """
import sys
import journal_archivist, journal_archivist.backends, journal_archivist.testing
assert "httpx" not in sys.modules, "journal_archivist imported httpx"
sys.modules["httpx"] = None  # as if the extra were not installed
try:
    import journal_archivist.backends.webhook
except ImportError as exc:
    print(exc)
    print(type(exc.__cause__).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "WebhookArchive needs httpx: pip install 'journal-archivist[webhook]'",
        "ModuleNotFoundError",
    ]


# -- the backend contract --------------------------------------------------------------


@pytest.mark.parametrize(
    "per_batch",
    [
        False,  # one body per session group
        True,  # one body per batch
    ],
)
async def test_contract(server: WebhookServer, per_batch: bool) -> None:
    # Not readable: check_backend reads what was delivered from the receiver.
    await check_backend(
        lambda: WebhookArchive(server.url, per_batch=per_batch),
        read_session=server.read_session,
    )


# -- with an Archivist -----------------------------------------------------------------


def dead_letters(journal_path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(journal_path)) as db:
        return db.execute(
            "SELECT backend, error FROM dead_letters ORDER BY id"
        ).fetchall()


async def test_records_arrive_after_a_few_503s(
    server: WebhookServer, journal_path: Path, session: UUID
) -> None:
    server.queue(*[Reply(503, body=b"warming up")] * 4)
    sent = records(session, 5)
    async with Archivist.open(
        journal_path, [registration(WebhookArchive(server.url), name="webhook")]
    ) as archivist:
        for one in sent:
            await archivist.append_messages(session, [one])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["webhook"]
    assert server.records(session) == sent
    assert health.delivered == 5
    assert health.dead_lettered == 0
    assert len(server.posts()) >= 5  # four 503s, then at least one delivery


async def deliver_a_poisoned_batch(
    server: WebhookServer, journal_path: Path, hook: WebhookArchive
) -> None:
    """Deliver [a0], then one batch [b0 poison b1 a1] whose poison record the
    receiver rejects with 422, under BEST_EFFORT: the rest arrives, it is
    dead-lettered."""
    a, b = uuid4(), uuid4()
    poison = record(a, "poison")
    server.reject(poison.message_id, 422)
    gate = threading.Event()
    server.queue(Reply(200, gate=gate))  # holds the first batch
    reg = registration(hook, name="webhook", failure_mode=FailureMode.BEST_EFFORT)
    try:
        async with Archivist.open(journal_path, [reg]) as archivist:
            await archivist.append_messages(a, [record(a, "a0")])
            with anyio.fail_after(5):
                await wait_for_requests(server, 1)
            # Everything below queues up into one batch behind the held one.
            await archivist.append_messages(b, [record(b, "b0")])
            await archivist.append_messages(a, [poison])
            await archivist.append_messages(b, [record(b, "b1")])
            await archivist.append_messages(a, [record(a, "a1")])
            gate.set()
            with anyio.fail_after(5):
                await archivist.wait_drained()
            health = archivist.health().backends["webhook"]
    finally:
        gate.set()
    assert contents(server, a) == ["a0", "a1"]
    assert contents(server, b) == ["b0", "b1"]
    assert (health.delivered, health.dead_lettered) == (4, 1)
    [(backend, error)] = dead_letters(journal_path)
    assert backend == "webhook"
    assert "answered 422 Unprocessable" in error


async def test_best_effort_dead_letters_a_rejected_record_and_delivers_the_rest(
    server: WebhookServer, journal_path: Path
) -> None:
    await deliver_a_poisoned_batch(server, journal_path, WebhookArchive(server.url))
    [(_, error)] = dead_letters(journal_path)
    assert "answered 422" in error
    # The receiver was probed before the record was given up on.
    assert any(r.method == "OPTIONS" for r in server.requests)


async def test_best_effort_per_batch_bisects_down_to_the_rejected_record(
    server: WebhookServer, journal_path: Path
) -> None:
    hook = WebhookArchive(server.url, per_batch=True)
    await deliver_a_poisoned_batch(server, journal_path, hook)
    # Each attempt, and each half of a bisection, was one request: the batch
    # [b0 poison b1 a1], its left half [b0 poison] and that half's halves, then
    # the right half [b1 a1].
    sent = [
        [[r.content_md for r in g.records] for g in post.groups()]
        for post in server.posts()
    ]
    assert sent == [
        [["a0"]],
        [["b0", "b1"], ["poison", "a1"]],
        [["b0"], ["poison"]],
        [["b0"]],
        [["poison"]],
        [["b1"], ["a1"]],
    ]
    assert all("groups" in post.json() for post in server.posts())


async def test_per_batch_delivers_a_batch_over_many_sessions_in_one_request(
    server: WebhookServer, journal_path: Path
) -> None:
    sessions = [uuid4() for _ in range(100)]
    erased = set(sessions[::10])
    expected: dict[UUID, list[str]] = {s: [] for s in sessions}
    gate = threading.Event()
    server.queue(Reply(200, gate=gate))  # holds the first batch
    hook = WebhookArchive(server.url, per_batch=True)
    try:
        async with Archivist.open(
            journal_path, [registration(hook, name="webhook")]
        ) as archivist:
            await archivist.append_messages(sessions[0], [record(sessions[0], "x")])
            expected[sessions[0]].append("x")
            with anyio.fail_after(5):
                await wait_for_requests(server, 1)
            # Three rounds over every session, each round appending concurrently
            # (one group commit); some sessions are erased after the first round.
            for turn in range(3):
                async with anyio.create_task_group() as tg:
                    for s in sessions:
                        tg.start_soon(
                            archivist.append_messages, s, [record(s, f"r{turn}")]
                        )
                        expected[s].append(f"r{turn}")
                if turn == 0:
                    for s in erased:
                        await archivist.delete_session(s)
                        expected[s].clear()
            gate.set()
            with anyio.fail_after(5):
                await archivist.wait_drained()
    finally:
        gate.set()
    assert {s: contents(server, s) for s in sessions} == expected
    posts = server.posts()
    assert len(posts) == 2  # the held batch, then everything else as one
    groups = posts[1].groups()
    assert sorted(g.session for g in groups) == sorted(sessions)
    assert {g.session for g in groups if g.erase} == erased
