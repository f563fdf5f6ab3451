"""Stored rows, read so that no stored value can raise, and checked.

Rules and theory:
- One flipped bit in a row's header can change a stored value's type: a BLOB
  becomes TEXT whose bytes need not be UTF-8 (Python's sqlite3 then raises while
  fetching the row) or an INTEGER, and ``PRAGMA quick_check`` does not notice.
  Text must therefore never reach the driver's decoder:
  - the readers of entries (the hot path) use connections whose ``text_factory``
    is ``StoredText``: any TEXT arrives as that ``bytes`` subclass, undecoded, and
    every value is checked in Python for its exact type (``check_entries``). A
    sound journal holds no TEXT in an entry, so this costs nothing;
  - other reads (backend rows, counters, side tables) select each column through
    ``typed``: its value if it has the expected type, else NULL; a text column as
    the BLOB of its bytes, decoded here (``decode_text``).
- A row with a value of the wrong type, or whose checksum fails, is *damaged*.
  What happens to it is the caller's decision: an entry is quarantined by the
  writer that meets it; a backend row is repaired at open (``_journal``).
- Nothing here does I/O: the SQL text is built here and run by the callers.
"""

from __future__ import annotations

import re
import time
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Final, Literal

from ._batching import Entry
from ._large_values import LargeValues
from ._records import Op
from ._schema import MAX_BACKENDS, backend_crc, entry_crc

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "BACKEND_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "ENTRY_COLUMNS",
    "BackendRow",
    "StoredText",
    "check_entries",
    "decode_text",
    "typed",
]

Kind = Literal["integer", "real", "blob", "text"]


def typed(column: str, kind: Kind) -> str:
    """SQL for ``column`` if its stored value is of ``kind``, else NULL.

    A ``text`` column comes back as the BLOB of its bytes (see ``decode_text``);
    a ``real`` one also accepts an integer.
    """
    if kind == "text":
        return f"CASE typeof({column}) WHEN 'text' THEN CAST({column} AS BLOB) END"
    if kind == "real":
        return (
            f"CASE typeof({column}) WHEN 'real' THEN {column}"
            f" WHEN 'integer' THEN {column} END"
        )
    return f"CASE typeof({column}) WHEN '{kind}' THEN {column} END"


def decode_text(raw: object) -> str | None:
    """The text a ``typed(..., "text")`` column holds, or None if it is damaged."""
    if not isinstance(raw, bytes):
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


# -- entries -------------------------------------------------------------------


class StoredText(bytes):
    """TEXT read from a column that should hold none, as its bytes, undecoded
    (the ``text_factory`` of the journal's readers)."""

    __slots__ = ()


#: The columns ``check_entries`` takes, in its order, read on a connection whose
#: ``text_factory`` is ``StoredText``. A payload from ``LargeValues.THRESHOLD``
#: bytes is in ``payloads`` (``_schema``): its ``entries.payload`` is empty, and
#: the reader fills it in (``with_large_payloads``).
ENTRY_COLUMNS: Final = "seq, session, op, payload, size, crc, enqueued_at, origin"
#: The columns of a dead letter, which keeps its payload and no size.
DEAD_LETTER_COLUMNS: Final = (
    "seq, session, op, payload, length(payload), crc, enqueued_at, origin"
)

_OPS: Final = frozenset(int(op) for op in Op)
# An origin is a set of backend bits (at most MAX_BACKENDS of them); anything
# else, a negative number above all, is damage (and would not even pack into the
# CRC).
_ORIGIN_LIMIT: Final = 1 << MAX_BACKENDS


def check_entries(
    rows: Iterable[Sequence[object]], elsewhere: list[int] | None = None
) -> list[Entry]:
    """Entries from rows of ``ENTRY_COLUMNS`` (``_journal_types.StoredEntry``
    names their fields; the driver's plain tuples do as well); a damaged one has
    ``damage`` set. Every ``op`` comes back an ``int``.

    A damaged entry keeps its stored size (so a backlog's byte count stays
    balanced) and its stored op (which says whether DROP_OLDEST could drop it),
    where those are readable; its payload is never used. The index of a row whose
    payload may be in ``payloads`` (empty here, large by its size) goes to
    ``elsewhere``: check it again with its payload in place.
    """
    entries: list[Entry] = []
    append = entries.append
    for index, (
        stored_seq,
        session,
        op,
        payload,
        size,
        crc,
        enqueued_at,
        origin,
    ) in enumerate(rows):
        # An entry's seq is its rowid, always an integer; a dead letter's is not.
        seq = stored_seq if type(stored_seq) is int else -1
        at = enqueued_at if type(enqueued_at) is float else time.time()
        if (
            type(payload) is bytes
            and type(session) is bytes
            and len(session) == 16
            and type(size) is int
            and size == len(payload)
            and type(op) is int
            and op in _OPS
            and type(origin) is int
            and 0 <= origin < _ORIGIN_LIMIT
            and seq >= 0
            and type(crc) is int
            and crc == entry_crc(seq, session, op, origin, payload)
        ):
            append(Entry(seq, session, op, payload, size, at))
        else:
            if (
                elsewhere is not None
                and payload == b""
                and type(size) is int
                and size >= LargeValues.THRESHOLD
            ):
                elsewhere.append(index)
            damage = _damage(stored_seq, session, op, payload, size, crc, origin)
            append(
                Entry(
                    seq,
                    session if type(session) is bytes else b"",
                    op if type(op) is int else 0,
                    b"",
                    size if type(size) is int else 0,
                    at,
                    damage=damage,
                )
            )
    return entries


def _damage(
    seq: object,
    session: object,
    op: object,
    payload: object,
    size: object,
    crc: object,
    origin: object,
) -> str:
    """Why an entry row cannot be trusted."""
    stored = (
        ("seq", seq, int),
        ("session", session, bytes),
        ("op", op, int),
        ("payload", payload, bytes),
        ("size", size, int),
        ("crc", crc, int),
        ("origin", origin, int),
    )
    wrong = [name for name, value, kind in stored if type(value) is not kind]
    if wrong:
        return f"stored with the wrong type: {', '.join(wrong)}"
    assert isinstance(session, bytes)
    assert isinstance(payload, bytes)
    if len(session) != 16:
        return f"session is {len(session)} bytes, not 16"
    if op not in _OPS:
        return f"unknown operation {op!r}"
    if size != len(payload):
        return f"size {size!r} != payload length {len(payload)}"
    assert isinstance(op, int)
    assert isinstance(origin, int)
    assert isinstance(seq, int)
    if not 0 <= origin < _ORIGIN_LIMIT or seq < 0:
        return f"seq {seq} or origin {origin} out of range"
    actual = entry_crc(seq, session, op, origin, payload)
    return f"checksum mismatch (stored {crc!r}, computed {actual})"


# -- backend rows --------------------------------------------------------------

_INT_FIELDS: Final = (
    "cursor",
    "pending",
    "pending_bytes",
    "delivered",
    "dropped",
    "dead_lettered",
    "quarantined",
    "counted_through",
    "drop_floor",
)

#: The columns ``BackendRow.from_stored`` takes, in its order.
BACKEND_COLUMNS: Final = ", ".join(
    [
        "bit",
        typed("name", "text"),
        *(typed(column, "integer") for column in _INT_FIELDS),
        typed("crc", "integer"),
    ]
)

#: What a registration name may be (``_config`` enforces it on the way in).
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(slots=True)
class BackendRow:
    """A backend's persistent state, as stored in the ``backends`` table.

    ``damage`` says why the stored row could not be trusted, None for a sound row.
    A damaged row is rewritten by open: as it is if ``exact`` (one flipped bit was
    found and undone, so its values are known), else with its position derived
    from the entries (``_journal``).
    """

    bit: int
    name: str
    cursor: int
    pending: int
    pending_bytes: int
    delivered: int
    dropped: int
    dead_lettered: int
    quarantined: int
    counted_through: int
    drop_floor: int
    damage: str | None = None
    exact: bool = True

    @property
    def mask(self) -> int:
        """This backend's bit in an entry's ``origin`` and ``targets``."""
        return 1 << self.bit

    @classmethod
    def of(cls, name: str, numbers: Sequence[int]) -> BackendRow:
        """A sound row from ``name`` and its ten ``numbers`` in checksum order."""
        bit, cursor, pending, nbytes, delivered, dropped, dead, bad, counted, floor = (
            numbers
        )
        return cls(
            bit, name, cursor, pending, nbytes, delivered, dropped, dead, bad,
            counted, floor,
        )  # fmt: skip

    def numbers(self) -> tuple[int, ...]:
        """The row's numbers in checksum order (see ``_schema.backend_crc``)."""
        return (self.bit, *astuple(self)[2:11])

    def crc(self) -> int:
        """The checksum to store with this row."""
        return backend_crc(self.name, self.numbers())

    @classmethod
    def from_stored(
        cls, stored: tuple[object, ...], *, sealed: bool = True
    ) -> BackendRow:
        """A row from the values of ``BACKEND_COLUMNS``, with ``damage`` set if
        they are not a sound row (``sealed=False``: its checksum is not checked,
        as for a row of a journal being migrated)."""
        bit, raw_name, *stored_numbers, crc = stored
        assert type(bit) is int  # the rowid: always an integer
        raw = raw_name if isinstance(raw_name, bytes) else None
        name = decode_text(raw)
        named = name is not None and _NAME.fullmatch(name) is not None
        numbers = [n if type(n) is int else None for n in stored_numbers]
        # An unreadable name gets one no registration can have.
        shown = name if named and name else f"<unreadable name, bit {bit}>"
        row = cls.of(shown, [bit, *(n if n and n > 0 else 0 for n in numbers)])
        untyped = [f for f, n in zip(_INT_FIELDS, numbers, strict=True) if n is None]
        negative = [
            f
            for f, n in zip(_INT_FIELDS, numbers, strict=True)
            if n is not None and n < 0
        ]
        if untyped:
            row.damage, row.exact = f"wrong type: {', '.join(untyped)}", False
            return row
        if sealed and type(crc) is int and raw is not None:
            if named and not negative and crc == row.crc():
                return row
            whole = [bit, *(n for n in numbers if n is not None)]
            found = _one_bit_from(raw, whole, crc)
            if found is not None:
                found.damage = "one flipped bit, corrected"
                return found
        if not named:
            row.damage, row.exact = f"unreadable name {raw_name!r:.40}", False
        elif negative:
            row.damage, row.exact = f"wrong sign: {', '.join(negative)}", False
        elif not sealed:
            pass
        elif type(crc) is not int:
            row.damage, row.exact = "no checksum", False
        else:
            row.damage = f"checksum mismatch (stored {crc}, computed {row.crc()})"
            row.exact = False
        return row


def _one_bit_from(
    raw_name: bytes, numbers: Sequence[int], stored_crc: int
) -> BackendRow | None:
    """The sound row one flipped bit away from the stored one (in a number, the
    name's bytes or the checksum itself) that matches ``stored_crc``, if exactly
    one is.

    CRC-32 tells apart every single-bit error in a message this short, so a row
    damaged by one flipped bit is repaired exactly. SQLite stores a small integer
    in as few bytes as it needs (1, 2, 3, 4, 6 or 8), so a flipped top bit makes
    it negative by ``2 ** (8 * n - 1)``.
    """
    numbers = tuple(numbers)
    candidates: list[tuple[bytes, tuple[int, ...]]] = []
    sound_numbers = all(n >= 0 for n in numbers)
    name = decode_text(raw_name)
    if name is not None and _NAME.fullmatch(name) is not None:
        wrong = [i for i, n in enumerate(numbers) if n < 0]
        if not wrong:
            if (stored_crc ^ backend_crc(name, numbers)).bit_count() == 1:
                return BackendRow.of(name, numbers)  # the checksum flipped
            for index, value in enumerate(numbers):
                for bit in range(63):
                    flipped = value ^ (1 << bit)
                    candidates.append((raw_name, _replace(numbers, index, flipped)))
        elif len(wrong) == 1:
            index = wrong[0]
            value = numbers[index]
            for width in (1, 2, 3, 4, 6, 8):
                sign = 1 << (8 * width - 1)
                if value >= -sign:
                    candidates.append(
                        (raw_name, _replace(numbers, index, value + sign))
                    )
    if sound_numbers:
        for index in range(len(raw_name) * 8):
            flipped_name = bytearray(raw_name)
            flipped_name[index // 8] ^= 1 << (index % 8)
            candidates.append((bytes(flipped_name), tuple(numbers)))
    found: list[BackendRow] = []
    for raw, values in candidates:
        text = decode_text(raw)
        if (
            text is not None
            and _NAME.fullmatch(text) is not None
            and min(values) >= 0
            and backend_crc(text, values) == stored_crc
        ):
            found.append(BackendRow.of(text, values))
    return found[0] if len(found) == 1 else None


def _replace(numbers: Sequence[int], index: int, value: int) -> tuple[int, ...]:
    return (*numbers[:index], value, *numbers[index + 1 :])
