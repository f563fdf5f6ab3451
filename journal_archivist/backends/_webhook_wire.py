"""What ``WebhookArchive`` puts on the wire, and what an answer means.

The request body (one group, or a ``{"groups": [...]}`` batch), its
``Idempotency-Key``, the checks on user headers and timeout; then the answer: a
capped read of its body, what an error says of it, the reading of
``Retry-After`` and which statuses are retryable or fail the health probe. Pure
code: no sockets, no httpx (``_read_capped`` only drains the chunks it is given).
The wire format and the guarantees behind these rules are described in the
docstring of ``webhook.py``, the only importer.

Rules and theory:
- **Times travel with the groups** (erasure marks, ``SessionGroup``): each group
  carries ``erased_at`` (null unless it erases) and ``appended_at`` (one journal
  time per record, in order), after the fields it always had, so a receiver
  that ignores unknown fields reads the body as before. A group without times
  (a direct call) is sent at the call's "now", and an erasing group drops the
  batch's earlier records of its session (group order is journal order: they
  would be erased anyway), so a receiver never needs to break a tie.
- **Keys name content.** A body without erasures is keyed by the hex SHA-256 of
  its sessions, erase flags and message ids (a batch body adds a fixed prefix and
  per-group record counts, so the two shapes and regroupings never share a key).
  A body with any erasing group gets a random key: two distinct erasures must
  never share one.
- **Retryable means "try again later".** 408, 429 and 5xx are retryable, and only
  they honour ``Retry-After`` (capped at ``MAX_RETRY_AFTER``); any other non-2xx
  status is final.
- **An answer's body is content.** A receiver's error body often quotes the
  records it refused, and errors end up in logs, ``health()`` and the journal's
  dead-letter rows, which ``delete_session`` does not reach in logs. So by
  default an error says only the body's size and media type
  (``_summarise_body``); ``_quote_body`` quotes its start, masked and printable,
  only when the user opts in (``log_response_body=True``). Every text taken
  from an answer (body, media type, ``Location``) is masked of secrets and made
  printable before it enters a message.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final
from uuid import UUID

import msgspec

from .._errors import RETRY_AFTER_CAP, BackendError
from .._printable import printable
from .._records import MessageRecord
from ._base import SessionGroup, append_times, erasure_time
from ._codec import encode_record
from ._webhook_secrets import _MASK, _is_secret_header, _mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from ._webhook_secrets import _Redactor

#: The longest ``Retry-After`` honoured, in seconds; a longer one is cut to this
#: (the writer's own cap, ``RETRY_AFTER_CAP``: one rule for both).
MAX_RETRY_AFTER: Final = RETRY_AFTER_CAP

#: Headers this backend sets itself.
_RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "idempotency-key"}
)
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: What a header value must not hold (RFC 9110 allows tab, space and VCHAR).
_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
#: Answers to the default ``OPTIONS`` probe that mean deliveries would fail too.
_PROBE_REFUSED: Final = frozenset({401, 403, 407, 408, 429})
#: Bytes of a response body read at most (the rest is not read).
_MAX_BODY_BYTES: Final = 64 * 1024
#: Characters of a response body quoted in an error message (when quoted at all).
_EXCERPT_CHARS: Final = 200
#: Characters of a media type named in an error message.
_MEDIA_TYPE_CHARS: Final = 60
#: Starts the hash of every batch body, so no batch key equals a one-group key.
_BATCH_KEY_PREFIX: Final = b"journal-archivist webhook batch\x00"


class _Group(msgspec.Struct):
    """One session group on the wire (field order is the wire order; fields
    added later go at the end)."""

    session: UUID
    erase: bool
    records: Sequence[MessageRecord]
    #: When the erasure was journaled (unix seconds); None unless ``erase``.
    erased_at: float | None
    #: When each of ``records`` was journaled, in the same order.
    appended_at: Sequence[float]


class _Batch(msgspec.Struct):
    """The body of a ``per_batch`` request: every group of the batch, in order."""

    groups: list[_Group]


def _timed(groups: Sequence[SessionGroup], now: float) -> list[SessionGroup]:
    """``groups`` with their times filled in (``now`` where missing), without
    the records an erasing group of their session later in the batch erases,
    and without the groups left with nothing to do."""
    last_erase = {g.session: i for i, g in enumerate(groups) if g.erase}
    timed = []
    for index, group in enumerate(groups):
        records, times = group.records, append_times(group, now)
        if index < last_erase.get(group.session, index):
            records, times = (), ()
        if group.erase or records:
            erased_at = erasure_time(group, now) if group.erase else None
            timed.append(
                SessionGroup(group.session, records, group.erase, erased_at, times)
            )
    return timed


def _group_body(group: SessionGroup) -> _Group:
    return _Group(
        group.session, group.erase, group.records, group.erased_at, group.appended_at
    )


def _encode_body(groups: Sequence[SessionGroup], *, batch: bool) -> bytes:
    """The JSON body carrying ``groups`` (exactly one unless ``batch``), whose
    times ``_timed`` filled in.

    Raises:
        BackendError: (not retryable) a record cannot be encoded, such as one
            with a lone surrogate in a string.
    """
    if not batch:
        [group] = groups
    try:
        if batch:
            return encode_record(_Batch([_group_body(group) for group in groups]))
        return encode_record(_group_body(group))
    except (msgspec.EncodeError, TypeError, ValueError) as exc:
        raise _unencodable(groups, exc) from exc


def _unencodable(groups: Sequence[SessionGroup], exc: Exception) -> BackendError:
    """The error for a body that cannot be encoded, naming the first bad record."""
    for group in groups:
        for record in group.records:
            try:
                encode_record(record)
            except (msgspec.EncodeError, TypeError, ValueError) as record_exc:
                return BackendError(
                    f"record {record.message_id} of session {group.session} cannot"
                    f" be encoded as JSON: {record_exc}",
                    retryable=False,
                )
    return BackendError(f"body cannot be encoded as JSON: {exc}", retryable=False)


def _idempotency_key(groups: Sequence[SessionGroup], *, batch: bool) -> str:
    """The ``Idempotency-Key`` of a body carrying ``groups`` (one unless ``batch``).

    Hex SHA-256 of each group's session, erase flag and message ids, with a prefix
    and record counts for a batch body; random if any group erases (see the
    docstring of ``webhook.py``).
    """
    if any(group.erase for group in groups):
        return secrets.token_hex(32)
    digest = hashlib.sha256(_BATCH_KEY_PREFIX if batch else b"")
    for group in groups:
        digest.update(group.session.bytes)
        digest.update(b"\x00")  # the erase flag: kept so that keys stay as they were
        if batch:
            digest.update(len(group.records).to_bytes(4, "big"))
        digest.update(b"".join([record.message_id.bytes for record in group.records]))
    return digest.hexdigest()


def _check_headers(headers: object) -> dict[str, str]:
    """Validate the user's ``headers`` argument; return them as a new dict."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"header names and values must be str, got"
                f" {type(name).__name__} {name!r:.40}: {type(value).__name__}"
            )
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r:.40}")
        lower = name.lower()
        shown = _MASK if _is_secret_header(name) else repr(value)
        if not value.isascii() or _CONTROL.search(value):
            raise ValueError(
                f"header {name!r}: value must be ASCII without control characters"
                f" (CR, LF, NUL, ESC...; tab aside), got {shown}"
            )
        if lower in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by WebhookArchive itself")
        if lower in seen:
            raise ValueError(f"header {name!r} is given twice (names ignore case)")
        seen.add(lower)
        checked[name] = value
    return checked


def _check_timeout(timeout: object) -> float:
    """Validate the ``timeout`` argument: seconds one request may take in all."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return float(timeout)


def _is_retryable(status: int) -> bool:
    """Whether a non-2xx answer to a delivery is worth trying again."""
    return status >= 500 or status in _RETRYABLE_STATUSES


def _probe_passes(status: int) -> bool:
    """Whether an answer to the default ``OPTIONS`` probe means healthy."""
    return status < 500 and not (300 <= status < 400 or status in _PROBE_REFUSED)


def _describe_post(masked_url: str, groups: Sequence[SessionGroup]) -> str:
    """How errors and log lines name the POST of a body carrying ``groups``."""
    count = sum([len(group.records) for group in groups])
    sessions = (
        f"session {groups[0].session}"
        if len(groups) == 1
        else f"{len(groups)} session groups"
    )
    return f"POST {masked_url} ({sessions}, {count} records)"


async def _read_capped(chunks: AsyncIterable[bytes]) -> tuple[bytes, bool]:
    """Read at most ``_MAX_BODY_BYTES`` of a body's ``chunks`` (a whole small one,
    so the connection can be reused); return it and whether it is all of it."""
    read: list[bytes] = []
    size = 0
    async for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size >= _MAX_BODY_BYTES:
            return b"".join(read), False
    return b"".join(read), True


def _describe_redirect(
    location: str | None, redact: _Redactor, *, secret_path: bool
) -> str:
    """What an error says of a redirect: where it points (masked) and that
    redirects are not followed."""
    if not location:
        return "a redirect, and redirects are not followed"
    # Masked whole first: masking the query splits a secret holding "&".
    shown = _mask_url(redact(location), secret_path=secret_path)
    return (
        f"redirects to '{shown[:_EXCERPT_CHARS]}', and redirects are not followed:"
        " configure the final URL"
    )


def _summarise_body(
    body: bytes,
    complete: bool,
    content_type: str | None,
    content_length: str | None,
    redact: _Redactor,
) -> str:
    """What an error says of a body it does not quote: its size and media type,
    never its text ("" for no body)."""
    if complete:
        if not body:
            return ""
        size = f"{len(body)} bytes"
    else:
        declared = content_length.strip() if content_length else ""
        known = declared.isdigit() and int(declared) >= len(body)
        size = f"{int(declared)} bytes" if known else f"over {len(body)} bytes"
    media = (content_type or "").partition(";")[0].strip()
    if media:
        media = printable(redact(media))[:_MEDIA_TYPE_CHARS]
        size += f" of {media}"
    return f"{size} (not quoted: log_response_body=False)"


def _quote_body(body: bytes, complete: bool, redact: _Redactor) -> str:
    """The start of ``body`` quoted for an error: masked of secrets, its
    whitespace collapsed, control characters escaped, "..." if more followed;
    "" for a blank body. ``complete`` says ``body`` is all the receiver sent."""
    # Enough bytes for the characters shown, the whitespace collapsed and a
    # secret straddling the end (a character is at most 4 bytes).
    head = body[: (4 * _EXCERPT_CHARS + 2 * redact.longest) * 4]
    whole = complete and len(head) == len(body)
    text = head.decode("utf-8", "replace")
    masked = redact.excerpt(text, 2 * _EXCERPT_CHARS, complete=whole)
    excerpt = " ".join(masked.split())
    if not excerpt:
        return ""
    more = len(excerpt) > _EXCERPT_CHARS or not whole
    return f"'{printable(excerpt[:_EXCERPT_CHARS])}{'...' if more else ''}'"


def _describe_answer(status: int, reason: str, detail: str) -> str:
    """Describe an answer: status, ``reason`` phrase and ``detail`` (what
    ``_describe_redirect``, ``_summarise_body`` or ``_quote_body`` say of it)."""
    text = f"answered {status} {reason}".rstrip()
    return f"{text}: {detail}" if detail else text


def _parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP date).

    Returns None for a missing or malformed value; a date in the past gives 0; the
    result is at most ``MAX_RETRY_AFTER``.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # RFC 9110 dates are GMT; a zoneless one is malformed
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
