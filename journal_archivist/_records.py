"""Message records, UUIDv7 ids, and the one place records are encoded and checked.

Rules:
- A record is encoded exactly once, by ``encode_append``, which also validates it.
  What it accepts is guaranteed to decode again (it decodes each record back as a
  type check), so nothing undecodable ever reaches the journal.
- One journal entry holds the records of one ``append_messages`` call: a msgpack
  array of the individually encoded records, so each record's size is known.
- Schema evolution follows msgspec's rules: new fields get defaults, existing field
  types never change, ``version`` says which shape a record has.
"""

from __future__ import annotations

import enum
import math
import os
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from uuid import UUID

import msgspec

from ._errors import ValidationError

__all__ = [
    "RECORD_VERSION",
    "Attachment",
    "JsonValue",
    "MessageRecord",
    "Op",
    "decode_entry",
    "encode_append",
    "uuid7",
]

RECORD_VERSION: Final = 1

if TYPE_CHECKING:
    from collections.abc import Sequence

    JsonValue: TypeAlias = (
        bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
    )
else:
    # msgspec cannot resolve a recursive alias on Python 3.11; JSON-ness is checked
    # by ``encode_append`` instead.
    JsonValue: TypeAlias = Any


_uuid7_lock = threading.Lock()
_uuid7_last = (0, 0)  # (unix ms, 12-bit counter) of the last id handed out


def uuid7() -> UUID:
    """Return a new RFC 9562 UUIDv7: time-ordered, random in the low bits.

    Ids from one process are strictly increasing, even within one millisecond (the
    12-bit ``rand_a`` field is a counter seeded at random each millisecond).
    """
    global _uuid7_last
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_counter = _uuid7_last
        if ms > last_ms:
            counter = int.from_bytes(os.urandom(2)) & 0x3FF  # leave room to count up
        else:
            ms, counter = last_ms, last_counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        _uuid7_last = (ms, counter)
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62
    return UUID(int=value | rand_b)


def _now_utc() -> datetime:
    return datetime.now(UTC)


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """A file attached to a message: referenced by ``uri`` or carried inline.

    Exactly one of ``uri`` and ``data`` is set; ``size`` is the size in bytes of the
    attached content (for inline data it must equal ``len(data)``).
    """

    name: str
    media_type: str
    size: int
    uri: str | None = None
    data: bytes | None = None


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message, the unit every backend archives.

    Only ``session`` and ``role`` are required. ``message_id`` defaults to a new
    UUIDv7 and ``ts`` to now (UTC); ``ts`` must be timezone-aware. ``content_parts``
    and ``metadata`` hold any JSON value. Built-in backends are idempotent on
    ``message_id``: delivering a record twice archives it once.
    """

    version: int = RECORD_VERSION
    message_id: UUID = msgspec.field(default_factory=uuid7)
    session: UUID
    parent_id: UUID | None = None
    ts: datetime = msgspec.field(default_factory=_now_utc)
    role: str
    author: str | None = None
    content_md: str = ""
    content_parts: JsonValue | None = None
    attachments: tuple[Attachment, ...] = ()
    metadata: JsonValue = None


_record_encoder: Final = msgspec.msgpack.Encoder(uuid_format="bytes")
_record_decoder: Final = msgspec.msgpack.Decoder(MessageRecord)
_entry_decoder: Final = msgspec.msgpack.Decoder(list[MessageRecord])


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _json_problem(value: object, path: str, depth: int = 0) -> str | None:
    """Say why ``value`` is not a JSON value, or return None if it is one."""
    if depth > 64:
        return f"{path} nests deeper than 64 levels"
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, not JSON"
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r}"
            problem = _json_problem(item, f"{path}[{key!r}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} holds a {type(value).__name__}, which is not a JSON value"


def _record_problem(record: MessageRecord) -> tuple[str, str] | None:
    """Return ``(field, problem)`` for the first semantic problem of a record."""
    if record.version != RECORD_VERSION:
        return "version", f"unsupported record version {record.version!r}"
    if not record.role.strip():
        return "role", f"role must be a non-empty string, got {record.role!r}"
    if record.ts.tzinfo is None or record.ts.utcoffset() is None:
        return "ts", f"timestamp must be timezone-aware, got naive {record.ts!r}"
    for name in ("content_parts", "metadata"):
        problem = _json_problem(getattr(record, name), name)
        if problem:
            return name, problem
    for i, att in enumerate(record.attachments):
        where = f"attachments[{i}]"
        if (att.uri is None) == (att.data is None):
            return where, "exactly one of uri and data must be set"
        if att.size < 0:
            return where, f"size must be >= 0, got {att.size}"
        if att.data is not None and att.size != len(att.data):
            return where, f"size {att.size} != len(data) {len(att.data)}"
    return None


def encode_append(
    session: UUID, records: Sequence[MessageRecord], *, max_record_bytes: int
) -> bytes:
    """Validate the records of one append and encode them as one journal payload.

    Raises:
        ValidationError: naming the record index, field and value of the first
            problem: a wrong type, a record of another session, a naive ``ts``, an
            empty role, a non-JSON ``metadata``/``content_parts``, a repeated
            ``message_id`` or a record over ``max_record_bytes``. Nothing is
            encoded for the call.
    """
    parts: list[bytes] = []
    seen: dict[UUID, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, MessageRecord):
            raise ValidationError(
                f"expected a MessageRecord, got {type(record).__name__}", index=index
            )
        try:
            encoded = _record_encoder.encode(record)
            # Decoding back checks every field's type: msgspec does not check
            # types on construction, and an undecodable entry would be poison.
            _record_decoder.decode(encoded)
        except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
            raise ValidationError(str(exc), index=index) from exc
        problem = _record_problem(record)
        if problem is not None:
            raise ValidationError(problem[1], index=index, field=problem[0])
        if record.session != session:
            raise ValidationError(
                f"record belongs to session {record.session}, not {session}",
                index=index,
                field="session",
            )
        if record.message_id in seen:
            raise ValidationError(
                f"message_id {record.message_id} repeats record {seen[record.message_id]}",
                index=index,
                field="message_id",
            )
        seen[record.message_id] = index
        if len(encoded) > max_record_bytes:
            raise ValidationError(
                f"encoded size {len(encoded)} bytes exceeds max_record_bytes"
                f" ({max_record_bytes})",
                index=index,
            )
        parts.append(encoded)
    return _array_header(len(parts)) + b"".join(parts)


def decode_entry(payload: bytes) -> list[MessageRecord]:
    """Decode the records of one journal entry (the inverse of ``encode_append``)."""
    return _entry_decoder.decode(payload)


class Op(enum.IntEnum):
    """The operation a journal entry carries (stored as an integer)."""

    #: ``append_messages``: the payload is a msgpack array of records.
    APPEND = 1
