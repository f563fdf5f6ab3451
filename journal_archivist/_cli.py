"""``journal-archivist``: the command line (docs/cli.md).

Rules and theory:
- ``main`` parses the arguments, runs one command and returns its exit code
  (``ExitCode``, decided once in ``_cli_common``); it never raises and never
  prints a traceback, except with ``--debug``. Every error becomes one line on
  stderr, ``journal-archivist: error: ...``, and the code its kind calls for.
- The read-only commands (``status``, ``check``, ``dead-letters list|show``,
  ``quarantine list|show``) read the file without its lock (``_cli_offline``);
  the others open the archivist and so take the lock (``_cli_online``).
  ``status``, ``check`` and ``drain`` also take a journal directory of slots,
  every slot at once (``_cli_slots``); the others take one slot (``--slot N``).
- The library's own log lines go to stderr while a command runs, WARNING and up
  (DEBUG with ``--debug``); the handler is removed when ``main`` returns.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import traceback
import uuid
from typing import TYPE_CHECKING, Final

from . import __version__
from ._cli_common import EXIT_MEANINGS, CliError, ExitCode, journal_error_code
from ._cli_offline import (
    cmd_dead_letters_list,
    cmd_dead_letters_show,
    cmd_quarantine_list,
    cmd_quarantine_show,
)
from ._cli_online import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_PROBE_TIMEOUT,
    cmd_compact,
    cmd_dead_letters_purge,
    cmd_dead_letters_replay,
    cmd_demo,
    cmd_export,
    cmd_probe,
    cmd_quarantine_purge,
)
from ._cli_slots import cmd_check, cmd_drain, cmd_status
from ._errors import ArchivistError, ConfigError, JournalError
from ._failure import describe

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["PROG", "build_parser", "main"]

PROG: Final = "journal-archivist"
#: Seconds between two ``status --watch`` snapshots when none is given.
DEFAULT_WATCH_INTERVAL: Final = 2.0

_EXIT_CODES: Final = "\n".join(
    f"  {code.value:<3} {meaning}" for code, meaning in EXIT_MEANINGS.items()
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``journal-archivist`` with ``argv`` (default: ``sys.argv[1:]``) and
    return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if command is None:  # a command group without its subcommand, or nothing
        (args.parser if hasattr(args, "parser") else parser).print_help(sys.stderr)
        return ExitCode.USAGE
    logger = logging.getLogger("journal_archivist")
    level = logger.level
    handler = _log_to_stderr(logger, debug=args.debug)
    try:
        return command(args)
    except BaseException as exc:
        if not isinstance(exc, Exception | KeyboardInterrupt):
            raise  # SystemExit and the like are not ours to turn into a code
        code, message = _classify(exc)
        if args.debug:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return code
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _classify(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the one-line message for ``exc``."""
    line = " ".join(str(exc).split())
    match exc:
        case CliError():
            return exc.code, " ".join(exc.message.split())
        case KeyboardInterrupt():
            return ExitCode.INTERRUPTED, "interrupted"
        case ConfigError():
            return ExitCode.USAGE, line
        case JournalError():
            return journal_error_code(exc), line
        case ArchivistError():
            return ExitCode.NOT_OK, line
        case _:
            return (
                ExitCode.INTERNAL,
                f"internal error: {describe(exc)} (run with --debug for the traceback)",
            )


def _log_to_stderr(logger: logging.Logger, *, debug: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.addHandler(handler)
    if debug:
        logger.setLevel(logging.DEBUG)
    return handler


# -- the parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and option (docs/cli.md)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate a journal_archivist journal.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(
            f"""
            examples:
              {PROG} status --config archivist.toml
              {PROG} check --journal data/journal.db
              {PROG} drain --config archivist.toml --timeout 120

            exit codes:
            """
        )
        + _EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace], int] | None,
        summary: str,
        example: str,
        *,
        parents: Sequence[argparse.ArgumentParser] = (),
        group: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
    ) -> argparse.ArgumentParser:
        # A group (run None) takes no options of its own: its subcommand's
        # defaults would overwrite them.
        sub = group.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_epilog("example:\n" + example),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[*([_common()] if run else []), *parents],
        )
        sub.set_defaults(run=run, parser=sub)
        return sub

    demo = command(
        "demo",
        cmd_demo,
        "Run a simulated chat service on the embedded default, one archive down "
        "for a while, and check every message reached every archive.",
        f"  {PROG} demo --dir /tmp/demo --sessions 20 --messages 500",
    )
    demo.add_argument(
        "--dir", help="an empty or missing folder for its files (default: a temp dir)"
    )
    demo.add_argument("--sessions", type=_count, help="chat sessions to run")
    demo.add_argument("--messages", type=_count, help="messages in all")
    demo.add_argument(
        "--duration", type=_seconds, metavar="S", help="about how long it runs"
    )

    status = command(
        "status",
        cmd_status,
        "Show the journal's numbers (read-only; works while the service runs).",
        f"  {PROG} status --config archivist.toml --watch 5",
        parents=[_config(journal=True)],
    )
    status.add_argument(
        "--watch",
        nargs="?",
        type=_seconds,
        const=DEFAULT_WATCH_INTERVAL,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_INTERVAL:g}) until Ctrl-C",
    )

    check = command(
        "check",
        cmd_check,
        "Check the journal file (read-only): OK, DAMAGED, CORRUPT or NOT_A_JOURNAL.",
        f"  {PROG} check --journal data/journal.db --salvage data/salvaged.db",
        parents=[_config(journal=True)],
    )
    check.add_argument(
        "--full", action="store_true", help="PRAGMA integrity_check (slower)"
    )
    check.add_argument(
        "--salvage",
        metavar="OUT",
        help="copy every intact entry into a new journal at OUT",
    )

    drain = command(
        "drain",
        cmd_drain,
        "Deliver everything pending, then stop (takes the journal's lock).",
        f"  {PROG} drain --config archivist.toml --timeout 300",
        parents=[_config()],
    )
    drain.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default {DEFAULT_DRAIN_TIMEOUT:g})",
    )

    dead = command(
        "dead-letters",
        None,
        "List, show, replay or purge dead letters.",
        f"  {PROG} dead-letters list --config archivist.toml --backend warehouse",
    )
    letters = dead.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    _side_table(command, letters, "dead letter", replay=True)

    quarantine = command(
        "quarantine",
        None,
        "List, show or purge quarantined (damaged) entries.",
        f"  {PROG} quarantine list --journal data/journal.db",
    )
    rows = quarantine.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    _side_table(command, rows, "quarantined row", replay=False)

    export = command(
        "export",
        cmd_export,
        "Print a session's transcript: archived and still journaled records.",
        f"  {PROG} export 0190a4c2-7d5e-7c1a-9b1e-3f7d2c9a8b10 --format jsonl",
        parents=[_config()],
    )
    export.add_argument("session", type=_uuid, metavar="SESSION", help="a UUID")
    export.add_argument(
        "--from",
        dest="from_",
        metavar="BACKEND",
        help="read this backend (default: the best readable one)",
    )
    export.add_argument("--format", choices=["jsonl", "markdown"], default="markdown")

    probe = command(
        "probe",
        cmd_probe,
        "Call each configured backend's health check (opens no journal).",
        f"  {PROG} probe --config archivist.toml --timeout 5",
        parents=[_config(slot=False)],
    )
    probe.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_PROBE_TIMEOUT,
        metavar="S",
        help=f"per backend (default {DEFAULT_PROBE_TIMEOUT:g})",
    )

    command(
        "compact",
        cmd_compact,
        "Return the journal's free pages to the filesystem (takes the lock).",
        f"  {PROG} compact --config archivist.toml",
        parents=[_config()],
    )
    return parser


def _side_table(
    command: Callable[..., argparse.ArgumentParser],
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    what: str,
    *,
    replay: bool,
) -> None:
    """The subcommands of ``dead-letters`` (``replay``) or ``quarantine``."""
    name = "dead-letters" if replay else "quarantine"
    listing = command(
        "list",
        cmd_dead_letters_list if replay else cmd_quarantine_list,
        f"List every {what} (read-only).",
        f"  {PROG} {name} list --config archivist.toml --backend archive",
        parents=[_config(journal=True)],
        group=group,
    )
    listing.add_argument("--backend", metavar="NAME", help="only this backend's")
    show = command(
        "show",
        cmd_dead_letters_show if replay else cmd_quarantine_show,
        f"Show one {what} with its records (read-only).",
        f"  {PROG} {name} show 12 --journal data/journal.db",
        parents=[_config(journal=True)],
        group=group,
    )
    show.add_argument("id", type=int, metavar="ID")
    changes = [("purge", cmd_dead_letters_purge if replay else cmd_quarantine_purge)]
    if replay:
        changes.insert(0, ("replay", cmd_dead_letters_replay))
    for verb, run in changes:
        sub = command(
            verb,
            run,
            f"{verb.capitalize()} a backend's {what}s, all or by --id (takes the"
            " journal's lock: stop the service first).",
            f"  {PROG} {name} {verb} --config archivist.toml --backend archive"
            " --id 3 --id 4",
            parents=[_config()],
            group=group,
        )
        sub.add_argument("--backend", metavar="NAME", required=True)
        sub.add_argument(
            "--id", type=int, action="append", metavar="ID", help="repeatable"
        )


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs"
    )
    return common


def _config(*, journal: bool = False, slot: bool = True) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_mutually_exclusive_group() if journal else parent
    where.add_argument(
        "--config",
        metavar="PATH",
        help="the TOML config (default: the embedded one, under ./archivist-data/)",
    )
    if journal:
        where.add_argument(
            "--journal",
            metavar="PATH",
            help="read this journal file (or journal directory) directly",
        )
    if slot:
        parent.add_argument(
            "--slot",
            type=_index,
            metavar="N",
            help="of a journal directory, work on slot N alone",
        )
    return parent


def _epilog(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a slot number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"slot numbers start at 0, got {value}")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None
