"""What ``WebhookArchive`` keeps secret, and how it masks it: pure, no I/O.

Which headers are credentials, how a URL is shown (userinfo, query values and,
with ``secret_path``, the path as ``***``), every form in which a receiver may
echo a secret back, how text is scrubbed of them (``_Redactor``), and the log
filter that masks our URLs and secrets in the lines httpx and httpcore log.
``webhook.py`` is the only importer; this module never imports httpx at run time
(the filter is handed ``httpx.URL``), so it costs nothing to import.

Rules and theory:
- A header is secret if its name is a known credential header or contains a word
  such as ``token`` or ``key``; its value shows as ``***`` in ``repr`` and errors.
- A secret is every credential header value (and each word after the first, the
  token of ``Bearer <token>``; and each value of ``name=value`` pairs, a
  cookie's), each query value, the user and password of the URL (as given, as
  sent and decoded) and the ``Basic`` value built from them; with
  ``secret_path``, the URL's path and each of its segments too.
- A receiver may echo a secret in any form, so ``_secret_forms`` derives every
  form two layers of ``_ENCODINGS`` give -- raw, percent-encoded (reserved
  characters or all), form-encoded (``+`` for space), decoded, JSON-escaped (with
  ``\\/`` or not), HTML-escaped, as Python's ``repr`` of a str or of bytes shows
  it (httpcore logs headers so) -- and ``_Redactor`` masks all of them ignoring
  case (upper-cased percent-encoding is upper-cased text). Longest first, so a
  form containing another is masked whole; forms shorter than ``_MIN_REDACTED``
  are left alone (they would mask ordinary words and numbers).
- Text cut short (a capped read, an excerpt) may end inside a secret, which no
  form then matches: ``_Redactor.excerpt`` never shows the last ``longest``
  characters of a text that was cut before it was masked.
- The log filter holds each instance's ``_LogMask`` weakly: it rewrites only
  lines about a live instance's URLs (httpx's request line: URL masked, reason
  phrase scrubbed and made printable) or holding a live instance's secret
  (httpcore's DEBUG lines), and forgets an instance when it is collected.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import logging
import re
import threading
import weakref
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from .._printable import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

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
#: The loggers whose lines the log filter rewrites: httpx's request line, and
#: httpcore's DEBUG traces (which show response headers).
_HTTP_LOGGERS: Final = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


#: One layer of the ways a secret may be written; ``_secret_forms`` takes two.
_ENCODINGS: Final[tuple[Callable[[str], str], ...]] = (
    lambda s: s,
    lambda s: quote(s, safe=""),  # percent-encoded, every reserved character
    quote,  # percent-encoded as a path ("/" kept)
    lambda s: quote_plus(s, safe=""),  # form-encoded: "+" for a space
    unquote,
    unquote_plus,
    _json_escaped,
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: _json_escaped(s).replace("/", "\\/"),  # as PHP writes JSON
    html.escape,
    lambda s: repr(s)[1:-1],
    lambda s: repr(s.encode())[2:-1],  # bytes, as httpcore logs headers
)


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


def _plain_http_warning(
    what: str,
    url: httpx.URL | None,
    masked: str | None,
    headers: Mapping[str, str],
    userinfo: bool,
    secret_path: bool,
) -> str | None:
    """The warning for credentials that would cross a network unencrypted: plain
    ``http://`` to a host other than this machine; None if there is none.

    Credentials are secret ``headers``, the ``userinfo``, query parameters named
    like a secret header (``token``, ``key``...) and a ``secret_path``.
    """
    if url is None or url.scheme != "http" or _is_loopback(url.host):
        return None
    sent = [f"header {name}" for name in headers if _is_secret_header(name)]
    if userinfo:
        sent.append("the URL's user and password")
    query = url.query.decode("ascii", "replace")
    names = [part.partition("=")[0] for part in query.split("&") if part]
    sent += [f"query parameter {name}" for name in names if _is_secret_header(name)]
    if secret_path:
        sent.append("the secret path")
    if not sent:
        return None
    return (
        f"{what} {masked!r} is plain http://: {', '.join(sent)} would cross the"
        " network unencrypted; use https://"
    )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``),
    where plain ``http://`` crosses no network."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mask_url(url: str, *, secret_path: bool = False) -> str:
    """``url`` with its userinfo, every query-string value and, if ``secret_path``,
    its path replaced by ``***``; control characters escaped."""
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
    path = parts.path
    if secret_path and path.strip("/"):
        path = f"/{_MASK}"
    return printable(
        parts._replace(netloc=netloc, path=path, query=query, fragment="").geturl()
    )


def _url_secrets(
    url: str, parsed: httpx.URL, *, secret_path: bool = False
) -> list[str]:
    """The secrets of ``url``, as given and as httpx sends them.

    Each query value, user and password; with ``secret_path``, the path and each
    of its segments; and the ``Basic`` value of the userinfo with its base64
    token alone. ``_Redactor`` derives the other forms.
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
        if secret_path and parts.path.strip("/"):
            raw += [parts.path, *parts.path.split("/")]
    found = [form for value in raw for form in (value, unquote(value))]
    if parsed.userinfo:
        token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode())
        found += [token.decode(), f"Basic {token.decode()}"]
    return found


def _secret_forms(secret: str) -> set[str]:
    """Every form of ``secret`` that two layers of ``_ENCODINGS`` give (case is
    ignored where they are searched for, so no case variant is listed, except
    full case mappings that differ in length, such as ``ß`` and ``SS``)."""
    forms = {outer(inner(secret)) for inner in _ENCODINGS for outer in _ENCODINGS}
    folded = [form for form in forms if not form.isascii()]
    forms.update(case(form) for form in folded for case in (str.upper, str.lower))
    return forms


def _parts(secret: str) -> list[str]:
    """``secret`` and the pieces a receiver may echo alone: each word after the
    first (``Bearer <token>``), and the value of each ``name=value`` pair."""
    pieces = [secret, *secret.split()[1:]]
    for pair in re.split(r"[;,\s]+", secret):
        name, equals, value = pair.partition("=")
        if equals and name:
            pieces.append(value)
    return pieces


class _Redactor:
    """Masks every form of a set of secrets in text, ignoring case.

    Call it on a text to mask it; ``excerpt`` masks the start of a text that may
    have been cut short. An instance with no secret returns texts unchanged.
    """

    __slots__ = ("_pattern", "longest")

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {
            form
            for secret in secrets
            for part in _parts(secret)
            if len(part) >= _MIN_REDACTED
            for form in _secret_forms(part)
            if len(form) >= _MIN_REDACTED
        }
        ordered = sorted(forms, key=len, reverse=True)
        #: The length of the longest form (0 if none).
        self.longest = len(ordered[0]) if ordered else 0
        self._pattern = (
            re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)
            if ordered
            else None
        )

    def __call__(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        if self._pattern is None:
            return text
        return self._pattern.sub(_MASK, text)

    def finds(self, text: str) -> bool:
        """Whether ``text`` holds any form of a secret."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def excerpt(self, text: str, chars: int, *, complete: bool = True) -> str:
        """The first ``chars`` characters of ``text`` once masked.

        ``complete=False`` says ``text`` was cut short (the rest was not read):
        its last ``longest`` characters are never shown, since a secret cut there
        matches no form. Only the start of a long text is masked, unless masking
        shrank it so much that the cut might show.
        """
        longest = self.longest
        head = text[: 4 * chars + 2 * longest]
        masked = self(head)
        if len(head) < len(text) and len(masked) < chars + longest:
            head, masked = text, self(text)
        if (len(head) < len(text) or not complete) and longest:
            masked = masked[: max(0, len(masked) - longest)]
        return masked[:chars]


class _LogMask:
    """What one ``WebhookArchive`` masks in httpx's and httpcore's log lines:
    its URLs (as sent, mapped to how they are shown) and its secrets."""

    __slots__ = ("__weakref__", "redact", "urls")

    def __init__(self, urls: Mapping[str, str], redact: _Redactor) -> None:
        self.urls = dict(urls)
        self.redact = redact


class _HttpxLogMask(logging.Filter):
    """Masks our URLs and secrets in the lines httpx and httpcore log.

    httpx logs ``HTTP Request: <method> <url> "<version> <status> <reason>"`` at
    INFO for every request: for a line about one of our URLs, the URL is replaced
    by its masked form and the other texts (the receiver's reason phrase among
    them) are scrubbed of secrets and made printable. httpcore's DEBUG lines carry
    response headers, which may echo a secret: a line holding a secret of a live
    instance is scrubbed. Other lines are left as they are. Only arguments of
    ``url_type`` (``httpx.URL``, handed in by ``webhook.py``) are taken as URLs.
    """

    def __init__(self, url_type: type[httpx.URL]) -> None:
        super().__init__()
        self.url_type = url_type
        self.live: weakref.WeakSet[_LogMask] = weakref.WeakSet()
        self._lock = threading.Lock()

    def install(self) -> None:
        """Add this filter to the loggers of httpx and httpcore (once each)."""
        for name in _HTTP_LOGGERS:
            log = logging.getLogger(name)
            if self not in log.filters:
                log.addFilter(self)

    def hold(self, urls: Mapping[str, str], redact: _Redactor) -> _LogMask:
        """Mask ``urls`` (sent form to shown form) and ``redact``'s secrets in log
        lines for as long as the returned mask is held."""
        mask = _LogMask(urls, redact)
        with self._lock:
            self.live.add(mask)
        return mask

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            masks = list(self.live)
        if not masks:
            return True
        if record.name == "httpx":
            self._mask_request_line(record, masks)
        else:
            self._mask_trace(record, masks)
        return True

    def _mask_request_line(
        self, record: logging.LogRecord, masks: list[_LogMask]
    ) -> None:
        args = record.args
        if not isinstance(args, tuple):
            return
        urls = [str(arg) for arg in args if isinstance(arg, self.url_type)]
        ours = [mask for mask in masks if any(url in mask.urls for url in urls)]
        if not ours:
            return
        shown = {
            url: mask.urls[url] for mask in ours for url in urls if url in mask.urls
        }

        def scrub(text: str) -> str:
            for mask in ours:
                text = mask.redact(text)
            return printable(text)

        record.args = tuple(
            shown[str(arg)]
            if isinstance(arg, self.url_type)
            else scrub(arg)
            if isinstance(arg, str)
            else arg
            for arg in args
        )

    def _mask_trace(self, record: logging.LogRecord, masks: list[_LogMask]) -> None:
        message = record.getMessage()
        ours = [mask for mask in masks if mask.redact.finds(message)]
        if not ours:
            return
        for mask in ours:
            message = mask.redact(message)
        record.msg, record.args = printable(message), ()
