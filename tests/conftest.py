"""Shared fixtures: the asyncio backend, Hypothesis profiles, the journal path."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings

from tests import services

if TYPE_CHECKING:
    from pathlib import Path

# Profiles: "ci" keeps the suite fast, "dev" is the local default, "long" is for
# nights: pytest --hypothesis-profile=long
_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=25, derandomize=True, **_common)  # type: ignore[arg-type]
settings.register_profile("dev", max_examples=60, **_common)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=2_000, **_common)  # type: ignore[arg-type]
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def anyio_backend() -> str:
    """aiosqlite runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """Where this test's journal lives."""
    return tmp_path / "journal.db"


@pytest.fixture
def session() -> UUID:
    """A fresh session id."""
    return uuid4()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL test server's DSN; skips (fails in CI) if it does not answer."""
    return services.postgres_dsn()


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The NATS JetStream test server's URL; skips (fails in CI) if it does not
    answer."""
    return services.nats_url()
