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
"""

from __future__ import annotations

import enum
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec

from ._printable import printable

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ._config_file import ArchivistConfig

__all__ = [
    "EXIT_MEANINGS",
    "CliError",
    "ExitCode",
    "config_of",
    "emit_json",
    "human_age",
    "human_bytes",
    "human_time",
    "journal_of",
    "out",
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
    #: The file is not a journal (``check``: NOT_A_JOURNAL).
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
    ExitCode.NOT_A_JOURNAL: "the file is not a journal",
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


def config_of(args: argparse.Namespace) -> ArchivistConfig:
    """The config named by ``--config`` (None: the embedded default).

    Raises:
        ConfigError: the file is refused (exit code ``USAGE``).
    """
    from ._config_file import load_config  # only where needed: it imports tomllib

    return load_config(args.config)


def journal_of(args: argparse.Namespace) -> str:
    """The journal a read-only command reads: ``--journal``, else the config's."""
    if getattr(args, "journal", None):
        return str(args.journal)
    return config_of(args).journal.journal_path


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
