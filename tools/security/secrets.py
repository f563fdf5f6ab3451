"""Probe where secrets, erased content and control characters surface (issue 8,
items 8, 9 and the logging half of 10).

    .venv/bin/python -m tools.security.secrets [--deliveries N] [--verbose]

Every probe talks HTTP to a loopback receiver (``tests/backends/webhook_server.py``)
and prints one line of figures; a figure that is not 0 is a leak, except the
totals in parentheses. What is searched:

- **texts**: ``BackendError`` messages (from direct calls), ``last_error`` of
  ``health()``, every log record of every logger at DEBUG (message and any
  traceback) except ``aiosqlite``'s -- its DEBUG lines print every journal
  statement with its values, which is documented and left to the user -- and
  the bytes of the journal files (``journal.db``, ``-wal``, ``-shm``) while open
  and after shutdown.
- **forms** of a secret: this probe's own list (not the library's), every pair of
  encodings among raw, percent-encoded (with and without ``/`` kept), form-encoded
  (``+`` for space), form-decoded, JSON-escaped (ASCII or not, ``\\/`` or not) and
  HTML-escaped, matched ignoring case; "partial" counts 10-character pieces of
  them left once whole forms are blanked out.

Probes:

- ``forms``: the secret is a bearer token, a query value, the password of the
  URL's userinfo, or the last segment of a capability URL (``secret_path=True``
  where supported); for each place, the receiver echoes it in each of
  ``ECHOES``'s forms, in its body, its reason phrase and a header, answering a
  POST with 422 (the BEST_EFFORT writer dead-letters the record), another with a
  redirect to a URL holding it, and a health probe with 503. Bodies are quoted
  in errors (``log_response_body=True``, where supported: the hardest case).
- ``capability``: ``--deliveries`` records delivered one by one to a capability
  URL, then one refused: log lines naming the path secret.
- ``erased``: the receiver quotes a record's content in a 503 and then a 422
  body; after ``delete_session``, log lines and journal bytes holding that content.
- ``controls``: reason phrase, body, ``Content-Type`` and ``Location`` carrying
  ESC, C1 controls and U+2028: texts holding a raw control character (by
  default and with ``log_response_body=True`` where supported).
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import logging
import os
import re
import tempfile
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote_plus

import anyio

from journal_archivist import (
    Archivist,
    BackendError,
    FailureMode,
    MessageRecord,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends.webhook import WebhookArchive
from tests.backends.webhook_server import Reply, WebhookServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: A bearer token: each of ``/ + = & " \\`` changes under some encoding.
TOKEN = 'pR0b3/Tk+Q=z&"w\\9xYq'
#: A secret in a URL (query value, password, path segment): a space too.
URL_SECRET = 'pR0b3/Tk+Q=z&"w\\9 xYq'
#: The secret segment of the capability URL (as chat webhooks have).
PATH_SECRET = "XXXXcap4bilitYS3cretSegment"
RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.01, max_attempts=2)
#: Raw control characters that must never reach a text we print.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_ENCODINGS: list[Callable[[str], str]] = [
    lambda s: s,
    lambda s: quote(s, safe=""),
    lambda s: quote(s),
    lambda s: quote_plus(s, safe=""),
    unquote_plus,
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    html.escape,
]

#: How the receiver echoes a secret ``s`` back.
ECHOES: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "percent": lambda s: quote(s, safe=""),
    "percent-lower-hex": lambda s: re.sub(
        "%[0-9A-F]{2}", lambda m: m[0].lower(), quote(s, safe="")
    ),
    "form": lambda s: quote_plus(s, safe=""),
    "form-decoded": unquote_plus,
    "json": lambda s: json.dumps(s)[1:-1],
    "json-slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "upper": str.upper,
    "lower": str.lower,
    "upper-percent": lambda s: quote(s, safe="").upper(),
    "upper-form": lambda s: quote_plus(s, safe="").upper(),
    "double-percent": lambda s: quote(quote(s, safe=""), safe=""),
    "html": html.escape,
}


def forms(secret: str) -> list[str]:
    """Every form of ``secret`` this probe searches for, longest first."""
    found = {e2(e1(secret)) for e1 in _ENCODINGS for e2 in _ENCODINGS}
    return sorted((f for f in found if len(f) >= 4), key=len, reverse=True)


@dataclass
class Finder:
    """Counts whole and partial forms of secrets in texts."""

    secrets: list[str]
    whole: re.Pattern[str] = field(init=False)
    pieces: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        every = [f for s in self.secrets for f in forms(s)]
        self.whole = re.compile("|".join(map(re.escape, every)), re.IGNORECASE)
        windows = {f[i : i + 10] for f in every for i in range(len(f) - 9)}
        self.pieces = re.compile(
            "|".join(map(re.escape, sorted(windows))), re.IGNORECASE
        )

    def count(self, text: str) -> tuple[int, int]:
        """Whole forms in ``text``, and pieces left once they are blanked out."""
        whole = len(self.whole.findall(text))
        rest = self.whole.sub("", text)
        return whole, len(self.pieces.findall(rest))

    def count_bytes(self, data: bytes) -> tuple[int, int]:
        return self.count(data.decode("latin-1"))


class Capture(logging.Handler):
    """Keeps every record's text (message and traceback), aiosqlite's left out."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] == "aiosqlite":
            return
        message = record.getMessage()
        self.messages.append(message)
        text = f"{record.name}: {message}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.texts.append(text)


@contextmanager
def captured() -> Iterator[Capture]:
    """Capture every log record at DEBUG while inside."""
    root = logging.getLogger()
    quiet = logging.getLogger("aiosqlite")
    handler = Capture()
    levels = root.level, quiet.level
    root.setLevel(logging.DEBUG)
    quiet.setLevel(logging.INFO)  # its DEBUG lines are left out anyway
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        quiet.setLevel(levels[1])


def supports(option: str) -> bool:
    return option in inspect.signature(WebhookArchive).parameters


def journal_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes()
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if p.exists()
    )


def record(session: uuid.UUID, content: str = "probe") -> MessageRecord:
    return MessageRecord(session=session, role="user", content_md=content)


def registration(hook: WebhookArchive) -> Registration:
    return Registration(
        name="webhook",
        backend=hook,
        retry=RETRY,
        failure_mode=FailureMode.BEST_EFFORT,
        write_policy=Queued(batch_window_ms=1),
    )


@dataclass
class Tally:
    """Occurrences found in each kind of text."""

    error: int = 0
    health: int = 0
    logs: int = 0
    journal: int = 0
    partial: int = 0

    def add(self, finder: Finder, kind: str, text: str | bytes | None) -> None:
        if text is None:
            return
        whole, partial = (
            finder.count_bytes(text) if isinstance(text, bytes) else finder.count(text)
        )
        setattr(self, kind, getattr(self, kind) + whole)
        self.partial += partial

    def figures(self) -> str:
        return (
            f"BackendError={self.error} health={self.health} logs={self.logs}"
            f" journal={self.journal} partial={self.partial}"
        )


# -- the probes ------------------------------------------------------------------------


#: The hardest case: the receiver's body quoted in errors, where supported.
QUOTE: dict[str, Any] = (
    {"log_response_body": True} if supports("log_response_body") else {}
)


def place_hook(place: str, server: WebhookServer, **options: Any) -> WebhookArchive:
    """A WebhookArchive holding the secret in ``place``."""
    base = f"http://127.0.0.1:{server.port}"
    secret = quote(URL_SECRET, safe="")
    if place == "bearer":
        return WebhookArchive(
            server.url, headers={"Authorization": f"Bearer {TOKEN}"}, **options
        )
    if place == "query":
        return WebhookArchive(f"{server.url}?token={secret}", **options)
    if place == "userinfo":
        return WebhookArchive(
            f"http://probe:{secret}@127.0.0.1:{server.port}/hook", **options
        )
    if supports("secret_path"):
        options["secret_path"] = True
    return WebhookArchive(f"{base}/services/T000/B000/{secret}", **options)


async def probe_forms(tmp: Path, verbose: bool) -> str:
    places = ["bearer", "query", "userinfo", "path"]
    total = Tally()
    for place in places:
        finder = Finder([TOKEN if place == "bearer" else URL_SECRET])
        for name, echo in ECHOES.items():
            shown = echo(TOKEN if place == "bearer" else URL_SECRET)
            tally = Tally()
            body = json.dumps({"error": f"unknown token {shown}"}).encode()
            reason, headers = f"Bad token {shown}", {"X-Echo": shown}
            refuse = Reply(422, headers, body, reason=reason)
            down = Reply(503, headers, body, reason=reason)
            moved = Reply(302, headers={"Location": f"/login?next=/x/{shown}"})
            session = uuid.uuid4()
            journal = tmp / f"forms-{place}-{name}" / "journal.db"
            with WebhookServer() as server, captured() as logs:
                server.queue(refuse, moved, refuse)
                server.queue(down, method="OPTIONS")
                async with place_hook(place, server, **QUOTE) as hook:
                    for call in (
                        hook.append_messages(session, [record(session)]),
                        hook.append_messages(session, [record(session)]),
                        hook.health_check(),
                    ):
                        try:
                            await call
                        except BackendError as exc:
                            tally.add(finder, "error", str(exc))
                hook = place_hook(place, server, **QUOTE)
                async with Archivist.open(journal, [registration(hook)]) as archivist:
                    await archivist.append_messages(session, [record(session)])
                    with anyio.fail_after(10):
                        await archivist.wait_drained()
                    health = archivist.health().backends["webhook"]
                    tally.add(finder, "health", health.last_error)
                    tally.add(finder, "journal", journal_bytes(journal))
                tally.add(finder, "journal", journal_bytes(journal))
                for text in logs.texts:
                    tally.add(finder, "logs", text)
            if verbose and any(vars(tally).values()):
                print(f"    {place}/{name}: {tally.figures()}")
            for kind in ("error", "health", "logs", "journal", "partial"):
                setattr(total, kind, getattr(total, kind) + getattr(tally, kind))
    quoting = "log_response_body=True" if QUOTE else "bodies quoted by default"
    return (
        f"forms: {len(places)} places x {len(ECHOES)} echoes ({quoting}):"
        f" {total.figures()}"
        + ("" if supports("secret_path") else " (secret_path unsupported)")
    )


async def probe_capability(tmp: Path, deliveries: int, verbose: bool) -> str:
    finder = Finder([PATH_SECRET])
    tally = Tally()
    session = uuid.uuid4()
    journal = tmp / "capability" / "journal.db"
    options: dict[str, Any] = {"secret_path": True} if supports("secret_path") else {}
    with WebhookServer() as server, captured() as logs:
        url = f"http://127.0.0.1:{server.port}/services/T000/B000/{PATH_SECRET}"
        hook = WebhookArchive(url, **options)
        async with Archivist.open(journal, [registration(hook)]) as archivist:
            for i in range(deliveries):
                await archivist.append_messages(session, [record(session, f"m{i}")])
                with anyio.fail_after(10):
                    await archivist.wait_drained()
            echo = f"no hook at /services/T000/B000/{PATH_SECRET}".encode()
            server.queue(Reply(404, body=echo))
            await archivist.append_messages(session, [record(session, "last")])
            with anyio.fail_after(10):
                await archivist.wait_drained()
            tally.add(
                finder, "health", archivist.health().backends["webhook"].last_error
            )
        tally.add(finder, "journal", journal_bytes(journal))
        lines = [t for t in logs.texts if finder.count(t) != (0, 0)]
        for text in logs.texts:
            tally.add(finder, "logs", text)
        total = len(logs.texts)
    if verbose:
        for text in lines[:3]:
            print(f"    {text[:160]!r}")
    return (
        f"capability URL: {deliveries} deliveries + 1 refused:"
        f" log lines with the path secret={len(lines)} (of {total});"
        f" {tally.figures()}" + ("" if options else " (secret_path unsupported)")
    )


async def probe_erased(tmp: Path, verbose: bool) -> str:
    session = uuid.uuid4()
    marker = f"ERASED-CONTENT-{uuid.uuid4().hex}"
    journal = tmp / "erased" / "journal.db"
    quoted = json.dumps({"error": "refused", "record": {"content_md": marker}})
    with WebhookServer() as server, captured() as logs:
        server.queue(Reply(503, body=quoted.encode()), Reply(422, body=quoted.encode()))
        hook = WebhookArchive(server.url)
        async with Archivist.open(journal, [registration(hook)]) as archivist:
            await archivist.append_messages(session, [record(session, marker)])
            with anyio.fail_after(10):
                await archivist.wait_drained()
            dead = archivist.health().backends["webhook"].dead_lettered
            await archivist.delete_session(session)
            with anyio.fail_after(10):
                await archivist.wait_drained()
        lines = [t for t in logs.texts if marker in t]
        in_journal = journal_bytes(journal).count(marker.encode())
        total = len(logs.texts)
    if verbose:
        for text in lines[:3]:
            print(f"    {text[:160]!r}")
    return (
        f"erased content: {dead} dead-lettered, then delete_session:"
        f" log lines quoting it={len(lines)} (of {total}); journal={in_journal}"
    )


async def probe_controls(tmp: Path, verbose: bool) -> str:
    # A status line and headers are latin-1: U+2028 goes in the body only.
    evil = "\x1b[31m\x85\x7f"
    found = {"logs": 0, "error": 0, "health": 0}
    total = 0
    settings: list[dict[str, Any]] = [{}]
    if supports("log_response_body"):
        settings.append({"log_response_body": True})
    bad: list[str] = []
    for n, options in enumerate(settings):
        session = uuid.uuid4()
        journal = tmp / f"controls-{n}" / "journal.db"
        replies = [
            Reply(
                422,
                reason=f"Bad{evil}Thing",
                headers={"Content-Type": f"text/plain{evil}"},
                body=f"oops {evil}\u2028 next".encode(),
            ),
            Reply(302, reason=f"Moved{evil[:1]}", headers={"Location": "/x\x1b[1m"}),
        ]
        with WebhookServer() as server, captured() as logs:
            server.queue(*replies, *replies)
            server.queue(Reply(503, reason=f"Down{evil[:1]}"), method="OPTIONS")
            async with WebhookArchive(server.url, **options) as hook:
                for call in (
                    hook.append_messages(session, [record(session)]),
                    hook.append_messages(session, [record(session)]),
                    hook.health_check(),
                ):
                    try:
                        await call
                    except BackendError as exc:
                        if CONTROLS.search(str(exc)):
                            found["error"] += 1
                            bad.append(str(exc))
            hook = WebhookArchive(server.url, **options)
            async with Archivist.open(journal, [registration(hook)]) as archivist:
                await archivist.append_messages(session, [record(session)])
                await archivist.append_messages(session, [record(session)])
                with anyio.fail_after(10):
                    await archivist.wait_drained()
                error = archivist.health().backends["webhook"].last_error or ""
                if CONTROLS.search(error):
                    found["health"] += 1
                    bad.append(error)
            for message in logs.messages:
                if CONTROLS.search(message):
                    found["logs"] += 1
                    bad.append(message)
            total += len(logs.messages)
    if verbose:
        for text in bad[:4]:
            print(f"    {text[:160]!r}")
    return (
        f"control characters: log lines with raw controls={found['logs']}"
        f" (of {total}); BackendError={found['error']} health={found['health']}"
        + ("" if len(settings) > 1 else " (log_response_body unsupported)")
    )


async def run(deliveries: int, verbose: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="secrets-probe-") as tmp:
        root = Path(tmp)
        print(await probe_forms(root, verbose), flush=True)
        print(await probe_capability(root, deliveries, verbose), flush=True)
        print(await probe_erased(root, verbose), flush=True)
        print(await probe_controls(root, verbose), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.security.secrets",
        description="Where secrets, erased content and control characters surface.",
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        default=100,
        help="deliveries to the capability URL (default: 100)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show what leaked, briefly"
    )
    args = parser.parse_args(argv)
    # httpx honours proxy variables; the probes talk to loopback directly.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(name, None)
        os.environ.pop(name.lower(), None)
    anyio.run(run, args.deliveries, args.verbose, backend="asyncio")


if __name__ == "__main__":
    main()
