"""The connection of one ``JetStreamArchive``: connecting, the stream, errors.

Rules and theory:
- **Connected on first use, once per event loop.** A nats client works only on
  the loop that made it; used under another loop, the link forgets the old client
  and connects anew. The client does not reconnect by itself
  (``allow_reconnect=False``): a call that meets a lost connection fails
  retryably and drops the client, and the next call connects again, as
  ``PostgresArchive`` does. nats-py's own reconnection would buffer publishes
  while disconnected and leave calls waiting for their timeouts instead.
- **Connecting and closing take one lock**, so ``aclose`` waits for a connection
  being opened and closes it, rather than returning before it is stored.
- **The stream is checked once per connection** (and by every
  ``health_check``): it must exist (or be created, with ``create_stream``), its
  subjects must cover ``<prefix>.>``, and it must keep what it is given (limits
  retention, file storage, deletes allowed, not sealed, not a mirror). A problem
  is a retryable ``BackendError`` naming the stream: an operator fixes it, and no
  record is dead-lettered for it. A call that finds the stream gone (no
  responders, "stream not found") makes the next call check it again.
- **A lost connection fails the calls on it at once**: each call runs in a
  cancel scope that the client's closed callback cancels (nats-py would leave
  its requests waiting for their timeouts).
- **Errors are translated once, in ``run``**: every failure of the server or the
  connection is retryable; only the archive's own checks of a record raise a
  non-retryable ``BackendError`` (which passes through unchanged).
- **Secrets**: messages name the servers masked, every secret is scrubbed from
  them, and an error whose chain shows a secret is raised without its chain. The
  client's asynchronous errors are logged at DEBUG, scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from .._errors import BackendError
from . import _jetstream_wire as wire
from ._redact import scrub, shows_secret

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable

    from nats.js import JetStreamContext

logger = logging.getLogger("journal_archivist.backends.jetstream")

_T = TypeVar("_T")

#: JetStream API error codes the archive tells apart.
STREAM_NOT_FOUND: Final = 10059
STREAM_NAME_IN_USE: Final = 10058
WRONG_LAST_SEQUENCE: Final = 10071
NO_MESSAGE_FOUND: Final = 10037
DELETE_FAILED: Final = 10057
#: "sequence N not found": deleting a message that is gone (with "no message
#: found" under DELETE_FAILED, the other answer to that).
SEQUENCE_NOT_FOUND: Final = 10043
MESSAGE_TOO_LARGE: Final = 10054

_API: Final = "$JS.API"
_DROP: Final = (
    OSError,  # refused, reset; TimeoutError is one too
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.AuthorizationError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class Conn:
    """An open connection and what the archive's calls need to know."""

    nc: Client
    js: JetStreamContext
    stream: str
    prefix: str
    #: Seconds one request may take.
    timeout: float
    #: The largest message (headers and body) the stream takes, in bytes.
    max_message: int
    #: The calls running on it, cancelled when it closes (``Link.run``).
    calls: set[anyio.CancelScope] = field(default_factory=set, compare=False)

    async def api(self, subject: str, request: dict[str, Any] | None) -> Any:
        """A JetStream API request (``$JS.API.<subject>``); its decoded answer.

        Raises:
            nats.js.errors.APIError: the server refused it.
        """
        payload = b"" if request is None else json.dumps(request).encode()
        try:
            msg = await self.nc.request(
                f"{_API}.{subject}", payload, timeout=self.timeout
            )
        except nats.errors.NoRespondersError:
            raise nats.js.errors.ServiceUnavailableError(
                description="JetStream is not enabled or not available"
            ) from None
        answer = json.loads(msg.data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises
        return answer


def err_code(exc: BaseException) -> int | None:
    """The JetStream API error code of ``exc``, if it is an API error."""
    if isinstance(exc, nats.js.errors.APIError):
        return exc.err_code
    return None


def describe(exc: BaseException) -> str:
    """What went wrong, in words (not yet scrubbed of secrets)."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return (
            "no stream answered the publish (the stream was deleted, or JetStream"
            " is not enabled)"
        )
    if isinstance(exc, nats.js.errors.APIError):
        return (
            f"JetStream API error {exc.code} (err_code {exc.err_code}):"
            f" {exc.description}"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@final
class Link:
    """Owns the connection of one archive; runs each call on it, translates errors.

    Args:
        urls: the server URLs as given, passed to nats-py only.
        shown: the servers as errors and logs show them (masked).
        secrets: every secret of the URLs, scrubbed from errors.
        stream, prefix, create_stream, replicas, max_age, timeout, tls,
        user_credentials, name: as ``JetStreamArchive`` takes them, checked.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        shown: str,
        secrets: Iterable[str],
        stream: str,
        prefix: str,
        create_stream: bool,
        replicas: int,
        max_age: float | None,
        timeout: float,
        tls: ssl.SSLContext | None,
        user_credentials: str | None,
        name: str,
    ) -> None:
        self._urls = urls
        self.shown = shown
        # Longest first, so no secret is left half-replaced by a shorter one;
        # shorter than 4 characters would mangle every message.
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len)[::-1]
        self._stream = stream
        self._prefix = prefix
        self._create_stream = create_stream
        self._replicas = replicas
        self._max_age = max_age
        self._timeout = timeout
        self._tls = tls
        self._user_credentials = user_credentials
        self._name = name
        self.conn: Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream_ready = False
        self._opening = anyio.Lock()
        self._last_error: BaseException | None = None

    # -- connecting ------------------------------------------------------------------

    def _usable(self) -> Conn | None:
        conn = self.conn
        if conn is None:
            return None
        if self._loop is not asyncio.get_running_loop():
            # Its loop is gone or another: forget it (it cannot be closed here).
            self.conn = None
            self._stream_ready = False
            return None
        if conn.nc.is_closed or not conn.nc.is_connected:
            return None
        return conn

    async def open(self, *, check_stream: bool = False) -> Conn:
        """The open connection, connecting and checking the stream if needed."""
        conn = self._usable()
        if conn is not None and self._stream_ready and not check_stream:
            return conn
        async with self._opening:
            conn = self._usable()
            if conn is None:
                await self._close_quietly()
                conn = await self._connect()
            if check_stream or not self._stream_ready:
                conn = await self._check_stream(conn)
                self.conn, self._stream_ready = conn, True
            return conn

    async def _connect(self) -> Conn:
        async def on_error(exc: Exception) -> None:
            self._last_error = exc
            logger.debug("%s", self._scrub(f"nats client on {self.shown}: {exc!r}"))

        self._last_error = None
        nc = Client()
        calls: set[anyio.CancelScope] = set()

        async def on_closed() -> None:
            # Fail the calls in flight at once: nats-py leaves requests made
            # before the connection closed waiting for their timeouts.
            for scope in calls:
                scope.cancel()

        try:
            await nc.connect(
                servers=self._urls,
                name=self._name,
                connect_timeout=max(1, math.ceil(self._timeout)),
                allow_reconnect=False,
                # Each server is tried twice at most, at once: nats-py never
                # gives up at 0, and waits reconnect_time_wait between tries.
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                tls=self._tls,
                user_credentials=self._user_credentials,
                error_cb=on_error,
                closed_cb=on_closed,
            )
        except BaseException as exc:
            # A failed connect can leave the client's socket and tasks behind.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await nc.close()
            cause = self._last_error
            if not isinstance(exc, nats.errors.NoServersError) or cause is None:
                raise
            raise cause from exc
        js = nc.jetstream(timeout=self._timeout)
        conn = Conn(
            nc, js, self._stream, self._prefix, self._timeout, nc.max_payload, calls
        )
        self.conn, self._loop, self._stream_ready = (
            conn,
            asyncio.get_running_loop(),
            False,
        )
        logger.info("connected to NATS at %s", self.shown)
        return conn

    async def _check_stream(self, conn: Conn) -> Conn:
        try:
            info = await conn.api(f"STREAM.INFO.{self._stream}", None)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            if not self._create_stream:
                raise BackendError(
                    self._scrub(
                        f"JetStreamArchive on {self.shown}: stream {self._stream}"
                        " does not exist: pass create_stream=True or create it with"
                        f" subjects {self._prefix}.> (see docs/backends.md)"
                    ),
                    retryable=True,
                ) from None
            info = await self._create(conn)
        config = info.get("config", {})
        problems = wire.stream_problems(config, self._prefix)
        if problems:
            raise BackendError(
                self._scrub(
                    f"JetStreamArchive on {self.shown}: stream {self._stream} cannot"
                    f" archive: {'; '.join(problems)}"
                ),
                retryable=True,
            )
        limit = config.get("max_msg_size", -1)
        if isinstance(limit, int) and 0 < limit < conn.max_message:
            conn = dataclasses.replace(conn, max_message=limit)
        return conn

    async def _create(self, conn: Conn) -> Any:
        config: dict[str, Any] = {
            "name": self._stream,
            "description": "journal_archivist archive",
            "subjects": [f"{self._prefix}.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self._replicas,
            "discard": "old",
            "max_age": 0 if self._max_age is None else int(self._max_age * 1e9),
        }
        try:
            info = await conn.api(f"STREAM.CREATE.{self._stream}", config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            # Another process created it meanwhile: check theirs.
            return await conn.api(f"STREAM.INFO.{self._stream}", None)
        logger.info("created stream %s for %s.>", self._stream, self._prefix)
        return info

    # -- running calls ---------------------------------------------------------------

    async def run(
        self,
        action: str,
        work: Callable[[Conn], Awaitable[_T]],
        *,
        check_stream: bool = False,
    ) -> _T:
        """Run ``work`` on the open connection; translate errors.

        Raises:
            BackendError: naming ``action`` and the masked servers, secrets
                scrubbed. Retryable unless ``work`` raised a non-retryable one.
        """
        try:
            conn = await self.open(check_stream=check_stream)
            with anyio.CancelScope() as scope:
                conn.calls.add(scope)
                try:
                    return await work(conn)
                finally:
                    conn.calls.discard(scope)
            # Only reached when the connection closed under the call.
            raise nats.errors.ConnectionClosedError
        except BackendError:
            raise
        except Exception as exc:
            if isinstance(exc, _DROP) or (
                self.conn is not None and not self.conn.nc.is_connected
            ):
                await self._drop()
            if isinstance(exc, nats.js.errors.NoStreamResponseError) or (
                err_code(exc) == STREAM_NOT_FOUND
            ):
                self._stream_ready = False
            error = BackendError(
                self._scrub(
                    f"JetStreamArchive {action} on {self.shown}: {describe(exc)}"
                ),
                retryable=True,
            )
            logger.debug("%s", error)
            if not self._shows_secret(exc):
                raise error from exc
        # Raised outside the handler, so not even ``__context__`` keeps the error
        # that shows a secret.
        raise error

    def _shows_secret(self, exc: BaseException) -> bool:
        return shows_secret(exc, self._secrets)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    # -- closing ---------------------------------------------------------------------

    async def _drop(self) -> None:
        """Forget the connection (closing it), so the next call connects again."""
        async with self._opening:
            await self._close_quietly()

    async def _close_quietly(self) -> None:
        conn, self.conn, self._stream_ready = self.conn, None, False
        if conn is None or conn.nc.is_closed:
            return
        if self._loop is not asyncio.get_running_loop():
            return  # its loop is gone: nothing can close it here
        # Shielded: a cancelled call must not leave the socket open.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self._timeout),
            contextlib.suppress(Exception),
        ):
            await conn.nc.close()

    async def aclose(self) -> None:
        """Close the connection (idempotent), waiting for one being opened."""
        async with self._opening:
            had = self.conn is not None
            await self._close_quietly()
        if had:
            logger.info("closed the connection to NATS at %s", self.shown)
