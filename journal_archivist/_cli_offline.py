"""The read-only commands: ``status``, ``check`` and the ``list``/``show`` of
``dead-letters`` and ``quarantine``.

Rules and theory:
- They read the journal file with ``_offline`` and never take its lock, so they
  work while the owning service runs (and change nothing). ``--journal PATH``
  names the file directly; without it, the config's ``journal_path`` is read.
  ``status`` and ``check`` of a journal directory (every slot) are
  ``_cli_slots``'s, built from the pieces here (``watch``, ``backend_table``,
  ``show_check``).
- ``check --salvage OUT`` is the one that writes, and only a new file at ``OUT``.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Final, TypeVar

from ._cli_common import (
    CliError,
    ExitCode,
    config_of,
    emit_json,
    human_age,
    human_bytes,
    human_time,
    journal_of,
    out,
    table,
)
from ._offline import read_status
from ._offline_check import CheckReport, Verdict, check
from ._offline_tables import (
    list_dead_letters,
    list_quarantine,
    show_dead_letter,
    show_quarantine,
)
from ._printable import printable
from ._salvage import SalvageReport, salvage

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from ._records import MessageRecord
    from ._stats import BackendStats, Stats

__all__ = [
    "VERDICT_EXIT",
    "backend_table",
    "cmd_check",
    "cmd_dead_letters_list",
    "cmd_dead_letters_show",
    "cmd_quarantine_list",
    "cmd_quarantine_show",
    "cmd_status",
    "dash",
    "print_records",
    "show_check",
    "watch",
]

_T = TypeVar("_T")

#: The exit code of each ``check`` verdict.
VERDICT_EXIT: Final = {
    Verdict.OK: ExitCode.OK,
    Verdict.DAMAGED: ExitCode.NOT_OK,
    Verdict.CORRUPT: ExitCode.UNREADABLE,
    Verdict.NOT_A_JOURNAL: ExitCode.NOT_A_JOURNAL,
}
#: ANSI: cursor home, clear screen (``status --watch`` on a terminal).
_CLEAR: Final = "\x1b[H\x1b[2J"


# -- status --------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``status [--watch [SECONDS]]``: the journal's numbers, once or until Ctrl-C."""
    path = journal_of(args)
    enabled = None
    if not args.journal:  # the config says which backends are enabled
        enabled = {
            backend.name: backend.enabled for backend in config_of(args).backends
        }
    return watch(args, lambda: read_status(path, enabled=enabled), _show_status)


def watch(
    args: argparse.Namespace,
    read: Callable[[], _T],
    show: Callable[[_T, bool], None],
) -> int:
    """Show what ``read`` returns once, or every ``--watch`` seconds until Ctrl-C
    (exit code ``OK``, the way to stop watching)."""
    if args.watch is None:
        show(read(), args.json)
        return ExitCode.OK
    tty = sys.stdout.isatty()
    try:
        while True:
            value = read()
            if tty and not args.json:
                sys.stdout.write(_CLEAR)
            show(value, args.json)
            if not tty and not args.json:
                out()
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return ExitCode.OK


def _show_status(stats: Stats, as_json: bool) -> None:
    if as_json:
        emit_json(stats)
        return
    journal = stats.journal
    holder = (
        "not open (no process holds the lock)"
        if journal.lock_holder_pid is None
        else f"open by process {journal.lock_holder_pid}"
    )
    out(f"journal   {journal.path}")
    out(f"state     {holder}")
    out(
        f"size      {human_bytes(journal.size_bytes)} + WAL"
        f" {human_bytes(journal.wal_bytes)}; {human_bytes(journal.free_bytes)} free"
    )
    out(
        f"entries   {journal.entries} held; {journal.entries_journaled_total}"
        " journaled in all (high-water seq)"
    )
    out(
        f"damage    {journal.lost_entries} lost, {journal.repaired_rows} rows"
        f" repaired, {journal.quarantined} entries quarantined"
    )
    out()
    backend_table(stats.backends)


def backend_table(backends: Sequence[BackendStats]) -> None:
    """Print one line of numbers per backend, under a header."""
    table(
        ["backend", "enabled", "pending", "bytes", "oldest", "delivered",
         "dropped", "dead-lettered", "quarantined", "dead letters", "quarantine"],
        [
            [b.name, "yes" if b.enabled else "no", b.pending_entries,
             human_bytes(b.pending_bytes), human_age(b.oldest_pending_age),
             b.delivered_total, b.dropped_total, b.dead_lettered_total,
             b.quarantined_total, dash(b.dead_letters), dash(b.quarantine)]
            for b in backends
        ],
    )  # fmt: skip


def dash(value: object) -> object:
    """``value``, or ``-`` for None."""
    return "-" if value is None else value


# -- check ---------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """``check [--full] [--salvage OUT]``: the verdict, as the exit code too."""
    path = journal_of(args)
    report = check(path, full=args.full)
    rescued: SalvageReport | None = None
    if args.salvage is not None:
        if report.verdict is Verdict.NOT_A_JOURNAL:
            raise CliError(
                f"not salvaging {path}: it is not a journal", ExitCode.NOT_A_JOURNAL
            )
        rescued = salvage(path, args.salvage)
    if args.json:
        emit_json(report if rescued is None else {"check": report, "salvage": rescued})
    else:
        show_check(report)
        if rescued is not None:
            out()
            _show_salvage(rescued)
    return VERDICT_EXIT[report.verdict]


def show_check(report: CheckReport) -> None:
    """Print a ``check`` report: the verdict, the counts and the findings."""
    out(f"check of {report.path}: {report.verdict.name}")
    if report.schema_version is not None:
        out(
            f"schema {report.schema_version}, high-water seq"
            f" {dash(report.high_water_seq)};"
            f" {report.entries_checked} entries checked"
            f" ({report.entries_damaged} damaged),"
            f" {report.dead_letters_checked} dead letters checked"
            f" ({report.dead_letters_damaged} damaged)"
            + (" [integrity_check]" if report.full else "")
        )
    if report.findings:
        shown = len(report.findings)
        more = report.findings_total - shown
        out(f"findings ({report.findings_total}{f', {shown} shown' if more else ''}):")
        table(
            ["kind", "where", "detail"],
            [[f.kind, dash(f.where), f.detail] for f in report.findings],
        )


def _show_salvage(report: SalvageReport) -> None:
    out(f"salvaged {report.source} into {report.out}")
    out(
        f"entries: {report.entries_copied} copied, {report.entries_skipped} damaged"
        f" (skipped), {report.entries_settled} already settled everywhere,"
        f" {report.entries_orphaned} owed to unreadable backends only;"
        f" {report.unreadable_keys} unreadable row ids"
    )
    line = f"backends: {', '.join(report.backends_copied) or 'none'} kept"
    if report.backends_rebuilt:
        line += f"; {', '.join(report.backends_rebuilt)} rebuilt from the entries"
    if report.backends_dropped:
        line += f"; bits {report.backends_dropped} left out (unreadable names)"
    out(line)
    out(
        f"dead letters: {report.dead_letters_copied} copied,"
        f" {report.dead_letters_skipped} skipped; quarantine:"
        f" {report.quarantine_copied} copied, {report.quarantine_skipped} skipped"
    )
    out(f"high-water seq {report.high_water_seq}")
    for error in report.read_errors[:10]:
        out(f"  read error: {error}")


# -- dead letters and quarantine -----------------------------------------------


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    """``dead-letters list [--backend NAME]``."""
    letters = list_dead_letters(journal_of(args), args.backend)
    if args.json:
        emit_json(letters)
        return ExitCode.OK
    if not letters:
        out("no dead letters")
        return ExitCode.OK
    table(
        ["id", "backend", "seq", "session", "op", "bytes", "attempts", "failed at",
         "error"],
        [
            [d.id, dash(d.backend), d.seq, dash(d.session), d.op,
             human_bytes(d.payload_bytes), dash(d.attempts), human_time(d.failed_at),
             _cut(f"damaged: {d.damage}" if d.damage else d.error)]
            for d in letters
        ],
    )  # fmt: skip
    return ExitCode.OK


def cmd_dead_letters_show(args: argparse.Namespace) -> int:
    """``dead-letters show ID``: one dead letter with its records."""
    path = journal_of(args)
    try:
        letter = show_dead_letter(path, args.id)
    except KeyError:
        raise CliError(f"no dead letter with id {args.id} in {path}") from None
    if args.json:
        emit_json(letter)
        return ExitCode.OK
    _fields(
        [
            ("id", letter.id), ("backend", letter.backend), ("seq", letter.seq),
            ("session", letter.session), ("op", letter.op),
            ("attempts", letter.attempts),
            ("journaled", human_time(letter.enqueued_at)),
            ("failed at", human_time(letter.failed_at)), ("error", letter.error),
            ("damage", letter.damage), ("decode error", letter.decode_error),
        ]
    )  # fmt: skip
    print_records(letter.records)
    return ExitCode.OK


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    """``quarantine list [--backend NAME]``."""
    rows = list_quarantine(journal_of(args), args.backend)
    if args.json:
        emit_json(rows)
        return ExitCode.OK
    if not rows:
        out("nothing quarantined")
        return ExitCode.OK
    table(
        ["id", "backend", "seq", "session", "op", "bytes", "quarantined at", "reason"],
        [
            [q.id, dash(q.backend), dash(q.seq), dash(q.session), dash(q.op),
             human_bytes(q.size), human_time(q.quarantined_at), _cut(q.reason)]
            for q in rows
        ],
    )  # fmt: skip
    return ExitCode.OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    """``quarantine show ID``: one quarantined row, decoded where it decodes."""
    path = journal_of(args)
    try:
        row = show_quarantine(path, args.id)
    except KeyError:
        raise CliError(f"no quarantined row with id {args.id} in {path}") from None
    if args.json:
        emit_json(row)
        return ExitCode.OK
    _fields(
        [
            ("id", row.id), ("backend", row.backend), ("seq", row.seq),
            ("session", row.session), ("op", row.op), ("bytes", row.size),
            ("quarantined at", human_time(row.quarantined_at)),
            ("reason", row.reason), ("decode error", row.decode_error),
        ]
    )  # fmt: skip
    print_records(row.records)
    return ExitCode.OK


def _fields(pairs: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        if value is not None:
            out(f"{name.ljust(width)}  {printable(str(value))}")


def print_records(records: list[MessageRecord] | None) -> None:
    """Print decoded records as a transcript (nothing for None)."""
    if records is None:
        return
    out(f"records ({len(records)}):")
    for record in records:
        author = f" ({record.author})" if record.author else ""
        out(f"  [{record.ts.isoformat()}] {record.role}{author} {record.message_id}")
        for line in record.content_md.splitlines() or [""]:
            out(f"    {printable(line)}")


def _cut(text: str | None, width: int = 80) -> str:
    if text is None:
        return "-"
    text = printable(text)
    return text if len(text) <= width else text[: width - 3] + "..."
