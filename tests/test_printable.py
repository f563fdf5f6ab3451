"""_printable: foreign text made one inert line, and where the package uses it."""

from __future__ import annotations

import pytest

from journal_archivist._failure import describe
from journal_archivist._printable import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, é and 日本", "plain text, é and 日本"),  # kept as it is
        ("a\x1b[31mred", "a\\x1b[31mred"),  # ESC: terminal escape sequences
        ("one\ntwo\r\tthree", "one\\ntwo\\r\\tthree"),  # C0 line breaks and tab
        ("\x00\x07\x7f", "\\x00\\x07\\x7f"),  # NUL, BEL, DEL
        ("nel\x85csi\x9b", "nel\\x85csi\\x9b"),  # C1 controls
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),  # line and paragraph separators
        ("abc\u202edef\u2066", "abc\\u202edef\\u2066"),  # bidi override, isolate
        ("back\\slash", "back\\slash"),  # left alone
    ],
)
def test_printable_escapes_control_characters(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_returns_clean_text_itself() -> None:
    text = "nothing to escape"
    assert printable(text) is text


def test_describe_shows_an_exception_as_one_printable_line() -> None:
    # describe() is how health, the writer's log lines and the journal's
    # dead-letter rows show any backend's error: foreign text is common there.
    error = RuntimeError("server said:\n\x1b[2Jgone\x85 \u2028away\x9b")
    assert describe(error) == "RuntimeError: server said: \\x1b[2Jgone away\\x9b"
