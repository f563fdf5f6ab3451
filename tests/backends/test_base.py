"""The backend base class: optional methods are declared once, with one rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from journal_archivist import BackendError, backends
from journal_archivist.backends import ArchiveBackend, JsonlArchive, SqliteArchive
from journal_archivist.backends._base import OPTIONAL_READS, implements
from journal_archivist.testing import MockBackend

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path


class Minimal(MockBackend):
    """Only the required methods: MockBackend's own ``read_session`` undone."""

    read_session = ArchiveBackend.read_session


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # The read Archivist.read_session uses.
        (lambda b: b.read_session(uuid4()), "Minimal is not readable"),
        # A count of one session.
        (lambda b: b.count(uuid4()), "Minimal cannot count a session's records"),
        # The listing of every session.
        (lambda b: b.list_sessions(), "Minimal cannot list its sessions"),
    ],
)
async def test_an_optional_read_not_offered_raises_a_non_retryable_backend_error(
    call: Callable[[ArchiveBackend], Awaitable[Any]], message: str
) -> None:
    with pytest.raises(BackendError, match=f"^{message}$") as caught:
        await call(Minimal())
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("make", "offered"),
    [
        # The embedded archive offers every read.
        (
            lambda p: SqliteArchive(p / "a.db"),
            {"read_session", "count", "list_sessions"},
        ),
        # JSONL reads a session but neither counts nor lists.
        (lambda p: JsonlArchive(p / "j"), {"read_session"}),
        # MockBackend reads (or refuses to, if unreadable) but does not count.
        (lambda p: MockBackend(), {"read_session"}),
        # A backend of the required methods only offers none.
        (lambda p: Minimal(), set()),
    ],
)
def test_implements_says_which_optional_reads_a_backend_offers(
    tmp_path: Path, make: Callable[[Path], ArchiveBackend], offered: set[str]
) -> None:
    backend = make(tmp_path)
    assert {m for m in OPTIONAL_READS if implements(backend, m)} == offered


def test_implements_refuses_a_method_that_is_not_optional() -> None:
    with pytest.raises(
        ValueError, match=r"^method must be one of \(.*\), got 'append'$"
    ):
        implements(MockBackend(), "append")


@pytest.mark.parametrize(
    ("cls", "marks"),
    [
        # The default: a backend must opt in to being fed by several journals.
        (ArchiveBackend, False),
        # One writer per directory: times are ignored.
        (JsonlArchive, False),
        # Marks in its file, under the batch's BEGIN IMMEDIATE.
        (SqliteArchive, True),
        # Marks in a table, under each session row's lock.
        ("PostgresArchive", True),
        # Sends the times; the receiver keeps the marks.
        ("WebhookArchive", True),
    ],
)
def test_which_built_in_backends_keep_erasure_marks(
    cls: type[ArchiveBackend] | str, marks: bool
) -> None:
    found: type[ArchiveBackend] = (
        getattr(backends, cls) if isinstance(cls, str) else cls
    )
    assert found.erasure_marks is marks
