"""What ``WebhookArchive`` keeps secret, and how it masks it: pure, no I/O.

Which headers are credentials, how a URL is shown (userinfo and query values as
``***``), every form in which a receiver may echo a secret back, how text is
scrubbed of them, and the ``httpx`` log filter that masks our URLs' query strings.
``webhook.py`` is the only importer; this module never imports httpx at run time
(the filter is handed ``httpx.URL``), so it costs nothing to import.

Rules and theory:
- A header is secret if its name is a known credential header or contains a word
  such as ``token`` or ``key``; its value shows as ``***`` in ``repr`` and errors.
- A secret is scrubbed from error text in every form a receiver may echo it:
  percent-encoded as given and as sent, decoded, and as a ``Basic`` value.
  Longest first, so a secret containing another is masked whole; secrets shorter
  than ``_MIN_REDACTED`` are left alone.
- The log filter holds masked URLs weakly: an entry lives as long as an instance
  holding its ``_MaskedURL`` does.
"""

from __future__ import annotations

import base64
import logging
import weakref
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, unquote_plus, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import httpx

_MASK: Final = "***"
#: Header names masked whole, and words that make any header name a secret one.
_SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
_SECRET_WORDS: Final = (
    "token", "secret", "key", "auth", "password", "passwd", "cookie", "credential",
    "signature",
)  # fmt: skip
#: Secrets shorter than this are not searched for in error text (they would mask
#: ordinary words and numbers, and are no secret worth the name).
_MIN_REDACTED: Final = 4


def _is_secret_header(name: str) -> bool:
    """Whether a header's value is a secret, to be masked wherever it is shown."""
    lower = name.lower()
    return lower in _SECRET_HEADERS or any(word in lower for word in _SECRET_WORDS)


def _masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the value of every secret header replaced by ``***``."""
    return {
        name: _MASK if _is_secret_header(name) else value
        for name, value in headers.items()
    }


def _mask_url(url: str) -> str:
    """``url`` with its userinfo and every query-string value replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={_MASK}" if value or "=" in raw else name
        for raw in parts.query.split("&")
        if raw
        for name, _, value in [raw.partition("=")]
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def _url_secrets(url: str, parsed: httpx.URL) -> list[str]:
    """Every form in which a receiver may echo the secrets of ``url``.

    Each query value, user and password percent-encoded (as given and as httpx
    sends them) and decoded (``+`` as a space or not), and the ``Basic`` value of
    the userinfo with its base64 token alone.
    """
    raw: list[str] = []
    for text in (url, str(parsed)):
        try:
            parts = urlsplit(text)
        except ValueError:
            continue
        raw += [part.partition("=")[2] for part in parts.query.split("&")]
        userinfo = parts.netloc.rpartition("@")[0]
        raw += userinfo.split(":", 1) if userinfo else []
    found = [form for value in raw for form in (value, unquote(value))]
    found += [unquote_plus(value) for value in raw]
    if parsed.userinfo:
        token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode())
        found += [token.decode(), f"Basic {token.decode()}"]
    return found


def _redaction_list(found: Iterable[str]) -> list[str]:
    """What ``_redact`` searches for, given every secret ``found``.

    Every secret, and what follows its first word ("Bearer <token>"), longest
    first so that a secret containing another is masked whole.
    """
    words = {part for secret in found for part in (secret, *secret.split()[1:])}
    return sorted((w for w in words if len(w) >= _MIN_REDACTED), key=len, reverse=True)


def _redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (from ``_redaction_list``) masked."""
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


class _MaskedURL(str):
    """A masked URL that the log filter holds weakly (a plain str cannot be)."""

    __slots__ = ("__weakref__",)


class _HttpxLogMask(logging.Filter):
    """Masks the query strings of our URLs in httpx's "HTTP Request: ..." lines.

    ``masked`` maps a URL to its masked form for as long as an instance using that
    URL is alive (each holds its ``_MaskedURL``), so it never outgrows them. Only
    log arguments of ``url_type`` (``httpx.URL``, handed in by ``webhook.py``) are
    looked up.
    """

    def __init__(self, url_type: type[httpx.URL]) -> None:
        super().__init__()
        self.url_type = url_type
        self.masked: weakref.WeakValueDictionary[str, _MaskedURL] = (
            weakref.WeakValueDictionary()
        )

    def hold(self, urls: Iterable[str]) -> list[_MaskedURL]:
        """Mask ``urls`` in log lines for as long as the returned list is held."""
        return [self.masked.setdefault(url, _MaskedURL(_mask_url(url))) for url in urls]

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if self.masked and isinstance(args, tuple):
            record.args = tuple(
                self.masked.get(str(arg), arg)
                if isinstance(arg, self.url_type)
                else arg
                for arg in args
            )
        return True
