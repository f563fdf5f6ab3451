"""The commands that open the archivist: ``drain``, ``compact``, ``export``, the
``replay``/``purge`` of dead letters and quarantine; and ``probe`` and ``demo``.

Rules and theory:
- A locking command opens the journal as the service does, from the config
  (``Archivist.from_config``), so it takes the journal's lock: while the service
  runs it stops at once with ``JournalLocked``, exit code ``LOCKED``, and a
  message saying who holds it and what to do instead. Opening reconciles the
  journal with the config's backends, as any open does: use the service's config.
- Every archivist opened here is shut down before the command returns, with no
  drain window (``shutdown(0)``): what is left stays journaled for the service.
- Of a journal directory they open one slot, ``--slot N`` (``config_of``), as a
  plain journal; ``drain`` of every slot is ``_cli_slots``'s, over
  ``drain_journal``.
- ``probe`` opens no journal: it builds the backends and calls their
  ``health_check``, each under a timeout, all at once.
- Progress goes to stderr, so stdout holds only the result (``--json``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import msgspec

from ._archivist import Archivist
from ._cli_common import (
    CliError,
    ExitCode,
    config_of,
    emit_json,
    human_bytes,
    out,
    table,
)
from ._errors import ConfigError, JournalLocked
from ._failure import describe
from ._policies import FailureMode
from ._printable import printable

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Awaitable, Callable

    from ._config import Registration
    from ._config_file import ArchivistConfig
    from ._records import MessageRecord

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_PROBE_TIMEOUT",
    "DrainResult",
    "cmd_compact",
    "cmd_dead_letters_purge",
    "cmd_dead_letters_replay",
    "cmd_demo",
    "cmd_drain",
    "cmd_export",
    "cmd_probe",
    "cmd_quarantine_purge",
    "drain_journal",
    "drain_lines",
    "run_async",
]

_T = TypeVar("_T")

#: Seconds ``drain`` waits by default.
DEFAULT_DRAIN_TIMEOUT: Final = 60.0
#: Seconds ``probe`` gives each backend's health check by default.
DEFAULT_PROBE_TIMEOUT: Final = 10.0


def run_async(func: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``func`` in an event loop of its own (the command's)."""
    return anyio.run(func, backend="asyncio")


@contextlib.asynccontextmanager
async def opened(config: ArchivistConfig, instead: str) -> AsyncIterator[Archivist]:
    """The archivist of ``config``, shut down on exit (see the module).

    ``instead`` completes "stop it, or ..." when another process holds the journal.
    """
    try:
        archivist = await Archivist.from_config(config)
    except JournalLocked as exc:
        holder = "another process" if exc.pid is None else f"process {exc.pid}"
        raise CliError(
            f"the journal {exc.path} is held by {holder}: stop it, or {instead}",
            ExitCode.LOCKED,
        ) from exc
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # the config's registrations are refused
        raise CliError(f"cannot open the journal: {exc}", ExitCode.USAGE) from exc
    try:
        yield archivist
    finally:
        # What is left stays journaled for the service.
        await archivist.shutdown(timeout=0)


# -- drain ---------------------------------------------------------------------


class DrainedBackend(msgspec.Struct, frozen=True, kw_only=True):
    """One backend after ``drain``: what remains and why."""

    name: str
    enabled: bool
    pending_entries: int
    pending_bytes: int
    status: str
    last_error: str | None


class DrainResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``drain --json`` prints."""

    drained: bool
    seconds: float
    backends: tuple[DrainedBackend, ...]


def cmd_drain(args: argparse.Namespace) -> int:
    """``drain [--timeout S]``: deliver everything pending, or say what remains."""
    return run_async(functools.partial(_drain, args, config_of(args)))


async def _drain(args: argparse.Namespace, config: ArchivistConfig) -> int:
    result = await drain_journal(config, args.timeout)
    if args.json:
        emit_json(result)
    else:
        for line in drain_lines(result):
            out(line)
    return ExitCode.OK if result.drained else ExitCode.NOT_OK


async def drain_journal(
    config: ArchivistConfig, limit: float, *, label: str = ""
) -> DrainResult:
    """Open ``config``'s journal, deliver for up to ``limit`` seconds, and say
    what remains. ``label`` starts each progress line.

    Raises:
        CliError: the journal is held by another process (``LOCKED``, from the
            ``JournalLocked``), or the config's registrations are refused.
    """
    started = time.monotonic()
    instead = "let the service deliver (it drains on shutdown)"
    async with opened(config, instead) as archivist:
        with anyio.move_on_after(limit):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_show_progress, archivist, started, label)
                await archivist.wait_drained()
                tg.cancel_scope.cancel()
        report = archivist.health()
    _end_progress()
    backends = tuple(
        DrainedBackend(
            name=b.name,
            enabled=b.enabled,
            pending_entries=b.lag_entries,
            pending_bytes=b.lag_bytes,
            status=b.status.value,
            last_error=b.last_error,
        )
        for b in report.backends.values()
    )
    return DrainResult(
        drained=not any(b.enabled and b.pending_entries for b in backends),
        seconds=round(time.monotonic() - started, 3),
        backends=backends,
    )


def drain_lines(result: DrainResult) -> list[str]:
    """``result`` for a human: drained or not, what remains and why."""
    remaining = [b for b in result.backends if b.enabled and b.pending_entries]
    if not remaining:
        lines = [f"drained in {result.seconds:.1f}s: nothing pending"]
    else:
        lines = [f"not drained after {result.seconds:.1f}s:"]
    for b in remaining:
        reason = printable(b.last_error) if b.last_error else "still delivering"
        lines.append(
            f"  {b.name}: {b.pending_entries} entries"
            f" ({human_bytes(b.pending_bytes)}) remain; {b.status}: {reason}"
        )
    lines.extend(
        f"  note: {b.name} is disabled; its {b.pending_entries} entries wait"
        for b in result.backends
        if not b.enabled and b.pending_entries
    )
    return lines


async def _show_progress(archivist: Archivist, started: float, label: str) -> None:
    """Pending per backend: one line rewritten in place on a terminal, else a
    line a second."""
    tty = sys.stderr.isatty()
    while True:
        pending = ", ".join(
            f"{b.name} {b.lag_entries}"
            for b in archivist.health().backends.values()
            if b.enabled
        )
        elapsed = time.monotonic() - started
        line = f"{label}draining ({elapsed:.0f}s): pending {pending}"
        if tty:
            sys.stderr.write(f"\r\x1b[K{line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        await anyio.sleep(0.2 if tty else 1.0)


def _end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


# -- dead letters and quarantine -----------------------------------------------


def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    """``dead-letters replay --backend NAME [--id ID ...]``."""
    return _change(args, "replay_dead_letters", "requeued")


def cmd_dead_letters_purge(args: argparse.Namespace) -> int:
    """``dead-letters purge --backend NAME [--id ID ...]``."""
    return _change(args, "purge_dead_letters", "purged")


def cmd_quarantine_purge(args: argparse.Namespace) -> int:
    """``quarantine purge --backend NAME [--id ID ...]``."""
    return _change(args, "purge_quarantine", "purged")


def _change(args: argparse.Namespace, method: str, done: str) -> int:
    config = config_of(args)
    count = run_async(functools.partial(_call, config, args.backend, args.id, method))
    if args.json:
        emit_json({"backend": args.backend, done: count})
    else:
        what = "dead letters" if "dead" in method else "quarantined entries"
        out(f"{count} {what} of {args.backend} {done}")
    return ExitCode.OK


async def _call(
    config: ArchivistConfig, backend: str, ids: list[int] | None, method: str
) -> int:
    instead = f"call Archivist.{method}({backend!r}) from the service"
    async with opened(config, instead) as archivist:
        call = getattr(archivist, method)
        try:
            count: int = await call(backend, ids=ids or None)
        except ValueError as exc:  # the backend is not registered, or disabled
            raise CliError(str(exc), ExitCode.USAGE) from exc
    return count


# -- export --------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """``export SESSION [--from BACKEND] [--format jsonl|markdown]``."""
    return run_async(functools.partial(_export, args, config_of(args)))


async def _export(args: argparse.Namespace, config: ArchivistConfig) -> int:
    if args.from_ is not None:
        names = [backend.name for backend in config.backends]
        if args.from_ not in names:
            raise CliError(
                f"no backend named {args.from_!r} in the config (have: {names})",
                ExitCode.USAGE,
            )
        # read_session reads the best readable backend: make the chosen one the
        # only readable one (a registration's ``readable`` is not stored).
        config = msgspec.structs.replace(
            config,
            backends=tuple(
                msgspec.structs.replace(b, readable=b.name == args.from_)
                for b in config.backends
            ),
        )
    async with opened(config, "export from the service (Archivist.read_session)") as a:
        records = await a.read_session(args.session)
    if args.json or args.format == "jsonl":
        for record in records:
            emit_json(record)
    else:
        _markdown(args.session, records)
    return ExitCode.OK


def _markdown(session: object, records: list[MessageRecord]) -> None:
    out(f"# Session {session}")
    for record in records:
        author = f" ({record.author})" if record.author else ""
        out()
        out(f"### {record.role}{author}, {record.ts.isoformat()}")
        out()
        out(record.content_md)
        for attachment in record.attachments:
            where = attachment.uri or f"inline, {attachment.size} bytes"
            out(f"- attachment: {attachment.name} ({attachment.media_type}; {where})")


# -- probe ---------------------------------------------------------------------


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """One backend's answer to ``probe`` (``reachable`` None: disabled)."""

    name: str
    type: str
    required: bool
    reachable: bool | None
    seconds: float | None
    error: str | None


def cmd_probe(args: argparse.Namespace) -> int:
    """``probe [--timeout S]``: each backend's health check."""
    registrations = config_of(args, directory_ok=True).registrations()
    return run_async(functools.partial(_probe, args, registrations))


async def _probe(args: argparse.Namespace, registrations: list[Registration]) -> int:
    results: dict[str, ProbeResult] = {}
    async with anyio.create_task_group() as tg:
        for registration in registrations:
            tg.start_soon(_probe_one, registration, args.timeout, results)
    ordered = [results[r.name] for r in registrations]
    if args.json:
        emit_json(ordered)
    else:
        table(
            ["backend", "type", "required", "result", "seconds", "error"],
            [
                [p.name, p.type, "yes" if p.required else "no",
                 {True: "reachable", False: "UNREACHABLE", None: "disabled"}[
                     p.reachable
                 ],
                 "-" if p.seconds is None else f"{p.seconds:.3f}", p.error or ""]
                for p in ordered
            ],
        )  # fmt: skip
    failed = any(p.required and p.reachable is False for p in ordered)
    return ExitCode.NOT_OK if failed else ExitCode.OK


async def _probe_one(
    registration: Registration, limit: float, results: dict[str, ProbeResult]
) -> None:
    backend = registration.backend
    error: str | None = None
    seconds: float | None = None
    reachable: bool | None = None
    try:
        if registration.enabled:
            started = time.monotonic()
            try:
                with anyio.fail_after(limit):
                    await backend.health_check()
                reachable = True
            except TimeoutError:
                reachable, error = False, f"no answer within {limit:g}s"
            except Exception as exc:  # any failure is the answer we report
                reachable, error = False, describe(exc)
            seconds = time.monotonic() - started
    finally:
        with anyio.move_on_after(limit, shield=True):
            await backend.aclose()
    results[registration.name] = ProbeResult(
        name=registration.name,
        type=type(backend).__name__,
        required=registration.failure_mode is FailureMode.REQUIRED
        and registration.enabled,
        reachable=reachable,
        seconds=seconds,
        error=error,
    )


# -- compact -------------------------------------------------------------------


def cmd_compact(args: argparse.Namespace) -> int:
    """``compact``: return the journal's free pages to the filesystem."""
    config = config_of(args)
    path = os.path.abspath(config.journal.journal_path)
    return run_async(functools.partial(_compact, args, config, path))


async def _compact(args: argparse.Namespace, config: ArchivistConfig, path: str) -> int:
    before = _sizes(path)
    async with opened(config, "call Archivist.compact() from the service") as a:
        await a.compact()
    after = _sizes(path)
    if args.json:
        emit_json({"path": path, "before": before, "after": after})
    else:
        out(
            f"{path}: {human_bytes(before['size_bytes'])} + WAL"
            f" {human_bytes(before['wal_bytes'])} before,"
            f" {human_bytes(after['size_bytes'])} + WAL"
            f" {human_bytes(after['wal_bytes'])} after"
        )
    return ExitCode.OK


def _sizes(path: str) -> dict[str, int]:
    sizes = {}
    for key, suffix in (("size_bytes", ""), ("wal_bytes", "-wal")):
        try:
            sizes[key] = os.stat(path + suffix).st_size
        except OSError:
            sizes[key] = 0
    return sizes


# -- demo ----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo [--dir DIR] [--sessions N] [--messages N] [--duration S]``."""
    from ._demo import run_demo  # only here: the demo is not the tool

    # Only what was given: the demo's own defaults are the demo's to choose.
    given = {
        key: value
        for key, value in (
            ("sessions", args.sessions),
            ("messages", args.messages),
            ("duration", args.duration),
        )
        if value is not None
    }
    with contextlib.ExitStack() as stack:
        directory = args.dir
        if directory is None:
            directory = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="journal-archivist-demo-")
            )
        return run_async(
            functools.partial(
                run_demo, directory, out=sys.stdout, json_output=args.json, **given
            )
        )
