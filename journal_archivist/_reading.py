"""``read_session``: which backend to read, and what the journal adds to it.

Rules and theory:
- Readable, enabled backends are tried healthy ones first, then from the highest
  ``priority`` down; one that fails (or passes its ``attempt_timeout``) is logged
  and the next is tried. ``ReadFailed`` names every failure when none answered.
- For each backend the journal is read *before* the backend: an entry that is
  settled between the two reads is then found by the second, so nothing
  acknowledged is missed (read your writes, contract 10). The two are merged by
  the pure ``merge_read``, in order and without duplicates.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio

from ._errors import ReadFailed
from ._failure import describe
from ._health import HealthStatus
from ._read_merge import merge_read

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from ._reader import Reader
    from ._records import MessageRecord
    from ._writer import Writer

__all__ = ["read_session"]

logger = logging.getLogger("journal_archivist")


async def read_session(
    writers: Sequence[Writer], query: Reader, session: UUID
) -> list[MessageRecord]:
    """The records of ``session`` from the best backend that answers, merged with
    what the journal still holds for that backend.

    Raises:
        ReadFailed: no readable backend is registered, or none answered.
    """
    readable = [w for w in writers if w.registration.readable and w.enabled]
    readable.sort(
        key=lambda w: (
            w.health().status is not HealthStatus.HEALTHY,
            -w.registration.priority,
        )
    )
    errors: dict[str, BaseException] = {}
    for writer in readable:
        # Read first: an entry delivered meanwhile is then in the archive.
        pending = await query.pending_for_session(
            session, writer.mask, writer.settled_upto, writer.drop_floor
        )
        try:
            timeout = writer.registration.retry.attempt_timeout
            with anyio.fail_after(math.inf if timeout is None else timeout):
                archived = await writer.registration.backend.read_session(session)
        except Exception as exc:
            errors[writer.name] = exc
            logger.warning(
                "read_session: backend %r failed: %s", writer.name, describe(exc)
            )
            continue
        return merge_read(archived, pending)
    raise ReadFailed(session, errors)
