"""What ``WebhookArchive`` puts on the wire, and what an answer means.

The request body (one group, or a ``{"groups": [...]}`` batch), its
``Idempotency-Key``, the checks on user headers and timeout; then the answer: a
capped read of its body, the excerpt an error quotes, the reading of
``Retry-After`` and which statuses are retryable or fail the health probe. Pure
code: no sockets, no httpx (``_read_capped`` only drains the chunks it is given).
The wire format and the guarantees behind these rules are described in the
docstring of ``webhook.py``, the only importer.

Rules and theory:
- **Keys name content.** A body without erasures is keyed by the hex SHA-256 of
  its sessions, erase flags and message ids (a batch body adds a fixed prefix and
  per-group record counts, so the two shapes and regroupings never share a key).
  A body with any erasing group gets a random key: two distinct erasures must
  never share one.
- **Retryable means "try again later".** 408, 429 and 5xx are retryable, and only
  they honour ``Retry-After`` (capped at ``MAX_RETRY_AFTER``); any other non-2xx
  status is final.
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

from .._errors import BackendError
from .._records import MessageRecord
from ._codec import encode_record
from ._webhook_secrets import _MASK, _is_secret_header, _mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from ._base import SessionGroup

#: The longest ``Retry-After`` honoured, in seconds; a longer one is cut to this.
MAX_RETRY_AFTER: Final = 3600.0

#: Headers this backend sets itself.
_RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "idempotency-key"}
)
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RETRYABLE_STATUSES: Final = frozenset({408, 429})
#: Answers to the default ``OPTIONS`` probe that mean deliveries would fail too.
_PROBE_REFUSED: Final = frozenset({401, 403, 407, 408, 429})
#: Bytes of a response body read at most (the rest is not read).
_MAX_BODY_BYTES: Final = 64 * 1024
#: Characters of a response body quoted in an error message.
_EXCERPT_CHARS: Final = 200
#: Starts the hash of every batch body, so no batch key equals a one-group key.
_BATCH_KEY_PREFIX: Final = b"journal-archivist webhook batch\x00"


class _Group(msgspec.Struct):
    """One session group on the wire (field order is the wire order)."""

    session: UUID
    erase: bool
    records: Sequence[MessageRecord]


class _Batch(msgspec.Struct):
    """The body of a ``per_batch`` request: every group of the batch, in order."""

    groups: list[_Group]


def _group_body(group: SessionGroup) -> _Group:
    return _Group(group.session, group.erase, group.records)


def _encode_body(groups: Sequence[SessionGroup], *, batch: bool) -> bytes:
    """The JSON body carrying ``groups`` (exactly one unless ``batch``).

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
        if not value.isascii() or any(c in value for c in "\r\n\0"):
            raise ValueError(
                f"header {name!r}: value must be ASCII without CR, LF or NUL,"
                f" got {shown}"
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


async def _read_capped(chunks: AsyncIterable[bytes]) -> bytes:
    """Read at most ``_MAX_BODY_BYTES`` of a body's ``chunks`` (a whole small one,
    so the connection can be reused)."""
    read: list[bytes] = []
    size = 0
    async for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size >= _MAX_BODY_BYTES:
            break
    return b"".join(read)


def _excerpt(status: int, body: bytes, location: str | None) -> str:
    """What an error quotes of an answer: the start of its ``body``, or for a
    redirect where it points (masked) and that redirects are not followed."""
    if 300 <= status < 400:
        return (
            f"redirects to {_mask_url(location)!r}, and redirects are not"
            " followed: configure the final URL"
            if location
            else "a redirect, and redirects are not followed"
        )
    return body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace")


def _describe_answer(status: int, reason: str, excerpt: str) -> str:
    """Describe an answer: status, ``reason`` phrase and the start of ``excerpt``
    (already redacted)."""
    text = f"answered {status} {reason}".rstrip()
    excerpt = excerpt.strip()
    if excerpt:
        if len(excerpt) > _EXCERPT_CHARS:
            excerpt = excerpt[:_EXCERPT_CHARS] + "..."
        text += f": {excerpt!r}"
    return text


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
