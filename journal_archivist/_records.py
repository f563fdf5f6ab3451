"""Message records, UUIDv7 ids, and the one place records are encoded and checked.

Rules:
- A record is encoded exactly once, by ``encode_append``, which also validates it.
  It checks every field's type (msgspec does not check types on construction), so
  what it accepts decodes again and nothing undecodable reaches the journal; a
  property test holds it to that.
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
from uuid import UUID, SafeUUID

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
_entropy = b""  # bytes of os.urandom, 10 per id, used from _entropy_at on
_entropy_at = 0
_ENTROPY_CHUNK: Final = 10 * 256


def _forget_entropy() -> None:
    # A forked child must not hand out the ids its parent's pool would.
    global _entropy, _entropy_at, _uuid7_last
    _entropy, _entropy_at, _uuid7_last = b"", 0, (0, 0)


os.register_at_fork(after_in_child=_forget_entropy)


def uuid7() -> UUID:
    """Return a new RFC 9562 UUIDv7: time-ordered, random in the low bits.

    Ids from one process are strictly increasing, even within one millisecond (the
    12-bit ``rand_a`` field counts up from a random start each millisecond). The
    random bits come from ``os.urandom``, read in chunks to keep the cost low.
    """
    global _uuid7_last, _entropy, _entropy_at
    with _uuid7_lock:
        if _entropy_at >= len(_entropy):
            _entropy, _entropy_at = os.urandom(_ENTROPY_CHUNK), 0
        bits = _entropy[_entropy_at : _entropy_at + 10]
        _entropy_at += 10
        ms = time.time_ns() // 1_000_000
        last_ms, last_counter = _uuid7_last
        if ms > last_ms:
            counter = int.from_bytes(bits[:2]) & 0x3FF  # leave room to count up
        else:
            ms, counter = last_ms, last_counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        _uuid7_last = (ms, counter)
    value = (ms & _MS_MASK) << 80 | _VERSION_7 | counter << 64 | _VARIANT
    # UUID(int=...) re-validates a value built valid above; setting the slots
    # directly (as UUID.__init__ itself does) costs a third of it.
    uuid = _new_uuid(UUID)
    _set(uuid, "int", value | int.from_bytes(bits[2:]) & _RAND_B)
    _set(uuid, "is_safe", _UNKNOWN_SAFETY)
    return uuid


_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN_SAFETY: Final = SafeUUID.unknown
_MS_MASK: Final = (1 << 48) - 1
_RAND_B: Final = (1 << 62) - 1
_VERSION_7: Final = 0x7 << 76
_VARIANT: Final = 0b10 << 62


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
    and ``metadata`` hold any JSON value. Delivery is at-least-once, so backends
    are idempotent on ``message_id``: delivering a record twice archives it once.
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
_encode: Final = _record_encoder.encode
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


def _type_problem(value: object, expected: type | tuple[type, ...], name: str) -> str:
    wanted = (
        expected.__name__
        if isinstance(expected, type)
        else " or ".join("None" if t is type(None) else t.__name__ for t in expected)
    )
    return f"{name} must be {wanted}, got {type(value).__name__} {value!r:.80}"


_NONE = type(None)
# Field types checked before encoding: msgspec does not check types on
# construction, and a record that encodes but does not decode would be poison.
_FIELD_TYPES: Final[tuple[tuple[str, type | tuple[type, ...]], ...]] = (
    ("message_id", UUID),
    ("session", UUID),
    ("parent_id", (UUID, _NONE)),
    ("ts", datetime),
    ("role", str),
    ("author", (str, _NONE)),
    ("content_md", str),
    ("attachments", (tuple, list)),
)
_ATTACHMENT_TYPES: Final[tuple[tuple[str, type | tuple[type, ...]], ...]] = (
    ("name", str),
    ("media_type", str),
    ("uri", (str, _NONE)),
    ("data", (bytes, _NONE)),
)


def _attachment_problem(att: object, where: str) -> str | None:
    if not isinstance(att, Attachment):
        return _type_problem(att, Attachment, where)
    for name, expected in _ATTACHMENT_TYPES:
        value = getattr(att, name)
        if not isinstance(value, expected):
            return _type_problem(value, expected, f"{where}.{name}")
    if type(att.size) is not int or att.size < 0:
        return f"{where}.size must be an int >= 0, got {att.size!r}"
    if (att.uri is None) == (att.data is None):
        return f"{where}: exactly one of uri and data must be set"
    if att.data is not None and att.size != len(att.data):
        return f"{where}.size {att.size} != len(data) {len(att.data)}"
    return None


def _record_problem(record: MessageRecord) -> tuple[str, str] | None:
    """Return ``(field, problem)`` for the first problem of a record."""
    if type(record.version) is not int or record.version != RECORD_VERSION:
        return "version", f"unsupported record version {record.version!r}"
    # One expression for the common, well-typed record; the loop names the culprit.
    # (The annotations say these hold; msgspec does not enforce them on __init__.)
    well_typed: bool = (
        isinstance(record.message_id, UUID)
        and isinstance(record.session, UUID)
        and (record.parent_id is None or isinstance(record.parent_id, UUID))
        and isinstance(record.ts, datetime)
        and isinstance(record.role, str)
        and (record.author is None or isinstance(record.author, str))
        and isinstance(record.content_md, str)
        and isinstance(record.attachments, tuple | list)
    )
    if not well_typed:
        for name, expected in _FIELD_TYPES:
            value = getattr(record, name)
            if not isinstance(value, expected):
                return name, _type_problem(value, expected, name)
    if not record.role.strip():
        return "role", f"role must be a non-empty string, got {record.role!r}"
    ts = record.ts
    if ts.tzinfo is not UTC and (ts.tzinfo is None or ts.utcoffset() is None):
        return "ts", f"timestamp must be timezone-aware, got naive {record.ts!r}"
    if record.content_parts is not None:
        problem = _json_problem(record.content_parts, "content_parts")
        if problem:
            return "content_parts", problem
    if record.metadata is not None:
        problem = _json_problem(record.metadata, "metadata")
        if problem:
            return "metadata", problem
    if record.attachments:
        for i, att in enumerate(record.attachments):
            problem = _attachment_problem(att, f"attachments[{i}]")
            if problem:
                return "attachments", problem
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
    if len(records) == 1:
        # The common case, without the bookkeeping of several records, and
        # encoded as the one-element array it is stored as: no second copy of
        # a large record to prepend the array header.
        return _checked_encode(records[0], 0, session, max_record_bytes, alone=True)
    parts: list[bytes] = []
    seen: dict[UUID, int] = {}
    for index, record in enumerate(records):
        parts.append(_checked_encode(record, index, session, max_record_bytes))
        first = seen.setdefault(record.message_id, index)
        if first != index:
            raise ValidationError(
                f"message_id {record.message_id} repeats record {first}",
                index=index,
                field="message_id",
            )
    return _array_header(len(parts)) + b"".join(parts)


def _checked_encode(
    record: MessageRecord,
    index: int,
    session: UUID,
    max_record_bytes: int,
    *,
    alone: bool = False,
) -> bytes:
    """Check one record of an append and encode it (``alone``: as a one-element
    array, the whole payload); raise ``ValidationError``."""
    if not isinstance(record, MessageRecord):
        raise ValidationError(
            f"expected a MessageRecord, got {type(record).__name__}", index=index
        )
    problem = _record_problem(record)
    if problem is not None:
        raise ValidationError(problem[1], index=index, field=problem[0])
    # Compare the ints: UUID.__eq__ is a Python-level method.
    if record.session.int != session.int:
        raise ValidationError(
            f"record belongs to session {record.session}, not {session}",
            index=index,
            field="session",
        )
    try:
        encoded = _encode((record,) if alone else record)
    except (msgspec.EncodeError, OverflowError, UnicodeEncodeError) as exc:
        # Well-typed but not representable: an int beyond 64 bits, a lone
        # surrogate in a string, a timestamp outside years 1..9999 in UTC.
        raise ValidationError(f"cannot be encoded: {exc}", index=index) from exc
    size = len(encoded) - alone  # the array header is one byte
    if size > max_record_bytes:
        raise ValidationError(
            f"encoded size {size} bytes exceeds max_record_bytes ({max_record_bytes})",
            index=index,
        )
    return encoded


def decode_entry(payload: bytes, op: int = 1) -> list[MessageRecord]:
    """Decode the records of one journal entry (the inverse of ``encode_append``).

    An erasure (``Op.ERASE``) carries no records.
    """
    if op != 1:
        return []
    return _entry_decoder.decode(payload)


class Op(enum.IntEnum):
    """The operation a journal entry carries (stored as an integer)."""

    #: ``append_messages``: the payload is a msgpack array of records.
    APPEND = 1
    #: ``delete_session``: erase the session everywhere; the payload is empty.
    ERASE = 2
