"""What every ``journal-archivist`` command shares: exit codes, output, the config.

Rules and theory:
- The exit codes are decided once, here (``ExitCode``), and documented in
  docs/cli.md; a command ends by returning one, or by raising ``CliError`` with
  one. ``_cli.main`` turns every other error into one line on stderr and a code.
- Output goes to ``sys.stdout`` looked up at each write (tests swap it): a human
  table by default, one JSON document per line with ``--json`` (msgspec, so the
  structs print exactly as they are defined).
- Text read from a journal or a backend is passed through ``printable`` before a
  human table shows it: a damaged name must not rewrite the terminal.
- A command is given a journal file or a journal directory of slots (a folder of
  ``slot-N`` folders: ``--journal DIR``, or a config with ``[slots]``). Decided
  here, once: ``directory_of`` names the directory, and ``--slot N`` turns it into
  that slot's journal file (``journal_of``) or a config opening that file as a
  plain journal (``config_of``), as an adopter opens an orphan. A command that
  works on one journal refuses a directory without ``--slot``.
"""

from __future__ import annotations

import enum
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec

from ._errors import JournalCorrupt, JournalIncompatible, JournalLocked
from ._printable import printable
from ._slots import slot_indexes, slot_journal

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ._config_file import ArchivistConfig
    from ._errors import JournalError

__all__ = [
    "EXIT_MEANINGS",
    "CliError",
    "ExitCode",
    "config_of",
    "directory_of",
    "emit_json",
    "human_age",
    "human_bytes",
    "human_time",
    "journal_error_code",
    "journal_of",
    "out",
    "slot_names",
    "table",
]


class ExitCode(enum.IntEnum):
    """What ``journal-archivist`` exits with (docs/cli.md lists them)."""

    #: The command did what was asked and found nothing wrong.
    OK = 0
    #: The command's own "not ok": something remains after ``drain``, ``check``
    #: found damage, ``probe`` found a required backend unreachable, no such id.
    NOT_OK = 1
    #: Bad arguments, or a config file that is refused.
    USAGE = 2
    #: Another process holds the journal (a locking command).
    LOCKED = 3
    #: The journal is missing, unreadable or corrupt (``check``: CORRUPT).
    UNREADABLE = 4
    #: The file is not a journal (``check``: NOT_A_JOURNAL), or the directory
    #: holds no slot journals.
    NOT_A_JOURNAL = 5
    #: The journal was written by a newer version of journal_archivist.
    INCOMPATIBLE = 6
    #: An unexpected error: a bug (``--debug`` shows the traceback).
    INTERNAL = 70
    #: Interrupted (Ctrl-C), except ``status --watch``, which exits 0.
    INTERRUPTED = 130


#: One line per exit code, for ``--help`` (docs/cli.md says the same).
EXIT_MEANINGS: Final = {
    ExitCode.OK: "ok",
    ExitCode.NOT_OK: "not ok: left undrained, damage found, a required backend"
    " unreachable, no such id",
    ExitCode.USAGE: "bad arguments or config",
    ExitCode.LOCKED: "the journal is held by another process",
    ExitCode.UNREADABLE: "the journal is missing, unreadable or corrupt",
    ExitCode.NOT_A_JOURNAL: "the file is not a journal, or the directory holds no"
    " slot journals",
    ExitCode.INCOMPATIBLE: "the journal was written by a newer version",
    ExitCode.INTERNAL: "internal error (a bug; --debug shows the traceback)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class CliError(Exception):
    """A command failed in a way it explains: ``message`` goes to stderr as one
    line, ``code`` is the exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.NOT_OK) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def out(text: str = "") -> None:
    """Print a line to the current ``sys.stdout``."""
    print(text, file=sys.stdout)


_json: Final = msgspec.json.Encoder()


def emit_json(value: object) -> None:
    """Print ``value`` as one line of JSON."""
    sys.stdout.write(_json.encode(value).decode() + "\n")
    sys.stdout.flush()


def journal_error_code(exc: JournalError) -> ExitCode:
    """The exit code of a journal's error (``JournalError`` and its kinds)."""
    match exc:
        case JournalLocked():
            return ExitCode.LOCKED
        case JournalIncompatible():
            return ExitCode.INCOMPATIBLE
        case JournalCorrupt() if exc.detail.startswith("not a journal"):
            return ExitCode.NOT_A_JOURNAL
        case _:
            return ExitCode.UNREADABLE


def _load(args: argparse.Namespace) -> ArchivistConfig:
    from ._config_file import load_config  # only where needed: it imports tomllib

    return load_config(args.config)


def config_of(
    args: argparse.Namespace, *, directory_ok: bool = False
) -> ArchivistConfig:
    """The config named by ``--config`` (None: the embedded default).

    With ``--slot N``, the config opens that slot's journal file as a plain
    journal (no ``[slots]``). Without it, a config whose journal is a journal
    directory is refused unless ``directory_ok``.

    Raises:
        ConfigError: the file is refused (exit code ``USAGE``).
        CliError: a directory where one journal is needed, or a bad ``--slot``.
    """
    config = _load(args)
    slot: int | None = getattr(args, "slot", None)
    if slot is None and directory_ok:
        return config
    path = config.journal.journal_path
    directory = _directory(path, configured=config.slots is not None)
    if slot is None:
        if directory is not None:
            raise _choose_a_slot(directory)
        return config
    journal = _slot_file(path, directory, slot)
    return msgspec.structs.replace(
        config,
        journal=msgspec.structs.replace(config.journal, journal_path=journal),
        slots=None,
    )


def directory_of(args: argparse.Namespace) -> str | None:
    """The journal directory a command is given (``--journal DIR``, or the
    config's), or None: a journal file, or ``--slot N`` (one slot's file).

    Raises:
        ConfigError, CliError: see ``config_of``.
    """
    if getattr(args, "slot", None) is not None:
        return None
    if getattr(args, "journal", None):
        return _directory(str(args.journal), configured=False)
    config = _load(args)
    return _directory(config.journal.journal_path, configured=config.slots is not None)


def journal_of(args: argparse.Namespace) -> str:
    """The journal file a read-only command reads: ``--journal``, else the
    config's; of a journal directory, slot ``--slot N``'s.

    Raises:
        ConfigError, CliError: see ``config_of``.
    """
    if not getattr(args, "journal", None):
        return config_of(args).journal.journal_path
    path = str(args.journal)
    directory = _directory(path, configured=False)
    slot: int | None = getattr(args, "slot", None)
    if slot is None:
        if directory is not None:
            raise _choose_a_slot(directory)
        return path
    return _slot_file(path, directory, slot)


def slot_names(indexes: Sequence[int]) -> str:
    """``slot-0, slot-1, ...`` (``none`` for no slots)."""
    return ", ".join(f"slot-{index}" for index in indexes) or "none"


def _directory(path: str, *, configured: bool) -> str | None:
    """``path`` if it is a journal directory, None if a journal file (see the
    module). ``configured``: a config's ``[slots]`` says it is a directory."""
    if not configured and not os.path.isdir(path):
        return None
    if not os.path.lexists(path):
        raise CliError(
            f"no journal directory {path}: no process has opened it yet",
            ExitCode.UNREADABLE,
        )
    if not os.path.isdir(path):
        raise CliError(
            f"{path} is not a directory, but the config's [slots] table makes"
            " journal_path a journal directory",
            ExitCode.USAGE,
        )
    if not slot_indexes(path):
        raise CliError(
            f"{path} is a directory but not a journal directory: it holds no"
            " slot-N folders",
            ExitCode.NOT_A_JOURNAL,
        )
    return path


def _slot_file(path: str, directory: str | None, slot: int) -> str:
    if directory is None:
        raise CliError(
            f"--slot {slot} needs a journal directory, and {path} is a journal file",
            ExitCode.USAGE,
        )
    indexes = slot_indexes(directory)
    if slot not in indexes:
        raise CliError(
            f"no slot-{slot} in the journal directory {directory} (it holds"
            f" {slot_names(indexes)})",
            ExitCode.USAGE,
        )
    return slot_journal(directory, slot)


def _choose_a_slot(directory: str) -> CliError:
    return CliError(
        f"{directory} is a journal directory ({slot_names(slot_indexes(directory))}):"
        " this command works on one journal, choose its slot with --slot N",
        ExitCode.USAGE,
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``header``, columns padded to their widest cell."""
    cells = [[printable(str(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def human_bytes(count: int | None) -> str:
    """``count`` bytes as ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (``-`` for None)."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_age(seconds: float | None) -> str:
    """An age as ``4.2s``, ``3m05s``, ``2h10m``, ``3d04h`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def human_time(timestamp: float | None) -> str:
    """A Unix time as ISO 8601 in UTC, to the second (``-`` for None)."""
    if timestamp is None:
        return "-"
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp!r}"
