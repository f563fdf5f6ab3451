"""``WebhookArchive``: deliver records by HTTP POST to a receiving service (httpx).

Install with ``pip install 'journal-archivist[webhook]'``. Importing
``journal_archivist`` never imports httpx; only this module does.

Wire format. A *group* is what one batch asks for one session::

    {"session": "<uuid>", "erase": false, "records": [<record>, ...],
     "erased_at": null, "appended_at": [<unix seconds>, ...]}

A ``<record>`` is the JSON form of ``journal_archivist.backends._codec`` (UUIDs as
strings, ``ts`` as RFC 3339 with its offset, attachment ``data`` as base64).
``appended_at`` holds each record's journal time, in the order of ``records``.
``"erase": true`` tells the receiver to erase the session *before* it archives the
group's records, at ``erased_at`` (the erasure's journal time; null when ``erase``
is false); ``delete_session`` sends an erase with an empty ``records`` list. A
direct call's times are its "now". ``erased_at`` and ``appended_at`` came with
erasure marks; fields are only ever added at the end of a group, so a receiver
that ignores unknown fields keeps working. Every request is::

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <64 hex digits>

    <body>

and the body is one of two shapes, chosen by the ``per_batch`` option:
- ``per_batch=False`` (the default): the body is one group, and a batch is one
  request per coalesced session group, sent in batch order, each after the last
  was answered. A receiver that already handles one session per request needs
  nothing else, and a failure stops at the group that failed.
- ``per_batch=True``: the body is ``{"groups": [<group>, ...]}`` with every group of
  the batch in batch order (never an empty list), so a batch is one request
  whatever the number of sessions; ``append_messages`` and ``delete_session`` send
  a one-group body of the same shape, so a receiver handles one shape only. The
  receiver applies the groups in order (groups of one session must not be
  reordered) and answers 2xx only once all of them are durable; if it refuses one,
  it may have applied those before it (they are sent again) but should apply none
  after it. Choose it when batches span many sessions: each request costs a round
  trip, so one request per session caps throughput at the receiver's request rate
  (on loopback, 256-record batches over 100 sessions went from ~1,800 records/s to
  ~58,000). The price is coarser failures: a poison record fails its whole batch,
  which a BEST_EFFORT writer then bisects, one request per half.

Guarantees and rules:
- A body counts as delivered only when the receiver answers 2xx, so it must answer
  only once the body is durable on its side. Delivery is at-least-once: a retried
  batch resends every group of it, in order, and bisecting a poison batch resends
  its records in smaller batches and groups. The receiver is responsible for
  idempotence: archive each ``message_id`` once per session, and apply every erase
  it receives (an erase is idempotent by nature).
- Erasure marks (``erasure_marks = True``): several journals may feed one
  receiver, so an erasure can arrive before an older record of its session. The
  receiver keeps, per erased session, a mark: the latest ``erased_at`` it got. An
  erase at T deletes only the session's records whose ``appended_at`` is below T
  (and forgets their ids) and raises the mark to at least T, never lowers it; a
  record whose ``appended_at`` is below the session's mark is dropped on arrival
  (answered 2xx: it was erased). Times compare as numbers, and ties keep the
  record. This backend only forwards the times.
- ``Idempotency-Key``, for a body without erasures, is the hex SHA-256 of what the
  body asks for, so a redelivered body carries the same key and a receiver may
  answer a key it has already applied without applying it again -- provided it
  forgets the keys of a session when it erases that session: the key names
  content, not a moment, and the same records appended again after an erasure
  come with the same key and must be applied again. For a one-group
  body (``per_batch=False``) it hashes the session, the erase flag and the message
  ids; for a batch body, a fixed prefix (so the two shapes never share a key) and
  then, for each group in order, the session, the erase flag, the number of
  records and their message ids (so moving a record to another group changes the
  key). Regrouped records (a
  bisection) get new keys, hence the need to dedupe by ``message_id`` too.
- A key must never be shared by two distinct erasures, or a receiver skipping a
  known key would keep records archived between them. Nothing in a body pins an
  erasure to one moment: an erase alone hashes alike every time its session is
  erased, and its records do not help either, since a ``message_id`` appended
  again after an erasure is a new record (erase, re-append the same ids, twice).
  So every body holding an erasing group -- ``delete_session``, an erasing group
  with or without records, a batch with one among others -- gets a fresh random
  key, redelivered or not: never skip an erase by its key. Such a body forgoes
  key-based dedupe; dedupe by ``message_id`` still holds.
- Failures, as ``BackendError``: 408, 429, 5xx, a timeout, a refused or dropped
  connection and any other transport error are retryable, with ``retry_after`` set
  from a ``Retry-After`` header (seconds or an HTTP date, capped at
  ``MAX_RETRY_AFTER``). Every other status -- 3xx (redirects are not followed), 4xx
  -- is not retryable. The message names the status and, of the body, only its
  size and media type: a receiver's error body often quotes the records it
  refused, and error messages reach logs, ``health()`` and the journal's
  dead-letter rows, where ``delete_session`` cannot erase them from the logs.
  ``log_response_body=True`` quotes the start of the body instead (secrets
  masked, control characters escaped); a redirect names where it points.
- ``health_check`` GETs ``health_url`` if one is given (2xx is healthy); otherwise
  it sends ``OPTIONS`` to the url, and any answer is healthy except 5xx, 408, 429,
  a redirect, or 401/403/407 (credentials refused). So a receiver that rejects one
  record still passes (a BEST_EFFORT writer then dead-letters that record), while a
  receiver that is down, overloaded, moved or refusing our credentials fails it
  (and nothing is dead-lettered while it does).
- Secrets never reach ``repr``, log lines, error messages, ``health()`` or the
  journal: values of credential headers, the URL's userinfo and its query-string
  values show as ``***``, and so does the path with ``secret_path=True`` (for a
  capability URL, such as ``https://hooks.example/services/T000/B000/XXXX``). The
  userinfo is sent as HTTP Basic auth. A receiver may echo a secret back in any
  form, so wherever text from it enters a message each secret is masked raw,
  percent-encoded, form-encoded, decoded, JSON- or HTML-escaped, in any case and
  in two such layers (``_webhook_secrets``), and so is the ``Basic <base64>``
  value built from the userinfo. httpx logs every request URL and the
  receiver's reason phrase at INFO on the ``httpx`` logger, and httpcore logs
  response headers at DEBUG: a filter on those loggers masks our URLs and
  secrets there while an instance using them is alive, and escapes control
  characters in the lines about our URLs; it leaves other clients' lines alone.
- Text from the receiver (reason phrase, body, media type, ``Location``) enters
  a message only made printable (``journal_archivist._printable``): control
  characters such as ESC are escaped, never written raw.
- Not readable: ``read_session`` raises ``BackendError`` (read from the receiver).
- This module shapes bodies and judges statuses; sending a request and reducing
  its answer to a status, ``Retry-After`` and a masked detail is ``_webhook_http``'s
  (one client, redirects never followed, the whole request under ``timeout``).
"""

from __future__ import annotations

import ssl
import time
import warnings
from typing import TYPE_CHECKING, Final, final

from .._errors import BackendError
from ._base import ArchiveBackend, SessionGroup
from ._webhook_secrets import (
    _HttpxLogMask,
    _is_secret_header,
    _mask_url,
    _masked_headers,
    _plain_http_warning,
    _Redactor,
    _url_secrets,
)
from ._webhook_wire import (
    MAX_RETRY_AFTER,
    _check_headers,
    _check_timeout,
    _describe_answer,
    _describe_post,
    _encode_body,
    _idempotency_key,
    _is_retryable,
    _probe_passes,
    _timed,
)

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "WebhookArchive needs httpx: pip install 'journal-archivist[webhook]'"
    ) from exc

# After the guard above: it imports httpx too.
from ._webhook_http import _HttpClient

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from uuid import UUID

    from .._records import MessageRecord

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_AFTER",
    "WebhookArchive",
]

#: Seconds one request may take in all (connect, send, wait, read the answer).
DEFAULT_TIMEOUT: Final = 10.0
#: Connections kept to the receiver.
DEFAULT_MAX_CONNECTIONS: Final = 4
# MAX_RETRY_AFTER, the longest ``Retry-After`` honoured, lives in _webhook_wire.

_httpx_log_mask: Final = _HttpxLogMask(httpx.URL)
_httpx_log_mask.install()


def _check_url(url: object, what: str, *, secret_path: bool) -> tuple[httpx.URL, str]:
    """Parse a URL argument; return it and its masked form."""
    if not isinstance(url, str):
        raise TypeError(f"{what} must be a str, got {type(url).__name__}")
    masked = _mask_url(url, secret_path=secret_path)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{what} is not a valid URL: {masked!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {masked!r}")
    return parsed, masked


@final
class WebhookArchive(ArchiveBackend):
    """Deliver records by HTTP POST to ``url``, one JSON body per session group
    (or per batch, with ``per_batch=True``).

    Acknowledges a body only when the receiver answers 2xx; delivery is
    at-least-once and the receiver must be idempotent on ``message_id`` and keep
    erasure marks from the times each group carries (see the module docstring
    for the wire format, the receiver's duties and the failure classification).
    Not readable. One ``httpx.AsyncClient`` is opened on first use and closed by
    ``aclose()``; a later call opens a new one.

    Args:
        url: where to POST, ``http://`` or ``https://`` with a host. Credentials in
            it (``user:pass@``) are sent as HTTP Basic auth. A ``UserWarning``
            says so when credentials (secret headers, userinfo, a query
            parameter named like ``token``, a ``secret_path``) would go over
            plain ``http://`` to a host other than this machine.
        headers: sent with every request (for example ``Authorization``).
            ``Content-Type``, ``Idempotency-Key`` and framing headers are set here.
        timeout: seconds one request may take in all.
        health_url: GET this for ``health_check`` (2xx means healthy) instead of
            sending ``OPTIONS`` to ``url``. It receives ``headers`` too.
        max_connections: connections kept to the receiver.
        verify: TLS verification: ``True`` (system CAs), an ``ssl.SSLContext``, or
            ``False`` (do not verify; only for tests).
        per_batch: send each batch as one ``{"groups": [...]}`` body instead of one
            body per session group (see the module docstring for when to).
        secret_path: the URL's path is a secret (a capability URL): shown as
            ``***`` in ``repr``, errors and log lines (httpx's too), and masked
            in any form, as is each of its segments, in text quoted from the
            receiver. Applies to ``health_url`` too.
        log_response_body: quote the start of a receiver's error body in errors
            (and so in logs, ``health()`` and dead-letter rows), secrets masked.
            Off by default: such a body may quote record content, which
            ``delete_session`` cannot then erase from the logs; errors name the
            body's size and media type instead.

    Raises:
        TypeError, ValueError: a bad argument, named in the message (secrets
            masked).
    """

    #: Forwards erasure and append times; the receiver keeps the marks.
    erasure_marks = True

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        health_url: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify: bool | ssl.SSLContext = True,
        per_batch: bool = False,
        secret_path: bool = False,
        log_response_body: bool = False,
    ) -> None:
        for name, flag in (
            ("per_batch", per_batch),
            ("secret_path", secret_path),
            ("log_response_body", log_response_body),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r:.40}")
        parsed, self._masked_url = _check_url(url, "url", secret_path=secret_path)
        self._headers = _check_headers(headers)
        self._timeout = _check_timeout(timeout)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if not isinstance(verify, bool | ssl.SSLContext):
            raise TypeError(
                f"verify must be a bool or an ssl.SSLContext, got {verify!r:.40}"
            )
        self._per_batch = per_batch
        self._secret_path = secret_path
        self._log_response_body = log_response_body

        found = [v for k, v in self._headers.items() if _is_secret_header(k)]
        found += _url_secrets(url, parsed, secret_path=secret_path)
        self._auth: httpx.BasicAuth | None = None
        if parsed.userinfo:
            if any(name.lower() == "authorization" for name in self._headers):
                raise ValueError(
                    "url has credentials (user:pass@) and headers has Authorization;"
                    " give one of them"
                )
            self._auth = httpx.BasicAuth(parsed.username, parsed.password)
            parsed = parsed.copy_with(username=None, password=None)
        self._url = parsed
        self._health_url: httpx.URL | None = None
        self._masked_health_url: str | None = None
        if health_url is not None:
            self._health_url, self._masked_health_url = _check_url(
                health_url, "health_url", secret_path=secret_path
            )
            if self._health_url.userinfo:
                raise ValueError(
                    "health_url must not carry credentials; it is sent the headers"
                )
            found += _url_secrets(health_url, self._health_url, secret_path=secret_path)
        self._redact = _Redactor(found)
        shown = {str(self._url): self._masked_url}
        if self._health_url is not None and self._masked_health_url is not None:
            shown[str(self._health_url)] = self._masked_health_url
        # Held for the filter's sake: it forgets an instance once it is collected.
        self._log_mask = _httpx_log_mask.hold(shown, self._redact)
        self._http = _HttpClient(
            headers=self._headers,
            auth=self._auth,
            timeout=self._timeout,
            max_connections=max_connections,
            verify=verify,
            redact=self._redact,
            secret_path=secret_path,
            log_response_body=log_response_body,
        )
        for what, target, masked, userinfo in (
            ("url", self._url, self._masked_url, self._auth is not None),
            ("health_url", self._health_url, self._masked_health_url, False),
        ):
            warning = _plain_http_warning(
                what, target, masked, self._headers, userinfo, secret_path
            )
            if warning is not None:
                warnings.warn(warning, UserWarning, stacklevel=2)

    def __repr__(self) -> str:
        headers = _masked_headers(self._headers)
        extra = "" if not headers else f", headers={headers!r}"
        if self._masked_health_url is not None:
            extra += f", health_url={self._masked_health_url!r}"
        for option in ("per_batch", "secret_path", "log_response_body"):
            if getattr(self, f"_{option}"):
                extra += f", {option}=True"
        return f"WebhookArchive({self._masked_url!r}{extra}, timeout={self._timeout!r})"

    def __del__(self, _warn: Callable[..., object] = warnings.warn) -> None:
        http = getattr(self, "_http", None)
        if http is not None and not http.is_closed:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)

    @property
    def is_closed(self) -> bool:
        """Whether no HTTP client is open (before first use, or after ``aclose``)."""
        return self._http.is_closed

    # -- the backend protocol ------------------------------------------------------

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """POST ``records`` of ``session`` as one group; return once answered 2xx.

        Nothing is sent for no records.

        Raises:
            BackendError: not delivered (see the module docstring for which are
                retryable); the receiver may have applied the body anyway.
        """
        if records:
            await self._post(
                _timed([SessionGroup(session, tuple(records))], time.time())
            )

    async def delete_session(self, session: UUID) -> None:
        """POST an erase of ``session`` with no records; return once answered 2xx.

        Raises:
            BackendError: as for ``append_messages``.
        """
        await self._post(_timed([SessionGroup(session, (), erase=True)], time.time()))

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """POST the batch: one body per group, in order, each after the last is
        answered; or, with ``per_batch``, all groups in one body.

        An erasing group says ``"erase": true`` and carries its records. Groups
        carry their times (now, for a group without), an erasing group drops the
        records of its session's earlier groups (erased anyway), groups left with
        nothing to do are left out, and nothing is sent if no group is left.

        Raises:
            BackendError: at the first body not delivered; the groups before it
                were delivered and are sent again when the writer retries.
        """
        groups = _timed(groups, time.time())
        if self._per_batch:
            if groups:
                await self._post(groups)
        else:
            for group in groups:
                await self._post([group])

    async def health_check(self) -> None:
        """Return if the receiver is reachable and would take writes.

        Raises:
            BackendError: (retryable) unreachable, timed out, or answering as
                described in the module docstring.
        """
        if self._health_url is not None:
            what = f"health check GET {self._masked_health_url}"
            status, retry_after, detail = await self._http.send(
                "GET", self._health_url, what
            )
            if 200 <= status < 300:
                return
        else:
            what = f"health check OPTIONS {self._masked_url}"
            status, retry_after, detail = await self._http.send(
                "OPTIONS", self._url, what
            )
            if _probe_passes(status):
                return
        raise BackendError(
            f"{what}: {_describe_answer(status, _reason(status), detail)}",
            retryable=True,
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent); a later call opens a new one."""
        await self._http.aclose()

    # -- HTTP -------------------------------------------------------------------------

    async def _post(self, groups: Sequence[SessionGroup]) -> None:
        """POST ``groups`` (exactly one unless ``per_batch``) as one body.

        Raises:
            BackendError: (not retryable) a record cannot be encoded, such as one
                with a lone surrogate in a string; nothing was sent.
        """
        body = _encode_body(groups, batch=self._per_batch)
        key = _idempotency_key(groups, batch=self._per_batch)
        what = _describe_post(self._masked_url, groups)
        status, retry_after, detail = await self._http.send(
            "POST",
            self._url,
            what,
            content=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        if 200 <= status < 300:
            return
        retryable = _is_retryable(status)
        raise BackendError(
            f"{what}: {_describe_answer(status, _reason(status), detail)}",
            retryable=retryable,
            retry_after=retry_after if retryable else None,
        )


def _reason(status: int) -> str:
    """The standard reason phrase of ``status`` (never the receiver's own text)."""
    return httpx.codes.get_reason_phrase(status)
