"""JetStreamArchive: archive records in a NATS JetStream stream (extra ``nats``).

Rules and theory:
- **One message per record**, on its own subject ``<prefix>.<session>.<message_id>``
  (``_jetstream_wire``), published with ``Nats-Expected-Last-Subject-Sequence: 0``:
  a redelivered record is refused by the server (10071) and counts as stored, so
  the archive is idempotent on ``message_id`` with no dedupe window. The body is
  the record's JSON (``_codec``, as the other backends store it); headers carry
  its journal time and position.
- **Acknowledged once every publish of the batch is**: the publishes of a batch
  run concurrently, at most ``max_in_flight`` at once (``_jetstream_ops.gather``),
  and ``write_batch`` returns only after the server acknowledged each (stored, or
  refused as already stored). What a stream acknowledgement is worth on disk
  depends on the server's configuration: see docs/backends.md.
- **Append order** is (journal time, position), never stream order: publishes of
  one batch reach the stream in any order, and several journals may feed one
  stream. A read sorts by it (stream sequence breaks ties).
- **Erasure with marks** (``SessionGroup``; ``erasure_marks`` is true). An erasure
  at time T first raises the session's mark to T (``raise_mark``: a conditional
  publish, so it only rises), then scans the session and deletes every record
  journaled before T; later ones stay. A record journaled before the mark is not
  published; the cached mark (a lower bound: marks only rise) skips it cheaply.
- **Why no erased record survives, with no transaction**: a publisher stores a
  record FIRST and reads the mark AFTER, deleting its records older than the mark
  it reads. Take an eraser at T and a record r journaled at t < T. The eraser
  stores its mark, then its scan begins (the scan's consumer is created after the
  mark is acknowledged). Either r was stored before the scan began: the scan sees
  it and deletes it. Or r was stored after the scan began, so after the mark: the
  publisher's read, which follows r's acknowledgement, sees a mark >= T > t and
  deletes r. Both reads go to the stream leader, which orders every operation on
  the stream, so "after" is well defined. A record stored on an earlier attempt
  of the batch gets the same after-check, whether it is refused as 10071 now or
  skipped for a mark learnt since (that attempt may have failed before its own
  check). The skip before publishing is only a shortcut; the after-check is what
  makes the archive safe.
- **Failures**: the server or the connection failing is retryable
  (``_jetstream_conn``); a record that can never be stored (larger than the
  server's ``max_payload`` or the stream's ``max_msg_size``, not encodable, of
  another session) is not, and is refused before anything of its batch is sent.
"""

from __future__ import annotations

import math
import os
import ssl
import warnings
from typing import TYPE_CHECKING, ClassVar, Final, final

from ._base import ArchiveBackend, SessionGroup

try:
    import nats  # noqa: F401 (the guard)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "JetStreamArchive needs nats-py: pip install 'journal-archivist[nats]'"
    ) from exc

# After the guard above: they import nats too.
from . import _jetstream_ops as ops, _jetstream_wire as wire
from ._jetstream_batch import Batch, Marks
from ._jetstream_conn import Link

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from .._records import MessageRecord
    from ._jetstream_conn import Conn

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_STREAM",
    "DEFAULT_SUBJECT_PREFIX",
    "DEFAULT_TIMEOUT",
    "JetStreamArchive",
]

DEFAULT_STREAM: Final = "JOURNAL_ARCHIVIST"
DEFAULT_SUBJECT_PREFIX: Final = "journal_archivist"
#: Seconds one request (connecting included) may take before it fails, retryable.
DEFAULT_TIMEOUT: Final = 10.0
#: Publishes of one batch awaiting their acknowledgement at once.
DEFAULT_MAX_IN_FLIGHT: Final = 256


@final
class JetStreamArchive(ArchiveBackend):
    """Archive records in a NATS JetStream stream; idempotent on ``message_id``.

    Each record is one message on its own subject, published so that the server
    refuses a second copy. A batch is acknowledged once the stream acknowledged
    every publish in it. Reads return a session's records in append order. Keeps
    erasure marks, so several journals may feed one stream. The connection opens
    on first use and is opened again after a failure; the call that meets a lost
    connection raises a retryable ``BackendError``.

    Args:
        servers: ``nats://host:4222`` (also ``tls://``, ``ws://``, ``wss://``), a
            comma-separated list or a sequence of them. ``user:password@`` or
            ``token@`` in a URL is masked in ``repr``, logs and errors.
        stream: the stream's name (1-64 of ``A-Z a-z 0-9 _ -``).
        subject_prefix: records go to ``<prefix>.<session>.<message_id>``; the
            stream's subjects must cover ``<prefix>.>``.
        create_stream: create the stream if missing (subjects ``<prefix>.>``,
            limits retention, file storage). If false, a missing stream fails
            calls retryably, naming it, until it exists.
        replicas: replicas of a created stream (1-5).
        max_age: seconds a created stream keeps a record; None: until erased.
        timeout: seconds one request may take, connecting included.
        max_in_flight: publishes of a batch awaiting acknowledgement at once.
        tls: an ``ssl.SSLContext`` for ``tls://`` servers.
        user_credentials: a NATS ``.creds`` file (JWT and seed) to authenticate.
        name: the connection's name, as the server's monitoring shows it.

    Raises:
        TypeError, ValueError: a bad argument (URLs masked in the message).
    """

    erasure_marks: ClassVar[bool] = True

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        create_stream: bool = False,
        replicas: int = 1,
        max_age: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        tls: ssl.SSLContext | None = None,
        user_credentials: str | os.PathLike[str] | None = None,
        name: str = "journal-archivist",
    ) -> None:
        urls, masked, secrets = wire.mask_servers(servers)
        self._stream = wire.check_stream_name(stream)
        self._prefix = wire.check_prefix(subject_prefix)
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise TypeError(f"replicas must be an int, got {type(replicas).__name__}")
        if not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be 1 to 5, got {replicas}")
        if max_age is not None and not (
            isinstance(max_age, int | float) and math.isfinite(max_age) and max_age > 0
        ):
            raise ValueError(f"max_age must be None or > 0 seconds, got {max_age!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError("max_in_flight must be an int")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, got {type(tls).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self._shown = ",".join(masked)
        self._max_in_flight = max_in_flight
        self._marks = Marks()
        self._link = Link(
            urls,
            shown=self._shown,
            secrets=secrets,
            stream=self._stream,
            prefix=self._prefix,
            create_stream=bool(create_stream),
            replicas=replicas,
            max_age=None if max_age is None else float(max_age),
            timeout=float(timeout),
            tls=tls,
            user_credentials=(
                None if user_credentials is None else os.fspath(user_credentials)
            ),
            name=name,
        )

    def __repr__(self) -> str:
        return (
            f"JetStreamArchive({self._shown!r}, stream={self._stream!r},"
            f" subject_prefix={self._prefix!r})"
        )

    def __del__(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None and link.conn is not None and not link.conn.nc.is_closed:
            warnings.warn(
                f"{self!r} was never closed: await aclose()",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    # -- the backend protocol --------------------------------------------------------

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply the batch; return once the stream acknowledged every publish.

        Erasures come first (mark, then delete the older records), then every
        record is published, then each session's mark is read again and records
        older than it are deleted (see the module's theory). A record stored
        before (a redelivery) is not stored again.

        Raises:
            BackendError: retryable if the server or connection failed (the
                publishes acknowledged so far stay, and a retry skips them). Not
                retryable for a record that can never be stored; nothing of the
                batch was sent then.
        """
        plans = wire.plan(groups)
        if not plans:
            return
        batch = Batch(plans, self._prefix)

        async def work(conn: Conn) -> None:
            batch.check_sizes(conn)
            await batch.apply(conn, self._marks, self._max_in_flight)

        await self._link.run("write_batch", work)

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records`` of ``session``, as ``write_batch``."""
        await self.write_batch([SessionGroup(session, tuple(records))])

    async def delete_session(self, session: UUID) -> None:
        """Erase every record of ``session`` archived so far, leaving a mark.

        A record of the session journaled before now that arrives later (from
        another journal) is skipped.
        """
        await self.write_batch([SessionGroup(session, (), erase=True)])

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """The records of ``session`` in append order, exactly as appended.

        Records older than the session's mark (erased, or being deleted by the
        writer that just stored them) are left out. An unknown session reads as
        ``[]``.

        Raises:
            BackendError: the read failed (retryable), or a stored message is not
                a record of this session (not retryable; names its sequence).
        """

        async def work(conn: Conn) -> tuple[list[wire.Stored], float]:
            found = await ops.scan(conn, session, headers_only=False)
            return found, (await ops.read_mark(conn, session))[1]

        found, mark = await self._link.run("read_session", work)
        self._marks.note(session, mark)
        return wire.assemble(found, session, mark, self._stream)

    async def count(self, session: UUID) -> int:
        """How many records of ``session`` the stream holds (0 if none).

        One request: the stream's per-subject counts for the session.
        """

        async def work(conn: Conn) -> dict[str, int]:
            return await ops.subject_count(
                conn, wire.session_filter(self._prefix, session)
            )

        counts = await self._link.run("count", work)
        return sum(
            1
            for subject, n in counts.items()
            if n > 0 and subject.rpartition(".")[2] != wire.MARK_TOKEN
        )

    async def health_check(self) -> None:
        """Return if the server answers and the stream exists and can archive.

        Raises:
            BackendError: (retryable) the server is unreachable, or the stream is
                missing or unsuitable; the message names the stream and why.
        """

        async def work(conn: Conn) -> None:
            return None

        await self._link.run("health_check", work, check_stream=True)

    async def aclose(self) -> None:
        """Close the connection (idempotent); a later call connects again."""
        await self._link.aclose()
