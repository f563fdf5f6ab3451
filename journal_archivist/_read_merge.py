"""Sans-IO: a session's records as ``read_session`` returns them, from what a
backend archived and what the journal still owes it.

Rules:
- The journal's pending entries for that backend are read *before* the backend,
  so an entry delivered in between is in the archive if it is no longer pending
  (never missing from both).
- A pending erasure means what the backend holds of the session is gone: the
  archived records are dropped, and so are pending appends before the erasure.
- Pending records follow the archived ones in journal order; one the archive
  already has (the same ``message_id``) is not repeated. Damaged entries are left
  out: they are quarantined, not delivered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._records import Op, decode_entry

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._batching import Entry
    from ._records import MessageRecord

__all__ = ["merge_read"]


def merge_read(
    archived: Sequence[MessageRecord], pending: Iterable[Entry]
) -> list[MessageRecord]:
    """The session's records: ``archived``, then what ``pending`` adds."""
    erased = False
    owed: list[MessageRecord] = []
    for entry in pending:
        if entry.damage is not None:
            continue
        if entry.op == Op.ERASE:
            erased = True
            owed.clear()
        else:
            owed.extend(decode_entry(entry.payload, entry.op))
    merged = [] if erased else list(archived)
    seen = {record.message_id for record in merged}
    merged.extend(record for record in owed if record.message_id not in seen)
    return merged
