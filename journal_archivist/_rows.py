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
from typing import TYPE_CHECKING, Any, Final, Literal

from ._batching import Entry
from ._large_values import LargeValues
from ._records import Op
from ._schema import backend_crc, entry_crc

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
# An origin is a set of backend bits (at most 62 of them); anything else, a
# negative number above all, is damage (and would not even pack into the CRC).
_ORIGIN_LIMIT: Final = 1 << 62


def check_entries(
    rows: Iterable[Any], elsewhere: list[int] | None = None
) -> list[Entry]:
    """Entries from rows of ``ENTRY_COLUMNS``; a damaged one has ``damage`` set.

    A damaged entry keeps its stored size (so a backlog's byte count stays
    balanced) and its stored op (which says whether DROP_OLDEST could drop it),
    where those are readable; its payload is never used. The index of a row whose
    payload may be in ``payloads`` (empty here, large by its size) goes to
    ``elsewhere``: check it again with its payload in place.
    """
    entries: list[Entry] = []
    append = entries.append
    for index, (seq, session, op, payload, size, crc, enqueued_at, origin) in enumerate(
        rows
    ):
        assert type(seq) is int  # the rowid: always an integer
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
            damage = _damage(seq, session, op, payload, size, crc, origin)
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
    seq: int,
    session: object,
    op: object,
    payload: object,
    size: object,
    crc: object,
    origin: object,
) -> str:
    """Why an entry row cannot be trusted."""
    stored = (
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
        bit, raw_name, *numbers, crc = stored
        assert type(bit) is int  # the rowid: always an integer
        name = decode_text(raw_name)
        values = [n if type(n) is int and n >= 0 else None for n in numbers]
        # An unreadable name gets one no registration can have.
        shown = name if name else f"<unreadable name, bit {bit}>"
        row = cls.of(shown, [bit, *(v or 0 for v in values)])
        wrong = [f for f, v in zip(_INT_FIELDS, values, strict=True) if v is None]
        if name is None or not _NAME.fullmatch(name):
            row.damage, row.exact = f"unreadable name {raw_name!r:.40}", False
        elif wrong:
            row.damage = f"wrong type or sign: {', '.join(wrong)}"
            row.exact = False
        elif not sealed:
            pass
        elif type(crc) is not int:
            row.damage, row.exact = "no checksum", False
        elif crc != row.crc():
            found = row._one_bit_from(crc)
            if found is None:
                row.damage = f"checksum mismatch (stored {crc}, computed {row.crc()})"
                row.exact = False
            else:
                row, row.damage = found, "one flipped bit, corrected"
        return row

    def _one_bit_from(self, stored_crc: int) -> BackendRow | None:
        """The row one flipped bit away from this one (in a number, the name or
        the checksum itself) that matches ``stored_crc``, if exactly one does.

        CRC-32 tells apart every single-bit error in a message this short, so a
        row damaged by one flipped bit is repaired exactly.
        """
        if (stored_crc ^ self.crc()).bit_count() == 1:
            return BackendRow.of(self.name, self.numbers())  # the checksum flipped
        found: list[BackendRow] = []
        numbers = self.numbers()
        for index, value in enumerate(numbers):
            for bit in range(63):
                flipped = (*numbers[:index], value ^ (1 << bit), *numbers[index + 1 :])
                if backend_crc(self.name, flipped) == stored_crc:
                    found.append(BackendRow.of(self.name, flipped))
        raw = self.name.encode()
        for index in range(len(raw) * 8):
            name = bytearray(raw)
            name[index // 8] ^= 1 << (index % 8)
            text = decode_text(bytes(name))
            valid = text is not None and _NAME.fullmatch(text) is not None
            if valid and backend_crc(text or "", numbers) == stored_crc:
                found.append(BackendRow.of(text or "", numbers))
        return found[0] if len(found) == 1 else None
