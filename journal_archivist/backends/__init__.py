"""Archive backends: the protocol every backend implements, and the built-in ones."""

from __future__ import annotations

from .._errors import BackendError
from ._base import ArchiveBackend, SessionGroup

__all__ = ["ArchiveBackend", "BackendError", "SessionGroup"]

# Not SessionGroup: msgspec resolves a Struct's annotations in its own module.
ArchiveBackend.__module__ = __name__
