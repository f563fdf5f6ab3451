"""Refusing registrations that would share files with the journal or each other.

An archive given the journal's own path, or two registrations on one archive file
or one JSONL directory, would be accepted and then fail and retry forever (each
writer takes its own locks) -- or worse, write into the journal. So
``Archivist.open`` compares the paths each backend owns
(``ArchiveBackend.owned_paths``) with the journal's files and with each other, after
resolving symlinks (and, for files that exist, by identity, which catches hard
links), and refuses any two that are the same or one inside the other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import Registration

__all__ = ["check_ownership"]


def check_ownership(journal_path: str, registrations: Sequence[Registration]) -> None:
    """Raise ``ValueError`` naming both sides if two owners' paths overlap.

    The journal owns its file and the ``-wal``, ``-shm`` and ``.lock`` beside it.
    """
    journal = os.path.realpath(journal_path)
    claims = [
        (f"the journal {journal_path}", journal + suffix)
        for suffix in ("", "-wal", "-shm", ".lock")
    ]
    for reg in registrations:
        for raw in reg.backend.owned_paths():
            path = os.path.realpath(raw)
            for owner, other in claims:
                relation = _relation(path, other)
                if relation is not None:
                    raise ValueError(
                        f"registration {reg.name!r} writes {path}, which {relation}"
                        f" {other}, written by {owner}: a file or directory can have"
                        " one writer only; give each its own"
                    )
            claims.append((f"registration {reg.name!r}", path))


def _relation(path: str, other: str) -> str | None:
    """How ``path`` overlaps ``other`` ("is", "lies inside", "holds"), or None."""
    if path == other or _same_file(path, other):
        return "is"
    if path.startswith(other.rstrip(os.sep) + os.sep):
        return "lies inside"
    if other.startswith(path.rstrip(os.sep) + os.sep):
        return "holds"
    return None


def _same_file(path: str, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # either does not exist (yet): only the names can tell
        return False
