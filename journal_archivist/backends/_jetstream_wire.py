"""What ``JetStreamArchive`` puts on the wire, and its batch plan: sans-IO.

Rules and theory:
- **One subject per record**: ``<prefix>.<session>.<message_id>``, both ids in
  canonical UUID form (hex digits and hyphens: a valid NATS token). A session's
  erasure mark lives on ``<prefix>.<session>.erased``, a token no UUID can be.
- **Headers** carry what reads and erasures need without the body: the record's
  journal time (``Archivist-Appended-At``, ``repr`` of a float, so it round-trips
  exactly) and its position among the records journaled at that same time
  (``Archivist-Position``). A session reads back sorted by (time, position), which
  is append order whatever order the concurrent publishes reached the stream in.
- **The plan of a batch** (``plan``): per session, the latest erasure time of the
  batch and the records to publish. Applying groups one by one would erase every
  record journaled before that time and skip every later-arriving one journaled
  before it (the mark), so the records of the batch journaled before the latest
  erasure are dropped from the plan: the result is the same, in fewer calls.
- **Times of direct calls**: a group without journal times takes "now" from
  ``CLOCK``, strictly increasing within the process, one tick per group, so groups
  of one session given in one call (or in consecutive calls) apply in the order
  given: an erasure after records is later than them, records after it are not
  earlier.
- **Secrets**: a server URL's user info is masked (``mask_servers``): the password
  of ``user:password@``, or a whole token ``token@``, raw and percent-decoded.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import unquote

from .._errors import BackendError
from ._base import append_times, erasure_time
from ._codec import DECODE_ERRORS, decode_record

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from uuid import UUID

    from .._records import MessageRecord
    from ._base import SessionGroup

__all__ = [
    "APPENDED_AT",
    "CLOCK",
    "ERASED_AT",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "MARK_TOKEN",
    "POSITION",
    "Item",
    "SessionPlan",
    "Stored",
    "assemble",
    "check_prefix",
    "check_stream_name",
    "covers",
    "header_bytes",
    "header_float",
    "mark_subject",
    "mask_servers",
    "plan",
    "record_headers",
    "record_subject",
    "session_filter",
    "stream_problems",
]

#: The header that makes a publish conditional on the subject's last sequence.
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
#: The header ``js.publish(stream=...)`` adds, counted in a message's size.
EXPECTED_STREAM: Final = "Nats-Expected-Stream"
#: A record's journal time (``SessionGroup.appended_at``).
APPENDED_AT: Final = "Archivist-Appended-At"
#: A record's position among the records of its group journaled at that time.
POSITION: Final = "Archivist-Position"
#: An erasure mark's time (also its body).
ERASED_AT: Final = "Archivist-Erased-At"
#: The last token of a session's erasure mark subject.
MARK_TOKEN: Final = "erased"

_STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_SCHEMES: Final = ("nats", "tls", "ws", "wss")


def check_stream_name(name: object) -> str:
    """``name`` if it is a usable stream name: 1-64 of ``A-Z a-z 0-9 _ -``."""
    if not isinstance(name, str) or not _STREAM.fullmatch(name):
        raise ValueError(
            f"stream must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-', got"
            f" {name!r:.80}"
        )
    return name


def check_prefix(prefix: object) -> str:
    """``prefix`` if it is a usable subject prefix: dot-separated literal tokens."""
    if (
        not isinstance(prefix, str)
        or len(prefix) > 100
        or not _PREFIX.fullmatch(prefix)
    ):
        raise ValueError(
            "subject_prefix must be dot-separated tokens of A-Z, a-z, 0-9, '_' and"
            f" '-' (no wildcards, at most 100 characters), got {prefix!r:.80}"
        )
    return prefix


def mask_servers(servers: object) -> tuple[list[str], list[str], frozenset[str]]:
    """Check the server URLs; return them, their masked forms and their secrets.

    ``servers`` is one URL, several separated by commas, or a sequence of URLs,
    each ``nats://``, ``tls://``, ``ws://`` or ``wss://`` with a host. The password
    of ``user:password@`` and a token ``token@`` are secrets (raw and
    percent-decoded); the masked form shows ``user:***@`` or ``***@``.

    Raises:
        TypeError: ``servers`` is neither a str nor a sequence of str.
        ValueError: no URL, or one with another scheme or no host (masked).
    """
    if isinstance(servers, str):
        urls = [part.strip() for part in servers.split(",")]
    elif isinstance(servers, list | tuple) and all(isinstance(s, str) for s in servers):
        urls = [part.strip() for part in servers]
    else:
        raise TypeError(
            f"servers must be a str or a sequence of str, got {type(servers).__name__}"
        )
    masked: list[str] = []
    secrets: set[str] = set()
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        userinfo, at, hostport = rest.rpartition("@")
        shown = url
        if at:
            user, colon, password = userinfo.partition(":")
            secret = password if colon else userinfo
            if secret:
                secrets.update({secret, unquote(secret)})
            shown = f"{scheme}{sep}{user + ':' if colon else ''}***@{hostport}"
        masked.append(shown)
        host = hostport.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if not sep or scheme.lower() not in _SCHEMES or not host:
            raise ValueError(
                "servers must be nats://, tls://, ws:// or wss:// URLs with a host,"
                f" got {shown!r:.120}"
            )
    if not urls:
        raise ValueError("servers must name at least one server")
    return urls, masked, frozenset(s for s in secrets if s)


def record_subject(prefix: str, session: UUID, message_id: UUID) -> str:
    """The one subject of a record."""
    return f"{prefix}.{session}.{message_id}"


def mark_subject(prefix: str, session: UUID) -> str:
    """The subject of ``session``'s erasure mark."""
    return f"{prefix}.{session}.{MARK_TOKEN}"


def session_filter(prefix: str, session: UUID) -> str:
    """The filter of every subject of ``session``: its records and its mark."""
    return f"{prefix}.{session}.*"


def record_headers(appended_at: float, position: int) -> dict[str, str]:
    """The headers of a record's first (and only) publish to its subject."""
    return {
        EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
        APPENDED_AT: repr(appended_at),
        POSITION: str(position),
    }


def header_bytes(headers: Mapping[str, str], stream: str) -> int:
    """The size of ``headers`` on the wire, with the expected-stream header."""
    lines = [*headers.items(), (EXPECTED_STREAM, stream)]
    # "NATS/1.0\r\n", "<key>: <value>\r\n" per header, then "\r\n".
    return 10 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in lines) + 2


def header_float(headers: Mapping[str, str] | None, name: str) -> float | None:
    """Header ``name`` as a finite float, or None if missing or not a number."""
    text = None if headers is None else headers.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def covers(filters: Iterable[str], prefix: str) -> bool:
    """Whether one of a stream's subject ``filters`` covers ``<prefix>.*.*``."""
    wanted = [*prefix.split("."), "*", "*"]
    for subject in filters:
        tokens = subject.split(".")
        for index, token in enumerate(tokens):
            if token == ">":
                if index < len(wanted) and index == len(tokens) - 1:
                    return True
                break
            if index >= len(wanted):
                break
            if token != "*" and (token != wanted[index] or wanted[index] == "*"):
                break
        else:
            if len(tokens) == len(wanted):
                return True
    return False


def stream_problems(config: Mapping[str, object], prefix: str) -> list[str]:
    """What makes an existing stream's ``config`` (the API's JSON) unusable."""
    problems = []
    subjects = config.get("subjects") or []
    if not isinstance(subjects, list) or not covers(map(str, subjects), prefix):
        problems.append(f"its subjects {subjects!r} do not cover {prefix}.>")
    if config.get("retention", "limits") != "limits":
        problems.append(
            f"its retention is {config.get('retention')!r}, not 'limits' (it would"
            " drop archived records once consumed)"
        )
    if config.get("storage", "file") != "file":
        problems.append("it keeps messages in memory (storage must be 'file')")
    for flag, why in (
        ("sealed", "it is sealed"),
        ("deny_delete", "it denies deletes (erasure deletes messages)"),
        ("no_ack", "it does not acknowledge publishes"),
        ("mirror", "it is a mirror (it takes no publishes)"),
    ):
        if config.get(flag):
            problems.append(why)
    return problems


class _Clock:
    """Unix time, strictly increasing within the process (``SessionGroup``'s now)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            now = max(time.time(), math.nextafter(self._last, math.inf))
            self._last = now
            return now


#: The "now" of groups without journal times.
CLOCK: Final = _Clock()


class Item(NamedTuple):
    """One record to publish."""

    record: MessageRecord
    #: Its journal time.
    appended_at: float
    #: Its position among the records of its group with that same time.
    position: int


class SessionPlan(NamedTuple):
    """What a batch does to one session."""

    session: UUID
    #: The latest erasure time of the batch's groups of the session, if any.
    erase_at: float | None
    #: Its records to publish, in append order, none journaled before ``erase_at``.
    items: tuple[Item, ...]


def plan(groups: Sequence[SessionGroup]) -> list[SessionPlan]:
    """The batch per session, in order of each session's first group.

    Raises:
        BackendError: (not retryable) a record of another session than its group's.
    """
    erase_at: dict[UUID, float | None] = {}
    items: dict[UUID, list[Item]] = {}
    for group in groups:
        now = CLOCK()
        session = group.session
        erase_at.setdefault(session, None)
        mine = items.setdefault(session, [])
        if group.erase:
            at = erasure_time(group, now)
            previous = erase_at[session]
            erase_at[session] = at if previous is None else max(previous, at)
        seen: dict[float, int] = {}
        for record, appended in zip(
            group.records, append_times(group, now), strict=True
        ):
            if record.session != session:
                raise BackendError(
                    f"JetStreamArchive: record {record.message_id} is of session"
                    f" {record.session}, not of its group's session {session}",
                    retryable=False,
                )
            position = seen.get(appended, 0)
            seen[appended] = position + 1
            mine.append(Item(record, appended, position))
    plans = []
    for session, latest in erase_at.items():
        kept = items[session]
        if latest is not None:
            kept = [item for item in kept if item.appended_at >= latest]
        plans.append(SessionPlan(session, latest, tuple(kept)))
    return plans


class Stored(NamedTuple):
    """A message of a session as a scan found it."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


def assemble(
    found: Iterable[Stored], session: UUID, mark: float, stream: str
) -> list[MessageRecord]:
    """The records among a session's messages, in append order.

    Leaves out the mark and every record journaled before ``mark`` (erased, or
    being deleted by the writer that just stored it); sorts by journal time, then
    position, then stream sequence; keeps the first copy of a ``message_id``.

    Raises:
        BackendError: (not retryable) a message that does not decode as a record
            of ``session`` on its own subject; names its stream sequence.
    """
    rows: list[tuple[float, int, int, MessageRecord]] = []
    for stored in found:
        token = stored.subject.rpartition(".")[2]
        if token == MARK_TOKEN:
            continue
        at = header_float(stored.headers, APPENDED_AT)
        at = -math.inf if at is None else at
        if at < mark:
            continue
        where = f"stream {stream} sequence {stored.seq} ({stored.subject})"
        try:
            record = decode_record(stored.data)
        except DECODE_ERRORS as exc:  # RecursionError too: nested too deep
            raise BackendError(
                f"JetStreamArchive read_session: {where} does not decode as a"
                f" record: {exc}",
                retryable=False,
            ) from exc
        if record.session != session or str(record.message_id) != token:
            raise BackendError(
                f"JetStreamArchive read_session: {where} holds record"
                f" {record.message_id} of session {record.session}",
                retryable=False,
            )
        position = header_float(stored.headers, POSITION) or 0.0
        rows.append((at, int(position), stored.seq, record))
    rows.sort(key=lambda row: row[:3])
    seen: set[UUID] = set()
    records = []
    for *_, record in rows:
        # A second copy is never published, but a foreign publisher could.
        if record.message_id not in seen:
            seen.add(record.message_id)
            records.append(record)
    return records
