"""How an archivist fails: one of its background loops died.

Rules and theory:
- The first loop to die decides the failure (``Failure``): what died and why. The
  archivist then refuses every call at once with ``ArchivistFailed`` (a fresh one
  each time, one line, the original exception as ``__cause__``), wakes everything
  that waits on it, stops its other loops and closes the journal. Nothing
  acknowledged is lost: it is in the journal for the next open.
- ``describe`` is how any exception is shown in one line (health, logs, errors,
  dead-letter reasons); it escapes control characters (``_printable``), since an
  exception's message often quotes foreign text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._errors import ArchivistFailed
from ._printable import printable

__all__ = ["Failure", "describe"]

#: Longest text ``describe`` gives an exception's message.
MAX_DESCRIPTION: Final = 300


def describe(exc: BaseException) -> str:
    """``exc`` in one line: its class and message, shortened to a sane length,
    with control characters escaped."""
    text = printable(" ".join(str(exc).split()))
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Failure:
    """A background loop of the archivist died: ``what`` (e.g. "the committer"),
    and the exception that killed it."""

    what: str
    cause: BaseException

    @property
    def summary(self) -> str:
        """One line: what died, and of what."""
        return f"{self.what} died: {describe(self.cause)}"

    def error(self) -> ArchivistFailed:
        """A new ``ArchivistFailed`` to raise for it, caused by the original."""
        error = ArchivistFailed(self.summary)
        error.__cause__ = self.cause
        return error
