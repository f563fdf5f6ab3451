"""The JetStream operations of ``JetStreamArchive``: publish, scan, mark, delete.

Rules and theory:
- **A record is published once**: its subject is its own and the publish carries
  ``Nats-Expected-Last-Subject-Sequence: 0``, so the server refuses a second copy
  (API error 10071, "wrong last sequence"), which counts as stored. No
  ``Nats-Msg-Id`` dedupe window is involved: a redelivery a week later is refused
  just the same. Deleting the message (an erasure) frees the subject again.
- **A scan** reads a session's messages through an ephemeral pull consumer
  filtered on ``<prefix>.<session>.*`` (acks off, in memory, removed after the
  scan and by the server after ``_INACTIVE`` seconds if the scan dies). It pulls
  with ``no_wait`` in batches sized to the client's pending limits, and ends when
  a message says nothing is pending or the server says no messages are left:
  no timeout decides the end. Erasure scans ask for headers only.
- **The erasure mark** of a session is the last message on
  ``<prefix>.<session>.erased``, its body the erasure time. It only ever rises:
  ``raise_mark`` publishes a new one with ``Nats-Expected-Last-Subject-Sequence``
  set to the sequence of the mark it read (optimistic concurrency: a concurrent
  raiser makes the publish fail with 10071, and it reads and tries again), then
  deletes the mark it replaced. Marks are read from the stream leader (a
  ``STREAM.MSG.GET``, never a direct get, which a replica may answer stale).
- **Bounded concurrency**: ``gather`` runs calls at most ``limit`` at a time,
  lets all finish, then raises the first non-retryable ``BackendError`` if any,
  else the first failure. nats-py's ``publish_async`` is not used: it leaks a
  pending slot on each server error, until it stops publishing at all.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import nats.errors
import nats.js.errors

from .._errors import BackendError
from . import _jetstream_wire as wire
from ._jetstream_conn import (
    DELETE_FAILED,
    NO_MESSAGE_FOUND,
    SEQUENCE_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from uuid import UUID

    from nats.aio.msg import Msg

    from ._jetstream_conn import Conn

__all__ = [
    "delete",
    "gather",
    "publish",
    "raise_mark",
    "read_mark",
    "scan",
    "subject_count",
]

#: Seconds after which the server removes a scan's consumer left behind.
_INACTIVE: Final = 60.0
#: Most messages one pull asks for, and bytes the client may hold for one scan.
_MAX_BATCH: Final = 256
_SCAN_BYTES: Final = 64 * 1024 * 1024
#: Tries to raise a mark against concurrent raisers before failing (retryable).
_MARK_TRIES: Final = 64


async def gather(limit: int, calls: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Run ``calls`` at most ``limit`` at once; raise the worst failure after all.

    Every call runs to its end even if another failed, so a batch's failure
    leaves no publish half-awaited. A non-retryable ``BackendError`` wins over
    other failures (the writer then knows repeating cannot help). ``limit``
    workers take the calls in turn (no task per call).
    """
    pending = list(calls)
    failures: list[Exception] = []
    queue = iter(pending)

    async def worker() -> None:
        for call in queue:
            try:
                await call()
            except Exception as exc:
                failures.append(exc)

    if len(pending) == 1:
        await worker()
    elif pending:
        async with anyio.create_task_group() as group:
            for _ in range(min(limit, len(pending))):
                group.start_soon(worker)
    for failure in failures:
        if isinstance(failure, BackendError) and not failure.retryable:
            raise failure
    if failures:
        raise failures[0]


async def publish(
    conn: Conn, subject: str, body: bytes, headers: dict[str, str]
) -> bool:
    """Publish a record; True if stored now, False if the subject held it already.

    Raises:
        nats.js.errors.APIError: the server refused it (other than 10071).
    """
    try:
        await conn.js.publish(
            subject, body, timeout=conn.timeout, stream=conn.stream, headers=headers
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return False  # stored before: a redelivery
        raise
    return True


async def read_mark(conn: Conn, session: UUID) -> tuple[int, float]:
    """The sequence and time of ``session``'s erasure mark; ``(0, -inf)`` if none.

    Raises:
        BackendError: (retryable: an operator can delete the message) the mark's
            body is not a time.
    """
    subject = wire.mark_subject(conn.prefix, session)
    try:
        answer = await conn.api(
            f"STREAM.MSG.GET.{conn.stream}", {"last_by_subj": subject}
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code == NO_MESSAGE_FOUND:
            return 0, -math.inf
        raise
    message = answer["message"]
    seq = int(message["seq"])
    text = base64.b64decode(message.get("data") or b"")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BackendError(
            f"JetStreamArchive: the erasure mark of session {session} (stream"
            f" {conn.stream}, sequence {seq}, subject {subject}) is not a time:"
            f" {text[:40]!r}; delete that message to clear the mark",
            retryable=True,
        )
    return seq, value


async def raise_mark(conn: Conn, session: UUID, at: float) -> float:
    """Raise ``session``'s mark to ``at`` unless it is higher; return the mark.

    Raises:
        BackendError: (retryable) other raisers kept winning for ``_MARK_TRIES``.
    """
    subject = wire.mark_subject(conn.prefix, session)
    for _ in range(_MARK_TRIES):
        seq, mark = await read_mark(conn, session)
        if mark >= at:
            return mark
        headers = {
            wire.EXPECTED_LAST_SUBJECT_SEQUENCE: str(seq),
            wire.ERASED_AT: repr(at),
        }
        if not await publish(conn, subject, repr(at).encode(), headers):
            continue  # another raiser stored a mark since: look again
        if seq:
            await delete(conn, [seq])  # only the latest mark is needed
        return at
    raise BackendError(
        f"JetStreamArchive: could not raise the erasure mark of session {session}"
        f" in {_MARK_TRIES} tries: other writers kept raising it",
        retryable=True,
    )


async def delete(conn: Conn, seqs: Iterable[int], limit: int = 64) -> None:
    """Delete messages by sequence (erased on disk); one already gone is fine."""

    async def one(seq: int) -> None:
        try:
            await conn.api(f"STREAM.MSG.DELETE.{conn.stream}", {"seq": seq})
        except nats.js.errors.APIError as exc:
            # Deleted already, by another writer's erasure or after-check: the
            # server says "no message found" or, for one deleted after others
            # near it, "sequence N not found".
            gone = exc.err_code == SEQUENCE_NOT_FOUND or (
                exc.err_code == DELETE_FAILED and "no message" in str(exc.description)
            )
            if not gone:
                raise

    await gather(limit, [partial(one, seq) for seq in seqs])


async def scan(conn: Conn, session: UUID, *, headers_only: bool) -> list[wire.Stored]:
    """Every message on ``session``'s subjects (its mark too), in stream order."""
    config: dict[str, Any] = {
        "deliver_policy": "all",
        "ack_policy": "none",
        "filter_subject": wire.session_filter(conn.prefix, session),
        "inactive_threshold": int(_INACTIVE * 1e9),
        "mem_storage": True,
        "num_replicas": 1,
        "headers_only": headers_only,
    }
    created = await conn.api(
        f"CONSUMER.CREATE.{conn.stream}", {"stream_name": conn.stream, "config": config}
    )
    name = created["name"]
    try:
        if not created.get("num_pending"):
            return []
        return await _pull(conn, name, headers_only=headers_only)
    finally:
        # Shielded: a cancelled scan must not leave its consumer behind (the
        # server would remove it after _INACTIVE seconds anyway).
        # If the connection failed, the call fails on its own.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(conn.timeout),
            contextlib.suppress(nats.errors.Error, OSError),
        ):
            await conn.api(f"CONSUMER.DELETE.{conn.stream}.{name}", None)


async def _pull(conn: Conn, consumer: str, *, headers_only: bool) -> list[wire.Stored]:
    biggest = 4096 if headers_only else max(conn.max_message, 4096)
    batch = max(1, min(_MAX_BATCH, _SCAN_BYTES // biggest))
    inbox = conn.nc.new_inbox()
    sub = await conn.nc.subscribe(
        inbox,
        pending_msgs_limit=batch + 16,
        pending_bytes_limit=batch * (biggest + 4096) + 65536,
    )
    found: list[wire.Stored] = []
    try:
        while True:
            await conn.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{conn.stream}.{consumer}",
                json.dumps({"batch": batch, "no_wait": True}).encode(),
                reply=inbox,
            )
            for _ in range(batch):
                msg = await sub.next_msg(timeout=conn.timeout)
                status = _status(msg)
                if status is not None:
                    if status in ("404", "408"):  # nothing (more) to pull
                        return found
                    raise nats.js.errors.APIError(
                        code=int(status), description=_description(msg)
                    )
                meta = msg.metadata
                found.append(
                    wire.Stored(
                        meta.sequence.stream,
                        msg.subject,
                        dict(msg.headers or {}),
                        msg.data,
                    )
                )
                if meta.num_pending == 0:
                    return found
    finally:
        await sub.unsubscribe()


def _status(msg: Msg) -> str | None:
    if msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


def _description(msg: Msg) -> str:
    return (msg.headers or {}).get("Description", "") or "pull failed"


async def subject_count(conn: Conn, subjects: str) -> dict[str, int]:
    """How many messages each subject matching ``subjects`` holds (paged)."""
    counts: dict[str, int] = {}
    offset = 0
    while True:
        answer = await conn.api(
            f"STREAM.INFO.{conn.stream}",
            {"subjects_filter": subjects, "offset": offset},
        )
        page = answer.get("state", {}).get("subjects") or {}
        counts.update(page)
        total = answer.get("total", 0)
        offset += len(page)
        if not page or offset >= total:
            return counts
