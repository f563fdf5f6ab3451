"""How ``JetStreamArchive`` applies a batch: erase, publish, then check the marks.

Rules and theory (the race argument is in ``jetstream``'s docstring):
- **Refuse first**: every record of a batch is encoded and its size checked
  against what the stream takes (``Batch``) before anything is sent, so a record
  that can never be stored fails its batch (not retryable) with nothing applied.
- **Three phases**, each concurrent and bounded (``_jetstream_ops.gather``):
  the erasures of the batch (raise the mark, delete older records); the publishes
  of every record not older than the session's known mark; then, per session
  with records in the batch, a fresh read of the mark, and if it is above the
  earliest of them, the deletion of every record older than it. A record skipped
  for the known mark still counts for that check: an earlier attempt of the batch
  may have stored it and failed before checking. Groups of one session
  apply in the order given because the plan (``_jetstream_wire.plan``) already
  folded them: its erasure precedes its records.
- **The mark cache** (``Marks``) remembers the highest mark seen per session, a
  lower bound of the real one since marks only rise: a record older than it is
  skipped without a round trip. It is bounded (least recently used first out).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Final, NamedTuple, final

import msgspec

from .._errors import BackendError
from . import _jetstream_ops as ops, _jetstream_wire as wire
from ._codec import encode_record
from ._jetstream_conn import MESSAGE_TOO_LARGE, err_code

if TYPE_CHECKING:
    from uuid import UUID

    from ._jetstream_conn import Conn

__all__ = ["Batch", "Marks", "delete_older"]

#: Sessions whose erasure mark is remembered.
_CACHED_MARKS: Final = 4096
_ENCODE_ERRORS: Final = (msgspec.EncodeError, TypeError, ValueError, OverflowError)


@final
class Marks:
    """The highest erasure mark seen per session (a lower bound), LRU-bounded."""

    def __init__(self, size: int = _CACHED_MARKS) -> None:
        self._size = size
        self._marks: OrderedDict[UUID, float] = OrderedDict()

    def floor(self, session: UUID) -> float:
        """The session's mark as last seen; ``-inf`` if none was."""
        return self._marks.get(session, -math.inf)

    def note(self, session: UUID, mark: float) -> None:
        """Remember ``mark`` if it is higher than the one known."""
        if mark == -math.inf:
            return
        if mark > self.floor(session):
            self._marks[session] = mark
        self._marks.move_to_end(session)
        while len(self._marks) > self._size:
            self._marks.popitem(last=False)


class Message(NamedTuple):
    """One record as it is published."""

    session: UUID
    item: wire.Item
    subject: str
    body: bytes
    headers: dict[str, str]


def _message(prefix: str, session: UUID, item: wire.Item) -> Message:
    record = item.record
    try:
        body = encode_record(record)
    except _ENCODE_ERRORS as exc:
        raise BackendError(
            f"JetStreamArchive: record {record.message_id} of session {session}"
            f" cannot be encoded: {type(exc).__name__}: {exc}",
            retryable=False,
        ) from exc
    return Message(
        session,
        item,
        wire.record_subject(prefix, session, record.message_id),
        body,
        wire.record_headers(item.appended_at, item.position),
    )


@final
class Batch:
    """One batch, planned and encoded; ``apply`` it on a connection.

    Raises:
        BackendError: (not retryable) a record of another session than its group's,
            or one that cannot be encoded.
    """

    def __init__(self, plans: list[wire.SessionPlan], prefix: str) -> None:
        self.plans = plans
        self.messages = [
            _message(prefix, plan.session, item)
            for plan in plans
            for item in plan.items
        ]

    def check_sizes(self, conn: Conn) -> None:
        """Refuse the batch if a record is larger than the stream takes.

        Raises:
            BackendError: (not retryable) naming the record and both sizes.
        """
        for message in self.messages:
            size = len(message.body) + wire.header_bytes(message.headers, conn.stream)
            if size > conn.max_message:
                raise BackendError(
                    f"JetStreamArchive: record {message.item.record.message_id} of"
                    f" session {message.session} is {size} bytes as a message, over"
                    f" the {conn.max_message} bytes stream {conn.stream} takes (the"
                    " server's max_payload or the stream's max_msg_size): it can"
                    " never be archived there",
                    retryable=False,
                )

    async def apply(self, conn: Conn, marks: Marks, limit: int) -> None:
        """Erase, publish, then check the marks (the module's three phases)."""
        await ops.gather(
            limit,
            [
                partial(_erase, conn, marks, plan.session, plan.erase_at)
                for plan in self.plans
                if plan.erase_at is not None
            ],
        )
        earliest: dict[UUID, float] = {}
        publishes = []
        for message in self.messages:
            at = message.item.appended_at
            earliest[message.session] = min(earliest.get(message.session, at), at)
            if at >= marks.floor(message.session):
                publishes.append(partial(_publish, conn, message))
            # else: erased before it arrived, so not published. Its session is
            # still checked below: an earlier attempt of this batch may have
            # stored it, and failed before its own check.
        await ops.gather(limit, publishes)
        # The after-check that makes publishing safe against a concurrent eraser.
        await ops.gather(
            limit,
            [partial(_after_check, conn, marks, s, t) for s, t in earliest.items()],
        )


async def _publish(conn: Conn, message: Message) -> None:
    try:
        await ops.publish(conn, message.subject, message.body, message.headers)
    except Exception as exc:
        if err_code(exc) != MESSAGE_TOO_LARGE:
            raise
        raise BackendError(
            f"JetStreamArchive: stream {conn.stream} refused record"
            f" {message.item.record.message_id} of session {message.session} as too"
            f" large ({len(message.body)} bytes): it can never be archived there",
            retryable=False,
        ) from exc


async def _erase(conn: Conn, marks: Marks, session: UUID, at: float) -> None:
    mark = await ops.raise_mark(conn, session, at)
    marks.note(session, mark)
    await delete_older(conn, session, mark)


async def _after_check(
    conn: Conn, marks: Marks, session: UUID, earliest: float
) -> None:
    _, mark = await ops.read_mark(conn, session)
    marks.note(session, mark)
    if mark > earliest:
        await delete_older(conn, session, mark)


async def delete_older(conn: Conn, session: UUID, mark: float) -> None:
    """Delete ``session``'s records journaled before ``mark``.

    A record message without a journal time counts as older than every mark.
    """
    older = []
    for stored in await ops.scan(conn, session, headers_only=True):
        if stored.subject.rpartition(".")[2] == wire.MARK_TOKEN:
            continue
        at = wire.header_float(stored.headers, wire.APPENDED_AT)
        if at is None or at < mark:
            older.append(stored.seq)
    await ops.delete(conn, older)
