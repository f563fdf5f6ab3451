"""Handing large values to SQLite without leaving a copy behind.

Python's sqlite3 binds a ``bytes`` or ``str`` parameter with ``SQLITE_TRANSIENT``:
SQLite copies it, and the copy stays with the cached prepared statement until that
statement is bound again. After a 50 MB record, 50 MB stay allocated for as long as
nothing else of that shape is written. A value produced by an SQL function instead
lives in a register of the running statement and goes when the statement ends.

``LargeValues`` registers such a function on a connection: ``put`` swaps a large
value for a small key, and ``sql`` is the expression that turns the key back into
the value inside the statement (taking it out of ``LargeValues`` as it does).
Values below ``THRESHOLD`` are bound as usual: the hot path is unchanged.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    import aiosqlite

__all__ = ["LargeValues"]


class LargeValues:
    """Large values passed to one connection's statements through a function."""

    #: Bytes from which a value goes through the function rather than a binding.
    THRESHOLD: Final = 1 << 20
    #: The SQL function's name.
    FUNCTION: Final = "journal_archivist_large_value"

    def __init__(self) -> None:
        self._values: dict[int, bytes | str] = {}
        self._keys = itertools.count()

    async def register(self, conn: aiosqlite.Connection) -> None:
        """Make ``FUNCTION`` available to ``conn``'s statements."""
        await conn.create_function(self.FUNCTION, 1, self._values.pop)

    def put(self, value: bytes | str) -> int:
        """The key to bind, inside ``sql(...)``, in place of ``value``."""
        key = next(self._keys)
        self._values[key] = value
        return key

    def sql(self, placeholder: str = "?") -> str:
        """The SQL expression that takes the value of the key bound there."""
        return f"{self.FUNCTION}({placeholder})"

    def discard(self, keys: Iterable[int]) -> None:
        """Forget values a failed statement never took."""
        for key in keys:
            self._values.pop(key, None)

    def clear(self) -> None:
        """Forget every value not taken (after a transaction, failed or not)."""
        self._values.clear()
