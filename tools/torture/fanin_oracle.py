"""The fan-in oracle: what shared stores must hold after many slot journals fed them.

Input: the op logs of every worker run (``tools.torture.fanin_worker``), the moment
each run ended (killed or stopped), and each store's records per session.

Rules and theory (docs/scaling.md, "Erasure marks"):
- Every op is timed by the worker's wall clock: ``start`` before the call, ``end``
  when it returned, or, unanswered, when its worker died (or stopped). Workers
  share one host, so one clock. An op that was journaled got a journal time in
  ``[start, end]`` (plus ``SLACK``: journal times may run a little ahead of the
  clock to stay strictly increasing).
- An erasure at journal time ``T`` removes the session's records journaled
  before ``T``, wherever they were journaled. So a record *must be absent* if an
  acknowledged erasure of its session began after its append ended, and *must be
  present* if its append was acknowledged and every erasure of the session
  (acknowledged or not) ended before its append began. Anything in between may
  go either way: that is the guarantee's own slack.
- An append is one journal entry: a store holds all of its records or none.
- Every record in a store must come from an append that was begun and not
  refused; the same ``message_id`` twice in a store is a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from uuid import UUID

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = ["SLACK", "Erasure", "FanInLog", "Verdict", "judge", "parse_log"]

#: Seconds by which the order of two moments is taken as unknown: journal times
#: run ahead of the clock by up to a group's size in float steps (well under a
#: millisecond), and the op log's moments are read just around each call.
SLACK: Final = 0.05

#: Errors after which nothing of the call was journaled.
REFUSALS: Final = frozenset(
    {"ValidationError", "QueueFull", "JournalFull", "ArchivistClosed"}
)


@dataclass
class Append:
    """One ``append_messages`` call of a worker."""

    session: UUID
    ids: tuple[UUID, ...]
    start: float
    end: float | None = None  # acknowledged at; else the run's end
    acked: bool = False
    refused: bool = False


@dataclass
class Erasure:
    """One ``delete_session`` call of a worker."""

    session: UUID
    start: float
    end: float | None = None
    acked: bool = False
    refused: bool = False


@dataclass
class FanInLog:
    """Every op of every worker run."""

    appends: dict[str, Append] = field(default_factory=dict)
    erasures: dict[str, Erasure] = field(default_factory=dict)

    def acknowledged(self) -> int:
        """Records whose append was acknowledged."""
        return sum(len(a.ids) for a in self.appends.values() if a.acked)


def parse_log(lines: Iterable[str], ended: Mapping[str, float]) -> FanInLog:
    """Read op-log lines (see ``fanin_worker``); ``ended`` maps each run to the
    moment it died or stopped, the latest an unanswered op can have taken effect.

    Lines: ``A <run> <op> <session> <start> <id>...`` (an append begun),
    ``E <run> <op> <session> <start>`` (an erasure begun), ``K <run> <op> <at>``
    (acknowledged), ``F <run> <op> <at> <error type>`` (failed). A torn last line
    (the worker was killed while writing it) is skipped.
    """
    log = FanInLog()
    for line in lines:
        if not line.endswith("\n"):
            continue  # torn by a kill
        kind, run, op, *rest = line.split()
        if kind not in "AEKF":
            continue  # O (opened) and S (stopped) lines
        key = f"{run}/{op}"
        if kind == "A":
            session, start, *ids = rest
            log.appends[key] = Append(
                UUID(session), tuple(UUID(i) for i in ids), float(start)
            )
        elif kind == "E":
            session, start = rest
            log.erasures[key] = Erasure(UUID(session), float(start))
        else:
            target: Append | Erasure = log.appends.get(key) or log.erasures[key]
            target.end = float(rest[0])
            target.acked = kind == "K"
            target.refused = kind == "F" and rest[1] in REFUSALS
    ops: list[tuple[str, Append | Erasure]] = [
        *log.appends.items(),
        *log.erasures.items(),
    ]
    for key, op in ops:
        if op.end is None:  # never answered: the worker died or stopped first
            op.end = ended[key.split("/")[0]]
    return log


@dataclass
class Verdict:
    """What one store was found to hold against the log."""

    store: str
    present: int = 0
    #: Appends the rules decided: records that had to be there, or to be gone.
    had_to_stay: int = 0
    had_to_go: int = 0
    lost: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the store broke no rule."""
        problems = (self.lost, self.resurrected, self.duplicates, self.torn)
        return not any(problems) and not self.unexpected


def judge(store: str, log: FanInLog, held: Mapping[UUID, Sequence[UUID]]) -> Verdict:
    """Judge ``held`` (each session's ``message_id`` values in one store)."""
    verdict = Verdict(store)
    owner = {i: key for key, a in log.appends.items() for i in a.ids}
    present: set[UUID] = set()
    for session, ids in held.items():
        for message_id in ids:
            if message_id in present:
                verdict.duplicates.append(str(message_id))
            present.add(message_id)
            key = owner.get(message_id)
            if key is None or log.appends[key].refused:
                verdict.unexpected.append(f"{message_id} (session {session})")
    verdict.present = len(present)
    by_session: dict[UUID, list[Erasure]] = {}
    for erasure in log.erasures.values():
        if not erasure.refused:
            by_session.setdefault(erasure.session, []).append(erasure)
    for key, append in log.appends.items():
        if append.refused:
            continue
        got = [i in present for i in append.ids]
        if any(got) and not all(got):
            verdict.torn.append(key)
        erasures = by_session.get(append.session, [])
        assert append.end is not None
        must_go = any(e.acked and e.start > append.end + SLACK for e in erasures)
        must_stay = append.acked and all(
            e.end is not None and e.end + SLACK < append.start for e in erasures
        )
        verdict.had_to_go += must_go
        verdict.had_to_stay += must_stay
        if must_go and any(got):
            verdict.resurrected.append(key)
        elif must_stay and not all(got):
            verdict.lost.append(key)
    return verdict
