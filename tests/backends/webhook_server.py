"""A real HTTP server on loopback for the webhook tests, and a reference receiver.

``WebhookServer`` runs a ``ThreadingHTTPServer`` on ``127.0.0.1`` (an ephemeral
port) in a daemon thread. It records every request, answers each as scripted, and
by default behaves as the receiver the webhook wire format asks for: it accepts
both body shapes (one group, or ``{"groups": [...]}`` with ``per_batch``), checked
strictly, and applies every group of a POSTed body in order (erase first, then each
record once per ``message_id``) before answering 200; ``records(session)`` reads
what it archived. A body is applied whole or not at all. It keeps erasure marks
as the wire format asks: an erase at ``erased_at`` deletes only the records
appended before it and raises the session's mark, and a record appended before
the mark is dropped on arrival.

Scripting: ``queue(Reply(...), ..., method="POST")`` answers the next requests of
that method, one reply each, before the defaults resume. A ``Reply`` can set the
status, its reason phrase, headers and body, wait for a ``threading.Event``
before answering (a slow receiver), echo the request line and ``Authorization``
header back in the body (as many frameworks' error pages do), or close the
connection without answering.
``reject(message_id)`` answers every POST that carries that record (in any group)
with 422 and applies nothing of it. ``WebhookServer(skip_known_keys=True)`` is a
receiver that dedupes by ``Idempotency-Key``: it answers 200 to a POST whose key
it has applied before, without applying it again, and forgets the keys of a
session when it erases it (the same records may come again after an erasure).
``WebhookServer(tls=context)`` serves HTTPS with that server-side context (the
tests use ``untrusted_tls.pem`` beside this file: a self-signed certificate for
127.0.0.1 and localhost that no system trusts, valid from 2000 to 2126).

Threads: handlers run in server threads and the tests in the event loop's thread;
all state is behind one ``threading.Condition``. Tests wait for requests with
``wait_for_requests`` (run it in a worker thread from async code), never by
sleeping.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import msgspec

from journal_archivist import MessageRecord

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

__all__ = [
    "Received",
    "Reply",
    "WebhookServer",
    "WireBatch",
    "WireGroup",
    "decode_body",
]

#: Seconds a gated reply waits for its event at most (a safety net for a test that
#: forgets to release it).
GATE_TIMEOUT = 10.0


class WireGroup(msgspec.Struct, forbid_unknown_fields=True):
    """One session group, checked strictly (records as in ``_codec``); also the
    whole body of a POST without ``per_batch``."""

    session: UUID
    erase: bool
    records: list[MessageRecord]
    erased_at: float | None
    appended_at: list[float]

    def __post_init__(self) -> None:
        if len(self.appended_at) != len(self.records):
            raise ValueError("appended_at must hold one time per record")
        if (self.erased_at is None) is self.erase:
            raise ValueError("erased_at must be given exactly when erase is true")


class WireBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a ``per_batch`` POST: at least one group, applied in order."""

    groups: Annotated[list[WireGroup], msgspec.Meta(min_length=1)]


_decode_group = msgspec.json.Decoder(WireGroup).decode
_decode_batch = msgspec.json.Decoder(WireBatch).decode


def decode_body(body: bytes) -> list[WireGroup]:
    """The groups of a POST body of either shape, in order.

    Raises:
        msgspec.DecodeError: the body is neither shape; the message says why it
            is not the shape it looks like (a ``"groups"`` key: a batch).
    """
    try:
        return [_decode_group(body)]
    except msgspec.DecodeError as group_exc:
        try:
            return _decode_batch(body).groups
        except msgspec.DecodeError as batch_exc:
            looks_batched = b'"groups"' in body
            raise (batch_exc if looks_batched else group_exc) from None


@dataclass(frozen=True)
class Reply:
    """How the server answers one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Wait for this event before answering (a slow receiver).
    gate: threading.Event | None = None
    #: Close the connection without answering.
    drop: bool = False
    #: Answer with ``"<METHOD> <path> authorization=<header>"`` as the body instead.
    echo: bool = False
    #: Apply a POSTed body as a receiver would; None: only if ``status`` is 2xx.
    apply: bool | None = None
    #: The status line's reason phrase; None: the standard one.
    reason: str | None = None


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body, decoded as JSON."""
        return json.loads(self.body)

    def groups(self) -> list[WireGroup]:
        """The groups of a POST body (of either shape), in order."""
        return decode_body(self.body)


class WebhookServer:
    """A scriptable HTTP receiver on ``127.0.0.1``; see the module docstring.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self, *, skip_known_keys: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        self._skip_known_keys = skip_known_keys
        self._scheme = "http" if tls is None else "https"
        self._applied_keys: set[str] = set()
        self._keys_of: dict[str, set[str]] = {}  # session -> keys that touched it
        self._cond = threading.Condition()
        self._requests: list[Received] = []
        self._queued: dict[str, list[Reply]] = {}
        self._rejected: dict[str, int] = {}
        self._gates: list[threading.Event] = []
        # session -> message id -> (record, appended_at)
        self._archive: dict[str, dict[str, tuple[MessageRecord, float]]] = {}
        self._marks: dict[str, float] = {}
        self.erasures: list[UUID] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._httpd.tls = tls
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"{self._scheme}://127.0.0.1:{self.port}/hook"

    @property
    def health_url(self) -> str:
        """A health endpoint: GET answers 200 unless a reply is queued for GET."""
        return f"{self._scheme}://127.0.0.1:{self.port}/health"

    def close(self) -> None:
        """Stop serving; release every gated reply still waiting."""
        with self._cond:
            for gate in self._gates:
                gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- scripting -------------------------------------------------------------------

    def queue(self, *replies: Reply, method: str = "POST") -> None:
        """Answer the next ``len(replies)`` requests of ``method`` with ``replies``."""
        with self._cond:
            self._queued.setdefault(method, []).extend(replies)
            self._gates.extend(r.gate for r in replies if r.gate is not None)

    def reject(self, message_id: UUID, status: int = 422) -> None:
        """Answer every POST carrying ``message_id`` with ``status``; apply nothing."""
        with self._cond:
            self._rejected[str(message_id)] = status

    # -- inspecting ------------------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        """Every request received so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    def posts(self) -> list[Received]:
        """The POST requests received so far."""
        return [r for r in self.requests if r.method == "POST"]

    def records(self, session: UUID) -> list[MessageRecord]:
        """What the receiver archived for ``session``, each record once, in order."""
        with self._cond:
            return [r for r, _ in self._archive.get(str(session), {}).values()]

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """``records(session)`` as the async reader ``check_backend`` takes."""
        return self.records(session)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Block until ``count`` requests arrived; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(
                    f"expected {count} requests, got {len(self._requests)}"
                )

    # -- serving (in handler threads) --------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        received = Received(
            method=handler.command,
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=handler.rfile.read(length),
        )
        groups: list[WireGroup] | None = None
        problem: str | None = None
        if received.method == "POST":
            try:
                groups = decode_body(received.body)
            except msgspec.DecodeError as exc:
                problem = str(exc)
        with self._cond:
            self._requests.append(received)
            key = received.headers.get("idempotency-key")
            if problem is not None:
                reply = Reply(400, body=problem.encode())
            elif self._skip_known_keys and key in self._applied_keys:
                reply = Reply(200, body=b'{"ok": true, "known": true}', apply=False)
            else:
                reply = self._reply_to(received, groups)
            apply = reply.apply if reply.apply is not None else reply.status < 300
            if apply and groups is not None:
                for group in groups:
                    self._apply(group)
                if key is not None:
                    self._applied_keys.add(key)
                    for group in groups:
                        self._keys_of.setdefault(str(group.session), set()).add(key)
            self._cond.notify_all()
        if reply.gate is not None:
            reply.gate.wait(GATE_TIMEOUT)
        if reply.drop:
            handler.close_connection = True
            return
        body = reply.body
        if reply.echo:
            auth = received.headers.get("authorization")
            body = f"{received.method} {received.path} authorization={auth}".encode()
        handler.send_response(reply.status, reply.reason)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _reply_to(self, received: Received, groups: list[WireGroup] | None) -> Reply:
        queued = self._queued.get(received.method)
        if queued:
            return queued.pop(0)
        if groups is not None:
            for record in (r for group in groups for r in group.records):
                status = self._rejected.get(str(record.message_id))
                if status is not None:
                    error = f'{{"error": "rejected {record.message_id}"}}'
                    return Reply(status, body=error.encode())
            return Reply(200, body=b'{"ok": true}')
        if received.method == "OPTIONS":
            return Reply(204, headers={"Allow": "POST, OPTIONS"})
        if received.method == "GET" and received.path == "/health":
            return Reply(200, body=b"ok")
        return Reply(405, headers={"Allow": "POST, OPTIONS"})

    def _apply(self, group: WireGroup) -> None:
        session = str(group.session)
        archive = self._archive.setdefault(session, {})
        if group.erased_at is not None:
            erased_at = group.erased_at
            for key, (_, appended_at) in list(archive.items()):
                if appended_at < erased_at:
                    del archive[key]
            self._marks[session] = max(erased_at, self._marks.get(session, erased_at))
            self.erasures.append(group.session)
            self._applied_keys -= self._keys_of.pop(session, set())
        mark = self._marks.get(session)
        for record, appended_at in zip(group.records, group.appended_at, strict=True):
            if mark is None or appended_at >= mark:
                archive.setdefault(str(record.message_id), (record, appended_at))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: WebhookServer
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake runs in the handler's thread, at its first read, so a
            # client refusing the certificate never blocks the accepting thread.
            sock = self.tls.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that timed out has closed the socket we answer on."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def _dispatch(self) -> None:
        assert isinstance(self.server, _Server)
        self.server.owner._handle(self)

    do_GET = do_POST = do_OPTIONS = do_HEAD = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``requests`` instead."""
