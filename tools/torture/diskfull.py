"""Disk-full torture: the journal on a small filesystem that fills up and goes
read-only, the archives on the normal disk.

    python -m tools.torture.diskfull --cycles 3 [--seed 1] [--fs ext4|tmpfs]
        [--size-mib 48] [--reserve-mib 4] [--dir DIR] [--keep]

Needs root (it mounts). Without it, or when mounting fails, prints
``diskfull: SKIP <reason>`` and exits 0. The filesystem is a loop-mounted ext4
image (``errors=remount-ro``, no blocks reserved for root) or a size-limited tmpfs,
mounted on a directory this tool creates, and unmounted in ``finally``.

Each cycle opens the journal (``free_space_reserve`` = ``--reserve-mib``) with the
workload's two archives (one of them flaky, chosen at random), runs the workload
(``tools.torture.workload.Workload``, in this process) and goes through:

1. normal: appends are acknowledged.
2. full: a filler file grows until ENOSPC (it takes the reserve too, as another
   process would). Every refusal must be ``JournalFull``, ``JournalWriteFailed``
   or ``QueueFull``, and delivery must go on (the lag must reach zero). Whether
   the done-marks can still be committed at 0 bytes free is reported, not judged:
   nothing can promise a write on a full disk.
3. low: the filler shrinks to leave half the reserve free. Appends must still be
   refused (``JournalFull``), and the done-marks must be written in the reserve:
   ``wait_drained`` must return.
4. resume: the filler is removed; appends must be acknowledged again, and
   ``wait_drained`` must return (the done-marks are written again).
5. read-only: ``mount -o remount,ro`` first (the kernel refuses it while the
   journal has files open for writing: reported), then, on ext4, an emergency
   read-only remount (``/sys/fs/ext4/<dev>/trigger_fs_error``, what a failing
   disk does with ``errors=remount-ro``). No call may hang (10 s); which errors
   the appends got and whether the archivist entered its failed state are
   reported; ``shutdown(timeout=5)`` must return. Then ``remount,rw`` is tried
   (refused after an emergency read-only remount: reported), else the filesystem
   is unmounted and mounted again, and the next cycle (or the final drain)
   reopens the journal.

At the end the journal is drained and the oracle judges everything acknowledged
against both archives. The verdict line ends in the oracle's counts; exit 0 on
PASS, 1 on FAIL. The report above it says which errors were observed where.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Final

import anyio

from journal_archivist import Archivist, ArchivistError, Durability, JournalError

from . import oracle
from .workload import (
    ARCHIVE_NAMES,
    Workload,
    build_registrations,
    configure_logging,
    drain,
    one_line,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskGroup

MIB: Final = 1024 * 1024
#: What an append may raise while the disk is full.
FULL_REFUSALS: Final = frozenset({"JournalFull", "JournalWriteFailed", "QueueFull"})
#: The longest a call may wait before it counts as hung.
HANG_LIMIT: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 5.0
SHUTDOWN_MARGIN: Final = 5.0
NORMAL_SECONDS: Final = 1.0
LOW_SECONDS: Final = 1.0
FULL_SECONDS: Final = 1.5
#: How long done-marks may take to be committed once there is room (or while
#: the disk is full, for the report).
MARK_DONE_WAIT: Final = 3.0
READ_ONLY_SECONDS: Final = 2.0
RESUME_LIMIT: Final = 15.0
DRAIN_LIMIT: Final = 20.0


class MountUnavailable(Exception):
    """Mounting is not possible here: the tool skips."""


def _command(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _error_of(result: subprocess.CompletedProcess[str]) -> str:
    return one_line(result.stderr or result.stdout or f"exit {result.returncode}")


class Filesystem:
    """A small filesystem mounted on ``base/mnt``, a directory created here."""

    def __init__(self, kind: str, size_mib: int, base: str) -> None:
        self.kind = kind
        self.size_mib = size_mib
        self.mountpoint = os.path.join(base, "mnt")
        self.image = os.path.join(base, "fs.img")
        self.mounted = False
        self._made = False  # the mount point and the image, by this run

    def mount(self) -> None:
        """Create (first time) and mount it.

        Raises:
            MountUnavailable: not root, a tool is missing or the mount failed.
        """
        if os.geteuid() != 0:
            raise MountUnavailable("not root: mounting needs root")
        if not self._made:
            # Never mount over a path this run did not create.
            try:
                os.mkdir(self.mountpoint, 0o700)
            except FileExistsError:
                raise MountUnavailable(
                    f"{self.mountpoint} exists: not mounting over what this run did"
                    " not create"
                ) from None
            self._made = True
            if self.kind == "ext4":
                if shutil.which("mkfs.ext4") is None:
                    raise MountUnavailable("mkfs.ext4 is not installed")
                with open(self.image, "wb") as image:
                    image.truncate(self.size_mib * MIB)
                made = _command("mkfs.ext4", "-q", "-F", "-m", "0", self.image)
                if made.returncode:
                    raise MountUnavailable(f"mkfs.ext4 failed: {_error_of(made)}")
        if os.path.ismount(self.mountpoint):
            raise MountUnavailable(f"{self.mountpoint} is already a mount point")
        if self.kind == "ext4":
            mounted = _command(
                "mount", "-o", "loop,errors=remount-ro", self.image, self.mountpoint
            )
        else:
            mounted = _command(
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_mib}m,mode=0700",
                "tmpfs",
                self.mountpoint,
            )
        if mounted.returncode:
            raise MountUnavailable(f"mount failed: {_error_of(mounted)}")
        self.mounted = True

    def options(self) -> list[str]:
        found = _command("findmnt", "-n", "-o", "OPTIONS", self.mountpoint)
        return found.stdout.strip().split(",")

    def read_only(self) -> bool:
        options = self.options()
        return "ro" in options or "emergency_ro" in options

    def remount(self, mode: str) -> str | None:
        """``mount -o remount,<mode>``; the error, or None if it worked."""
        result = _command("mount", "-o", f"remount,{mode}", self.mountpoint)
        return _error_of(result) if result.returncode else None

    def emergency_read_only(self) -> str | None:
        """Make ext4 remount itself read-only as after an I/O error, with files
        open for writing (a plain remount is refused then). The error, or None."""
        if self.kind != "ext4":
            return "only ext4 has an emergency read-only remount"
        source = _command("findmnt", "-n", "-o", "SOURCE", self.mountpoint)
        trigger = f"/sys/fs/ext4/{os.path.basename(source.stdout.strip())}"
        trigger += "/trigger_fs_error"
        try:
            with open(trigger, "w") as file:
                file.write("journal-archivist diskfull torture\n")
        except OSError as exc:
            return f"{trigger}: {exc}"
        return None if self.read_only() else "the filesystem is still writable"

    def unmount(self) -> None:
        if not self.mounted:
            return
        result = _command("umount", self.mountpoint)
        if result.returncode:
            _command("umount", "-l", self.mountpoint)  # busy: detach it anyway
        self.mounted = False

    def make_writable(self) -> str:
        """Back to read-write; says how."""
        error = self.remount("rw")
        if error is None and not self.read_only():
            return "remount,rw worked"
        self.unmount()
        self.mount()
        refused = error or "still read-only"
        return f"remount,rw refused ({refused}): unmounted, mounted again"

    def writable_again(self, filler: str) -> str:
        """``make_writable``, then remove ``filler`` if it came back; says how."""
        how = self.make_writable()
        if os.path.exists(filler):
            # Its unlink was not yet committed when ext4 aborted its journal.
            os.unlink(filler)
            how += "; the removed filler was back: removed again"
        return how


def fill(path: str) -> int:
    """Grow ``path`` until ENOSPC; return the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MIB, 64 * 1024, 4096, 512):
            block = b"\xa5" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return written


def shrink(path: str, free: int) -> None:
    """Cut ``path`` so that about ``free`` bytes are free on its filesystem."""
    size = os.path.getsize(path)
    missing = free - free_bytes(os.path.dirname(path))
    if missing > 0:
        os.truncate(path, max(0, size - missing))


def free_bytes(directory: str) -> int:
    """What an unprivileged writer may still write there (the library's measure)."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


@dataclass
class Observed:
    """What the tool saw, over all cycles."""

    low_refusals: dict[str, int] = field(default_factory=dict)
    low_acknowledged: int = 0
    low_drained: list[float] = field(default_factory=list)
    full_refusals: dict[str, int] = field(default_factory=dict)
    full_acknowledged: int = 0
    #: Seconds from ENOSPC to the first JournalFull, and the acknowledgements
    #: in between (the space check runs at most every second).
    refused_from: list[float] = field(default_factory=list)
    full_acknowledged_before_refusing: int = 0
    full_delivered: list[float] = field(default_factory=list)
    full_marked_done: list[str] = field(default_factory=list)
    lag_while_full: list[str] = field(default_factory=list)
    resumed_drained: list[float] = field(default_factory=list)
    resumed_after: list[float] = field(default_factory=list)
    read_only_how: list[str] = field(default_factory=list)
    read_only_errors: dict[str, int] = field(default_factory=dict)
    read_only_acknowledged: int = 0
    read_only_failed_state: list[bool] = field(default_factory=list)
    shutdowns: list[str] = field(default_factory=list)
    made_writable: list[str] = field(default_factory=list)
    reopens: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


class Driver:
    """An archivist on the small filesystem with a workload running against it."""

    def __init__(
        self, args: argparse.Namespace, base: str, fs: Filesystem, log: IO[str]
    ) -> None:
        self.args = args
        self.base = base
        self.fs = fs
        self.journal = os.path.join(fs.mountpoint, "journal.db")
        self.filler = os.path.join(fs.mountpoint, "filler")
        self._log = log
        self.observed = Observed()
        self.archivist: Archivist | None = None
        self.workload: Workload | None = None
        self._workload_done = anyio.Event()
        self._workload_scope: anyio.CancelScope | None = None
        self._workload_cycle = 0
        self._flaky = "none"

    def emit(self, line: str) -> None:
        self._log.write(line + "\n")
        self._log.flush()

    def problem(self, text: str) -> None:
        self.observed.problems.append(text)
        if not self.args.quiet:
            print(f"problem: {text}")

    async def open(self, flaky: str, why: str) -> bool:
        self._flaky = flaky
        self._workload_cycle += 1
        try:
            self.archivist = await Archivist.open(
                self.journal,
                build_registrations(
                    self.base,
                    flaky=flaky,
                    seed=self.args.seed,
                    cycle=self._workload_cycle,
                ),
                durability=Durability.FULL,
                free_space_reserve=self.args.reserve_mib * MIB,
                close_timeout=SHUTDOWN_TIMEOUT,
            )
        except JournalError as exc:
            self.observed.reopens.append(f"{why}: REFUSED {type(exc).__name__}")
            self.problem(f"open ({why}) refused: {type(exc).__name__}: {exc}")
            return False
        self.observed.reopens.append(f"{why}: opened")
        return True

    def start_workload(self, group: TaskGroup) -> None:
        assert self.archivist is not None
        self.workload = Workload(
            self.archivist, self.emit, seed=self.args.seed, cycle=self._workload_cycle
        )
        self._workload_done = anyio.Event()
        group.start_soon(self._run_workload, self.workload, self._workload_done)

    async def _run_workload(self, workload: Workload, done: anyio.Event) -> None:
        with anyio.CancelScope() as scope:
            self._workload_scope = scope
            try:
                await workload.run()
            finally:
                done.set()

    async def stop_workload(self, when: str) -> None:
        if self.workload is None:
            return
        self.workload.stop()
        with anyio.move_on_after(HANG_LIMIT):
            await self._workload_done.wait()
        if not self._workload_done.is_set():
            self.problem(
                f"{when}: producers did not stop within {HANG_LIMIT}s (a call hung)"
            )
            assert self._workload_scope is not None
            self._workload_scope.cancel()
            await self._workload_done.wait()
        self.workload = None

    async def close(self, when: str) -> None:
        if self.archivist is None:
            return
        lags = self.lags()
        archivist, self.archivist = self.archivist, None
        started = time.monotonic()
        outcome = "returned"
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(SHUTDOWN_TIMEOUT + 30) as scope:
                try:
                    await archivist.shutdown(timeout=SHUTDOWN_TIMEOUT)
                except Exception as exc:
                    outcome = f"raised {type(exc).__name__}"
            if scope.cancelled_caught:
                outcome = "hung"
        seconds = time.monotonic() - started
        self.observed.shutdowns.append(
            f"{when}: {outcome} in {seconds:.2f}s (lag {lags} before)"
        )
        if outcome == "hung" or seconds > SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN:
            self.problem(f"{when}: shutdown(timeout={SHUTDOWN_TIMEOUT}) {outcome}")

    # -- the phases --------------------------------------------------------------------

    async def normal(self, when: str) -> None:
        assert self.workload is not None
        before = self.workload.counts.acknowledged
        await anyio.sleep(NORMAL_SECONDS)
        if self.workload.counts.acknowledged == before:
            self.problem(f"{when}: no append acknowledged in {NORMAL_SECONDS}s")

    def lags(self) -> str:
        assert self.archivist is not None
        backends = self.archivist.health().backends
        return "/".join(str(backends[name].lag_entries) for name in ARCHIVE_NAMES)

    async def drained_within(self, seconds: float, when: str) -> float | None:
        """Seconds ``wait_drained`` took, or None if not within ``seconds``."""
        assert self.archivist is not None
        started = time.monotonic()
        with anyio.move_on_after(seconds):
            try:
                await self.archivist.wait_drained()
                return time.monotonic() - started
            except ArchivistError as exc:
                self.problem(f"{when}: wait_drained raised {exc!r}")
        return None

    async def lag_gone_within(self, seconds: float) -> float | None:
        """Seconds until no backend lags, or None if not within ``seconds``."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if self.lags() == "0/0":
                return time.monotonic() - started
            await anyio.sleep(0.02)
        return None

    async def low(self, when: str) -> None:
        """Half the reserve free: refused, but the done-marks are written."""
        workload = self.workload
        assert workload is not None
        await anyio.to_thread.run_sync(
            shrink, self.filler, self.args.reserve_mib * MIB // 2
        )
        acknowledged = workload.counts.acknowledged
        failures = dict(workload.counts.failures)
        low_since = time.monotonic()
        drained = await self.drained_within(DRAIN_LIMIT, when)
        if drained is None:
            self.problem(
                f"{when}: not drained within {DRAIN_LIMIT}s with the reserve free"
                f" (lag {self.lags()})"
            )
        else:
            self.observed.low_drained.append(drained)
        await anyio.sleep(max(0.0, LOW_SECONDS - (time.monotonic() - low_since)))
        refusals = _diff(workload.counts.failures, failures)
        _add(self.observed.low_refusals, refusals)
        self.observed.low_acknowledged += workload.counts.acknowledged - acknowledged
        strange = set(refusals) - FULL_REFUSALS
        if strange:
            self.problem(f"{when}: appends raised {sorted(strange)} with space low")

    async def full(self, when: str) -> None:
        """ENOSPC: refused, and delivery goes on; done-marks are reported."""
        workload = self.workload
        assert workload is not None
        await anyio.to_thread.run_sync(fill, self.filler)
        full_since = time.monotonic()
        acknowledged = workload.counts.acknowledged
        failures = dict(workload.counts.failures)
        lag_before = self.lags()
        refused_from: list[tuple[float, int]] = []  # when, acknowledged by then

        async def watch_first_refusal() -> None:
            seen = failures.get("JournalFull", 0)
            while workload.counts.failures.get("JournalFull", 0) == seen:
                await workload.next_answer()
            refused_from.append(
                (time.monotonic() - full_since, workload.counts.acknowledged)
            )

        async with anyio.create_task_group() as watching:
            watching.start_soon(watch_first_refusal)
            delivered = await self.lag_gone_within(DRAIN_LIMIT)
            if delivered is None:
                self.problem(
                    f"{when}: delivery stalled while the disk was full (lag"
                    f" {lag_before} -> {self.lags()} in {DRAIN_LIMIT}s)"
                )
            else:
                self.observed.full_delivered.append(delivered)
            marked = await self.drained_within(MARK_DONE_WAIT, when)
            self.observed.full_marked_done.append(
                "no" if marked is None else f"{marked:.2f}s"
            )
            await anyio.sleep(max(0.0, FULL_SECONDS - (time.monotonic() - full_since)))
            watching.cancel_scope.cancel()
        self.observed.lag_while_full.append(f"{lag_before}->{self.lags()}")
        if refused_from:
            seconds, acknowledged_by_then = refused_from[0]
            self.observed.refused_from.append(seconds)
            self.observed.full_acknowledged_before_refusing += (
                acknowledged_by_then - acknowledged
            )
        refusals = _diff(workload.counts.failures, failures)
        _add(self.observed.full_refusals, refusals)
        self.observed.full_acknowledged += workload.counts.acknowledged - acknowledged
        strange = set(refusals) - FULL_REFUSALS
        if strange:
            self.problem(f"{when}: appends raised {sorted(strange)} while full")

    async def resume(self, when: str, group: TaskGroup) -> None:
        os.unlink(self.filler)
        removed = time.monotonic()
        if self.workload is None or self.workload.failure is not None:
            # The archivist gave up while full: that is reported; reopen it.
            await self.stop_workload(when)
            await self.close(when)
            if not await self.open(self._flaky, f"{when}, after it failed"):
                return
            self.start_workload(group)
        workload = self.workload
        assert workload is not None
        before = workload.counts.acknowledged
        while time.monotonic() - removed < RESUME_LIMIT:
            if workload.counts.acknowledged > before:
                self.observed.resumed_after.append(time.monotonic() - removed)
                break
            await anyio.sleep(0.02)
        else:
            self.problem(
                f"{when}: no append acknowledged {RESUME_LIMIT}s after the filler"
            )
        # The done-marks the full disk held back must be written now. Appends are
        # held meanwhile: wait_drained waits for a moment with nothing pending.
        workload.hold()
        drained = await self.drained_within(DRAIN_LIMIT, when)
        workload.release()
        if drained is None:
            self.problem(f"{when}: not drained within {DRAIN_LIMIT}s after the filler")
        else:
            self.observed.resumed_drained.append(drained)

    async def read_only(self, when: str) -> bool:
        """Make the filesystem read-only under the running workload; observe.

        Returns whether it did become read-only."""
        workload, archivist = self.workload, self.archivist
        assert workload is not None
        assert archivist is not None
        error = self.fs.remount("ro")
        if error is None:
            how = "remount,ro"
        else:
            emergency = self.fs.emergency_read_only()
            if emergency is not None:
                self.observed.read_only_how.append(
                    f"remount,ro refused ({error}); {emergency}: skipped"
                )
                return False
            how = f"remount,ro refused ({error}); ext4 emergency read-only"
        self.observed.read_only_how.append(how)
        acknowledged = workload.counts.acknowledged
        failures = dict(workload.counts.failures)
        began = time.monotonic()
        while time.monotonic() - began < READ_ONLY_SECONDS:
            await anyio.sleep(0.1)
            if workload.longest_in_flight() > HANG_LIMIT:
                self.problem(f"{when}: a call has waited {HANG_LIMIT}s (hung)")
                break
        _add(self.observed.read_only_errors, _diff(workload.counts.failures, failures))
        self.observed.read_only_acknowledged += (
            workload.counts.acknowledged - acknowledged
        )
        self.observed.read_only_failed_state.append(archivist.health().journal.failed)
        return True


async def torture(
    args: argparse.Namespace, base: str, fs: Filesystem, log: IO[str]
) -> tuple[bool, str]:
    started = time.monotonic()
    rng = random.Random(f"diskfull/{args.seed}")
    driver = Driver(args, base, fs, log)
    for cycle in range(1, args.cycles + 1):
        flaky = rng.choice(["none", *ARCHIVE_NAMES])
        if not await driver.open(flaky, f"cycle {cycle}"):
            break
        async with anyio.create_task_group() as group:
            driver.start_workload(group)
            await driver.normal(f"cycle {cycle} normal")
            await driver.full(f"cycle {cycle} full")
            await driver.low(f"cycle {cycle} low")
            await driver.resume(f"cycle {cycle} resume", group)
            if driver.workload is not None:
                await driver.normal(f"cycle {cycle} after resume")
                went_read_only = await driver.read_only(f"cycle {cycle} read-only")
            else:
                went_read_only = False
            await driver.stop_workload(f"cycle {cycle}")
        await driver.close(f"cycle {cycle}")
        if went_read_only:
            try:
                driver.observed.made_writable.append(fs.writable_again(driver.filler))
            except MountUnavailable as exc:
                driver.problem(f"cycle {cycle}: could not mount again: {exc}")
                break
        if not args.quiet:
            print(
                f"cycle {cycle} done ({flaky} flaky), {time.monotonic() - started:.1f}s"
            )

    observed = driver.observed
    problems = observed.problems
    facts: dict[str, object] = {}
    try:
        facts = await drain(
            base, journal=driver.journal, within=120, reserve=args.reserve_mib * MIB
        )
    except (JournalError, TimeoutError) as exc:
        problems.append(f"final drain: {type(exc).__name__}: {exc}")
    problems.extend(oracle.health_problems(facts) if facts else [])
    log_ = oracle.read_op_log(log.name)
    verdicts = await oracle.judge_directory(base, log_)
    failed = bool(problems) or any(v.violations for v in verdicts)

    def span(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}s" if values else "never"

    def classes(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"

    if not args.quiet:
        oracle.print_verdicts(verdicts)
        print(f"final drain: {facts}")
        print(
            f"low: {classes(observed.low_refusals)}, {observed.low_acknowledged}"
            f" acknowledged, drained in {span(observed.low_drained)}"
        )
        print(
            f"full: {classes(observed.full_refusals)}, {observed.full_acknowledged}"
            f" acknowledged (all {observed.full_acknowledged_before_refusing} before"
            f" the first JournalFull, {span(observed.refused_from)} after ENOSPC);"
            f" lag {observed.lag_while_full} gone in {span(observed.full_delivered)};"
            f" done-marks committed at 0 bytes free: {observed.full_marked_done}"
        )
        print(
            f"resume: acknowledged again {span(observed.resumed_after)} after the"
            f" filler went, drained in {span(observed.resumed_drained)}"
        )
        print(f"read-only: {observed.read_only_how}")
        print(
            f"read-only: {classes(observed.read_only_errors)},"
            f" {observed.read_only_acknowledged} acknowledged, failed state"
            f" {observed.read_only_failed_state}"
        )
        print(f"shutdowns: {observed.shutdowns}")
        print(f"back to read-write: {observed.made_writable}")
        print(f"opens: {observed.reopens}")
        for problem in problems:
            print(f"problem: {problem}")

    went = len(observed.read_only_failed_state)
    marked = sum(1 for m in observed.full_marked_done if m != "no")
    line = (
        f"diskfull: {'FAIL' if failed else 'PASS'} {args.cycles} cycles on"
        f" {fs.kind} {fs.size_mib} MiB (reserve {args.reserve_mib} MiB);"
        f" low: {classes(observed.low_refusals)}, drained in"
        f" {span(observed.low_drained)};"
        f" full: {classes(observed.full_refusals)}, lag gone in"
        f" {span(observed.full_delivered)}, done-marks committed"
        f" {marked}/{len(observed.full_marked_done)};"
        f" resumed in {span(observed.resumed_after)};"
        f" read-only {went}/{args.cycles}: {classes(observed.read_only_errors)},"
        f" failed state {sum(observed.read_only_failed_state)}/{went};"
        f" {oracle.counts_text(log_.acknowledged_records, verdicts)},"
        f" {len(problems)} other problems, {time.monotonic() - started:.1f}s"
    )
    return failed, line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.torture.diskfull", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fs", choices=["ext4", "tmpfs"], default="ext4")
    parser.add_argument("--size-mib", type=int, default=48)
    parser.add_argument("--reserve-mib", type=int, default=4)
    parser.add_argument("--dir", help="work here (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="print the verdict only")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.size_mib < 8 or args.reserve_mib < 1:
        parser.error("need --cycles >= 1, --size-mib >= 8, --reserve-mib >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    base = args.dir or tempfile.mkdtemp(prefix="torture-diskfull-")
    fs = Filesystem(args.fs, args.size_mib, base)
    clean_up = False  # kept unless it passed (or skipped), for a post-mortem
    try:
        try:
            fs.mount()
        except MountUnavailable as exc:
            print(f"diskfull: SKIP {exc}")
            clean_up = True
            return 0
        with open(os.path.join(base, "oplog.txt"), "a", encoding="utf-8") as log:
            failed, line = anyio.run(torture, args, base, fs, log)
        clean_up = not failed
    finally:
        fs.unmount()
        if clean_up and not (args.keep or args.dir):
            shutil.rmtree(base, ignore_errors=True)
    print(line)
    if failed:
        print(f"kept {base} (the journal is in fs.img for ext4)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
