"""The servers some tests need: PostgreSQL and NATS JetStream, on loopback.

A test that needs one takes the ``pg_dsn`` or ``nats_url`` fixture (tests/conftest.py).
When the server does not answer, the test fails in CI (``CI=true``: the servers
are part of the job) and is skipped elsewhere, with a one-line reason.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Final, NoReturn

import pytest

from journal_archivist.backends._jetstream_wire import mask_servers
from journal_archivist.backends._postgres_dsn import mask_dsn

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_DSN", "DEFAULT_NATS_URL", "nats_url", "postgres_dsn", "unavailable"]

DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"


def unavailable(problem: str) -> NoReturn:
    """Fail (in CI) or skip the test that needs what ``problem`` says is missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def _problem(what: str, probe: Callable[[], Awaitable[None]]) -> str | None:
    try:
        asyncio.run(probe())  # type: ignore[arg-type]
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        return f"no {what}: {detail}"
    return None


def postgres_dsn() -> str:
    """The test server's DSN (``$JOURNAL_ARCHIVIST_TEST_PG_DSN`` or the default),
    once it answers."""
    dsn = os.environ.get("JOURNAL_ARCHIVIST_TEST_PG_DSN", DEFAULT_DSN)

    async def probe() -> None:
        import asyncpg

        connection = await asyncpg.connect(dsn, timeout=5)
        await connection.close()

    problem = _problem(f"PostgreSQL server at {mask_dsn(dsn)[0]}", probe)
    if problem is not None:
        unavailable(problem)
    return dsn


def nats_url() -> str:
    """The test server's URL (``$JOURNAL_ARCHIVIST_TEST_NATS_URL`` or the default),
    once it answers with JetStream enabled."""
    url = os.environ.get("JOURNAL_ARCHIVIST_TEST_NATS_URL", DEFAULT_NATS_URL)

    async def probe() -> None:
        import nats

        client = await nats.connect(
            url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=1
        )
        try:
            await client.jetstream().account_info()
        finally:
            await client.close()

    problem = _problem(f"NATS JetStream server at {mask_servers(url)[1][0]}", probe)
    if problem is not None:
        unavailable(problem)
    return url
