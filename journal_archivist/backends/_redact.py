"""Keeping a server backend's secrets (passwords, tokens) out of its errors and logs.

A driver's exception may quote the URL it was given, password and all, in its
message, its args or anything chained to it. A backend that knows its secrets
asks ``shows_secret`` before chaining such an exception, and ``scrub``s any text
it builds from one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

__all__ = ["error_chain", "scrub", "shows_secret"]


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception chained to it (cause or context)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e)


def shows_secret(exc: BaseException, secrets: Collection[str]) -> bool:
    """Whether ``exc`` or anything chained to it shows one of ``secrets`` in its
    text, repr or args."""
    for link in error_chain(exc):
        texts = (str(link), repr(link), *map(str, link.args))
        if any(secret in text for secret in secrets for text in texts):
            return True
    return False


def scrub(text: str, secrets: Collection[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
