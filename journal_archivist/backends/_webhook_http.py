"""The HTTP client of one ``WebhookArchive``: sending a request, reading the answer.

Rules and theory:
- **One ``httpx.AsyncClient``**, opened on first use and closed by ``aclose``
  (idempotent); a later call opens a new one. It carries the archive's headers,
  its Basic auth, its TLS ``verify`` and its connection limit.
- **Redirects are never followed**: a 3xx is an answer the archive judges (not
  retryable), so neither a body nor credentials go anywhere but the configured URL.
- **Two deadlines**: httpx's timeouts bound each phase, and ``fail_after`` bounds
  the whole request, so a receiver trickling its answer cannot hold a writer.
- **No answer is retryable**: a timeout or any transport error raises a retryable
  ``BackendError``; its text may quote what the receiver sent (h11 does), so it is
  masked, cut short and made printable.
- **An answer is reduced to facts**: its status, ``Retry-After`` (read only when
  the status is retryable) and a *detail* for an error message, built here and
  never raw: where a redirect points, else the body's size and media type, or,
  with ``log_response_body``, its start (``_webhook_wire``). Only the first
  ``_MAX_BODY_BYTES`` of a body are read.
- The logger is the archive's, ``journal_archivist.backends.webhook``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

import anyio
import httpx

from .._errors import BackendError
from .._printable import printable
from ._webhook_wire import (
    _EXCERPT_CHARS,
    _describe_redirect,
    _is_retryable,
    _parse_retry_after,
    _quote_body,
    _read_capped,
    _summarise_body,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    from ._webhook_secrets import _Redactor

logger = logging.getLogger("journal_archivist.backends.webhook")


@final
class _HttpClient:
    """Sends the requests of one archive and describes their answers.

    Args:
        headers: sent with every request, already checked.
        auth: HTTP Basic auth from the URL's userinfo, if any.
        timeout: seconds one request may take in all.
        max_connections: connections kept to the receiver.
        verify: TLS verification, as ``WebhookArchive`` takes it.
        redact: masks every secret in text from the receiver.
        secret_path: the URL's path is a secret (masked in a redirect's target).
        log_response_body: quote the start of an error body instead of its size.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        auth: httpx.BasicAuth | None,
        timeout: float,
        max_connections: int,
        verify: bool | ssl.SSLContext,
        redact: _Redactor,
        secret_path: bool,
        log_response_body: bool,
    ) -> None:
        self._headers = headers
        self._auth = auth
        self._timeout = timeout
        self._max_connections = max_connections
        self._verify = verify
        self._redact = redact
        self._secret_path = secret_path
        self._log_response_body = log_response_body
        self._client: httpx.AsyncClient | None = None

    @property
    def is_closed(self) -> bool:
        """Whether no HTTP client is open (before first use, or after ``aclose``)."""
        return self._client is None

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent); a later call opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _open(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(
                headers={"User-Agent": "journal-archivist", **self._headers},
                auth=self._auth,
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                ),
                follow_redirects=False,
                verify=self._verify,
            )
        return client

    async def send(
        self,
        method: str,
        url: httpx.URL,
        what: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, float | None, str]:
        """Send one request; return its status, ``Retry-After`` and what an error
        would say of the answer (see ``_detail``).

        Raises:
            BackendError: (retryable) no answer: a timeout or transport error.
        """
        client = self._open()
        try:
            # httpx's timeouts bound each phase; this bounds the whole request.
            with anyio.fail_after(self._timeout):
                async with client.stream(
                    method, url, content=content, headers=headers
                ) as response:
                    body, complete = await _read_capped(response.aiter_raw())
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise BackendError(
                f"{what}: no answer within {self._timeout:g} s", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            # Transport errors may quote what the receiver sent (h11 does).
            problem = printable(self._redact.excerpt(str(exc), _EXCERPT_CHARS))
            raise BackendError(
                f"{what}: {type(exc).__name__}: {problem}", retryable=True
            ) from exc
        status = response.status_code
        logger.debug("%s: %d", what, status)
        retry_after = None
        if _is_retryable(status):
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        return status, retry_after, self._detail(response, body, complete)

    def _detail(self, response: httpx.Response, body: bytes, complete: bool) -> str:
        """What an error says of an answer besides its status: where a redirect
        points; else the body's size and media type, or, with
        ``log_response_body``, its start. Masked and printable."""
        headers = response.headers
        if 300 <= response.status_code < 400:
            return _describe_redirect(
                headers.get("Location"), self._redact, secret_path=self._secret_path
            )
        if self._log_response_body:
            return _quote_body(body, complete, self._redact)
        return _summarise_body(
            body,
            complete,
            headers.get("Content-Type"),
            headers.get("Content-Length"),
            self._redact,
        )
