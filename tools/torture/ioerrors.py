"""I/O-error torture: make the journal's writes and fsyncs fail for random
stretches, then cut the power; judge everything.

    python -m tools.torture.ioerrors --cycles 100 --seed 1 [--durability full|normal]
        [--faults all|write|sync] [--torn] [--dir DIR] [--keep] [--keep-logs]
        [--min-run 1.5] [--max-run 4.0] [--settle 2.0]

As ``powerloss`` (same shim, same rollback, same drain and oracle), but while each
child runs, once its archivist is open, faults are switched on and off on the
journal's files (``journal.db``, ``journal.db-wal``, matched by name) for random
stretches of 1-300 ms (log-uniform): ``write``/``pwrite`` failing with ``EIO`` or
``ENOSPC``, or ``fsync``/``fdatasync`` failing with ``EIO`` or ``ENOSPC``, without
doing the write or the sync (``--faults`` picks writes or syncs only). Stretches
start for 1.5-4 s (``--min-run``, ``--max-run``) after the child's open; then
``--settle`` seconds pass without faults before the cut.

What is proved:
- Nothing acknowledged is lost, faults or not. The rollback treats a failed sync
  as Linux does (the file's unsynced writes before it are dropped for good), so
  an append acknowledged although its commit's fsync failed shows up as lost, and
  so does one acknowledged after the archivist resumed that still depends on
  what a failed fsync dropped: ``0 lost`` (under ``full``) rules both out.
- After the faults clear, the archivist either resumes without a restart (an
  append begun after the last stretch ended is acknowledged: *resumed*) or is in
  its failed state and says so (an ``X`` line, exit 3: *failed*). Both are
  counted. A cycle where faults hit the journal and neither happened is *stuck*,
  a failure. Cycles whose faults hit nothing (no journal write or sync fell in a
  stretch) are counted as *untouched*.

Verdict (the last line), e.g.::

    ioerrors: PASS full, 100 cycles, 412 fault stretches (1903 writes and 211
    syncs failed), 1234 appends refused (...), 70 resumed, 25 failed, 5
    untouched, 0 stuck, 0 other problems, 512.3s, 41234 acknowledged, 0 lost, ...

FAIL on any violation of the oracle, a stuck cycle, a child that exits other
than by the cut or its failed state, a failed drain or an unhealthy drained
journal. Exit 0 on PASS, 1 on FAIL; ``SKIP <reason>`` and exit 0 without ``cc``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Final

from . import oracle
from .powerloss import (
    Child,
    Drive,
    Driver,
    add_common_arguments,
    loss_text,
    normal_violations,
    open_torture,
)
from .workload import EXIT_FAILED

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from ._shim import Machine

#: The faults a stretch picks from: which calls fail, with which errno.
FAULTS: Final = (
    ("write", errno.EIO),
    ("write", errno.ENOSPC),
    ("sync", errno.EIO),
    ("sync", errno.ENOSPC),
)
#: Seconds a child gets to finish opening before faults start anyway.
OPEN_LIMIT: Final = 15.0


def fault_stretches(
    min_run: float,
    max_run: float,
    settle: float,
    kinds: Sequence[tuple[str, int]],
    stretches: Counter[str],
) -> Driver:
    """A driver that switches faults (of ``kinds``) on and off while the child runs."""

    def drive(child: Child, machine: Machine, rng: random.Random) -> Drive:
        started = time.monotonic()
        # Faults during the open are another test (it may refuse the journal);
        # here they hit a running archivist.
        while not child.opened and child.alive():
            if time.monotonic() - started > OPEN_LIMIT:
                break
            time.sleep(0.01)
        drove = Drive()
        faulty_until = time.monotonic() + rng.uniform(min_run, max_run)
        while child.alive() and time.monotonic() < faulty_until:
            time.sleep(rng.uniform(0.05, 0.4))
            if not child.alive():
                break
            call, code = rng.choice(kinds)
            machine.control.set_faults(**{call: code})
            drove.faults += 1
            stretches[f"{call} {errno.errorcode[code]}"] += 1
            # Log-uniform, 1-300 ms: a short stretch fails a commit or two (and
            # the archivist should resume), a long one fails it for good.
            time.sleep(math.exp(rng.uniform(math.log(0.001), math.log(0.3))))
            machine.control.set_faults()
            drove.cleared_at = time.monotonic()
        # Then a quiet spell: long enough to resume, or to fail and say so.
        remaining = settle - (time.monotonic() - (drove.cleared_at or faulty_until))
        if remaining > 0 and child.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=remaining)
        return drove

    return drive


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.ioerrors", description=__doc__.split("\n")[0]
    )
    add_common_arguments(parser, cycles=100)
    parser.add_argument("--min-run", type=float, default=1.5)
    parser.add_argument("--max-run", type=float, default=4.0)
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds without faults before the cut, to see the archivist resume"
        " (more than the workload's 1 s block_timeout)",
    )
    parser.add_argument(
        "--faults",
        choices=["all", "write", "sync"],
        default="all",
        help="which calls fail: writes, syncs or both (default)",
    )
    args = parser.parse_args(argv)
    if args.cycles < 1 or not 0 < args.min_run <= args.max_run or args.settle < 0:
        parser.error("need --cycles >= 1, 0 < --min-run <= --max-run, --settle >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torture = open_torture("ioerrors", args)
    if isinstance(torture, int):
        return torture
    stretches: Counter[str] = Counter()
    kinds = [f for f in FAULTS if args.faults in ("all", f[0])]
    driver = fault_stretches(args.min_run, args.max_run, args.settle, kinds, stretches)
    # The cut comes from the driver, never from a count of acknowledgements.
    torture.run_cycles(driver, ack_share=0.0)
    problems, facts, verdicts, log = torture.drain_and_judge()
    torture.describe(log)
    problems.extend(torture.blind_problems())

    resumed = failed_state = untouched = stuck = 0
    refused: Counter[str] = Counter()
    for result in torture.cycles:
        refused.update(result.refused)
        hit = result.counters.get("fault_writes", 0) + result.counters.get(
            "fault_syncs", 0
        )
        if result.returncode == EXIT_FAILED and result.failure is not None:
            failed_state += 1
        elif not result.cut:
            problems.append(
                f"cycle {result.cycle}: child exit {result.returncode}"
                + (f" ({result.failure})" if result.failure else "")
            )
        elif result.resumed:
            resumed += 1
        elif not hit:
            untouched += 1
        else:
            stuck += 1
            problems.append(
                f"cycle {result.cycle}: {hit} injected errors, then neither an"
                " acknowledged append nor a failed state (no answer for"
                f" {result.quiet:.1f}s before the cut, {result.unanswered} ops"
                " unanswered)"
            )
    if facts:
        problems.extend(
            p
            for p in oracle.health_problems(facts)
            if args.durability == "full" or "lost_entries" not in p
        )
    totals = oracle.totals(verdicts)
    if args.durability == "full":
        violations = sum(totals.values())
    else:
        violations, excused = normal_violations(torture.directory, log, totals)
        torture.say(f"measured loss under normal: {loss_text(verdicts, excused)}")
    failed = bool(problems) or violations > 0
    counters = torture.totals()
    torture.say(
        "fault stretches: "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(stretches.items()))
    )
    for problem in problems:
        print(f"problem: {problem}")
    elapsed = time.monotonic() - torture.started
    refusals = ", ".join(f"{n} {name}" for name, n in refused.most_common())
    return torture.finish(
        failed,
        f"ioerrors: {'FAIL' if failed else 'PASS'} {args.durability},"
        f" {len(torture.cycles)} cycles{', torn' if args.torn else ''},"
        f" {sum(stretches.values())} fault stretches ({counters['fault_writes']}"
        f" writes and {counters['fault_syncs']} syncs failed),"
        f" {sum(refused.values())} appends refused ({refusals or 'none'}),"
        f" {resumed} resumed, {failed_state} failed, {untouched} untouched,"
        f" {stuck} stuck, {len(problems)} other problems, {elapsed:.1f}s,"
        f" {oracle.counts_text(log.acknowledged_records, verdicts)}",
    )


if __name__ == "__main__":
    sys.exit(main())
