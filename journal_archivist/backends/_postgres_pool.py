"""The connection pool of one ``PostgresArchive``: opening it, running calls, errors.

Rules and theory:
- **One pool per event loop.** An asyncpg pool works only on the loop that made
  it. The pool is opened on first use; a keeper used under another loop (a test's
  portal, a restarted runner) terminates the old pool and opens a new one
  (``forget_foreign_pool``).
- **Opening and closing take one lock** (``_opening``), so ``aclose`` waits for a
  pool being opened and closes it, rather than returning before it is stored. The
  lock is skipped only when the pool is open and the schema ready.
- **The schema is created under the same lock**, once per pool, when
  ``create_schema`` is set: the DDL is ``IF NOT EXISTS`` and takes a
  transaction-scoped advisory lock per schema (``_postgres_sql``), so concurrent
  instances are safe. A call that finds a table or schema missing, and a new pool,
  make the next call create it again (``forget_schema``).
- **Errors are translated once, in ``run``**, with ``_postgres_sql.classify``: a
  failure while opening the pool or creating the tables is retryable whatever it
  is (it is never the records' fault). A server shutting down or a read-only
  transaction (``RECONNECT_STATES``) expires the pooled connections, so the next
  call reconnects.
- **Secrets**: the messages are built here, with the DSN masked, and every secret
  is scrubbed from them. An error whose chain shows a secret is raised without it
  (not even as ``__context__``). A DSN that a URL parser reads differently makes
  the driver quote pieces of it, so the driver's own text is withheld from errors
  that are not the server's.
- The logger is the archive's, ``journal_archivist.backends.postgres``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final

import anyio
import asyncpg  # type: ignore[import-untyped]

from .._errors import BackendError
from . import _postgres_sql as _pgsql
from ._redact import scrub, shows_secret

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from contextlib import AbstractAsyncContextManager

logger = logging.getLogger("journal_archivist.backends.postgres")

_T = TypeVar("_T")


class Connection(Protocol):
    """The part of ``asyncpg.Connection`` the archive uses."""

    async def execute(self, query: str, *args: object) -> str: ...
    async def fetch(self, query: str, *args: object) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: object) -> Any: ...
    async def fetchval(self, query: str, *args: object) -> Any: ...
    def transaction(self) -> AbstractAsyncContextManager[object]: ...


class Pool(Protocol):
    """The part of ``asyncpg.Pool`` the archive uses."""

    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...
    async def close(self) -> None: ...
    async def expire_connections(self) -> None: ...
    def terminate(self) -> None: ...


async def _keep_session_state(connection: object) -> None:
    """Pool reset hook: nothing to reset (see ``PoolKeeper._open_pool``)."""


@final
class PoolKeeper:
    """Owns the pool of one archive; runs each call on it and translates errors.

    Args:
        dsn: the DSN as given, passed to asyncpg only.
        masked_dsn: the DSN as errors and logs show it.
        secrets: every form of every secret of the DSN, scrubbed from errors.
        misread: a URL parser reads the DSN differently (``_postgres_dsn.misread_dsn``).
        ddl: creates the schema and tables, run if ``create_schema``.
        create_schema, pool_min_size, pool_max_size, timeout, application_name:
            as ``PostgresArchive`` takes them, already checked.
    """

    def __init__(
        self,
        dsn: str,
        *,
        masked_dsn: str,
        secrets: Iterable[str],
        misread: bool,
        ddl: str,
        create_schema: bool,
        pool_min_size: int,
        pool_max_size: int,
        timeout: float,
        application_name: str,
    ) -> None:
        self._dsn = dsn
        self._masked_dsn = masked_dsn
        # Longest first, so no secret is left half-replaced by a shorter one.
        self._secrets = sorted(secrets, key=len, reverse=True)
        self._misread = misread
        self._ddl = ddl
        self._create_schema = create_schema
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._timeout = timeout
        self._application_name = application_name
        self.pool: Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._schema_ready = not create_schema
        self._opening = anyio.Lock()

    def forget_schema(self) -> None:
        """Create the schema again on the next call, if ``create_schema``."""
        self._schema_ready = not self._create_schema

    def forget_foreign_pool(self) -> Pool | None:
        """Return the pool if it belongs to the running event loop, else drop it.

        An asyncpg pool works only on the loop that made it; a backend used again
        under a new loop (a test's portal, a restarted runner) starts a new pool.
        """
        if self.pool is not None and self._pool_loop is not asyncio.get_running_loop():
            pool, self.pool = self.pool, None
            self.forget_schema()
            with contextlib.suppress(Exception):  # its loop may be closed already
                pool.terminate()
        return self.pool

    async def _open_pool(self) -> Pool:
        pool = self.forget_foreign_pool()
        if pool is not None and self._schema_ready:
            return pool
        async with self._opening:
            pool = self.forget_foreign_pool()
            if pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._pool_min_size,
                    max_size=self._pool_max_size,
                    timeout=self._timeout,  # of connecting
                    server_settings={"application_name": self._application_name},
                    # Saves a round trip per call: the archive sets no session
                    # state, cursors, listeners or session advisory locks, and
                    # asyncpg still rolls back a transaction left open.
                    reset=_keep_session_state,
                )
                self.pool, self._pool_loop = pool, asyncio.get_running_loop()
                logger.info("opened a connection pool to %s", self._masked_dsn)
            if not self._schema_ready:
                async with (
                    pool.acquire() as connection,
                    connection.transaction(),
                ):
                    await connection.execute(self._ddl)
                self._schema_ready = True
            return pool

    async def run(self, action: str, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pooled connection within the timeout; translate errors.

        A failure while opening the pool or creating the tables is retryable
        whatever it is: it is never the records' fault.

        Raises:
            BackendError: naming ``action`` and the masked DSN, secrets scrubbed.
        """
        opened = False
        try:
            with anyio.fail_after(self._timeout):
                pool = await self._open_pool()
                opened = True
                async with pool.acquire() as connection:
                    return await work(connection)
        except BackendError:
            raise
        except Exception as exc:
            retryable, what = _pgsql.classify(exc)
            state = getattr(exc, "sqlstate", None)
            if state in _pgsql.MISSING_SCHEMA_STATES:
                self.forget_schema()  # recreate next time
            if state in _pgsql.RECONNECT_STATES and self.pool is not None:
                await self.pool.expire_connections()  # no I/O: bumps a counter
            hidden = self._shows_secret(exc)
            if self._misread and not isinstance(exc, asyncpg.PostgresError):
                what = f"{type(exc).__name__} (details withheld: they may quote the"
                what += " password; percent-encode it in the dsn)"
            error = BackendError(
                self._scrub(f"PostgresArchive {action} on {self._masked_dsn}: {what}"),
                retryable=retryable or not opened,
                retry_after=1.0 if state in _pgsql.BACKOFF_STATES else None,
            )
            logger.debug("%s", error)
            if not hidden:
                raise error from exc
        # Raised outside the handler, so not even ``__context__`` keeps the error
        # that shows the password.
        raise error

    def _shows_secret(self, exc: BaseException) -> bool:
        """Whether ``exc`` or anything chained to it may show a secret."""
        return self._misread or shows_secret(exc, self._secrets)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    async def aclose(self) -> None:
        """Close the pool (idempotent), waiting for one being opened."""
        async with self._opening:  # decide under the lock, close outside it
            self.forget_foreign_pool()
            pool, self.pool = self.pool, None
            self.forget_schema()
        if pool is None:
            return
        with anyio.move_on_after(self._timeout) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()
        logger.info("closed the connection pool to %s", self._masked_dsn)
