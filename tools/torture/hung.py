"""Hung-backend torture: a backend that never answers, next to a SQLite archive.

    python -m tools.torture.hung --seconds 20 [--attempt-timeout 0.5]
        [--shutdown-timeout 1.0] [--seed 1] [--dir DIR] [--hang-aclose]

Four phases of ``--seconds / 4`` each, alternating (a shared machine drifts):
the workload (``tools.torture.workload.Workload``, in this process) appends to a
fresh journal with only the ``sqlite`` archive, then with the ``sqlite`` archive
and ``hung``, a backend whose every call (writes and ``health_check``) awaits
forever, and so on. Checked (contracts 5, 7, 8):

- The attempt timeout bounds each attempt: every call into ``hung`` is cancelled
  within ``--attempt-timeout`` + 1 s, and its ``consecutive_failures`` grows at
  the pace that implies: at most one per attempt timeout, and at least half of
  one per (attempt timeout + the largest retry delay).
- Isolation: the SQLite archive's delivery rate (entries/s, from ``health()``)
  with the hung neighbour is at least half of its rate alone (``--min-ratio``).
  Both and the ratio are reported; only a gross gap fails, the machine is shared.
- ``shutdown(timeout=T)`` returns within T + 1.5 s although ``hung`` never
  drains, also with ``--hang-aclose``, where its ``aclose`` hangs too (the
  archivist bounds the last done-marks and the backends' ``aclose`` by what is
  left of T, but at least 0.5 s each: docs/guarantees.md, contract 8).
- Nothing acknowledged is missing from the SQLite archive: after each phase the
  journal is reopened with ``hung`` disabled, drained into SQLite, and judged by the
  oracle.

Verdict (the last line): ``hung: PASS ...`` with the numbers, ending in the
oracle's counts; exit 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio

from journal_archivist import (
    Archivist,
    OverflowPolicy,
    Queued,
    Registration,
    RetryPolicy,
)
from journal_archivist.backends import ArchiveBackend

from . import oracle
from .workload import (
    Workload,
    configure_logging,
    journal_path,
    sqlite_registration,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from journal_archivist import MessageRecord
    from journal_archivist.backends import SessionGroup

#: The retry delays of the hung registration: short, so attempts follow fast.
INITIAL_DELAY: Final = 0.05
MAX_DELAY: Final = 0.1
#: How much later than its timeout a hung call may end; a loaded machine is slow.
ATTEMPT_MARGIN: Final = 1.0
SHUTDOWN_MARGIN: Final = 1.5
MIN_RATIO: Final = 0.5
WARMUP: Final = 0.3


class HungBackend(ArchiveBackend):
    """Never answers: every call awaits forever (until cancelled).

    Records how long each call lasted before it was cancelled.
    """

    def __init__(self, *, hang_aclose: bool = False) -> None:
        self.hang_aclose = hang_aclose
        self.durations: list[float] = []
        self.first_call: float | None = None

    async def _hang(self) -> None:
        started = time.monotonic()
        if self.first_call is None:
            self.first_call = started
        try:
            await anyio.sleep_forever()
        finally:
            self.durations.append(time.monotonic() - started)

    async def write_batch(self, groups: Sequence[SessionGroup]) -> None:
        await self._hang()

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        await self._hang()

    async def delete_session(self, session: UUID) -> None:
        await self._hang()

    async def health_check(self) -> None:
        await self._hang()

    async def aclose(self) -> None:
        if self.hang_aclose:
            await anyio.sleep_forever()


def hung_registration(
    backend: ArchiveBackend, attempt_timeout: float, *, enabled: bool = True
) -> Registration:
    # A large backlog that drops rather than blocks, so the hung backend cannot
    # hold appends back (BLOCK backpressure would, by design).
    return Registration(
        name="hung",
        backend=backend,
        write_policy=Queued(batch_window_ms=5, overflow=OverflowPolicy.DROP_NEWEST),
        retry=RetryPolicy(
            initial_delay=INITIAL_DELAY,
            max_delay=MAX_DELAY,
            attempt_timeout=attempt_timeout,
        ),
        readable=False,
        enabled=enabled,
    )


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    rate: float = 0.0  # SQLite entries delivered per second
    failures: int = 0  # the hung backend's consecutive failures at the end
    failures_window: float = 0.0  # seconds from its first call to that count
    durations: list[float] = field(default_factory=list)
    shutdown_seconds: float = 0.0
    verdicts: list[oracle.ArchiveVerdict] = field(default_factory=list)
    acknowledged: int = 0
    problems: list[str] = field(default_factory=list)


async def run_phase(
    directory: str,
    *,
    name: str,
    with_hung: bool,
    seconds: float,
    seed: int,
    cycle: int,
    attempt_timeout: float,
    shutdown_timeout: float,
    hang_aclose: bool,
) -> Phase:
    phase = Phase(name)
    os.makedirs(directory, exist_ok=True)
    lines: list[str] = []
    hung = HungBackend(hang_aclose=hang_aclose)
    registrations = [sqlite_registration(directory)]
    if with_hung:
        registrations.append(hung_registration(hung, attempt_timeout))
    archivist = await Archivist.open(journal_path(directory), registrations)
    try:
        workload = Workload(archivist, lines.append, seed=seed, cycle=cycle)
        async with anyio.create_task_group() as group:
            group.start_soon(workload.run)
            await anyio.sleep(WARMUP)
            delivered_before = archivist.health().backends["sqlite"].delivered
            measured_from = time.monotonic()
            await anyio.sleep(seconds)
            delivered = archivist.health().backends["sqlite"].delivered
            phase.rate = (delivered - delivered_before) / (
                time.monotonic() - measured_from
            )
            if with_hung:
                phase.failures = (
                    archivist.health().backends["hung"].consecutive_failures
                )
                if hung.first_call is not None:
                    phase.failures_window = time.monotonic() - hung.first_call
            workload.stop()
        # The attempts the timeout ended; shutdown cancels the last one early.
        phase.durations = list(hung.durations)
        if workload.failure is not None:
            phase.problems.append(f"{name}: the workload stopped: {workload.failure}")
    finally:
        started = time.monotonic()
        with anyio.CancelScope(shield=True):
            await archivist.shutdown(timeout=shutdown_timeout)
        phase.shutdown_seconds = time.monotonic() - started

    # Deliver what SQLite still lacks (hung keeps its place, disabled), then judge.
    registrations = [sqlite_registration(directory)]
    if with_hung:
        registrations.append(hung_registration(HungBackend(), 1.0, enabled=False))
    async with Archivist.open(journal_path(directory), registrations) as archivist:
        with anyio.fail_after(60):
            await archivist.wait_drained()
    log = oracle.parse_op_log(lines)
    phase.acknowledged = log.acknowledged_records
    phase.verdicts = await oracle.judge_directory(directory, log, ("sqlite",))
    return phase


async def torture(args: argparse.Namespace, directory: str) -> tuple[bool, str]:
    started = time.monotonic()
    phases: list[Phase] = []
    window = args.seconds / 4
    for number, with_hung in enumerate([False, True, False, True], 1):
        name = f"{'hung' if with_hung else 'alone'}-{number}"
        phases.append(
            await run_phase(
                os.path.join(directory, name),
                name=name,
                with_hung=with_hung,
                seconds=window,
                seed=args.seed,
                cycle=number,
                attempt_timeout=args.attempt_timeout,
                shutdown_timeout=args.shutdown_timeout,
                hang_aclose=args.hang_aclose,
            )
        )
        if not args.quiet:
            print(
                f"{name}: sqlite {phases[-1].rate:.0f} entries/s, hung"
                f" {phases[-1].failures} failures in {phases[-1].failures_window:.2f}s,"
                f" shutdown {phases[-1].shutdown_seconds:.2f}s"
            )
    alone = [p for p in phases if p.name.startswith("alone")]
    hung = [p for p in phases if p.name.startswith("hung")]
    problems = [problem for p in phases for problem in p.problems]

    rate_alone = sum(p.rate for p in alone) / len(alone)
    rate_hung = sum(p.rate for p in hung) / len(hung)
    ratio = rate_hung / rate_alone if rate_alone else 0.0
    if ratio < args.min_ratio:
        problems.append(f"SQLite throughput with the hung neighbour {ratio:.2f}x alone")

    durations = [d for p in hung for d in p.durations]
    longest_allowed = args.attempt_timeout + ATTEMPT_MARGIN
    if not durations:
        problems.append("the hung backend was never called")
    elif max(durations) > longest_allowed:
        problems.append(
            f"a hung call lasted {max(durations):.2f}s (> {longest_allowed:.2f}s)"
        )
    expected = []
    for p in hung:
        fewest = int(0.5 * p.failures_window / (args.attempt_timeout + MAX_DELAY))
        most = int(p.failures_window / args.attempt_timeout) + 1
        expected.append(f"{fewest}-{most}")
        if not fewest <= p.failures <= most:
            problems.append(
                f"{p.name}: {p.failures} failures in {p.failures_window:.2f}s,"
                f" expected {fewest}-{most}"
            )

    shutdown_bound = args.shutdown_timeout + SHUTDOWN_MARGIN
    shutdowns = [p.shutdown_seconds for p in hung]
    if max(shutdowns) > shutdown_bound:
        problems.append(
            f"shutdown(timeout={args.shutdown_timeout}) took {max(shutdowns):.2f}s"
            f" (> {shutdown_bound:.2f}s)"
        )

    verdicts = [v for p in phases for v in p.verdicts]
    if not args.quiet:
        oracle.print_verdicts(verdicts)
    for problem in problems:
        print(f"problem: {problem}")
    failed = bool(problems) or any(v.violations for v in verdicts)
    acknowledged = sum(p.acknowledged for p in phases)
    span = f"{min(durations):.2f}-{max(durations):.2f}s" if durations else "-"
    line = (
        f"hung: {'FAIL' if failed else 'PASS'} sqlite {rate_alone:.0f} entries/s"
        f" alone, {rate_hung:.0f} with a hung neighbour ({ratio:.2f}x);"
        f" hung failures {'+'.join(str(p.failures) for p in hung)} (expected"
        f" {' and '.join(expected)}), its {len(durations)} calls cancelled after"
        f" {span} (timeout {args.attempt_timeout}s);"
        f" shutdown(timeout={args.shutdown_timeout}) took"
        f" {' and '.join(f'{s:.2f}s' for s in shutdowns)};"
        f" {oracle.counts_text(acknowledged, verdicts)},"
        f" {len(problems)} other problems, {time.monotonic() - started:.1f}s"
    )
    return failed, line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.hung", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--attempt-timeout", type=float, default=0.5)
    parser.add_argument("--shutdown-timeout", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=1, help="repeat the whole run")
    parser.add_argument(
        "--min-ratio",
        type=float,
        default=MIN_RATIO,
        help="fail if SQLite's rate with the hung neighbour is below this share of"
        f" its rate alone (default {MIN_RATIO})",
    )
    parser.add_argument("--dir", help="work here (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--hang-aclose", action="store_true", help="the hung backend's aclose hangs"
    )
    parser.add_argument("--quiet", action="store_true", help="print the verdict only")
    args = parser.parse_args(argv)
    if not (args.seconds >= 2 and args.attempt_timeout > 0 and args.cycles >= 1):
        parser.error("need --seconds >= 2, --attempt-timeout > 0, --cycles >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    base = args.dir or tempfile.mkdtemp(prefix="torture-hung-")
    failed = False
    for cycle in range(1, args.cycles + 1):
        directory = os.path.join(base, f"run-{cycle}")
        cycle_args = argparse.Namespace(**{**vars(args), "seed": args.seed + cycle - 1})
        cycle_failed, line = anyio.run(torture, cycle_args, directory)
        print(line)
        failed = failed or cycle_failed
    if failed or args.keep or args.dir:
        if failed:
            print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
