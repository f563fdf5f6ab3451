"""Sans-IO admission: which appends of a group are journaled, and for whom.

Rules and theory:
- The committer calls ``plan_admission`` with the appends waiting for the next
  transaction (in arrival order) and a working copy of every enabled backend's
  backlog. Nothing here awaits, so the decision and the transaction that applies
  it see the same backlog (the committer is the only writer of the journal).
- An entry *fits* a backlog when one more entry stays within ``capacity`` and its
  bytes within ``capacity_bytes`` -- except that an entry larger than the whole
  byte capacity still fits an empty backlog, so it cannot block forever.
- Appends are decided in order. For every backend the entry does not fit:
  ``REJECT`` refuses the whole append (nothing journaled for anyone), ``BLOCK``
  stops admission at this append (head of line, so later appends cannot overtake
  it), ``DROP_NEWEST`` leaves the backend out of the entry's targets, and
  ``DROP_OLDEST`` admits it and names the backend in ``oldest_excess`` (with the
  excess seen when planning; only for backends this group adds to). The
  committer measures the excess again inside the transaction (deliveries may
  have made room meanwhile) and drops the oldest entries not yet handed to the
  backend, after inserting the group, so the group's own entries are dropped too
  once the older ones run out.
- Entries a writer has already taken (in flight) are never dropped.
- An erasure (``delete_session``) is admitted for every backend whatever its
  backlog: a privacy erasure is never refused, blocked or dropped for capacity.
  It still counts in the backlog, so the appends after it meet a full one sooner.
  Behind a ``BLOCK``ed append it is admitted at once unless an undecided append
  of its own session is ahead of it (order is per session, and the erasure must
  come after that append) -- also one queued beyond the group (``beyond``). A
  disabled backend keeps its backlog and gets it when enabled again, so an
  erasure targets it too (``disabled``), to wait there after the appends it
  erases.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._policies import OverflowPolicy

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

__all__ = ["Backlog", "Plan", "plan_admission"]


@dataclass(slots=True)
class Backlog:
    """What admission needs to know of one enabled backend."""

    name: str
    mask: int
    overflow: OverflowPolicy
    capacity: int
    capacity_bytes: int | None
    pending: int
    pending_bytes: int
    #: Under ``BLOCK``, seconds an append may wait for room (None: no limit).
    block_timeout: float | None = None

    def fits(self, size: int) -> bool:
        """Whether one more entry of ``size`` bytes stays within the limits."""
        if self.pending + 1 > self.capacity:
            return False
        if self.capacity_bytes is None or self.pending == 0:
            return True
        return self.pending_bytes + size <= self.capacity_bytes

    def excess(self) -> tuple[int, int]:
        """How many entries and bytes are over the limits right now.

        A single entry is never over the byte limit (it fits an empty backlog).
        """
        count = max(0, self.pending - self.capacity)
        if self.capacity_bytes is None or self.pending <= 1:
            return count, 0
        return count, max(0, self.pending_bytes - self.capacity_bytes)


@dataclass(slots=True)
class Plan:
    """The outcome of admission for one group.

    ``admitted`` pairs each admitted append's index with its target mask;
    ``rejected`` pairs refused appends with the backend that refused them;
    ``blocked`` is the index of the first append that must wait, with the backend
    it waits for. Indexes at or after ``blocked`` were not decided. ``uniform``
    says every append was admitted for every backend (the common case).
    """

    admitted: list[tuple[int, int]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    blocked: tuple[int, str] | None = None
    dropped_newest: dict[str, int] = field(default_factory=dict)
    oldest_excess: dict[str, tuple[int, int]] = field(default_factory=dict)
    uniform: bool = field(default=False, compare=False)  # a hint, derived


def plan_admission(
    sizes: Sequence[int],
    backlogs: Sequence[Backlog],
    *,
    erasures: Collection[int] = (),
    sessions: Sequence[object] = (),
    beyond: Sequence[tuple[int, bool, object]] = (),
    disabled: int = 0,
) -> Plan:
    """Decide the appends of sizes ``sizes`` (arrival order) against ``backlogs``.

    The indexes in ``erasures`` are erasures, admitted for every backlog; with
    ``sessions`` (each append's session) they may pass a blocked append of
    another session, and ``admitted`` then lists them after the others;
    ``beyond`` describes the appends queued after the group, ``(size,
    is_erasure, session)`` each, numbered on from ``len(sizes)``: an erasure
    among them may pass a blocked append too. ``disabled`` is the mask of the
    disabled backends, which erasures target as well.
    ``backlogs`` are updated in place to what they will be after the group commits
    (before ``DROP_OLDEST`` trimming, which ``oldest_excess`` describes).
    """
    plan = Plan()
    if _all_fit(sizes, backlogs):
        # The common case: every backlog has room for the whole group.
        mask = 0
        total = sum(sizes)
        for backlog in backlogs:
            mask |= backlog.mask
            backlog.pending += len(sizes)
            backlog.pending_bytes += total
        plan.admitted = [(index, mask) for index in range(len(sizes))]
        plan.uniform = True
        if erasures and disabled:
            plan.admitted = [
                (i, mask | disabled if i in erasures else mask)
                for i in range(len(sizes))
            ]
            plan.uniform = False
        return plan

    def admit_erasure(index: int, size: int) -> None:
        everyone = disabled
        for backlog in backlogs:
            everyone |= backlog.mask
            backlog.pending += 1
            backlog.pending_bytes += size
        plan.admitted.append((index, everyone))

    for index, size in enumerate(sizes):
        if index in erasures:
            admit_erasure(index, size)
            continue
        full = [b for b in backlogs if not b.fits(size)]
        full_names = {b.name for b in full}
        refusing = next((b for b in full if b.overflow is OverflowPolicy.REJECT), None)
        if refusing is not None:
            plan.rejected.append((index, refusing.name))
            continue
        blocking = next((b for b in full if b.overflow is OverflowPolicy.BLOCK), None)
        if blocking is not None:
            plan.blocked = (index, blocking.name)
            if sessions:
                # Undecided appends hold back only erasures of their session.
                undecided = itertools.chain(
                    (
                        (later, sizes[later], later in erasures, sessions[later])
                        for later in range(index + 1, len(sizes))
                    ),
                    (
                        (len(sizes) + i, *described)
                        for i, described in enumerate(beyond)
                    ),
                )
                waiting = {sessions[index]}
                for later, later_size, erasing, session in undecided:
                    if erasing and session not in waiting:
                        admit_erasure(later, later_size)
                    else:
                        waiting.add(session)
            break
        targets = 0
        for backlog in backlogs:
            if (
                backlog.name in full_names
                and backlog.overflow is OverflowPolicy.DROP_NEWEST
            ):
                plan.dropped_newest[backlog.name] = (
                    plan.dropped_newest.get(backlog.name, 0) + 1
                )
                continue
            targets |= backlog.mask
            backlog.pending += 1
            backlog.pending_bytes += size
        plan.admitted.append((index, targets))
    # Only an arriving entry makes room: a backlog already over a lowered capacity
    # is trimmed when the next append comes, never by itself.
    targeted = 0
    for _, mask in plan.admitted:
        targeted |= mask
    for backlog in backlogs:
        if backlog.overflow is OverflowPolicy.DROP_OLDEST and targeted & backlog.mask:
            count, nbytes = backlog.excess()
            if count or nbytes:
                plan.oldest_excess[backlog.name] = (count, nbytes)
    return plan


def _all_fit(sizes: Sequence[int], backlogs: Sequence[Backlog]) -> bool:
    count = len(sizes)
    total = sum(sizes)
    return all(
        b.pending + count <= b.capacity
        and (b.capacity_bytes is None or b.pending_bytes + total <= b.capacity_bytes)
        for b in backlogs
    )
