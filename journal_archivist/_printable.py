"""Text from outside, made safe to print: one rule for every message and log line.

Foreign text -- a receiver's status text, headers and body, a driver's error
message, a name read from a damaged file -- may hold control characters that
rewrite a terminal (ESC sequences), forge or split log lines (CR, LF, NEL,
U+2028, U+2029) or reorder what a reader sees (bidirectional overrides).
``printable`` escapes each of them, so a message or log line we build is one
line of what it says. Everything else is kept as it is, non-ASCII letters
included. Pure: imports nothing of ours, so any module may use it.

Rules:
- Escaped: every C0 control (tab and newline too), DEL, every C1 control, the
  line and paragraph separators U+2028 and U+2029, and the bidirectional
  embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
- An escape is written as Python writes it: ``\\t``, ``\\n`` and ``\\r``, else
  ``\\x1b`` below U+0100 and ``\\u2028`` above. A backslash already in the
  text is left alone (the escape is there to keep the output one inert line, not
  to be reversible).
- Apply it where foreign text enters a message, after masking secrets (an
  escape could split a secret that the masking would have found).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["printable"]

_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_SHORT: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    short = _SHORT.get(char)
    if short is not None:
        return short
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character escaped (see the module docstring).

    Returns ``text`` itself when there is nothing to escape.
    """
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)
