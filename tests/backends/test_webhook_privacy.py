"""What WebhookArchive lets out of what a receiver sends back: secrets in any form,
record content, raw control characters; and the transport rules that keep
credentials on the wire they were meant for.

Every test talks HTTP(S) to its own ``WebhookServer`` on loopback; nothing is
mocked. Logs are captured at DEBUG from every logger but aiosqlite's (whose DEBUG
lines print journal statements with their values, as docs/operations.md says).
The forms of a secret searched for are this module's own list, not the library's.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import warnings
from pathlib import Path
from urllib.parse import quote
from uuid import UUID, uuid4

import anyio
import httpx
import pytest

from journal_archivist import (
    Archivist,
    BackendError,
    FailureMode,
)
from journal_archivist.backends._webhook_secrets import _Redactor
from journal_archivist.backends.webhook import WebhookArchive
from tests.backends.webhook_server import Reply, WebhookServer
from tests.helpers import record, registration
from tools.security.secrets import ECHOES, forms

#: A self-signed certificate (and its key) for 127.0.0.1 that nothing trusts.
UNTRUSTED_PEM = Path(__file__).with_name("untrusted_tls.pem")
#: A bearer token: each of ``/ + = & " \\`` changes under some encoding.
TOKEN = 'T0k3n/w1th+Sp3c=al&"ch\\rs'
#: A secret in a URL (query value, password, path segment): a space too.
URL_SECRET = 'S3cr3t/w1th+sp ce=&"x\\y'
#: Raw control characters that must never reach a message or a log line.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, aiosqlite's left out."""
    # In this order: set_level sets the capturing handler's level too.
    caplog.set_level(logging.INFO, logger="aiosqlite")
    caplog.set_level(logging.DEBUG)
    return caplog


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The message of every captured record."""
    return [r.getMessage() for r in caplog.records if r.name != "aiosqlite"]


# -- the forms of a secret -------------------------------------------------------------


def leaks(text: str | bytes, secret: str) -> list[str]:
    """The forms of ``secret`` found in ``text``, ignoring case."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    pattern = "|".join(map(re.escape, forms(secret)))
    return re.findall(pattern, text, re.IGNORECASE)


def hook_with_secret(
    place: str, server: WebhookServer, *, log_response_body: bool = False
) -> WebhookArchive:
    """A WebhookArchive whose secret (``TOKEN`` or ``URL_SECRET``) is in ``place``."""
    secret = quote(URL_SECRET, safe="")
    quote_body = log_response_body
    if place == "bearer":
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return WebhookArchive(server.url, headers=headers, log_response_body=quote_body)
    if place == "query":
        url = f"{server.url}?token={secret}"
        return WebhookArchive(url, log_response_body=quote_body)
    if place == "userinfo":
        url = server.url.replace("http://", f"http://probe:{secret}@")
        return WebhookArchive(url, log_response_body=quote_body)
    url = f"http://127.0.0.1:{server.port}/services/T000/B000/{secret}"
    return WebhookArchive(url, secret_path=True, log_response_body=quote_body)


async def three_refusals(hook: WebhookArchive, session: UUID) -> list[str]:
    """The errors of two appends and a health check the receiver refuses."""
    errors = []
    for call in (
        hook.append_messages(session, [record(session)]),
        hook.append_messages(session, [record(session)]),
        hook.health_check(),
    ):
        with pytest.raises(BackendError) as caught:
            await call
        errors.append(str(caught.value))
    return errors


def echoing(status: int, shown: str, **fields: object) -> Reply:
    """An answer echoing ``shown`` in its reason phrase, a header and its body."""
    body = json.dumps({"error": f"unknown token {shown}"}).encode()
    return Reply(
        status,
        reason=f"Bad token {shown}",
        headers={"X-Echo": shown},
        body=body,
        **fields,  # type: ignore[arg-type]
    )


PLACES = [
    "bearer",  # Authorization: Bearer <token>
    "query",  # ?token=<secret>
    "userinfo",  # http://user:<secret>@host, sent as Basic auth
    "path",  # a capability URL, with secret_path=True
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_secret_echoed_in_any_form_is_masked_in_errors_and_logs(
    server: WebhookServer,
    logs: pytest.LogCaptureFixture,
    session: UUID,
    place: str,
    echo: str,
) -> None:
    secret = TOKEN if place == "bearer" else URL_SECRET
    shown = ECHOES[echo](secret)
    server.queue(
        echoing(422, shown),
        Reply(302, headers={"Location": f"/login?next=/x/{shown}"}),
    )
    server.queue(echoing(503, shown), method="OPTIONS")
    # Quoting bodies is the hardest case: the default quotes none.
    async with hook_with_secret(place, server, log_response_body=True) as hook:
        errors = await three_refusals(hook, session)
    assert "unknown token ***" in errors[0]  # the body was quoted, masked
    assert "?next=***" in errors[1]
    assert leaks("\n".join(errors), secret) == []
    # httpx's request line (URL, reason phrase) and httpcore's DEBUG lines
    # (response headers) hold it nowhere either.
    assert any("HTTP Request: POST" in line for line in logged(logs))
    assert any("receive_response_headers" in line for line in logged(logs))
    assert leaks(logs.text, secret) == []


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "echo",
    [
        "raw",  # as sent
        "upper-percent",  # percent-encoded, then upper-cased
        "form-decoded",  # "+" read as a space
        "json-slash",  # JSON with "\/"
    ],
)
async def test_no_form_of_a_secret_is_written_to_the_journal(
    server: WebhookServer,
    logs: pytest.LogCaptureFixture,
    journal_path: Path,
    session: UUID,
    place: str,
    echo: str,
) -> None:
    secret = TOKEN if place == "bearer" else URL_SECRET
    server.queue(echoing(422, ECHOES[echo](secret)))
    hook = hook_with_secret(place, server, log_response_body=True)
    reg = registration(hook, name="webhook", failure_mode=FailureMode.BEST_EFFORT)
    files = [journal_path, Path(f"{journal_path}-wal")]
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [record(session)])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        health = archivist.health().backends["webhook"]
        assert health.dead_lettered == 1  # the reason is in the journal now
        assert health.last_error is not None
        assert "unknown token ***" in health.last_error
        assert leaks(health.last_error, secret) == []
        written = b"".join(p.read_bytes() for p in files if p.exists())
    written += b"".join(p.read_bytes() for p in files if p.exists())
    assert b"unknown token ***" in written
    assert leaks(written, secret) == []
    assert leaks(logs.text, secret) == []


def test_an_excerpt_never_shows_part_of_a_secret_cut_by_its_end() -> None:
    redact = _Redactor([TOKEN])
    assert redact.excerpt(f"refused {TOKEN}.", 200) == "refused ***."
    # A read cut inside the token: no form matches what is left of it, so the
    # end of a text cut short is never shown.
    cut = "x" * 300 + TOKEN[:12]
    shown = redact.excerpt(cut, 1_000, complete=False)
    assert shown == "x" * (len(cut) - redact.longest)
    assert redact.excerpt(cut, 100, complete=False) == "x" * 100


async def test_a_body_of_many_secrets_shows_no_piece_of_one(
    server: WebhookServer, session: UUID
) -> None:
    # Masking shrinks the start of the body: the excerpt is taken after it, so
    # the end of what was read (inside a token) never shows.
    server.queue(Reply(422, body=f"{TOKEN} ".encode() * 2_000))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with WebhookArchive(
        server.url, headers=headers, log_response_body=True
    ) as hook:
        with pytest.raises(BackendError, match=r"answered 422") as caught:
            await hook.append_messages(session, [record(session)])
    quoted = str(caught.value).partition(": '")[2]
    assert re.fullmatch(r"[* ]{150,}\.\.\.'", quoted)
    pieces = {TOKEN[i : i + 4].lower() for i in range(len(TOKEN) - 3)}
    assert [p for p in pieces if p in str(caught.value).lower()] == []


# -- capability URLs -------------------------------------------------------------------


async def test_secret_path_keeps_the_path_out_of_repr_errors_and_logs(
    server: WebhookServer, logs: pytest.LogCaptureFixture, session: UUID
) -> None:
    secret = "XXXXcap4bilitYS3cret"
    url = f"http://127.0.0.1:{server.port}/services/T000/B000/{secret}"
    health = f"http://127.0.0.1:{server.port}/health/{secret}"
    server.queue(Reply(200), method="GET")
    hook = WebhookArchive(
        url, health_url=health, secret_path=True, log_response_body=True
    )
    async with hook:
        await hook.append_messages(session, [record(session)])
        await hook.health_check()
        echo = f"no hook at /services/T000/B000/{secret}"
        server.queue(Reply(404, body=echo.encode()))
        with pytest.raises(BackendError, match=r"answered 404") as caught:
            await hook.append_messages(session, [record(session)])
    shown = f"{hook!r}\n{caught.value}"
    assert f"'http://127.0.0.1:{server.port}/***'" in shown
    assert f"POST http://127.0.0.1:{server.port}/*** (session" in shown
    assert "no hook at ***'" in shown
    lines = logged(logs)
    assert f"HTTP Request: POST http://127.0.0.1:{server.port}/*** " in "\n".join(lines)
    assert f"HTTP Request: GET http://127.0.0.1:{server.port}/*** " in "\n".join(lines)
    for text in (shown, logs.text):
        assert leaks(text, secret) == []
    # The path was sent, and shown nowhere.
    assert [r.path for r in server.requests] == [
        f"/services/T000/B000/{secret}",
        f"/health/{secret}",
        f"/services/T000/B000/{secret}",
    ]


async def test_without_secret_path_the_path_is_shown(
    server: WebhookServer, logs: pytest.LogCaptureFixture, session: UUID
) -> None:
    async with WebhookArchive(server.url) as hook:
        await hook.append_messages(session, [record(session)])
    assert f"POST {server.url} " in logs.text


def test_secret_path_masks_the_path_in_argument_errors() -> None:
    with pytest.raises(ValueError, match="must be an http") as caught:
        WebhookArchive("ftp://127.0.0.1/services/S3CRET-PATH", secret_path=True)
    assert "S3CRET" not in str(caught.value)


# -- record content --------------------------------------------------------------------


async def test_an_error_body_is_summarised_not_quoted_by_default(
    server: WebhookServer, session: UUID
) -> None:
    body = b'{"error": "refused", "content_md": "private words"}'
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    server.queue(
        Reply(422, json_type, body), Reply(503), Reply(422, body=b"x" * 70_000)
    )
    async with WebhookArchive(server.url) as hook:
        errors = []
        for _ in range(3):
            with pytest.raises(BackendError, match="answered") as caught:
                await hook.append_messages(session, [record(session)])
            errors.append(str(caught.value))
    assert errors[0].endswith(
        f": answered 422 Unprocessable Entity: {len(body)} bytes of application/json"
        " (not quoted: log_response_body=False)"
    )
    assert errors[1].endswith(": answered 503 Service Unavailable")  # no body
    assert errors[2].endswith(
        ": answered 422 Unprocessable Entity: 70000 bytes"
        " (not quoted: log_response_body=False)"
    )
    assert "private" not in "\n".join(errors)


async def test_log_response_body_quotes_the_start_of_the_body(
    server: WebhookServer, session: UUID
) -> None:
    body = b'{"error": "refused",\n  "detail": "a reason"}'
    server.queue(Reply(422, body=body))
    async with WebhookArchive(server.url, log_response_body=True) as hook:
        with pytest.raises(BackendError) as caught:
            await hook.append_messages(session, [record(session)])
    assert str(caught.value).endswith(
        """: answered 422 Unprocessable Entity: '{"error": "refused", "detail":"""
        """ "a reason"}'"""
    )


async def test_erased_content_stays_out_of_logs_and_the_journal(
    server: WebhookServer,
    logs: pytest.LogCaptureFixture,
    journal_path: Path,
    session: UUID,
) -> None:
    # A receiver that quotes the records it refuses: once as a retryable 503
    # (a WARNING), then as a 422 (dead-lettered, an ERROR).
    content = f"private words {uuid4().hex}"
    quoted = json.dumps({"error": "refused", "record": {"content_md": content}})
    server.queue(Reply(503, body=quoted.encode()), Reply(422, body=quoted.encode()))
    hook = WebhookArchive(server.url)
    reg = registration(hook, name="webhook", failure_mode=FailureMode.BEST_EFFORT)
    async with Archivist.open(journal_path, [reg]) as archivist:
        await archivist.append_messages(session, [record(session, content)])
        with anyio.fail_after(5):
            await archivist.wait_drained()
        assert archivist.health().backends["webhook"].dead_lettered == 1
        await archivist.delete_session(session)
        with anyio.fail_after(5):
            await archivist.wait_drained()
    levels = {r.levelname for r in logs.records if "answered" in r.getMessage()}
    assert {"WARNING", "ERROR"} <= levels  # the failures were logged...
    assert content not in logs.text  # ...without the content
    files = [journal_path, Path(f"{journal_path}-wal")]
    assert all(content.encode() not in p.read_bytes() for p in files if p.exists())


# -- control characters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "log_response_body",
    [
        False,  # the body summarised: its media type is foreign text too
        True,  # the body quoted
    ],
)
async def test_control_characters_from_the_receiver_are_escaped(
    server: WebhookServer,
    logs: pytest.LogCaptureFixture,
    session: UUID,
    log_response_body: bool,
) -> None:
    # A status line and headers are latin-1: U+2028 goes in the body only.
    evil = "\x1b[31m\x85\x7f"
    server.queue(
        Reply(
            422,
            reason=f"Bad{evil}Thing",
            headers={"Content-Type": f"text/plain{evil}"},
            body=f"oops {evil}\u2028 next".encode(),
        ),
        Reply(302, reason="Moved\x1b", headers={"Location": "/x\x1b[1m"}),
    )
    server.queue(Reply(503, reason="Down\x1b[2J"), method="OPTIONS")
    async with WebhookArchive(server.url, log_response_body=log_response_body) as hook:
        errors = await three_refusals(hook, session)
    assert [e for e in errors if CONTROLS.search(e)] == []
    lines = logged(logs)
    assert [line for line in lines if CONTROLS.search(line)] == []
    # httpx's own request line shows the reason phrase escaped.
    # (httpx drops what is not ASCII from it: \x85 here.)
    assert any('"HTTP/1.1 422 Bad\\x1b[31m\\x7fThing"' in line for line in lines)
    assert any('"HTTP/1.1 503 Down\\x1b[2J"' in line for line in lines)


async def test_the_log_filter_leaves_other_clients_lines_alone(
    server: WebhookServer, logs: pytest.LogCaptureFixture
) -> None:
    other = f"http://127.0.0.1:{server.port}/other?token=n0t-ours"
    async with (
        WebhookArchive(f"{server.url}?token=0urs"),
        httpx.AsyncClient() as client,
    ):
        await client.get(other)
    assert f"HTTP Request: GET {other} " in logs.text


# -- transport -------------------------------------------------------------------------


async def test_an_untrusted_certificate_is_refused(session: UUID) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(UNTRUSTED_PEM)
    headers = {"Authorization": "Bearer never-s3nt"}
    with WebhookServer(tls=context) as server:
        async with WebhookArchive(server.url, headers=headers) as hook:
            with pytest.raises(
                BackendError, match="CERTIFICATE_VERIFY_FAILED"
            ) as caught:
                await hook.append_messages(session, [record(session)])
        assert caught.value.retryable
        assert server.requests == []
        # The same server, its certificate trusted: the refusal was the check.
        trusting = ssl.create_default_context(cafile=UNTRUSTED_PEM)
        async with WebhookArchive(server.url, headers=headers, verify=trusting) as hook:
            await hook.append_messages(session, [record(session)])
        assert [r.headers["authorization"] for r in server.posts()] == [
            "Bearer never-s3nt"
        ]


@pytest.mark.parametrize(
    "status",
    [
        302,  # Found
        307,  # Temporary Redirect (would keep the POST and its headers)
        308,  # Permanent Redirect
    ],
)
async def test_no_credentials_follow_a_redirect_to_another_origin(
    server: WebhookServer, session: UUID, status: int
) -> None:
    with WebhookServer() as elsewhere:
        server.queue(Reply(status, headers={"Location": elsewhere.url}))
        server.queue(Reply(status, headers={"Location": elsewhere.url}), method="GET")
        hook = WebhookArchive(
            server.url,
            headers={"Authorization": "Bearer 0rigin-t0ken"},
            health_url=server.health_url,
        )
        async with hook:
            with pytest.raises(BackendError, match="redirects are not followed"):
                await hook.append_messages(session, [record(session)])
            with pytest.raises(BackendError, match="redirects are not followed"):
                await hook.health_check()
        assert elsewhere.requests == []
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("url", "headers", "warned"),
    [
        # A bearer token to another machine over plain http: warned.
        ("http://archive.example/hook", {"Authorization": "Bearer t"}, "header"),
        # Credentials in the URL, sent as Basic auth.
        ("http://u:pw@archive.example/hook", {}, "user and password"),
        # A query parameter named like a secret.
        ("http://archive.example/hook?api_key=k", {}, "query parameter api_key"),
        # https, or loopback, or no credentials: nothing to say.
        ("https://archive.example/hook", {"Authorization": "Bearer t"}, None),
        ("http://127.0.0.1:9/hook", {"Authorization": "Bearer t"}, None),
        ("http://localhost:9/hook", {"Authorization": "Bearer t"}, None),
        ("http://[::1]:9/hook", {"Authorization": "Bearer t"}, None),
        ("http://archive.example/hook?region=eu", {"X-Team": "ops"}, None),
    ],
)
def test_credentials_over_plain_http_are_warned_about(
    url: str, headers: dict[str, str], warned: str | None
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WebhookArchive(url, headers=headers)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    if warned is None:
        assert messages == []
    else:
        [message] = messages
        assert warned in message
        assert "plain http://" in message
        assert caught[0].filename == __file__  # points at the caller
        assert "pw" not in message.replace("plain http://", "")


def test_a_secret_path_over_plain_http_is_warned_about() -> None:
    with pytest.warns(UserWarning, match="the secret path would cross the network"):
        WebhookArchive("http://hooks.example/services/T0/B0/S3CRET", secret_path=True)
