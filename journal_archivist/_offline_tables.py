"""Listing and showing dead letters and quarantined rows, offline.

Rules and theory:
- Read-only and lock-free, as every offline reader (``_offline``): safe while the
  owning service runs.
- Every value is read through ``_rows.typed`` or checked by
  ``_rows.check_entries``, so a damaged row is listed with what is readable of
  it and never raises; a dead letter whose checksum fails is shown with its
  ``damage`` and its records are not decoded.
- Records are decoded only by ``show_*``, where they are asked for: a listing of
  many letters decodes nothing.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Final

import msgspec

from ._offline import read_only
from ._records import MessageRecord, Op, decode_entry
from ._rows import DEAD_LETTER_COLUMNS, check_entries, decode_text, typed

if TYPE_CHECKING:
    import os

__all__ = [
    "DeadLetterInfo",
    "QuarantineInfo",
    "list_dead_letters",
    "list_quarantine",
    "show_dead_letter",
    "show_quarantine",
]


class DeadLetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter: an entry a BEST_EFFORT backend gave up on, and why.

    ``records`` is filled in by ``show_dead_letter`` only (None in a listing);
    ``damage`` says why the stored entry fails its checksum (its records are then
    not decoded), ``decode_error`` why its payload did not decode.
    """

    id: int
    backend: str | None
    seq: int
    session: str | None
    op: str
    payload_bytes: int
    error: str | None
    attempts: int | None
    enqueued_at: float | None
    failed_at: float | None
    damage: str | None = None
    records: list[MessageRecord] | None = None
    decode_error: str | None = None


class QuarantineInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A damaged row a backend's writer moved aside, as it was found.

    ``show_quarantine`` tries to decode its payload (``records``, or
    ``decode_error``); damaged data may decode to nonsense, so check it.
    """

    id: int
    backend: str | None
    seq: int | None
    session: str | None
    op: str | None
    size: int | None
    reason: str | None
    quarantined_at: float | None
    records: list[MessageRecord] | None = None
    decode_error: str | None = None


# -- dead letters and quarantine -----------------------------------------------

_DEAD_LETTER_SELECT: Final = (
    f"SELECT id, {typed('backend', 'text')}, {DEAD_LETTER_COLUMNS},"
    f" {typed('error', 'text')}, {typed('attempts', 'integer')},"
    f" {typed('failed_at', 'real')} FROM dead_letters"
)


def list_dead_letters(
    path: str | os.PathLike[str], backend: str | None = None
) -> list[DeadLetterInfo]:
    """The dead letters (of ``backend``, if given), oldest first, without their
    records.

    Raises:
        JournalCorrupt, JournalIncompatible, JournalError: see ``read_only``.
    """
    with read_only(path) as conn:
        rows = conn.execute(f"{_DEAD_LETTER_SELECT} ORDER BY id").fetchall()
        letters = [_dead_letter(row, decode=False) for row in rows]
    return [d for d in letters if backend is None or d.backend == backend]


def show_dead_letter(path: str | os.PathLike[str], id: int) -> DeadLetterInfo:
    """Dead letter ``id`` with its records decoded.

    Raises:
        KeyError: there is no dead letter ``id``.
        JournalCorrupt, JournalIncompatible, JournalError: see ``read_only``.
    """
    with read_only(path) as conn:
        rows = conn.execute(f"{_DEAD_LETTER_SELECT} WHERE id = ?", (id,)).fetchall()
        if not rows:
            raise KeyError(f"no dead letter with id {id}")
        return _dead_letter(rows[0], decode=True)


def _dead_letter(row: tuple[object, ...], *, decode: bool) -> DeadLetterInfo:
    row_id, backend, *stored, error, attempts, failed_at = row
    [entry] = check_entries([stored])
    records: list[MessageRecord] | None = None
    problem: str | None = None
    if decode and entry.damage is None:
        records, problem = _decode(entry.payload, entry.op)
    return DeadLetterInfo(
        id=_as_int(row_id) or 0,
        backend=decode_text(backend),
        seq=entry.seq,
        session=_session(stored[1]),
        op=_op_name(stored[2]),
        payload_bytes=_as_int(stored[4]) or 0,
        error=decode_text(error),
        attempts=_as_int(attempts),
        enqueued_at=_as_float(stored[6]),
        failed_at=_as_float(failed_at),
        damage=entry.damage,
        records=records,
        decode_error=problem,
    )


_QUARANTINE_SELECT: Final = (
    f"SELECT id, {typed('backend', 'text')}, {typed('seq', 'integer')},"
    f" {typed('session', 'blob')}, {typed('op', 'integer')},"
    f" {typed('size', 'integer')}, {typed('reason', 'text')},"
    f" {typed('quarantined_at', 'real')}, {typed('payload', 'blob')}"
    " FROM quarantine"
)


def list_quarantine(
    path: str | os.PathLike[str], backend: str | None = None
) -> list[QuarantineInfo]:
    """The quarantined rows (of ``backend``, if given), oldest first.

    Raises:
        JournalCorrupt, JournalIncompatible, JournalError: see ``read_only``.
    """
    with read_only(path) as conn:
        rows = conn.execute(f"{_QUARANTINE_SELECT} ORDER BY id").fetchall()
        found = [_quarantined(row, decode=False) for row in rows]
    return [q for q in found if backend is None or q.backend == backend]


def show_quarantine(path: str | os.PathLike[str], id: int) -> QuarantineInfo:
    """Quarantined row ``id``, with its payload decoded where it decodes.

    Raises:
        KeyError: there is no quarantined row ``id``.
        JournalCorrupt, JournalIncompatible, JournalError: see ``read_only``.
    """
    with read_only(path) as conn:
        rows = conn.execute(f"{_QUARANTINE_SELECT} WHERE id = ?", (id,)).fetchall()
        if not rows:
            raise KeyError(f"no quarantined row with id {id}")
        return _quarantined(rows[0], decode=True)


def _quarantined(row: tuple[object, ...], *, decode: bool) -> QuarantineInfo:
    row_id, backend, seq, session, op, size, reason, at, payload = row
    records: list[MessageRecord] | None = None
    problem: str | None = None
    if decode:
        if isinstance(payload, bytes) and isinstance(op, int):
            records, problem = _decode(payload, op)
        else:
            problem = "no readable payload"
    return QuarantineInfo(
        id=_as_int(row_id) or 0,
        backend=decode_text(backend),
        seq=_as_int(seq),
        session=_session(session),
        op=_op_name(op) if op is not None else None,
        size=_as_int(size),
        reason=decode_text(reason),
        quarantined_at=_as_float(at),
        records=records,
        decode_error=problem,
    )


def _decode(payload: bytes, op: int) -> tuple[list[MessageRecord] | None, str | None]:
    try:
        return decode_entry(payload, op), None
    except (msgspec.DecodeError, ValueError) as exc:
        return None, str(exc)


def _session(value: object) -> str | None:
    if isinstance(value, bytes) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    return None


def _op_name(op: object) -> str:
    try:
        return Op(op).name.lower() if type(op) is int else f"unknown ({op!r:.20})"
    except ValueError:
        return f"unknown ({op})"


def _as_int(value: object) -> int | None:
    return value if type(value) is int else None


def _as_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
