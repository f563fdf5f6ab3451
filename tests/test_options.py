"""Tests for journal_archivist._options: open()'s settings checked as one value.

Plain sync tests: building ``ArchivistOptions`` in Python and decoding it from a
dict (as a config file will) must refuse the same values with the same messages.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from journal_archivist import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    Durability,
)
from journal_archivist._config import MAX_BACKENDS
from journal_archivist._options import (
    DEFAULT_CLOSE_TIMEOUT,
    ArchivistOptions,
    check_registrations,
)
from tests.helpers import registration

PATH = "/var/lib/app/journal.db"

#: Values ``__post_init__`` refuses: (fields besides journal_path, message).
REFUSED = [
    # A record could never be appended.
    pytest.param(
        {"max_record_bytes": 0}, "max_record_bytes must be >= 1, got 0", id="record"
    ),
    # A call could carry no record.
    pytest.param(
        {"max_append_records": 0},
        "max_append_records must be >= 1, got 0",
        id="records",
    ),
    # A call could not carry a record max_record_bytes allows.
    pytest.param(
        {"max_record_bytes": 2048, "max_append_bytes": 2047},
        "max_append_bytes (2047) must be >= max_record_bytes (2048): a record the"
        " limit allows must fit a call",
        id="bytes-below-record",
    ),
    # The resolved default is checked too: it follows max_record_bytes past the
    # journal's value limit.
    pytest.param(
        {"max_record_bytes": 10**9},
        "max_append_bytes (1000000000) must be below 999999984: a call's records"
        " are one value in the journal, and SQLite stores 1000000000 bytes at most",
        id="resolved-bytes-over-sqlite",
    ),
    # One call is one value in the journal: past SQLite's limit it would fail
    # at commit, after the time and memory of encoding it.
    pytest.param(
        {"max_record_bytes": 10**9, "max_append_bytes": 10**9},
        "max_append_bytes (1000000000) must be below 999999984: a call's records"
        " are one value in the journal, and SQLite stores 1000000000 bytes at most",
        id="bytes-over-sqlite",
    ),
    # A negative reserve means nothing.
    pytest.param(
        {"free_space_reserve": -1},
        "free_space_reserve must be >= 0, got -1",
        id="reserve",
    ),
    # A negative drain time means nothing (None is "until drained").
    pytest.param(
        {"close_timeout": -1.0},
        "close_timeout must be >= 0 or None, got -1.0",
        id="close-timeout",
    ),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED)
def test_building_refuses_a_bad_value_naming_it(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ArchivistOptions(journal_path=PATH, **fields)


@pytest.mark.parametrize(("fields", "message"), REFUSED)
def test_decoding_refuses_the_same_values_with_the_same_messages(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"^{re.escape(message)}$"):
        msgspec.convert({"journal_path": PATH, **fields}, type=ArchivistOptions)


def test_durability_must_be_the_enum_when_built() -> None:
    with pytest.raises(
        TypeError, match=r"^durability must be a Durability, got 'full'$"
    ):
        ArchivistOptions(journal_path=PATH, durability="full")  # type: ignore[arg-type]


def test_journal_path_must_be_a_str_when_built() -> None:
    with pytest.raises(TypeError, match=r"^journal_path must be a str, got b'j\.db'$"):
        ArchivistOptions(journal_path=b"j.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # An enum is decoded by its value; any other value names the field.
        ({"durability": "fast"}, "Invalid enum value 'fast' - at `$.durability`"),
        # Types are msgspec's to check, and it names the field.
        (
            {"max_record_bytes": "1 MiB"},
            "Expected `int`, got `str` - at `$.max_record_bytes`",
        ),
        ({"close_timeout": "soon"}, "Expected `float | null`, got `str`"),
        # The path is a str (open() takes a PathLike and converts it).
        ({"journal_path": None}, "Expected `str`, got `null` - at `$.journal_path`"),
    ],
)
def test_decoding_names_the_field_of_a_mistyped_value(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert({"journal_path": PATH, **fields}, type=ArchivistOptions)


def test_decoding_needs_the_journal_path() -> None:
    with pytest.raises(
        msgspec.ValidationError, match="missing required field `journal_path`"
    ):
        msgspec.convert({}, type=ArchivistOptions)


def test_defaults_are_open_s_defaults() -> None:
    options = ArchivistOptions(journal_path=PATH)
    assert options == ArchivistOptions(
        journal_path=PATH,
        durability=Durability.FULL,
        max_record_bytes=DEFAULT_MAX_RECORD_BYTES,
        max_append_records=DEFAULT_MAX_APPEND_RECORDS,
        max_append_bytes=DEFAULT_MAX_APPEND_BYTES,
        free_space_reserve=DEFAULT_FREE_SPACE_RESERVE,
        close_timeout=DEFAULT_CLOSE_TIMEOUT,
    )
    assert msgspec.convert({"journal_path": PATH}, type=ArchivistOptions) == options


@pytest.mark.parametrize(
    ("fields", "resolved"),
    [
        # Left out: the default.
        ({}, DEFAULT_MAX_APPEND_BYTES),
        # None is the same as left out.
        ({"max_append_bytes": None}, DEFAULT_MAX_APPEND_BYTES),
        # A larger max_record_bytes raises it: open() never refuses its default.
        ({"max_record_bytes": 100 << 20}, 100 << 20),
        # A smaller one leaves the default alone.
        ({"max_record_bytes": 1024}, DEFAULT_MAX_APPEND_BYTES),
        # Given: kept as it is.
        ({"max_record_bytes": 1024, "max_append_bytes": 4096}, 4096),
    ],
)
def test_max_append_bytes_is_resolved_on_building_and_decoding(
    fields: dict[str, Any], resolved: int
) -> None:
    built = ArchivistOptions(journal_path=PATH, **fields)
    decoded = msgspec.convert({"journal_path": PATH, **fields}, type=ArchivistOptions)
    assert built.max_append_bytes == decoded.max_append_bytes == resolved
    assert built.append_byte_limit == resolved


def test_decoding_takes_what_a_config_file_holds() -> None:
    options = msgspec.convert(
        {
            "journal_path": PATH,
            "durability": "normal",
            "max_append_records": 50,
            "close_timeout": None,
        },
        type=ArchivistOptions,
    )
    assert options.durability is Durability.NORMAL
    assert options.max_append_records == 50
    assert options.close_timeout is None


def test_options_are_frozen() -> None:
    options = ArchivistOptions(journal_path=PATH)
    with pytest.raises(AttributeError):
        options.close_timeout = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        # A name is a backend's identity in the journal.
        (
            lambda: [registration(name="a"), registration(name="a")],
            ValueError,
            "registration names must be unique, repeated: ['a']",
        ),
        # Nothing to deliver to.
        (
            lambda: [registration(enabled=False)],
            ValueError,
            "at least one registration must be enabled",
        ),
        # No registrations at all: nothing enabled either.
        (list, ValueError, "at least one registration must be enabled"),
        # Something that is not a Registration.
        (lambda: [object()], TypeError, "expected Registration objects, got object"),
        # More backends than a journal row has bits for.
        (
            lambda: [registration(name=f"b{i}") for i in range(MAX_BACKENDS + 1)],
            ValueError,
            f"at most {MAX_BACKENDS} registrations, got {MAX_BACKENDS + 1}",
        ),
    ],
)
def test_check_registrations_refuses(
    make: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check_registrations(make())


def test_check_registrations_returns_a_list_of_them() -> None:
    regs = (registration(name="a"), registration(name="b", enabled=False))
    assert check_registrations(iter(regs)) == list(regs)
