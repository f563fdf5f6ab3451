"""Message records, UUIDv7 ids, and the one place records are encoded and checked.

Rules:
- A record is encoded exactly once, by ``encode_append``, which also validates it.
  It checks every field's type (msgspec does not check types on construction), so
  what it accepts decodes again and nothing undecodable reaches the journal; a
  property test holds it to that.
- One journal entry holds the records of one ``append_messages`` call: a msgpack
  array of the individually encoded records, so each record's size is known.
- Checking costs time linear in a record's size, and so does refusing a call:
  the JSON check visits each value at most twice and spells the path to a bad
  value only once it found one (the keys and indexes are collected on the way
  back up); a call is refused on its record count before anything is encoded,
  and on its bytes as soon as the encoded total passes the limit. Error messages
  are bounded too: long keys and deep paths are shortened.
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
    "MAX_JSON_DEPTH",
    "RECORD_VERSION",
    "Attachment",
    "JsonValue",
    "MessageRecord",
    "Op",
    "check_append_count",
    "decode_entry",
    "encode_append",
    "uuid7",
]

RECORD_VERSION: Final = 1
#: How deep a JSON value in ``metadata`` or ``content_parts`` may nest: no value
#: may sit inside more than this many lists and dicts.
MAX_JSON_DEPTH: Final = 64
#: Characters of a dict key an error message quotes; a longer key is cut there.
_PATH_KEY_CHARS: Final = 40
#: Steps of a path an error message spells out; the middle of a longer one is cut.
_PATH_STEPS: Final = 16

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


_JSON_LEAVES: Final = frozenset({str, int, bool, type(None)})
_STR: Final = frozenset({str})

#: What ``_json_problem`` finds: what is wrong (to be read after the path to it),
#: and the keys and indexes leading to it, innermost first.
_Problem: TypeAlias = tuple[str, list[str | int]]


def _json_problem(value: object, depth: int = 0) -> _Problem | None:
    """Say why ``value`` is not a JSON value, or return None if it is one.

    Visits each value at most twice (a container's scan in C stops at its first
    child that is not a leaf; the loop then starts over) and builds no string
    unless something is wrong: the route to the culprit is collected on the way
    back up (``_path`` spells it).
    ``depth`` is how many lists and dicts enclose ``value``.
    """
    if depth > MAX_JSON_DEPTH:
        return f" nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)", []
    kind = type(value)
    if kind in _JSON_LEAVES:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (f" is {value!r}, not JSON", [])
    # Children that are plain leaves are checked here, not by a call, unless they
    # are one level too deep; a container of leaves only is scanned in C.
    shallow = depth < MAX_JSON_DEPTH
    if isinstance(value, list | tuple):
        if shallow and _JSON_LEAVES.issuperset(map(type, value)):
            return None
        for index, item in enumerate(value):
            if shallow and type(item) in _JSON_LEAVES:
                continue
            found = _json_problem(item, depth + 1)
            if found:
                found[1].append(index)
                return found
        return None
    if isinstance(value, dict):
        if (
            shallow
            and _STR.issuperset(map(type, value))
            and _JSON_LEAVES.issuperset(map(type, value.values()))
        ):
            return None
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                return f" has a non-string key {_brief(key)}", []
            if shallow and type(item) in _JSON_LEAVES:
                continue
            found = _json_problem(item, depth + 1)
            if found:
                found[1].append(key)
                return found
        return None
    if isinstance(value, bool | int | str):  # subclasses: msgspec decides at encode
        return None
    return f" holds a {kind.__name__}, which is not a JSON value", []


def _json_message(field: str, problem: _Problem) -> str:
    """The message for ``problem`` found in ``field``, e.g. ``metadata['a'][3] is
    nan, not JSON``."""
    what, route = problem
    return f"{_path(field, route[::-1])}{what}"


def _path(field: str, route: Sequence[str | int]) -> str:
    """Spell ``route`` (outermost first) from ``field``, e.g. ``metadata['a'][3]``.

    A key longer than ``_PATH_KEY_CHARS`` is cut, with its length; a route longer
    than ``_PATH_STEPS`` keeps its ends and counts the steps left out. So a message
    stays a few KiB at most, whatever the keys.
    """
    steps = []
    for step in route:
        if isinstance(step, int):
            steps.append(f"[{step}]")
        else:
            shown = step[:_PATH_KEY_CHARS]  # a plain str, even from a subclass
            cut = f"... ({len(step)} chars)" if len(step) > _PATH_KEY_CHARS else ""
            steps.append(f"[{shown!r}{cut}]")
    if len(steps) > _PATH_STEPS:
        head, tail = _PATH_STEPS // 2, _PATH_STEPS // 2 - 1
        left_out = len(steps) - head - tail
        steps[head:-tail] = [f"[...{left_out} levels...]"]
    return field + "".join(steps)


def _brief(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (for error messages)."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int past Python's limit on digits in a str
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _type_problem(value: object, expected: type | tuple[type, ...], name: str) -> str:
    wanted = (
        expected.__name__
        if isinstance(expected, type)
        else " or ".join("None" if t is type(None) else t.__name__ for t in expected)
    )
    return f"{name} must be {wanted}, got {type(value).__name__} {_brief(value)}"


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
        return f"{where}.size must be an int >= 0, got {_brief(att.size)}"
    if (att.uri is None) == (att.data is None):
        return f"{where}: exactly one of uri and data must be set"
    if att.data is not None and att.size != len(att.data):
        return f"{where}.size {_brief(att.size)} != len(data) {len(att.data)}"
    return None


def _record_problem(record: MessageRecord) -> tuple[str, str] | None:
    """Return ``(field, problem)`` for the first problem of a record."""
    if type(record.version) is not int or record.version != RECORD_VERSION:
        return "version", f"unsupported record version {_brief(record.version)}"
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
        return "role", f"role must be a non-empty string, got {_brief(record.role)}"
    ts = record.ts
    if ts.tzinfo is not UTC and (ts.tzinfo is None or ts.utcoffset() is None):
        return "ts", f"timestamp must be timezone-aware, got naive {record.ts!r}"
    if record.content_parts is not None:
        found = _json_problem(record.content_parts)
        if found:
            return "content_parts", _json_message("content_parts", found)
    if record.metadata is not None:
        found = _json_problem(record.metadata)
        if found:
            return "metadata", _json_message("metadata", found)
    if record.attachments:
        for i, att in enumerate(record.attachments):
            problem = _attachment_problem(att, f"attachments[{i}]")
            if problem:
                return "attachments", problem
    return None


def check_append_count(count: int, max_append_records: int) -> None:
    """Refuse an append of more than ``max_append_records`` records.

    Called before anything of the call is copied or encoded, so refusing an
    oversized call costs nothing in proportion to it.

    Raises:
        ValidationError: naming the count and the limit (no index, no field).
    """
    if count > max_append_records:
        raise ValidationError(
            f"{count} records in one call exceed max_append_records"
            f" ({max_append_records})"
        )


def encode_append(
    session: UUID,
    records: Sequence[MessageRecord],
    *,
    max_record_bytes: int,
    max_append_records: int | None = None,
    max_append_bytes: int | None = None,
) -> bytes:
    """Validate the records of one append and encode them as one journal payload.

    ``max_append_records`` and ``max_append_bytes`` bound the call (None: no
    bound): the count is checked before any record is, and encoding stops at the
    record that takes the encoded total (the records' sizes, without the few
    bytes of the array header) past ``max_append_bytes``.

    Raises:
        ValidationError: naming the record index, field and value of the first
            problem: a wrong type, a record of another session, a naive ``ts``, an
            empty role, a non-JSON ``metadata``/``content_parts`` (or one nested
            deeper than ``MAX_JSON_DEPTH``), a repeated ``message_id`` or a record
            over ``max_record_bytes``; or, naming no record, a call over
            ``max_append_records`` or ``max_append_bytes``. Nothing is encoded
            for the call.
    """
    if max_append_records is not None:
        check_append_count(len(records), max_append_records)
    # Without a bound, a total no call can reach.
    byte_limit = 1 << 64 if max_append_bytes is None else max_append_bytes
    if len(records) == 1:
        # The common case, without the bookkeeping of several records, and
        # encoded as the one-element array it is stored as: no second copy of
        # a large record to prepend the array header.
        payload = _checked_encode(records[0], 0, session, max_record_bytes, alone=True)
        if len(payload) - 1 > byte_limit:
            raise _over_append_bytes(len(payload) - 1, 0, byte_limit)
        return payload
    parts: list[bytes] = []
    seen: dict[UUID, int] = {}
    total = 0
    for index, record in enumerate(records):
        part = _checked_encode(record, index, session, max_record_bytes)
        total += len(part)
        if total > byte_limit:
            raise _over_append_bytes(total, index, byte_limit)
        parts.append(part)
        first = seen.setdefault(record.message_id, index)
        if first != index:
            raise ValidationError(
                f"message_id {record.message_id} repeats record {first}",
                index=index,
                field="message_id",
            )
    return _array_header(len(parts)) + b"".join(parts)


def _over_append_bytes(total: int, index: int, limit: int) -> ValidationError:
    # Not one record's problem, so no index: the message says where it stopped.
    return ValidationError(
        f"the call's records encode to more than max_append_bytes ({limit}):"
        f" {total} bytes by record {index}, where encoding stopped"
    )


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
