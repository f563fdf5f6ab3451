"""Archive backends: the protocol every backend implements, and the built-in ones.

``SqliteArchive`` (the embedded default) and ``JsonlArchive`` need nothing beyond
the core install. ``PostgresArchive`` needs the ``postgres`` extra (asyncpg),
``WebhookArchive`` the ``webhook`` extra (httpx) and ``JetStreamArchive`` the
``nats`` extra (nats-py); each is imported on first use, so ``import
journal_archivist`` never imports a server driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._errors import BackendError
from ._base import ArchiveBackend, SessionGroup, SessionInfo
from .jsonl import JsonlArchive
from .sqlite import SqliteArchive

if TYPE_CHECKING:
    from .jetstream import JetStreamArchive
    from .postgres import PostgresArchive
    from .webhook import WebhookArchive

__all__ = [
    "ArchiveBackend",
    "BackendError",
    "JetStreamArchive",
    "JsonlArchive",
    "PostgresArchive",
    "SessionGroup",
    "SessionInfo",
    "SqliteArchive",
    "WebhookArchive",
]

# Not SessionGroup: msgspec resolves a Struct's annotations in its own module.
for _cls in (ArchiveBackend, JsonlArchive, SqliteArchive):
    _cls.__module__ = __name__

_OPTIONAL = {
    "JetStreamArchive": ".jetstream",
    "PostgresArchive": ".postgres",
    "WebhookArchive": ".webhook",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: their modules import an optional driver, and raise
    # an ImportError naming the extra to install when it is missing.
    module = _OPTIONAL.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = getattr(importlib.import_module(module, __name__), name)
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
