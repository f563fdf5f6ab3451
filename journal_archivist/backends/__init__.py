"""Archive backends: the protocol every backend implements, and the built-in ones."""

from __future__ import annotations

from .._errors import BackendError
from ._base import ArchiveBackend, SessionGroup

__all__ = ["ArchiveBackend", "BackendError", "SessionGroup"]

for _name in ("ArchiveBackend", "SessionGroup"):
    globals()[_name].__module__ = __name__
