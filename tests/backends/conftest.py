"""Fixtures of the backend tests: a file archive's directory, a loopback webhook
receiver, a plain PostgreSQL connection, and no proxies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.backends.webhook_server import WebhookServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path
    from typing import Any


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """Where this test's file archive lives (not created yet)."""
    return tmp_path / "archive"


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    """A webhook receiver on 127.0.0.1, stopped after the test."""
    with WebhookServer() as server:
        yield server


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection for looking behind the backend's back."""
    import asyncpg

    connection = await asyncpg.connect(pg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; the tests talk to loopback directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
