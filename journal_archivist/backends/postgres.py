"""PostgresArchive: archive records in PostgreSQL through asyncpg (extra ``postgres``).

Rules and theory:
- **Acknowledged only after COMMIT.** ``write_batch`` applies a whole batch in one
  transaction and returns once it committed; on any failure nothing of the batch
  is kept, and the writer retries the whole batch.
- **Idempotent on ``message_id``**, the primary key of the messages table: rows are
  inserted with ``ON CONFLICT (message_id) DO NOTHING``, so a redelivered record is
  archived once and counted once.
- **Append order is an explicit per-session position** (``seq``), never ``ts`` or
  ``message_id``. Each batch first reserves a range of positions per session by
  advancing ``next_seq`` in the sessions table; that upsert locks the session's
  row, so concurrent writers of one session queue up instead of interleaving. A
  redelivered record leaves a gap in ``seq``, which order does not mind.
- **The stored record is authoritative**: ``record`` is the bytea of the record's
  JSON (``_codec.encode_record``), which holds anything (NUL characters, any
  unicode, exact numbers and key order) and is what ``read_session`` decodes. The
  other columns are derived for queries; PostgreSQL text cannot hold NUL, so NUL
  characters are removed from ``role``, ``author`` and ``content_md`` there.
- **Schema**: ``<schema>.<prefix>sessions`` (one row per session: its counters,
  ``next_seq`` and the time range of its records) and ``<prefix>messages``; the
  DDL, every statement and the theory of the counters are in ``_postgres_sql``.
  ``create_schema=True`` runs the DDL (``IF NOT EXISTS``) under a
  transaction-scoped advisory lock per schema, so concurrent instances are safe.
- **Erasure deletes the messages and keeps the session's row**: the batch first
  locks the row of every session it touches, then erases in a statement of its
  own, so it also erases what another writer of the session committed while
  this batch waited for the lock (``_postgres_sql``, "One lock, then a fresh
  look").
- **Erasure marks** (``erasure_marks = True``): an erasure at T deletes the
  session's records appended before T and leaves a mark; a record appended
  before the mark is skipped on arrival. The session row's lock serialises every
  batch of a session, erasing or not, across processes and hosts, so neither an
  erasure nor an append misses the other (``_postgres_sql``, "Erasure marks
  ride on that lock"). A direct call without times applies at ``time.time()``.
  ``next_seq`` is kept, so positions never restart. Ids are forgotten, so a
  record appended again is new. Within a batch the plan of each session is
  computed first (``_postgres_sql.plan``, pure), so groups of one session apply
  in the order given.
- **Failure classification** (``_postgres_sql.classify``): what repeating or an
  operator may fix (connections, timeouts, deadlocks, a server restarting, a
  missing table or privilege) is retryable, so records are never dead-lettered
  because of it; what the server refuses about the data itself is not. Errors
  are translated once, in ``_postgres_pool.PoolKeeper.run``.
- **Secrets**: the DSN's password never appears in a ``repr``, a log record or an
  error message; messages are built here, with the DSN masked. The mask trusts no
  URL parser: everything between ``://`` and the last ``@`` is user info, any
  ``password=`` value is masked, and every secret is scrubbed in its raw and
  percent-decoded forms. An error whose chain shows a secret is raised without
  it. A DSN that a URL parser reads differently (a password with an unescaped
  ``/``, ``?``, ``#`` or ``@``) makes the driver quote pieces of it, so the
  driver's own text is withheld from errors that are not the server's.
- **The pool** is ``_postgres_pool.PoolKeeper``'s: opened on first use, once per
  event loop, under one lock that ``aclose`` takes too, so ``aclose`` waits for a
  pool being opened and closes it, rather than returning before it is stored.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, Final, final
from uuid import UUID

from .._errors import BackendError
from . import _postgres_dsn as _dsn
from ._base import ArchiveBackend, SessionGroup, SessionInfo, checked_page
from ._codec import DECODE_ERRORS, decode_record

try:
    import asyncpg  # type: ignore[import-untyped]  # noqa: F401 (the guard)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "PostgresArchive needs asyncpg: pip install 'journal-archivist[postgres]'"
    ) from exc

# After the guard above: they import asyncpg too.
from . import _postgres_sql as _pgsql
from ._postgres_pool import PoolKeeper

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._records import MessageRecord
    from ._postgres_pool import Connection, Pool

__all__ = [
    "DEFAULT_APPLICATION_NAME",
    "DEFAULT_POOL_MAX_SIZE",
    "DEFAULT_POOL_MIN_SIZE",
    "DEFAULT_TABLE_PREFIX",
    "DEFAULT_TIMEOUT",
    "PostgresArchive",
]

DEFAULT_TABLE_PREFIX: Final = "journal_archivist_"
DEFAULT_POOL_MIN_SIZE: Final = 1
DEFAULT_POOL_MAX_SIZE: Final = 4
#: Seconds one call (connecting included) may take before it fails, retryable.
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_APPLICATION_NAME: Final = "journal-archivist"


@final
class PostgresArchive(ArchiveBackend):
    """Archive records in PostgreSQL tables; idempotent on ``message_id``.

    A batch is acknowledged only after its transaction committed. Records read back
    exactly as appended (the JSON of each record is stored as bytea), in append
    order (an explicit per-session position). The connection pool is created on
    first use and reconnects by itself after a server restart: the call that meets
    a dead connection raises a retryable ``BackendError``, the next one reconnects.
    The pool belongs to the event loop that opened it: used under another loop, the
    backend terminates the old pool and opens a new one (``aclose`` it on its own
    loop to release its sockets cleanly).

    Args:
        dsn: ``postgresql://user:password@host:port/database?...``; the password
            is masked in ``repr``, logs and errors.
        schema: schema of the tables (``[a-z_][a-z0-9_]{0,40}``, not ``pg_*`` nor
                ``information_schema``).
        table_prefix: the tables are ``<prefix>sessions`` and ``<prefix>messages``.
        create_schema: create the schema and tables if missing (idempotent, safe
            under concurrent callers). If false, ``health_check`` reports missing
            tables and writes fail retryably until they exist.
        pool_min_size, pool_max_size: connections kept open / at most.
        timeout: seconds a call may take, connecting included; past it the call
            fails with a retryable ``BackendError``.
        application_name: shown in ``pg_stat_activity``.

    Raises:
        ValueError: a bad schema, table prefix, pool size, timeout or DSN scheme.
    """

    #: Keeps erasure marks: several journals (processes, hosts) may feed it.
    erasure_marks = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        create_schema: bool = False,
        pool_min_size: int = DEFAULT_POOL_MIN_SIZE,
        pool_max_size: int = DEFAULT_POOL_MAX_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        application_name: str = DEFAULT_APPLICATION_NAME,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
        self._masked_dsn, secrets = _dsn.mask_dsn(dsn)
        misread = _dsn.misread_dsn(dsn)
        scheme = dsn.partition("://")[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"dsn must be a postgresql:// URL, got {self._masked_dsn!r}"
            )
        _pgsql.check_identifier("schema", schema)
        if schema.startswith("pg_") or schema == "information_schema":
            raise ValueError(
                f"schema {schema!r} is reserved by PostgreSQL (pg_* and"
                " information_schema hold the system catalogs)"
            )
        _pgsql.check_identifier("table_prefix", table_prefix)
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise ValueError(
                "pool sizes must satisfy 0 <= pool_min_size <= pool_max_size >= 1,"
                f" got {pool_min_size} and {pool_max_size}"
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._schema = schema
        self._table_prefix = table_prefix
        self._sql = _pgsql.statements(schema, table_prefix)
        self._keeper = PoolKeeper(
            dsn,
            masked_dsn=self._masked_dsn,
            secrets=secrets,
            misread=misread,
            ddl=self._sql.ddl,
            create_schema=create_schema,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            timeout=timeout,
            application_name=application_name,
        )

    def __repr__(self) -> str:
        return (
            f"PostgresArchive({self._masked_dsn!r}, schema={self._schema!r},"
            f" table_prefix={self._table_prefix!r})"
        )

    def __del__(self) -> None:
        if getattr(self, "_keeper", None) is not None and self._pool is not None:
            warnings.warn(
                f"{self!r} was never closed: await aclose()",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    @property
    def _pool(self) -> Pool | None:
        """The open pool, if any (``None`` before first use and after ``aclose``)."""
        return self._keeper.pool

    # -- the backend protocol --------------------------------------------------------

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        """Apply the batch in one transaction; return once it committed.

        Erasing groups first delete their session's rows appended before their
        ``erased_at`` and raise its erasure mark; records already archived are
        skipped (``ON CONFLICT DO NOTHING``) and not counted again, and so are
        records appended before their session's mark (erased). Groups without
        times are applied at now.

        Raises:
            BackendError: nothing of the batch was kept. ``retryable`` is false for
                a record the server refuses or that cannot be encoded.
        """
        erased, appended = _pgsql.plan(groups, time.time())
        sessions = sorted(appended, key=lambda s: s.int)
        # Every row locked by one statement, in one order for all batches.
        touched = sorted({*erased, *appended}, key=lambda s: s.int)
        sizes = [len(appended.get(s, ())) for s in touched]
        columns = _pgsql.columns(sessions, appended) if sessions else None

        async def work(connection: Connection) -> None:
            async with connection.transaction():
                # Lock first, then erase and insert in statements of their own:
                # their fresh snapshots see what other writers of these sessions
                # committed (rows and marks) while we waited for the locks.
                rows = await connection.fetch(self._sql.reserve, touched, sizes)
                if erased:
                    await connection.execute(
                        self._sql.erase, list(erased), list(erased.values())
                    )
                if columns is None:
                    return
                ends = {row[0]: row[1] for row in rows}
                seqs: list[int] = []
                for session in sessions:
                    end, size = ends[session], len(appended[session])
                    seqs.extend(range(end - size, end))
                ids, owners, parents, stamps, roles, authors, contents, blobs, times = (
                    columns
                )
                await connection.execute(
                    self._sql.insert,
                    ids,
                    owners,
                    seqs,
                    parents,
                    stamps,
                    roles,
                    authors,
                    contents,
                    blobs,
                    times,
                )

        if touched:
            await self._keeper.run("write_batch", work)

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        """Archive ``records`` of ``session`` in one transaction, as ``write_batch``."""
        await self.write_batch([SessionGroup(session, tuple(records))])

    async def delete_session(self, session: UUID) -> None:
        """Erase ``session`` now: delete what was appended before now, leave a mark.

        The session's row is kept (its ``next_seq`` too); ``count`` reads 0 and
        ``list_sessions`` skips it. Erasing an unknown session leaves such a row,
        and a mark.
        """
        await self.write_batch([SessionGroup(session, (), erase=True)])

    async def read_session(self, session: UUID) -> list[MessageRecord]:
        """The records of ``session`` in append order, exactly as appended.

        An unknown session reads as ``[]``.

        Raises:
            BackendError: the read failed (retryable), or a stored record no longer
                decodes (not retryable).
        """

        async def work(connection: Connection) -> list[bytes]:
            rows = await connection.fetch(self._sql.read, session)
            return [row[0] for row in rows]

        blobs = await self._keeper.run("read_session", work)
        try:
            return [decode_record(blob) for blob in blobs]
        except DECODE_ERRORS as exc:  # RecursionError too: nested too deep
            raise BackendError(
                f"PostgresArchive read_session: a stored record of session {session}"
                f" does not decode: {exc}",
                retryable=False,
            ) from exc

    async def count(self, session: UUID) -> int:
        """How many distinct records of ``session`` are archived (0 if unknown)."""

        async def work(connection: Connection) -> int:
            value = await connection.fetchval(self._sql.count_session, session)
            return 0 if value is None else int(value)

        return await self._keeper.run("count", work)

    async def list_sessions(
        self, *, limit: int | None = None, after: UUID | None = None
    ) -> list[SessionInfo]:
        """The sessions with archived records, ordered by session id.

        The order is ``UUID`` order (the 128-bit value), the same in every
        readable backend. A session with no records (never written, or erased) is
        not listed. ``first_ts`` and ``last_ts`` are the earliest and latest
        record ``ts``, in UTC.

        Args:
            limit: at most this many (all if ``None``); at least 1.
            after: only sessions with a greater id: pass the last session of a
                page to get the next page.

        Raises:
            TypeError: ``limit`` is not an int or ``after`` not a UUID.
            ValueError: ``limit`` is less than 1.
            BackendError: the read failed (retryable).
        """
        limit, after = checked_page(limit, after)

        async def work(connection: Connection) -> list[Any]:
            if after is None:
                return await connection.fetch(self._sql.list_all, limit)
            return await connection.fetch(self._sql.list_after, limit, after)

        rows = await self._keeper.run("list_sessions", work)
        return [
            SessionInfo(
                session=UUID(bytes=row[0].bytes),  # asyncpg's own UUID subclass
                message_count=row[1],
                first_ts=row[2],
                last_ts=row[3],
            )
            for row in rows
        ]

    async def health_check(self) -> None:
        """Return if a connection works and the tables exist, up to date.

        Raises:
            BackendError: (retryable) the server is unreachable, or a table is
                missing or predates erasure marks; the message names the tables
                and how to create or upgrade them.
        """
        tables = (self._sql.sessions, self._sql.messages, self._sql.marks)

        async def work(connection: Connection) -> Any:
            return await connection.fetchrow(self._sql.probe, *tables)

        *present, upgraded = await self._keeper.run("health_check", work)
        missing = [
            name for name, exists in zip(tables, present, strict=True) if not exists
        ]
        if not missing and not upgraded:
            self._keeper.forget_schema()
            raise BackendError(
                f"PostgresArchive on {self._masked_dsn}: table {self._sql.messages}"
                " has no column appended_at (made before erasure marks): pass"
                " create_schema=True or upgrade it (see docs/backends.md)",
                retryable=True,
            )
        if missing:
            self._keeper.forget_schema()
            raise BackendError(
                f"PostgresArchive on {self._masked_dsn}: table {' and '.join(missing)}"
                " does not exist: pass create_schema=True or create the tables"
                " (see docs/backends.md)",
                retryable=True,
            )

    async def aclose(self) -> None:
        """Close the pool (idempotent); a later call opens a new one.

        Waits for a pool being opened by a concurrent call, and closes it too.
        """
        await self._keeper.aclose()
