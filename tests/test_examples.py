"""The Flask and Django examples of docs/examples run, against a real journal."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

import journal_archivist
from journal_archivist._blocking import SyncArchivist

from .helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType

EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture(autouse=True)
def _exported(monkeypatch: pytest.MonkeyPatch) -> None:
    # The examples import the public path; until the package root exports
    # SyncArchivist, lend it for the test (undone after, so the public-API test
    # never sees it). A no-op once it is exported.
    monkeypatch.setattr(
        journal_archivist, "SyncArchivist", SyncArchivist, raising=False
    )


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` as module ``name`` (once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def flask_app(tmp_path: Path) -> Iterator[object]:
    app = load("flask_app").create_app(str(tmp_path / "data"))
    try:
        yield app
    finally:
        app.extensions["archivist"].close()


def test_the_flask_example_appends_on_post_and_reads_on_get(flask_app: object) -> None:
    client = flask_app.test_client()  # type: ignore[attr-defined]
    url = f"/sessions/{uuid.uuid4()}/messages"
    first = client.post(url, json={"role": "user", "content": "hello"})
    second = client.post(url, json={"role": "assistant", "content": "hi there"})
    assert (first.status_code, second.status_code) == (201, 201)
    got = client.get(url).get_json()["messages"]
    assert [(m["role"], m["content"]) for m in got] == [
        ("user", "hello"),
        ("assistant", "hi there"),
    ]
    assert got[0]["id"] == first.get_json()["message_id"]
    refused = client.post(url, json={"role": "", "content": "no role"})
    assert refused.status_code == 400
    assert "role" in refused.get_json()["error"]


@pytest.fixture
def django_archivist(tmp_path: Path) -> Iterator[SyncArchivist]:
    archivist = load("django_app").configure(str(tmp_path / "data"))
    try:
        yield archivist
    finally:
        archivist.close()


def test_the_django_example_appends_on_post_and_reads_on_get(
    django_archivist: SyncArchivist,
) -> None:
    from django.test import Client  # type: ignore[import-untyped]

    client = Client()
    url = f"/sessions/{uuid.uuid4()}/messages"
    first = client.post(
        url, {"role": "user", "content": "hello"}, content_type="application/json"
    )
    assert first.status_code == 201, first.content
    got = client.get(url).json()["messages"]
    assert [(m["role"], m["content"]) for m in got] == [("user", "hello")]
    assert got[0]["id"] == first.json()["message_id"]
    refused = client.post(url, "{not json", content_type="application/json")
    assert refused.status_code == 400
    assert client.delete(url).status_code == 405
    assert not django_archivist.is_closed
