"""Tests for journal_archivist._records: UUIDv7 ids, record defaults, encode/decode."""

from __future__ import annotations

import random
import re
import threading
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from itertools import pairwise
from types import SimpleNamespace
from uuid import RFC_4122, UUID, SafeUUID

import pytest
from hypothesis import given, strategies as st

from journal_archivist import ValidationError, _records
from journal_archivist._records import (
    RECORD_VERSION,
    Attachment,
    MessageRecord,
    decode_entry,
    encode_append,
    uuid7,
)
from tests.helpers import record

#: The session every append in the validation table is made to.
SESSION = UUID("00000000-0000-0000-0000-00000000000a")
#: A session the append is not made to.
OTHER = UUID("00000000-0000-0000-0000-00000000000b")
#: A message id shared by two records of one append.
REPEATED = UUID("00000000-0000-0000-0000-0000000000c0")
#: Large enough for every record in these tests.
ROOMY = 1 << 20
TS = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _ms(uuid: UUID) -> int:
    """The unix-millisecond field of a UUIDv7."""
    return uuid.int >> 80


class _NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime counts as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


# --- uuid7 ------------------------------------------------------------------------


def test_uuid7_is_an_rfc_9562_version_7_uuid() -> None:
    uuid = uuid7()
    assert uuid.version == 7
    assert uuid.variant == RFC_4122
    assert uuid.is_safe is SafeUUID.unknown
    assert UUID(str(uuid)) == uuid


def test_uuid7_carries_the_current_unix_millisecond() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    uuid = uuid7()
    after = int(datetime.now(UTC).timestamp() * 1000)
    # Ids may run a little ahead of the clock when a millisecond's counter wraps.
    assert before - 1 <= _ms(uuid) <= after + 50


def test_uuid7_ids_are_strictly_increasing_and_unique_within_a_process() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert all(a < b for a, b in pairwise(ids))
    assert len(set(ids)) == len(ids)
    assert all(u.version == 7 for u in ids)


def test_uuid7_keeps_increasing_past_4096_ids_in_one_frozen_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen_ms = 1_700_000_000_000
    # Start from a fresh generator state; monkeypatch restores the real one.
    monkeypatch.setattr(_records, "_uuid7_last", (0, 0))
    monkeypatch.setattr(
        _records, "time", SimpleNamespace(time_ns=lambda: frozen_ms * 1_000_000)
    )
    ids = [uuid7() for _ in range(10_000)]
    assert all(a < b for a, b in pairwise(ids))
    assert _ms(ids[0]) == frozen_ms
    # The counter starts below 1024 and wraps at 4096, borrowing the next ms.
    assert (ids[0].int >> 64) & 0xFFF < 1024
    assert frozen_ms + 2 <= _ms(ids[-1]) <= frozen_ms + 4
    assert all(u.version == 7 and u.variant == RFC_4122 for u in ids)


def test_uuid7_keeps_increasing_when_the_clock_goes_backwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(2_000_000_000_000, 1_000_000_000_000, -7))
    monkeypatch.setattr(_records, "_uuid7_last", (0, 0))
    monkeypatch.setattr(
        _records, "time", SimpleNamespace(time_ns=lambda: next(clock) * 1_000_000)
    )
    ids = [uuid7() for _ in range(3_000)]
    assert all(a < b for a, b in pairwise(ids))
    assert _ms(ids[-1]) >= 2_000_000_000_000


def test_uuid7_ids_from_several_threads_are_unique() -> None:
    results: list[list[UUID]] = [[] for _ in range(4)]

    def work(out: list[UUID]) -> None:
        out.extend(uuid7() for _ in range(3_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [u for out in results for u in out]
    assert len(set(every)) == len(every)
    for out in results:
        assert all(a < b for a, b in pairwise(out))


def test_uuid7_does_not_depend_on_the_global_random_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        _records, "time", SimpleNamespace(time_ns=lambda: 1_700_000_000_000_000_000)
    )
    saved = random.getstate()
    try:
        minted = []
        # Two "processes": same clock, fresh generator state, same seed.
        for _ in range(2):
            monkeypatch.setattr(_records, "_uuid7_last", (0, 0))
            random.seed(1234)
            minted.append(uuid7())
    finally:
        random.setstate(saved)
    assert minted[0] != minted[1]


# --- MessageRecord defaults -------------------------------------------------------


def test_a_record_gets_a_uuid7_message_id_and_an_aware_utc_timestamp_of_now() -> None:
    before = datetime.now(UTC)
    first = MessageRecord(session=SESSION, role="user")
    second = MessageRecord(session=SESSION, role="user")
    after = datetime.now(UTC)
    assert first.message_id.version == 7
    assert first.message_id < second.message_id
    assert first.ts.tzinfo is not None
    assert first.ts.utcoffset() == timedelta(0)
    assert before <= first.ts <= second.ts <= after


def test_a_record_defaults_its_optional_fields() -> None:
    rec = MessageRecord(session=SESSION, role="user")
    assert rec.version == RECORD_VERSION
    assert rec.parent_id is None
    assert rec.author is None
    assert rec.content_md == ""
    assert rec.content_parts is None
    assert rec.attachments == ()
    assert rec.metadata is None


# --- encode_append / decode_entry round trip ----------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    # msgpack carries integers in [-2**63, 2**64 - 1].
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

fixed_offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59),
    max_value=timedelta(hours=23, minutes=59),
).map(timezone)

aware_datetimes = st.datetimes(
    # Leave a day at either end so that the UTC instant is a valid datetime.
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.just(UTC) | fixed_offsets,
)

inline_attachments = st.builds(
    lambda name, media_type, data: Attachment(
        name=name, media_type=media_type, size=len(data), data=data
    ),
    st.text(max_size=8),
    st.text(max_size=8),
    st.binary(max_size=32),
)

uri_attachments = st.builds(
    Attachment,
    name=st.text(max_size=8),
    media_type=st.text(max_size=8),
    size=st.integers(min_value=0, max_value=2**63 - 1),
    uri=st.text(max_size=20),
)

roles = st.text(min_size=1, max_size=10).filter(lambda role: bool(role.strip()))


@st.composite
def message_records(draw: st.DrawFn, session: UUID) -> MessageRecord:
    """A valid record of ``session``, exercising every field."""
    attachments = st.lists(inline_attachments | uri_attachments, max_size=3)
    return MessageRecord(
        message_id=draw(st.uuids()),
        session=session,
        parent_id=draw(st.none() | st.uuids()),
        ts=draw(aware_datetimes),
        role=draw(roles),
        author=draw(st.none() | st.text(max_size=10)),
        content_md=draw(st.text(max_size=30)),
        content_parts=draw(json_values),
        attachments=tuple(draw(attachments)),
        metadata=draw(json_values),
    )


@st.composite
def appends(draw: st.DrawFn) -> tuple[UUID, list[MessageRecord]]:
    """A session and a valid list of its records (distinct message ids)."""
    session = draw(st.uuids())
    records = draw(
        st.lists(message_records(session), max_size=5, unique_by=lambda r: r.message_id)
    )
    return session, records


@given(appends())
def test_any_valid_append_round_trips_to_equal_records(
    append: tuple[UUID, list[MessageRecord]],
) -> None:
    session, records = append
    payload = encode_append(session, records, max_record_bytes=ROOMY)
    decoded = decode_entry(payload)
    assert decoded == records
    # The timestamp keeps its instant (msgpack carries it as UTC).
    assert [r.ts.utcoffset() for r in decoded] == [timedelta(0)] * len(records)


def test_an_append_of_no_records_is_an_empty_msgpack_array() -> None:
    payload = encode_append(SESSION, [], max_record_bytes=ROOMY)
    assert payload == b"\x90"
    assert decode_entry(payload) == []


@pytest.mark.parametrize(
    ("count", "header"),
    [
        # The largest fixarray.
        (15, b"\x9f"),
        # The smallest array16.
        (16, b"\xdc\x00\x10"),
        # The largest array16.
        (65_535, b"\xdc\xff\xff"),
        # The smallest array32.
        (65_536, b"\xdd\x00\x01\x00\x00"),
    ],
)
def test_the_array_header_fits_the_record_count(count: int, header: bytes) -> None:
    # Tiny records with fixed fields keep this fast.
    records = [
        MessageRecord(session=SESSION, role="u", message_id=UUID(int=i), ts=TS)
        for i in range(count)
    ]
    payload = encode_append(SESSION, records, max_record_bytes=ROOMY)
    assert payload.startswith(header)
    assert decode_entry(payload) == records


def test_a_record_of_exactly_max_record_bytes_is_accepted() -> None:
    rec = record(SESSION, "x" * 50, ts=TS)
    size = len(encode_append(SESSION, [rec], max_record_bytes=ROOMY)) - 1
    payload = encode_append(SESSION, [rec], max_record_bytes=size)
    assert decode_entry(payload) == [rec]


# --- validation errors --------------------------------------------------------------


def _rec(**fields: object) -> MessageRecord:
    """A record of ``SESSION`` with ``fields`` overridden (types unchecked)."""
    fields.setdefault("session", SESSION)
    fields.setdefault("role", "user")
    return MessageRecord(**fields)  # type: ignore[arg-type]


def _att(**fields: object) -> Attachment:
    """An attachment with ``fields`` overridden (types unchecked)."""
    fields.setdefault("name", "a")
    fields.setdefault("media_type", "text/plain")
    return Attachment(**fields)  # type: ignore[arg-type]


def _nested(depth: int) -> object:
    """A JSON list nested ``depth`` levels deep."""
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


OK = _rec(content_md="fine")

VALIDATION_CASES = [
    # A record of another session, after a good one.
    pytest.param(
        [OK, _rec(session=OTHER)],
        1,
        "session",
        f"record belongs to session {OTHER}, not {SESSION}",
        id="other-session",
    ),
    # A naive timestamp.
    pytest.param(
        [_rec(ts=datetime(2024, 1, 1))],
        0,
        "ts",
        "timestamp must be timezone-aware, got naive",
        id="naive-ts",
    ),
    # A tzinfo whose utcoffset() is None leaves the timestamp naive.
    pytest.param(
        [_rec(ts=datetime(2024, 1, 1, tzinfo=_NoOffset()))],
        0,
        "ts",
        "timestamp must be timezone-aware, got naive",
        id="offsetless-tzinfo",
    ),
    # An empty role.
    pytest.param(
        [_rec(role="")],
        0,
        "role",
        "role must be a non-empty string, got ''",
        id="empty-role",
    ),
    # A role of whitespace only.
    pytest.param(
        [_rec(role=" \t\n")],
        0,
        "role",
        "role must be a non-empty string, got ' \\t\\n'",
        id="whitespace-role",
    ),
    # The second record with a message_id already used in the call is named.
    pytest.param(
        [_rec(message_id=REPEATED), OK, _rec(message_id=REPEATED)],
        2,
        "message_id",
        f"message_id {REPEATED} repeats record 0",
        id="duplicate-message-id",
    ),
    # The session given as a string.
    pytest.param(
        [_rec(session=str(SESSION))],
        0,
        "session",
        "session must be UUID, got str",
        id="session-str",
    ),
    # The role given as an int.
    pytest.param(
        [_rec(role=7)], 0, "role", "role must be str, got int 7", id="role-int"
    ),
    # An int too long for repr() (Python's limit on digits) is named, not shown.
    pytest.param(
        [_rec(role=10**5000)],
        0,
        "role",
        "role must be str, got int <unprintable int>",
        id="role-huge-int",
    ),
    # An attachment size too long to print, disagreeing with its data.
    pytest.param(
        [_rec(attachments=(_att(size=10**5000, data=b"x"),))],
        0,
        "attachments",
        "attachments[0].size <unprintable int> != len(data) 1",
        id="attachment-size-huge-int",
    ),
    # The message_id given as a string.
    pytest.param(
        [_rec(message_id=str(REPEATED))],
        0,
        "message_id",
        "message_id must be UUID, got str",
        id="message-id-str",
    ),
    # The timestamp given as an ISO string.
    pytest.param(
        [_rec(ts="2024-01-01T00:00:00Z")],
        0,
        "ts",
        "ts must be datetime, got str",
        id="ts-str",
    ),
    # content_md given as bytes.
    pytest.param(
        [_rec(content_md=b"hi")],
        0,
        "content_md",
        "content_md must be str, got bytes b'hi'",
        id="content-md-bytes",
    ),
    # parent_id given as an int.
    pytest.param(
        [_rec(parent_id=3)],
        0,
        "parent_id",
        "parent_id must be UUID or None, got int 3",
        id="parent-id-int",
    ),
    # author given as an int.
    pytest.param(
        [_rec(author=3)],
        0,
        "author",
        "author must be str or None, got int 3",
        id="author-int",
    ),
    # attachments given as a single string.
    pytest.param(
        [_rec(attachments="a.png")],
        0,
        "attachments",
        "attachments must be tuple or list, got str",
        id="attachments-str",
    ),
    # metadata holding a set.
    pytest.param(
        [_rec(metadata={1, 2})],
        0,
        "metadata",
        "metadata holds a set, which is not a JSON value",
        id="metadata-set",
    ),
    # metadata that is NaN.
    pytest.param(
        [_rec(metadata=float("nan"))],
        0,
        "metadata",
        "metadata is nan, not JSON",
        id="metadata-nan",
    ),
    # metadata with an int key.
    pytest.param(
        [_rec(metadata={1: "one"})],
        0,
        "metadata",
        "metadata has a non-string key 1",
        id="metadata-int-key",
    ),
    # metadata holding bytes.
    pytest.param(
        [_rec(metadata=b"raw")],
        0,
        "metadata",
        "metadata holds a bytes, which is not a JSON value",
        id="metadata-bytes",
    ),
    # A problem deep inside metadata is located by its path.
    pytest.param(
        [_rec(metadata={"a": [1, {"b": float("inf")}]})],
        0,
        "metadata",
        "metadata['a'][1]['b'] is inf, not JSON",
        id="metadata-nested-inf",
    ),
    # content_parts is checked like metadata.
    pytest.param(
        [_rec(content_parts=[{"type": "text"}, object()])],
        0,
        "content_parts",
        "content_parts[1] holds a object, which is not a JSON value",
        id="content-parts-object",
    ),
    # JSON nested more than MAX_JSON_DEPTH levels deep: the path says how deep.
    pytest.param(
        [_rec(metadata=_nested(70))],
        0,
        "metadata",
        "metadata[0][0][0][0][0][0][0][0][...50 levels...][0][0][0][0][0][0][0]"
        " nests deeper than 64 levels (MAX_JSON_DEPTH)",
        id="metadata-too-deep",
    ),
    # An attachment with both a uri and inline data.
    pytest.param(
        [_rec(attachments=(_att(size=1, uri="u", data=b"x"),))],
        0,
        "attachments",
        "attachments[0]: exactly one of uri and data must be set",
        id="attachment-uri-and-data",
    ),
    # An attachment with neither a uri nor data (the second one).
    pytest.param(
        [
            _rec(
                attachments=(
                    _att(size=0, data=b""),
                    _att(name="b", size=0),
                )
            )
        ],
        0,
        "attachments",
        "attachments[1]: exactly one of uri and data must be set",
        id="attachment-neither",
    ),
    # An attachment with a negative size.
    pytest.param(
        [_rec(attachments=(_att(size=-1, uri="u"),))],
        0,
        "attachments",
        "attachments[0].size must be an int >= 0, got -1",
        id="attachment-negative-size",
    ),
    # An inline attachment whose size is not len(data).
    pytest.param(
        [_rec(attachments=(_att(size=3, data=b"xy"),))],
        0,
        "attachments",
        "attachments[0].size 3 != len(data) 2",
        id="attachment-size-mismatch",
    ),
    # Something that is not an Attachment in attachments.
    pytest.param(
        [_rec(attachments=({"name": "a"},))],
        0,
        "attachments",
        "attachments[0] must be Attachment, got dict",
        id="attachment-dict",
    ),
    # An attachment name of the wrong type.
    pytest.param(
        [_rec(attachments=(_att(name=1, size=0, uri="u"),))],
        0,
        "attachments",
        "attachments[0].name must be str, got int 1",
        id="attachment-name-int",
    ),
    # A record version this library does not know.
    pytest.param(
        [_rec(version=2)],
        0,
        "version",
        "unsupported record version 2",
        id="version-2",
    ),
    # A bool is not an acceptable version even though True == 1.
    pytest.param(
        [_rec(version=True)],
        0,
        "version",
        "unsupported record version True",
        id="version-bool",
    ),
    # Something that is not a MessageRecord at all; no field is named.
    pytest.param(
        [OK, {"session": SESSION, "role": "user"}],
        1,
        None,
        "expected a MessageRecord, got dict",
        id="not-a-record",
    ),
]


@pytest.mark.parametrize(("records", "index", "field", "problem"), VALIDATION_CASES)
def test_a_bad_record_raises_validation_error_naming_index_and_field(
    records: list[MessageRecord], index: int, field: str | None, problem: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)) as caught:
        encode_append(SESSION, records, max_record_bytes=ROOMY)
    assert caught.value.index == index
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"record {index}")


def test_a_record_over_max_record_bytes_is_refused_without_naming_a_field() -> None:
    records = [record(SESSION, "short"), record(SESSION, "x" * 300)]
    with pytest.raises(
        ValidationError,
        match=r"^record 1: encoded size \d+ bytes exceeds max_record_bytes \(300\)$",
    ) as caught:
        encode_append(SESSION, records, max_record_bytes=300)
    assert caught.value.index == 1
    assert caught.value.field is None


def test_a_validation_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="role must be a non-empty string"):
        encode_append(SESSION, [_rec(role="")], max_record_bytes=ROOMY)


def test_the_first_problem_of_an_append_is_the_one_reported() -> None:
    records = [OK, _rec(role=""), _rec(session=OTHER)]
    with pytest.raises(ValidationError, match="role must be a non-empty") as caught:
        encode_append(SESSION, records, max_record_bytes=ROOMY)
    assert (caught.value.index, caught.value.field) == (1, "role")


@pytest.mark.parametrize(
    "fields",
    [
        # An int above msgpack's uint64 range inside metadata.
        {"metadata": {"n": 2**64}},
        # An int below msgpack's int64 range inside content_parts.
        {"content_parts": [-(2**63) - 1]},
        # A lone surrogate in a str field.
        {"content_md": "\ud800"},
        # A lone surrogate in a metadata string.
        {"metadata": {"k": "\udc80"}},
        # An aware timestamp whose UTC instant is before year 1.
        {"ts": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
        # An aware timestamp whose UTC instant is after year 9999.
        {"ts": datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))},
    ],
)
def test_a_well_typed_value_msgpack_cannot_carry_raises_validation_error(
    fields: dict[str, object],
) -> None:
    with pytest.raises(ValidationError, match=r"^record 0") as caught:
        encode_append(SESSION, [_rec(**fields)], max_record_bytes=ROOMY)
    assert caught.value.index == 0


# --- the cost of checking JSON values (issue 8, item 5) ------------------------------


class _CountedKey(str):
    """A dict key that counts how often it is spelled out with repr()."""

    reprs = 0

    def __repr__(self) -> str:
        type(self).reprs += 1
        return super().__repr__()


def _wrapped(levels: int, inner: object) -> object:
    """``inner`` inside ``levels`` dicts of one key each."""
    value = inner
    for level in range(levels):
        value = {f"k{level}": value}
    return value


def _listed(levels: int, inner: object) -> object:
    """``inner`` inside ``levels`` lists of one item each."""
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def test_a_valid_json_value_is_checked_without_spelling_any_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Spelling the path to every value made checking quadratic in the nesting: one
    # accepted 0.95 MB record held the event loop for seconds. The path is spelled
    # only once something is wrong, so no key of a valid value is ever repr()'d.
    monkeypatch.setattr(_CountedKey, "reprs", 0)
    wide = [{_CountedKey(f"k{i}"): [i, {_CountedKey("x"): None}]} for i in range(200)]
    value: object = wide
    for level in range(60):
        value = {_CountedKey(f"level{level}"): value}
    rec = _rec(metadata=value, content_parts=value)
    assert _records._record_problem(rec) is None
    assert _CountedKey.reprs == 0


def test_the_path_to_a_bad_value_names_each_step_and_cuts_long_keys() -> None:
    # The probe's shape: 63 levels of 7,900-character keys around a long list,
    # here with NaN as its last item. The message stays short and still says
    # where the value is: the outer steps, how many are left out, the inner ones.
    items: list[object] = [0] * 1_000
    items[-1] = float("nan")
    value: object = items
    for level in range(63):
        value = {f"{level:02d}".ljust(7_900, "k"): value}
    with pytest.raises(ValidationError) as caught:
        encode_append(SESSION, [_rec(metadata=value)], max_record_bytes=ROOMY)

    def cut(level: int) -> str:
        return f"['{level:02d}{'k' * 38}'... (7900 chars)]"

    outer = "".join(cut(level) for level in range(62, 54, -1))
    inner = "".join(cut(level) for level in range(5, -1, -1)) + "[999]"
    assert caught.value.problem == (
        f"metadata{outer}[...49 levels...]{inner} is nan, not JSON"
    )
    assert caught.value.field == "metadata"


def test_a_long_key_near_the_top_is_cut_in_the_path() -> None:
    value = {"a" * 50: {"b": {1, 2}}}
    with pytest.raises(
        ValidationError,
        match=re.escape(
            "metadata['" + "a" * 40 + "'... (50 chars)]['b'] holds a set,"
            " which is not a JSON value"
        ),
    ):
        encode_append(SESSION, [_rec(metadata=value)], max_record_bytes=ROOMY)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        # A scalar inside exactly MAX_JSON_DEPTH lists.
        (_listed(64, 1), True),
        # A scalar inside one list more.
        (_listed(65, 1), False),
        # An empty list inside exactly MAX_JSON_DEPTH lists.
        (_nested(64), True),
        # Lists and dicts count alike.
        (_wrapped(32, _listed(32, "x")), True),
        # ... also past the limit.
        (_listed(32, _wrapped(33, "x")), False),
        # A scalar inside exactly MAX_JSON_DEPTH dicts.
        (_wrapped(64, 1), True),
        # A scalar inside one dict more.
        (_wrapped(65, 1), False),
        # An empty dict inside exactly MAX_JSON_DEPTH dicts.
        (_wrapped(64, {}), True),
        # A dict one level too deep holding a scalar.
        (_wrapped(65, {"x": None}), False),
    ],
)
def test_json_values_may_nest_exactly_max_json_depth_levels(
    value: object, accepted: bool
) -> None:
    assert _records.MAX_JSON_DEPTH == 64
    if accepted:
        encode_append(SESSION, [_rec(metadata=value)], max_record_bytes=ROOMY)
        return
    with pytest.raises(
        ValidationError, match=r"nests deeper than 64 levels \(MAX_JSON_DEPTH\)$"
    ) as caught:
        encode_append(SESSION, [_rec(metadata=value)], max_record_bytes=ROOMY)
    assert caught.value.field == "metadata"
    assert len(caught.value.problem) < 1_000


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        # A non-string key of 100 kB is shown by its first 80 characters.
        ({"metadata": {b"x" * 100_000: 1}}, "metadata has a non-string key b'xxx"),
        # So is a role of a megabyte of spaces.
        ({"role": " " * 1_000_000}, "role must be a non-empty string, got '   "),
    ],
)
def test_a_huge_value_is_cut_in_the_error_message(
    fields: dict[str, object], shown: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(shown)) as caught:
        encode_append(SESSION, [_rec(**fields)], max_record_bytes=ROOMY)
    assert len(str(caught.value)) < 200


#: One step down a JSON value: an index into a list of siblings, or a dict key.
_steps = st.one_of(
    st.tuples(st.just("list"), st.lists(json_values, max_size=3), st.integers(0, 3)),
    st.tuples(
        st.just("dict"),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        st.text(max_size=8),
    ),
)


@given(st.lists(_steps, max_size=12))
def test_the_path_in_a_json_error_leads_to_the_bad_value(
    steps: list[tuple[str, object, object]],
) -> None:
    # Plant a set (not JSON) below valid siblings; the message spells its path the
    # way Python would index it.
    value: object = {1, 2}
    route = []
    for kind, siblings, where in reversed(steps):
        if kind == "list":
            assert isinstance(siblings, list)
            assert isinstance(where, int)
            index = min(where, len(siblings))
            value = [*siblings[:index], value, *siblings[index:]]
            route.append(f"[{index}]")
        else:
            assert isinstance(siblings, dict)
            value = {**siblings, where: value}
            route.append(f"[{where!r}]")
    path = "metadata" + "".join(reversed(route))
    with pytest.raises(ValidationError) as caught:
        encode_append(SESSION, [_rec(metadata=value)], max_record_bytes=ROOMY)
    assert caught.value.problem == f"{path} holds a set, which is not a JSON value"


# --- the limits of one call (issue 8, item 6) ---------------------------------------


def _same_size(count: int) -> list[MessageRecord]:
    """``count`` records of ``SESSION`` that encode to the same size."""
    return [record(SESSION, f"{'x' * 100}{i}", ts=TS) for i in range(count)]


def test_a_call_over_max_append_records_is_refused_before_any_record_is_checked() -> (
    None
):
    records = [_rec(role=""), *_same_size(2)]
    with pytest.raises(
        ValidationError,
        match=r"^3 records in one call exceed max_append_records \(2\)$",
    ) as caught:
        encode_append(SESSION, records, max_record_bytes=ROOMY, max_append_records=2)
    assert (caught.value.index, caught.value.field) == (None, None)
    payload = encode_append(
        SESSION, records[1:], max_record_bytes=ROOMY, max_append_records=2
    )
    assert decode_entry(payload) == records[1:]


def test_encoding_stops_at_the_record_that_passes_max_append_bytes() -> None:
    good = _same_size(3)
    size = len(encode_append(SESSION, good[:1], max_record_bytes=ROOMY)) - 1
    # A bad record after the one that passes the limit is never reached.
    records = [*good, _rec(session=OTHER)]
    with pytest.raises(
        ValidationError,
        match=re.escape(
            f"more than max_append_bytes ({3 * size - 1}): {3 * size} bytes by"
            " record 2, where encoding stopped"
        ),
    ) as caught:
        encode_append(
            SESSION, records, max_record_bytes=ROOMY, max_append_bytes=3 * size - 1
        )
    assert (caught.value.index, caught.value.field) == (None, None)
    # The records' bytes count, not the array header: exactly the limit passes.
    payload = encode_append(
        SESSION, good, max_record_bytes=ROOMY, max_append_bytes=3 * size
    )
    assert decode_entry(payload) == good
    # One record alone is held to the limit too.
    with pytest.raises(ValidationError, match=r"\(10\): \d+ bytes by record 0"):
        encode_append(SESSION, good[:1], max_record_bytes=ROOMY, max_append_bytes=10)
