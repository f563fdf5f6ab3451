"""``status``, ``check`` and ``drain`` of a journal directory: every slot at once.

Rules and theory:
- Which journal a command is given is decided in ``_cli_common``: a directory
  holding ``slot-N`` folders (``--journal DIR``, or a config with ``[slots]``) is
  a journal directory (``directory_of``), and ``--slot N`` makes any command work
  on that slot's journal as on a journal file. These three commands take a whole
  directory; given a journal file (or ``--slot``) they are the single-journal
  commands of ``_cli_offline`` and ``_cli_online``.
- ``status`` and ``check`` read the slots one after another, as they read a
  journal file: read-only and lock-free. Each slot is one snapshot; the directory
  is not. A slot that cannot be read is shown with its error and the others still
  are; the exit code is the worst (highest) of the slots'.
- ``drain`` works as an orphan's adopter does (``_slots``): one slot at a time,
  each opened under its own lock as a plain journal, with the config's backends
  made afresh, and closed (releasing the slot) before the next. A slot held by a
  live process is skipped, never waited for (its owner delivers it); a free slot
  holding no entries is not opened. Each slot opened gets ``--timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import TYPE_CHECKING

import msgspec

from . import _cli_offline, _cli_online
from ._cli_common import (
    CliError,
    ExitCode,
    config_of,
    directory_of,
    emit_json,
    human_bytes,
    journal_error_code,
    out,
    slot_names,
)
from ._cli_offline import VERDICT_EXIT, backend_table, show_check, watch
from ._cli_online import DrainResult, drain_journal, drain_lines, run_async
from ._errors import JournalError, JournalLocked
from ._offline import lock_of, read_only, read_status
from ._offline_check import CheckReport, check
from ._printable import printable
from ._slots import slot_indexes, slot_journal
from ._stats import BackendStats, Stats

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Mapping

    from ._config_file import ArchivistConfig

__all__ = [
    "DirectoryCheck",
    "DirectoryDrain",
    "DirectoryStatus",
    "SlotCheck",
    "SlotDrain",
    "SlotStatus",
    "cmd_check",
    "cmd_drain",
    "cmd_status",
]


def _worst(codes: Iterable[ExitCode]) -> ExitCode:
    return max(codes, default=ExitCode.OK)


# -- status --------------------------------------------------------------------


class SlotStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One slot in ``status --json``: ``state`` is ``held`` (a process holds its
    lock: ``holder_pid``, None if unknown), ``orphan`` (free, with entries) or
    ``free``; ``stats`` its numbers (None with ``error``: it cannot be read)."""

    slot: int
    path: str
    state: str
    holder_pid: int | None
    stats: Stats | None
    error: str | None = None


class DirectoryStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``status --json`` prints for a journal directory: every slot, and
    each backend's numbers summed over the slots read (``totals``)."""

    directory: str
    slots: tuple[SlotStatus, ...]
    totals: tuple[BackendStats, ...]


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: of a journal file, or of every slot of a journal directory."""
    directory = directory_of(args)
    if directory is None:
        return _cli_offline.cmd_status(args)
    enabled = None
    if not args.journal:  # the config says which backends are enabled
        config = config_of(args, directory_ok=True)
        enabled = {backend.name: backend.enabled for backend in config.backends}
    if args.watch is None:
        status, code = read_directory(directory, enabled)
        _show_status(status, args.json)
        return code
    return watch(
        args,
        lambda: read_directory(directory, enabled)[0],
        _show_status,
    )


def read_directory(
    directory: str, enabled: Mapping[str, bool] | None
) -> tuple[DirectoryStatus, ExitCode]:
    """Every slot's status, and the exit code of the worst slot that could not
    be read (``OK`` if all were)."""
    slots = []
    codes = []
    for index in slot_indexes(directory):
        path = os.path.abspath(slot_journal(directory, index))
        lock = lock_of(path)
        stats: Stats | None = None
        error: str | None = None
        try:
            stats = read_status(path, enabled=enabled)
        except JournalError as exc:
            error = str(exc)
            codes.append(journal_error_code(exc))
        pid = lock.pid if stats is None else stats.journal.lock_holder_pid
        if lock.held or pid is not None:
            state = "held"
        elif stats is not None and stats.journal.entries:
            state = "orphan"
        else:
            state = "free"
        slots.append(
            SlotStatus(
                slot=index,
                path=path,
                state=state,
                holder_pid=pid,
                stats=stats,
                error=error,
            )
        )
    totals = _totals([slot.stats for slot in slots if slot.stats is not None])
    status = DirectoryStatus(
        directory=os.path.abspath(directory), slots=tuple(slots), totals=totals
    )
    return status, _worst(codes)


def _totals(every: list[Stats]) -> tuple[BackendStats, ...]:
    """Each backend's numbers summed over the slots (first seen, first)."""
    by_name: dict[str, list[BackendStats]] = {}
    for stats in every:
        for backend in stats.backends:
            by_name.setdefault(backend.name, []).append(backend)
    return tuple(
        BackendStats(
            name=name,
            enabled=all(b.enabled for b in backends),
            up=None,
            pending_entries=sum(b.pending_entries for b in backends),
            pending_bytes=sum(b.pending_bytes for b in backends),
            oldest_pending_age=max(
                (b.oldest_pending_age for b in backends if b.oldest_pending_age),
                default=None,
            ),
            delivered_total=sum(b.delivered_total for b in backends),
            dropped_total=sum(b.dropped_total for b in backends),
            dead_lettered_total=sum(b.dead_lettered_total for b in backends),
            quarantined_total=sum(b.quarantined_total for b in backends),
            dead_letters=sum(b.dead_letters or 0 for b in backends),
            quarantine=sum(b.quarantine or 0 for b in backends),
        )
        for name, backends in by_name.items()
    )


def _show_status(status: DirectoryStatus, as_json: bool) -> None:
    if as_json:
        emit_json(status)
        return
    held = sum(slot.state == "held" for slot in status.slots)
    orphans = sum(slot.state == "orphan" for slot in status.slots)
    out(
        f"journal directory  {status.directory}: {len(status.slots)} slots,"
        f" {held} held, {orphans} orphan{'' if orphans == 1 else 's'}"
    )
    for slot in status.slots:
        out()
        out(f"slot-{slot.slot}  {_slot_line(slot)}")
        if slot.stats is not None:
            backend_table(slot.stats.backends)
    out()
    out("all slots")
    backend_table(status.totals)


def _slot_line(slot: SlotStatus) -> str:
    """One line on a slot: who holds it, its entries, size and damage."""
    if slot.state == "held":
        who = "unknown" if slot.holder_pid is None else str(slot.holder_pid)
        line = f"held by process {who}"
    elif slot.state == "orphan":
        line = "ORPHAN: free, with a backlog (a live worker adopts it, or drain)"
    else:
        line = "free"
    if slot.stats is None:
        return f"{line}; cannot read it: {printable(slot.error or '')}"
    journal = slot.stats.journal
    line += (
        f"; {journal.entries} entries held, {journal.entries_journaled_total}"
        f" journaled in all; {human_bytes(journal.size_bytes)} + WAL"
        f" {human_bytes(journal.wal_bytes)}"
    )
    if journal.lost_entries or journal.repaired_rows or journal.quarantined:
        line += (
            f"; damage: {journal.lost_entries} lost, {journal.repaired_rows} rows"
            f" repaired, {journal.quarantined} entries quarantined"
        )
    return line


# -- check ---------------------------------------------------------------------


class SlotCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One slot in ``check --json``: its report, or why it could not be checked."""

    slot: int
    report: CheckReport | None
    error: str | None = None


class DirectoryCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What ``check --json`` prints for a journal directory."""

    directory: str
    slots: tuple[SlotCheck, ...]


def cmd_check(args: argparse.Namespace) -> int:
    """``check``: of a journal file, or of every slot of a journal directory;
    the exit code is the worst slot's."""
    directory = directory_of(args)
    if directory is None:
        return _cli_offline.cmd_check(args)
    if args.salvage is not None:
        raise CliError(
            f"--salvage copies one journal, and {directory} is a journal directory"
            f" ({slot_names(slot_indexes(directory))}): choose its slot with --slot N",
            ExitCode.USAGE,
        )
    slots = []
    codes = []
    for index in slot_indexes(directory):
        try:
            report = check(slot_journal(directory, index), full=args.full)
        except JournalError as exc:
            slots.append(SlotCheck(slot=index, report=None, error=str(exc)))
            codes.append(journal_error_code(exc))
        else:
            slots.append(SlotCheck(slot=index, report=report))
            codes.append(VERDICT_EXIT[report.verdict])
    result = DirectoryCheck(directory=os.path.abspath(directory), slots=tuple(slots))
    if args.json:
        emit_json(result)
    else:
        for slot in result.slots:
            out(f"slot-{slot.slot}:")
            if slot.report is None:
                out(f"cannot check it: {printable(slot.error or '')}")
            else:
                show_check(slot.report)
            out()
        verdicts = [
            "cannot check" if s.report is None else s.report.verdict.name
            for s in result.slots
        ]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        out(f"{len(result.slots)} slots checked: {counts}")
    return _worst(codes)


# -- drain ---------------------------------------------------------------------


class SlotDrain(msgspec.Struct, frozen=True, kw_only=True):
    """One slot in ``drain --json``.

    ``outcome``: ``drained``, ``not_drained`` (``result`` says what remains),
    ``held`` (a live process holds it, ``holder_pid``: skipped), ``empty`` (free
    with no entries: not opened) or ``failed`` (``error``). ``entries``: the
    entries a held slot holds (None: not read).
    """

    slot: int
    path: str
    outcome: str
    holder_pid: int | None = None
    entries: int | None = None
    result: DrainResult | None = None
    error: str | None = None

    @property
    def remains(self) -> bool:
        """Whether something may be left in the slot."""
        if self.outcome == "held":
            return self.entries != 0
        return self.outcome in ("not_drained", "failed")


class DirectoryDrain(msgspec.Struct, frozen=True, kw_only=True):
    """What ``drain --json`` prints for a journal directory."""

    directory: str
    drained: bool
    seconds: float
    slots: tuple[SlotDrain, ...]


def cmd_drain(args: argparse.Namespace) -> int:
    """``drain``: a journal file, or every slot of a journal directory that no
    live process holds."""
    config = config_of(args, directory_ok=True)
    directory = directory_of(args)
    if directory is None:
        return _cli_online.cmd_drain(args)
    directory = os.path.abspath(directory)
    return run_async(functools.partial(_drain_all, args, config, directory))


async def _drain_all(
    args: argparse.Namespace, config: ArchivistConfig, directory: str
) -> int:
    started = time.monotonic()
    slots = []
    for index in slot_indexes(directory):
        slot = await _drain_slot(config, directory, index, args.timeout)
        slots.append(slot)
        if not args.json:
            _show_slot(slot)
    result = DirectoryDrain(
        directory=directory,
        drained=not any(slot.remains for slot in slots),
        seconds=round(time.monotonic() - started, 3),
        slots=tuple(slots),
    )
    left = [f"slot-{slot.slot}" for slot in slots if slot.remains]
    if args.json:
        emit_json(result)
    elif left:
        out(f"not drained: something remains in {', '.join(left)}")
    else:
        out(f"every slot drained in {result.seconds:.1f}s")
    return ExitCode.OK if result.drained else ExitCode.NOT_OK


async def _drain_slot(
    config: ArchivistConfig, directory: str, index: int, limit: float
) -> SlotDrain:
    path = slot_journal(directory, index)
    skipped = _skipped(index, path)
    if skipped is not None:
        return skipped
    one = msgspec.structs.replace(
        config,
        journal=msgspec.structs.replace(config.journal, journal_path=path),
        slots=None,
    )
    try:
        result = await drain_journal(one, limit, label=f"slot-{index}: ")
    except CliError as exc:
        if not isinstance(exc.__cause__, JournalLocked):
            raise  # the config's backends are refused: so for every slot
        return _held(index, path, exc.__cause__.pid, None)  # taken meanwhile
    except JournalError as exc:
        return SlotDrain(slot=index, path=path, outcome="failed", error=str(exc))
    outcome = "drained" if result.drained else "not_drained"
    return SlotDrain(slot=index, path=path, outcome=outcome, result=result)


def _skipped(index: int, path: str) -> SlotDrain | None:
    """Slot ``index`` (its journal at ``path``) if it is not to be opened: held,
    or free with nothing journaled; None to drain it."""
    if not os.path.exists(path):
        return SlotDrain(slot=index, path=path, outcome="empty")
    lock = lock_of(path)
    entries: int | None = None
    with contextlib.suppress(JournalError):  # open says why, or migrates it
        entries = _entries(path)
    if lock.held:
        return _held(index, path, lock.pid, entries)
    if entries == 0:
        return SlotDrain(slot=index, path=path, outcome="empty", entries=0)
    return None


def _held(index: int, path: str, pid: int | None, entries: int | None) -> SlotDrain:
    return SlotDrain(
        slot=index, path=path, outcome="held", holder_pid=pid, entries=entries
    )


def _entries(path: str) -> int:
    """The entries the journal at ``path`` holds (read-only, no lock)."""
    with read_only(path) as conn:
        ((count,),) = conn.execute("SELECT count(*) FROM entries").fetchall()
    return int(count)


def _show_slot(slot: SlotDrain) -> None:
    name = f"slot-{slot.slot}"
    if slot.outcome == "held":
        who = (
            "another process"
            if slot.holder_pid is None
            else (f"process {slot.holder_pid}")
        )
        held = "" if slot.entries is None else f", {slot.entries} entries held"
        out(f"{name}: held by {who}{held}: skipped (its owner delivers it)")
    elif slot.outcome == "empty":
        out(f"{name}: nothing journaled: not opened")
    elif slot.outcome == "failed":
        out(f"{name}: cannot drain it: {printable(slot.error or '')}")
    elif slot.result is not None:
        first, *rest = drain_lines(slot.result)
        out(f"{name}: {first}")
        for line in rest:
            out(line)
