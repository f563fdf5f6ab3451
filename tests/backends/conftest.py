"""Fixtures of the backend tests: a file archive's directory, a loopback webhook
receiver, and no proxies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.backends.webhook_server import WebhookServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """Where this test's file archive lives (not created yet)."""
    return tmp_path / "archive"


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    """A webhook receiver on 127.0.0.1, stopped after the test."""
    with WebhookServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; the tests talk to loopback directly."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
