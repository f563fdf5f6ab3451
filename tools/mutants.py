"""Mutation testing: plant one realistic bug at a time and check that a test fails.

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python tools/mutants.py               # every mutant, 2 at a time
    .venv/bin/python tools/mutants.py --list        # names, files, what each plants
    .venv/bin/python tools/mutants.py --only NAME --only OTHER --jobs 1
    .venv/bin/python tools/mutants.py --full        # the whole suite for every mutant

Each mutant is a small exact textual replacement ``(file, old, new, description)``
in the real code: a bug a tired engineer might write (an off-by-one, a dropped
fsync, a check skipped), not syntax noise. The output is one line per mutant and a
score line, ``mutants: 37/38 caught (97.4 %), 1 survived: <names>``.

Rules and theory:
- **A mutant runs in a scratch copy** of the work tree (``.venv``, ``.git`` and
  caches left out) with the existing virtualenv. pytest runs with the copy as its
  working directory and ``PYTHONPATH`` pointing at it, so the copy is what the
  tests and their child processes import (the editable install's finder comes last
  on ``sys.meta_path``). A probe plugin records ``journal_archivist.__file__`` of
  every run: a run that imported anything else is an error, never a result.
- **A baseline run comes first**: the unmutated copy under the same command must
  pass, or nothing is run (a failing suite would "catch" every mutant).
- **One snapshot per run.** The work tree is copied once, at the start; the
  baseline and every mutant are copies of that snapshot, so edits made to the tree
  during a run (others at work) change nothing of it.
- **Stale mutants are refused.** ``old`` must occur exactly once in its file and
  the mutated file must compile; otherwise the code moved under the mutant, and it
  must be rewritten, not silently skipped. So give ``old`` enough context: a
  mutant that still applies to code that changed around it may plant another bug
  than the one it describes.
- **Caught means a test failed** (pytest exit status 1). A run that times out is
  counted as caught and said so in its line and in the score line (a hang is a
  failure CI reports too). A collection or import error (status 2-5) is an
  *error*, not a catch: none of these mutants should break an import.
- **Subsets first, then the whole suite.** A mutant may name the tests that should
  catch it, to keep runs short. One that survives its subset runs again on the
  whole suite before it is reported as a survivor (``--no-confirm`` skips that).
- **A catch must be reproducible.** The failing test runs again, alone, on the
  mutated copy (up to ``RECHECKS`` times). If it passes, it is a flaky test, not a
  catch: it is set aside (deselected) and the same tests run again without it. A
  mutant that only flaky tests "caught" is reported ``FLAKY``, not counted as
  caught, with the tests named (``--no-recheck`` trusts every first failure). A
  test known to be flaky can be left out of every run with ``--deselect``.
- ``tests/test_tooling.py`` is left out: ruff and mypy would "catch" a mutant for
  its style, not for its behaviour, and mypy alone takes minutes.
- ``CI=true`` is set for every run: Hypothesis uses its derandomised ``ci``
  profile, so a result can be reproduced, and the PostgreSQL tests fail rather
  than skip without a server (a skipped test catches nothing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ROOT: Final = Path(__file__).resolve().parent.parent

#: Left out of every scratch copy.
_NOT_COPIED: Final = frozenset(
    {
        ".venv",
        ".git",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".mypy_cache",
        ".hypothesis",
        "journal_archivist.egg-info",
    }
)
#: Seconds one pytest run may take before it is killed and counted as a timeout.
DEFAULT_TIMEOUT: Final = 900.0
DEFAULT_JOBS: Final = 2

_PROBE_MODULE: Final = "_mutants_probe"
_PROBE_SOURCE: Final = '''"""tools/mutants.py: which journal_archivist was imported?"""

import os
import sys


def pytest_sessionfinish(session, exitstatus):
    module = sys.modules.get("journal_archivist")
    where = getattr(module, "__file__", None) or "not imported"
    with open(os.environ["MUTANTS_PROBE_OUT"], "w") as out:
        out.write(where)
'''


class Mutant(NamedTuple):
    """One planted bug: replace ``old`` (exactly once in ``file``) by ``new``."""

    name: str
    file: str
    old: str
    new: str
    description: str
    #: Test paths (files or node ids) that should catch it, run first; empty: the
    #: whole suite.
    tests: tuple[str, ...] = ()


_J = "journal_archivist/"
_B = "journal_archivist/backends/"

MUTANTS: Final[tuple[Mutant, ...]] = (
    # -- the journal -------------------------------------------------------------
    Mutant(
        "journal-synchronous-normal",
        _J + "_journal.py",
        'sync = "FULL" if durability is Durability.FULL else "NORMAL"',
        'sync = "NORMAL"',
        "the journal opens at synchronous=NORMAL even when Durability.FULL is asked",
        ("tests/test_journal.py", "tests/torture/test_powerloss.py"),
    ),
    Mutant(
        "journal-quick-check-skipped",
        _J + "_journal_file.py",
        'f"PRAGMA quick_check({QUICK_CHECK_LIMIT})"',
        "\"SELECT 'ok'\"",
        "PRAGMA quick_check at open replaced by a cheap query: a damaged page that"
        " open never reads is not refused",
        ("tests/test_journal.py", "tests/test_damage.py"),
    ),
    Mutant(
        "journal-directory-not-synced",
        _J + "_journal_file.py",
        "        try:\n            sync_folder(os.path.dirname(real))\n",
        "        try:\n            pass\n",
        "a new journal file's directory is not fsync'd: the file's name may not"
        " survive a power loss",
        ("tests/test_journal_file.py", "tests/torture/test_powerloss.py"),
    ),
    Mutant(
        "journal-secure-delete-build-default",
        _J + "_journal_file.py",
        '                await conn.execute("PRAGMA secure_delete = FAST")\n',
        "",
        "the journal deletes with SQLite's build default (SECURE_DELETE on Debian):"
        " a done-mark writes its entry's whole size again and no longer fits in"
        " what is left of the reserve",
        ("tests/torture/test_diskfull.py",),
    ),
    Mutant(
        "sqlite-wal-switch-not-retried",
        _B + "_sqlite_open.py",
        "            if not await backoff.pause():\n",
        "            if True:\n",
        "a new archive's switch to WAL is not tried again while another connection"
        " creates the same file: the open fails at once despite busy_timeout",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "settle-deletes-per-range-not-per-piece",
        _J + "_transaction.py",
        "for mask, after, upto in overlaid(ranges)],",
        "for mask, after, upto in ranges],",
        "rows two backends settle in one transaction are checked against each"
        " backend's range alone: neither deletes them, and they stay with targets 0",
        ("tests/test_settle.py",),
    ),
    Mutant(
        "erasure-time-rounded-in-floats",
        _J + "_transaction.py",
        "return math.ceil(Fraction(stamp) * 1_000_000)",
        "return math.ceil(stamp * 1_000_000)",
        "the erasure time kept in microseconds is rounded up in floating point: the"
        " product may round down first, and after a restart with the clock behind"
        " a record after the erasure gets the erasure's own time",
        ("tests/test_erasure.py",),
    ),
    Mutant(
        "entry-crc-ignores-header",
        _J + "_schema.py",
        "return zlib.crc32(payload, zlib.crc32(_CRC_HEADER.pack(seq, session, op,"
        " origin)))",
        'return zlib.crc32(payload, zlib.crc32(origin.to_bytes(8, "big")))',
        "the entry checksum covers payload and origin but not seq, session or op",
        ("tests/test_damage.py", "tests/test_journal.py"),
    ),
    Mutant(
        "journal-settle-off-by-one",
        _J + "_transaction.py",
        '"DELETE FROM entries WHERE seq > ? AND seq <= ? AND coalesce(targets, 0)',
        '"DELETE FROM entries WHERE seq > ? AND seq < ? AND coalesce(targets, 0)',
        "a done-mark deletes the settled range but its last entry (seq < upto)",
        ("tests/test_journal.py", "tests/test_archivist.py"),
    ),
    Mutant(
        "reader-skips-first-pending",
        _J + "_reader.py",
        "FROM entries WHERE seq >= ? AND seq < ?",
        "FROM entries WHERE seq > ? AND seq < ?",
        "a writer reading its backlog from the journal skips the entry at its"
        " start (seq > start)",
        ("tests/test_recovery.py", "tests/test_archivist.py", "tests/test_overflow.py"),
    ),
    Mutant(
        "reader-delivers-damaged",
        _J + "_rows.py",
        "            and crc == entry_crc(seq, session, op, origin, payload)\n",
        "",
        "the reader no longer compares the stored checksum: a damaged entry is"
        " delivered, not quarantined",
        ("tests/test_journal.py", "tests/test_damage.py"),
    ),
    Mutant(
        "lost-tail-off-by-one",
        _J + "_journal_load.py",
        "lost = recorded - last_seq\n",
        "lost = recorded - last_seq - 1\n",
        "entries lost with a WAL tail are counted one short",
        ("tests/test_journal.py",),
    ),
    Mutant(
        "drop-oldest-drops-newest",
        _J + "_transaction.py",
        '" ORDER BY seq LIMIT ?",',
        '" ORDER BY seq DESC LIMIT ?",',
        "DROP_OLDEST picks the newest untaken entries instead of the oldest",
        ("tests/test_overflow.py",),
    ),
    Mutant(
        "drop-oldest-ignores-bytes",
        _J + "_transaction.py",
        "while len(dropped) < count or freed < nbytes:",
        "while len(dropped) < count:",
        "DROP_OLDEST drops as many entries as the count excess asks, ignoring the"
        " byte excess",
        ("tests/test_overflow.py",),
    ),
    Mutant(
        "migration-launders-damage",
        _J + "_journal_file.py",
        "                    and crc == entry_crc_v1(seq, session, op, payload)\n",
        "",
        "migrating to v2 reseals every entry, also one whose old checksum fails: the"
        " damage is laundered and delivered",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "new-backend-starts-at-zero",
        _J + "_journal_load.py",
        "BackendRow(free_bits[i], name, last_seq, 0, 0, 0, 0, 0, 0, last_seq, 0)",
        "BackendRow(free_bits[i], name, 0, 0, 0, 0, 0, 0, 0, last_seq, 0)",
        "a newly registered backend starts at seq 0, not at the tail: it may be"
        " owed entries journaled before it (under a reused bit)",
        ("tests/test_journal.py",),
    ),
    Mutant(
        "rebuilt-row-skips-first-owed",
        _J + "_journal_load.py",
        "row.cursor = last_seq if first is None else _int(first) - 1",
        "row.cursor = last_seq if first is None else _int(first)",
        "a backend row rebuilt from the entries starts just past its first owed"
        " entry, which is never delivered",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "backend-row-checksum-unchecked",
        _J + "_rows.py",
        "            if named and not negative and crc == row.crc():\n",
        "            if named and not negative:\n",
        "a backend row's checksum is not checked at open: a cursor flipped upwards"
        " silently skips entries",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "missing-entries-not-counted",
        _J + "_backlog.py",
        "            missing=drift[0] if drift else 0,",
        "            missing=0,",
        "owed entries found missing from the journal are settled without being"
        " counted as lost",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "reader-owed-by-targets",
        _J + "_reader.py",
        'f" AND origin & ? AND {_NOT_DROPPED} ORDER BY seq LIMIT ?",',
        'f" AND targets & ? AND {_NOT_DROPPED} ORDER BY seq LIMIT ?",',
        "a writer reads what it is owed from targets (no checksum) instead of origin:"
        " a flipped targets bit loses the entry for that backend",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "large-payload-row-leaks",
        _J + "_transaction.py",
        "            await self._delete_orphan_payloads(ranges)\n            return",
        "            return",
        "a large entry's payload row is not deleted with it (single backend)",
        ("tests/test_journal.py",),
    ),
    Mutant(
        "no-rewrite-after-failed-fsync",
        _J + "_upkeep.py",
        "            if not self._journal.rewrite_needed:\n"
        "                self._journal.rewrite_needed = True",
        "            if False:\n                self._journal.rewrite_needed = True",
        "after a failed write or fsync the journal is not rewritten before"
        " acknowledging again: later commits chain onto dropped WAL frames",
        ("tests/torture/test_ioerrors.py", "tests/test_failure.py"),
    ),
    Mutant(
        "closing-journal-drops-its-wal",
        _J + "_journal.py",
        "                if self.rewrite_needed:\n"
        "                    guard = await self._keep_the_wal(rewrite_within)",
        "                if False:\n"
        "                    guard = await self._keep_the_wal(rewrite_within)",
        "a journal closed while it must be rewritten checkpoints and deletes its WAL"
        " on top of pages a failed fsync may have dropped",
        ("tests/test_failure.py", "tests/torture/test_ioerrors.py"),
    ),
    # -- the committer -------------------------------------------------------------
    Mutant(
        "append-commit-not-durable",
        _J + "_committer.py",
        "durable = bool(inserts) or step is not None",
        "durable = False",
        "appends commit on the settle-only connection (synchronous=NORMAL): a"
        " dropped fsync under Durability.FULL",
        ("tests/test_committer.py", "tests/test_journal.py"),
    ),
    Mutant(
        "failed-commit-acknowledged",
        _J + "_intake.py",
        "        append.finish(error)\n",
        "        append.finish()\n",
        "the appends of a group whose commit failed are acknowledged",
        ("tests/test_journal.py", "tests/test_failure.py"),
    ),
    Mutant(
        "drop-newest-count-not-persisted",
        _J + "_ledger.py",
        "        dropped=len(drops) + dropped_newest,\n",
        "        dropped=len(drops),\n",
        "DROP_NEWEST drops are counted in memory only: the count does not survive a"
        " restart",
        ("tests/test_overflow.py", "tests/test_archivist.py"),
    ),
    Mutant(
        "disk-full-counts-as-io-error",
        _J + "_journal_file.py",
        "and code & 0xFF == sqlite3.SQLITE_IOERR\n",
        "and code & 0xFF in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL)\n",
        "a full disk (SQLITE_FULL) counts as an I/O error: full-disk commits fail"
        " the archivist",
        ("tests/test_failure.py", "tests/test_committer.py"),
    ),
    Mutant(
        "fails-at-fourth-io-error",
        _J + "_upkeep.py",
        "self._io_failures >= MAX_IO_FAILURES",
        "self._io_failures > MAX_IO_FAILURES",
        "the archivist fails at the fourth I/O error in a row, not the third",
        ("tests/test_failure.py", "tests/test_committer.py"),
    ),
    Mutant(
        "disk-full-resets-io-streak",
        _J + "_upkeep.py",
        "        io_failure = exc.io_error\n",
        "        io_failure = exc.io_error\n"
        "        if not io_failure:\n"
        "            self._io_failures = 0  # the streak is of I/O errors in a row\n",
        "a failed commit that is not an I/O error resets the I/O-error streak",
        ("tests/test_committer.py", "tests/test_failure.py"),
    ),
    Mutant(
        "no-rewrite-after-failed-write",
        _J + "_upkeep.py",
        "            if not self._journal.rewrite_needed:\n"
        "                self._journal.rewrite_needed = True\n",
        "            if not self._journal.rewrite_needed:\n",
        "after a failed write or fsync the journal is not rewritten before the"
        " next acknowledgement (fsyncgate: pages the kernel dropped stay lost)",
        ("tests/torture/test_ioerrors.py", "tests/test_failure.py"),
    ),
    Mutant(
        "erasure-keeps-unregistered-copies",
        _J + "_committer.py",
        "await tx.journal_erasures(\n"
        "                            numbered.erased, self._names, numbered.stamp\n"
        "                        )",
        "pass  # each backend purges its copies when it settles the erasure",
        "an erasure leaves the dead letters and quarantined copies kept for"
        " backends no longer registered",
        ("tests/test_erasure.py",),
    ),
    Mutant(
        "sync-waits-for-dropped-entry",
        _J + "_waiters.py",
        "        if not targets & self._book.mask:\n"
        "            return SyncWaiter.dropped(self._overflow)\n",
        "",
        "a Sync appender waits for delivery of an entry its backend's overflow"
        " policy dropped",
        ("tests/test_writer.py", "tests/test_overflow.py"),
    ),
    Mutant(
        "drop-oldest-drops-lone-newest",
        _J + "_bookkeeping.py",
        "keep = tail if not book.in_flight else tail + 1",
        "keep = tail + 1",
        "with nothing in flight, DROP_OLDEST may drop the entry just appended",
        ("tests/test_overflow.py", "tests/test_committer.py"),
    ),
    Mutant(
        "dead-letter-not-written",
        _J + "_bookkeeping.py",
        "        if delta.dead:\n"
        "            await tx.dead_letter(name, delta.dead, at)\n",
        "",
        "a BEST_EFFORT backend gives up on an entry without copying it to dead_letters",
        ("tests/test_writer.py",),
    ),
    Mutant(
        "settle-deletes-shared-entries",
        _J + "_committer.py",
        "self._shared = len(journal.backends) > 1",
        "self._shared = len(journal.backends) > 2",
        "with two backends, a done-mark deletes entries the other backend still owes",
        ("tests/test_journal.py", "tests/test_archivist.py"),
    ),
    # -- the writers -------------------------------------------------------------
    Mutant(
        "settled-before-delivered",
        _J + "_writer.py",
        "        if live:\n"
        "            await self._dispatcher.deliver(live, dead)\n"
        "        self._settle(batch, dead)\n",
        "        self._settle(batch, dead)\n"
        "        if live:\n"
        "            await self._dispatcher.deliver(live, dead)\n",
        "a batch is settled (marked done) before its delivery succeeds",
        ("tests/test_writer.py", "tests/test_recovery.py"),
    ),
    Mutant(
        "required-dead-letters",
        _J + "_delivery.py",
        "    return Step.JUDGE if best_effort and gave_up else Step.RETRY\n",
        "    return Step.JUDGE if gave_up else Step.RETRY\n",
        "a REQUIRED backend gives up on a failing batch and dead-letters it",
        ("tests/test_delivery.py", "tests/test_writer.py"),
    ),
    Mutant(
        "best-effort-gives-up-early",
        _J + "_delivery.py",
        "gave_up = not retryable or attempt >= max_attempts",
        "gave_up = not retryable or attempt >= max_attempts - 1",
        "a BEST_EFFORT batch is given up one attempt before max_attempts",
        ("tests/test_delivery.py", "tests/test_writer.py"),
    ),
    Mutant(
        "dead-letters-during-outage",
        _J + "_delivery.py",
        "    if not healthy:\n"
        "        return Step.RETRY  # an outage: the batch waits, it is not poison\n",
        "",
        "a BEST_EFFORT batch given up is dead-lettered whatever health_check says:"
        " an outage dead-letters everything",
        ("tests/test_delivery.py", "tests/test_writer.py"),
    ),
    Mutant(
        "bisect-right-half-first",
        _J + "_dispatch.py",
        "                    await self.deliver(left, dead)\n"
        "                    await self.deliver(right, dead)\n",
        "                    await self.deliver(right, dead)\n"
        "                    await self.deliver(left, dead)\n",
        "a bisected batch delivers its right half before its left: a session's"
        " records are reordered",
        ("tests/test_writer.py", "tests/test_erasure.py"),
    ),
    Mutant(
        "drop-floor-skips-erasures",
        _J + "_backlog.py",
        "or (source[0].seq <= floor and source[0].op == _APPEND)",
        "or source[0].seq <= floor",
        "a writer skips every entry under its DROP_OLDEST floor, erasures included",
        ("tests/test_erasure.py", "tests/test_overflow.py"),
    ),
    Mutant(
        "sync-waiter-off-by-one",
        _J + "_writer.py",
        "lambda w: w.seq <= upto, lambda w: failed.get(w.seq), final=True",
        "lambda w: w.seq < upto, lambda w: failed.get(w.seq), final=True",
        "settling a batch wakes the Sync appenders of every entry but its last",
        ("tests/test_writer.py",),
    ),
    Mutant(
        "required-sync-not-told-of-failure",
        _J + "_dispatch.py",
        "        if not self._best_effort:\n            # Every waiting Sync",
        "        if self._best_effort:\n            # Every waiting Sync",
        "a failed attempt wakes BEST_EFFORT Sync appenders instead of REQUIRED ones",
        ("tests/test_writer.py",),
    ),
    Mutant(
        "retry-after-ignored",
        _J + "_delivery.py",
        "    return max(policy_delay, min(asked, RETRY_AFTER_CAP))\n",
        "    return policy_delay\n",
        "the backoff ignores the retry_after a backend asked for",
        ("tests/test_erasure.py", "tests/test_writer.py"),
    ),
    Mutant(
        "unhealthy-one-failure-late",
        _J + "_health.py",
        "if consecutive_failures < UNHEALTHY_AFTER:",
        "if consecutive_failures <= UNHEALTHY_AFTER:",
        "a backend turns UNHEALTHY after four failures in a row, not three (and"
        " its writer probes health_check one failure late)",
        ("tests/test_health.py", "tests/test_writer.py"),
    ),
    Mutant(
        "failure-wakes-no-waiter",
        _J + "_lifecycle.py",
        "        for writer in self.writers:\n"
        "            writer.close()  # wakes wait_drained and Sync appenders now",
        "        for writer in self.writers:\n            pass",
        "a dead loop does not wake wait_drained or Sync appenders: they wait until"
        " the shutdown sequence reaches them",
        ("tests/test_failure.py",),
    ),
    Mutant(
        "no-event-loop-check",
        _J + "_archivist.py",
        "        if not self._in_own_loop():\n"
        "            closed = self._runtime.abandoned or self._loop.is_closed()",
        "        if False:\n"
        "            closed = self._runtime.abandoned or self._loop.is_closed()",
        "a call from another event loop goes ahead instead of raising WrongEventLoop",
        ("tests/test_failure.py",),
    ),
    Mutant(
        "aclose-not-bounded-by-shutdown",
        _J + "_lifecycle.py",
        "        limit = self._time_left(BACKEND_CLOSE_TIMEOUT)",
        "        limit = BACKEND_CLOSE_TIMEOUT",
        "the backends' aclose get their 5 s whatever is left of shutdown's deadline",
        ("tests/torture/test_hung.py",),
    ),
    Mutant(
        "payload-kept-after-commit",
        _J + "_intake.py",
        '        append.payload = b""\n',
        "",
        "the encoded payload stays with the entry handed to the writers (a large"
        " record held twice while it is delivered)",
        ("tests/test_committer.py", "tests/test_writer.py", "tests/test_journal.py"),
    ),
    # -- admission -----------------------------------------------------------------
    Mutant(
        "fits-off-by-one",
        _J + "_admission.py",
        "if self.pending + 1 > self.capacity:",
        "if self.pending + 1 >= self.capacity:",
        "a backlog is full one entry before its capacity",
        ("tests/test_admission.py",),
    ),
    Mutant(
        "oversized-entry-never-fits",
        _J + "_admission.py",
        "if self.capacity_bytes is None or self.pending == 0:",
        "if self.capacity_bytes is None:",
        "an entry larger than capacity_bytes does not fit even an empty backlog",
        ("tests/test_admission.py",),
    ),
    Mutant(
        "drop-oldest-acts-as-drop-newest",
        _J + "_admission.py",
        "and backlog.overflow is OverflowPolicy.DROP_NEWEST",
        "and backlog.overflow is not OverflowPolicy.BLOCK",
        "DROP_OLDEST drops the incoming entry, as DROP_NEWEST does",
        ("tests/test_admission.py",),
    ),
    Mutant(
        "erasure-subject-to-capacity",
        _J + "_admission.py",
        "        if index in erasures:\n"
        "            admit_erasure(index, size)\n"
        "            continue\n",
        "",
        "an erasure is refused, blocked or dropped for capacity like an append",
        ("tests/test_admission.py", "tests/test_erasure.py"),
    ),
    Mutant(
        "erasure-passes-own-session",
        _J + "_admission.py",
        "                    if erasing and session not in waiting:\n",
        "                    if erasing:\n",
        "an erasure (in the group or queued beyond it) passes a blocked append of"
        " its own session made before it",
        ("tests/test_admission.py", "tests/test_erasure.py", "tests/test_committer.py"),
    ),
    Mutant(
        "fast-path-ignores-bytes",
        _J + "_admission.py",
        "        b.pending + count <= b.capacity\n"
        "        and (b.capacity_bytes is None"
        " or b.pending_bytes + total <= b.capacity_bytes)\n",
        "        b.pending + count <= b.capacity\n",
        "the all-fit fast path checks the entry count but not capacity_bytes",
        ("tests/test_admission.py",),
    ),
    Mutant(
        "blocked-append-overtaken",
        _J + "_admission.py",
        "            break\n        targets = 0\n",
        "            continue\n        targets = 0\n",
        "appends behind a blocked one are admitted before it",
        ("tests/test_admission.py", "tests/test_overflow.py"),
    ),
    Mutant(
        "excess-trims-lone-oversized",
        _J + "_admission.py",
        "if self.capacity_bytes is None or self.pending <= 1:",
        "if self.capacity_bytes is None:",
        "a lone entry larger than capacity_bytes counts as excess, so DROP_OLDEST"
        " trims the backlog it alone fills",
        ("tests/test_admission.py", "tests/test_overflow.py"),
    ),
    # -- batching ------------------------------------------------------------------
    Mutant(
        "bisect-loses-an-entry",
        _J + "_batching.py",
        "return entries[:middle], entries[middle:]",
        "return entries[:middle], entries[middle + 1 :]",
        "bisecting a batch loses the entry at the middle",
        ("tests/test_batching.py",),
    ),
    Mutant(
        "cut-returns-zero",
        _J + "_batching.py",
        "if total > max_bytes and count > 0:",
        "if total > max_bytes:",
        "a first entry larger than max_batch_bytes makes an empty batch",
        ("tests/test_batching.py",),
    ),
    Mutant(
        "coalesce-erasure-keeps-earlier",
        _J + "_batching.py",
        "merged[entry.session] = ([], [])",
        "merged.setdefault(entry.session, ([], []))",
        "an erasure in a batch keeps its session's records coalesced before it,"
        " which the backend then archives after erasing",
        ("tests/test_batching.py", "tests/test_erasure.py"),
    ),
    Mutant(
        "coalesce-reorders-session",
        _J + "_batching.py",
        "            group[0].extend(records)\n",
        "            group[0][:0] = records\n",
        "coalescing puts a session's later records before its earlier ones",
        ("tests/test_batching.py",),
    ),
    Mutant(
        "erasure-sent-without-its-time",
        _J + "_batching.py",
        "            erased_at.get(session),\n",
        "            None,\n",
        "an erasure reaches the archives without its journal time, so it erases"
        " (and marks) as of its arrival: records appended after it in other"
        " journals are lost",
        ("tests/test_batching.py", "tests/torture/test_fanin.py"),
    ),
    Mutant(
        "records-sent-without-their-times",
        _J + "_batching.py",
        "            tuple(times),\n",
        "            (),\n",
        "records reach the archives without their journal times, so a record"
        " delayed in another journal passes an erasure mark and comes back",
        ("tests/test_batching.py", "tests/torture/test_fanin.py"),
    ),
    Mutant(
        "journal-times-follow-the-clock-back",
        _J + "_intake.py",
        "stamp = now if now > stamp else math.nextafter(stamp, math.inf)",
        "stamp = now",
        "journal times follow the clock back: a record appended after an"
        " erasure can carry an earlier time and be refused by the erasure's mark",
        ("tests/test_intake.py", "tests/test_erasure.py"),
    ),
    Mutant(
        "erasure-time-forgotten-at-close",
        _J + "_transaction.py",
        "execute(RAISE_META, (LAST_ERASURE_US, to_micros(stamp)))",
        "execute('SELECT ?, ?', (LAST_ERASURE_US, 0))",
        "after a restart with the clock behind, appends get times before an"
        " erasure already delivered, and the archives' marks refuse them",
        ("tests/test_erasure.py",),
    ),
    Mutant(
        "replay-gets-a-new-time",
        _J + "_maintenance.py",
        "append.enqueued_at = entry.enqueued_at",
        "append.enqueued_at = 0.0",
        "a replayed dead letter gets a new journal time, so it passes an erasure"
        " mark set since it was first journaled",
        ("tests/test_maintenance.py",),
    ),
    # -- records -------------------------------------------------------------------
    Mutant(
        "whitespace-role-accepted",
        _J + "_records.py",
        "if not record.role.strip():",
        "if not record.role:",
        "a role of whitespace only passes validation",
        ("tests/test_records.py",),
    ),
    Mutant(
        "repeated-message-id-accepted",
        _J + "_records.py",
        "first = seen.setdefault(record.message_id, index)",
        "first = seen.get(record.message_id, index)",
        "a message_id repeated within one append is not detected",
        ("tests/test_records.py",),
    ),
    Mutant(
        "record-size-off-by-one",
        _J + "_records.py",
        "if size > max_record_bytes:",
        "if size >= max_record_bytes:",
        "a record of exactly max_record_bytes is refused",
        ("tests/test_records.py",),
    ),
    Mutant(
        "uuid7-counter-not-incremented",
        _J + "_records.py",
        "ms, counter = last_ms, last_counter + 1",
        "ms, counter = last_ms, last_counter",
        "UUIDv7 ids within one millisecond are not strictly increasing",
        ("tests/test_records.py",),
    ),
    Mutant(
        "attachment-size-unchecked",
        _J + "_records.py",
        "    if att.data is not None and att.size != len(att.data):\n"
        '        return f"{where}.size {_brief(att.size)} != len(data)'
        ' {len(att.data)}"\n',
        "",
        "an inline attachment whose size disagrees with its data passes validation",
        ("tests/test_records.py",),
    ),
    # -- SqliteArchive ------------------------------------------------------------
    Mutant(
        "sqlite-archive-synchronous-off",
        _B + "_sqlite_open.py",
        'await conn.execute("PRAGMA synchronous = FULL")',
        'await conn.execute("PRAGMA synchronous = OFF")',
        "the SQLite archive acknowledges batches at synchronous=OFF",
        ("tests/backends/test_sqlite_archive.py", "tests/torture/test_powerloss.py"),
    ),
    Mutant(
        "sqlite-archive-not-idempotent",
        _B + "_sqlite_sql.py",
        '_ON_CONFLICT: Final = " ON CONFLICT (message_id) DO NOTHING"',
        '_ON_CONFLICT: Final = ""',
        "the SQLite archive inserts without ON CONFLICT DO NOTHING: a redelivered"
        " record is refused",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-batch-keeps-records-before-erasure",
        _B + "_sqlite_sql.py",
        "        if index >= last_erase.get(group.session, index):\n",
        "        if True:\n",
        "the SQLite archive keeps a batch's records that come before an erasing"
        " group of their session (a direct call's records and erasure share one"
        " time, so the erasure does not delete them)",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-insert-ignores-mark",
        _B + "_sqlite_sql.py",
        '" WHERE m.session = v.column2 AND m.erased_at > v.column9)"',
        '" WHERE m.session = v.column2 AND 0)"',
        "the SQLite archive stores a record appended before its session's"
        " erasure mark: an erased record comes back from a lagging journal",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-reads-by-ts",
        _B + "_sqlite_read.py",
        '" FROM messages WHERE session = ? ORDER BY seq"\n)\nREAD_CHECKED',
        '" FROM messages WHERE session = ? ORDER BY ts"\n)\nREAD_CHECKED',
        "the SQLite archive reads a session back by timestamp, not append order",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-corrupt-retried",
        _B + "_sqlite_sql.py",
        '    if primary in _DAMAGE_CODES or "malformed" in str(exc):\n'
        "        return False, False\n",
        '    if primary in _DAMAGE_CODES or "malformed" in str(exc):\n'
        "        return True, False\n",
        "a corrupt SQLite archive is classified retryable: its batches are retried"
        " forever instead of failing for good",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-erase-leaves-wal",
        _B + "sqlite.py",
        "            if erases:\n                await self._checkpoint(conn)\n",
        "",
        "an erasure in the SQLite archive is not followed by a WAL checkpoint:"
        " erased content stays in the WAL",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    # -- JsonlArchive --------------------------------------------------------------
    Mutant(
        "jsonl-written-file-not-synced",
        _B + "_jsonl_batch.py",
        "                    target.synced = False\n",
        "",
        "a JSONL file already known synced is not fsync'd after new lines are appended",
        ("tests/backends/test_jsonl_archive.py", "tests/torture/test_powerloss.py"),
    ),
    Mutant(
        "jsonl-created-file-dir-not-synced",
        _B + "_jsonl_batch.py",
        "                self._dir_dirty |= created\n",
        "",
        "creating a JSONL session file does not mark the directory for an fsync",
        ("tests/backends/test_jsonl_archive.py", "tests/torture/test_powerloss.py"),
    ),
    Mutant(
        "jsonl-not-idempotent",
        _B + "_jsonl_batch.py",
        "                        state.ids.add(key)\n",
        "",
        "the JSONL archive never remembers the ids it writes: a redelivered record"
        " is written again",
        ("tests/backends/test_jsonl_archive.py",),
    ),
    Mutant(
        "jsonl-erase-keeps-earlier",
        _B + "_jsonl_batch.py",
        "            plan.records.clear()\n",
        "",
        "a JSONL erasing group keeps the records of the session's earlier groups,"
        " which it writes after erasing",
        ("tests/backends/test_jsonl_archive.py",),
    ),
    Mutant(
        "jsonl-cache-trusts-grown-file",
        _B + "_jsonl_batch.py",
        "            and cached.size == stat.st_size\n",
        "",
        "the JSONL id cache is trusted though the file changed size behind it"
        " (another writer, an operator's edit)",
        ("tests/backends/test_jsonl_archive.py",),
    ),
    Mutant(
        "jsonl-writev-drops-partial-rest",
        _B + "_jsonl_files.py",
        "                views[at] = views[at][written:]\n                written = 0",
        "                at += 1\n                written = 0",
        "after a short writev the rest of the partly written line is skipped",
        ("tests/backends/test_jsonl_archive.py",),
    ),
    Mutant(
        "sqlite-large-values-kept",
        _B + "sqlite.py",
        "                self._large.clear()  # what a failed statement never took",
        "                pass",
        "a failed write keeps the large contents it put aside (memory held)",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "sqlite-content-not-restored",
        _B + "_sqlite_read.py",
        "    if record.content_md:\n        return record\n",
        "    return record\n",
        "a record read back keeps the empty content of its JSON",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    # -- PostgresArchive -----------------------------------------------------------
    Mutant(
        "postgres-not-idempotent",
        _B + "_postgres_sql.py",
        "                ON CONFLICT (message_id) DO NOTHING\n"
        "                RETURNING session, ts\n",
        "                RETURNING session, ts\n",
        "the PostgreSQL archive inserts without ON CONFLICT DO NOTHING: a"
        " redelivered record is refused",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-no-transaction",
        _B + "postgres.py",
        "            async with connection.transaction():\n"
        "                # Lock first",
        '            async with __import__("contextlib").nullcontext():\n'
        "                # Lock first",
        "the PostgreSQL archive runs a batch's statements outside a transaction:"
        " a failed batch keeps what ran before the failure",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-erase-keeps-count",
        _B + "_postgres_sql.py",
        "SET (message_count, first_ts, last_ts) = (\n"
        "                SELECT count(*), min(m.ts), max(m.ts)",
        "SET (message_count, first_ts, last_ts) = (\n"
        "                SELECT s.message_count, min(m.ts), max(m.ts)",
        "a PostgreSQL erasure deletes the messages but keeps the session's count",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-mark-lowered",
        _B + "_postgres_sql.py",
        "SET erased_at = greatest(k.erased_at, excluded.erased_at)",
        "SET erased_at = excluded.erased_at",
        "an older PostgreSQL erasure arriving after a newer one lowers the"
        " session's mark: a lagging record erased by the newer one comes back",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-reads-by-ts",
        _B + "_postgres_sql.py",
        "WHERE session = $1 ORDER BY seq",
        "WHERE session = $1 ORDER BY ts",
        "the PostgreSQL archive reads a session back by timestamp, not append order",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-deadlock-not-retryable",
        _B + "_postgres_sql.py",
        'RETRYABLE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})',
        'RETRYABLE_CLASSES: Final = frozenset({"08", "53", "57", "58"})',
        "a PostgreSQL serialization failure or deadlock (class 40) is final, so a"
        " BEST_EFFORT backend dead-letters sound records",
        ("tests/backends/test_postgres_archive.py",),
    ),
    Mutant(
        "postgres-unreachable-final",
        _B + "_postgres_sql.py",
        'return True, f"cannot reach the server: {type(exc).__name__}: {exc}"',
        'return False, f"cannot reach the server: {type(exc).__name__}: {exc}"',
        "an OSError reaching PostgreSQL (connection refused) is classified final:"
        " an outage dead-letters records",
        ("tests/backends/test_postgres_archive.py",),
    ),
    # -- WebhookArchive ------------------------------------------------------------
    Mutant(
        "webhook-429-final",
        _B + "_webhook_wire.py",
        "return status >= 500 or status in _RETRYABLE_STATUSES",
        "return status >= 500",
        "a webhook answer 429 (or 408) is classified as final, not retryable",
        ("tests/backends/test_webhook_archive.py",),
    ),
    Mutant(
        "webhook-redirect-delivered",
        _B + "webhook.py",
        "        if 200 <= status < 300:\n            return\n        retryable",
        "        if 200 <= status < 400:\n            return\n        retryable",
        "a webhook answer 3xx counts as delivered",
        ("tests/backends/test_webhook_archive.py",),
    ),
    Mutant(
        "webhook-erasure-keyed-by-content",
        _B + "_webhook_wire.py",
        "    if any(group.erase for group in groups):\n"
        "        return secrets.token_hex(32)\n",
        "",
        "a webhook body with an erasure gets the content key, so two erasures of a"
        " session share one Idempotency-Key",
        ("tests/backends/test_webhook_archive.py",),
    ),
    Mutant(
        "webhook-drops-bare-erasure",
        _B + "_webhook_wire.py",
        "        if group.erase or records:\n",
        "        if records:\n",
        "the webhook leaves out a batch's erasing groups that carry no records",
        ("tests/backends/test_webhook_archive.py",),
    ),
    Mutant(
        "webhook-probe-ignores-refused-credentials",
        _B + "_webhook_wire.py",
        "_PROBE_REFUSED: Final = frozenset({401, 403, 407, 408, 429})",
        "_PROBE_REFUSED: Final = frozenset({408, 429})",
        "the webhook's OPTIONS probe passes when the receiver refuses our"
        " credentials (401/403/407), so BEST_EFFORT dead-letters every record",
        ("tests/backends/test_webhook_archive.py",),
    ),
    Mutant(
        "webhook-batch-key-ignores-grouping",
        _B + "_webhook_wire.py",
        "        if batch:\n"
        '            digest.update(len(group.records).to_bytes(4, "big"))\n',
        "",
        "a per_batch body's Idempotency-Key leaves out each group's record count:"
        " regrouped records share a key",
        ("tests/backends/test_webhook_archive.py",),
    ),
    # -- found in review, after the first full run ------------------------------
    Mutant(
        "reader-floor-ignores-targets",
        _J + "_reader.py",
        '_NOT_DROPPED: Final = "NOT (op = 1 AND seq <= ? AND NOT targets & ?)"',
        '_NOT_DROPPED: Final = "NOT (op = 1 AND seq <= ? AND ? = ?)"',
        "every append under the stored DROP_OLDEST floor counts as dropped: the"
        " batch in flight at a shutdown is lost",
        ("tests/test_overflow.py", "tests/test_damage.py"),
    ),
    Mutant(
        "compaction-before-rewrite",
        _J + "_upkeep.py",
        "        self.compact_due = False\n"
        "        refused = await self.rewrite_if_needed()\n",
        "        self.compact_due = False\n        refused = None\n",
        "compaction checkpoints while a failed fsync still asks for the WAL to be"
        " written back: frames from past a hole reach the database file",
        ("tests/test_failure.py",),
    ),
    Mutant(
        "checkpoint-before-rewrite",
        _J + "_upkeep.py",
        "        self.wal_debt = 0\n        refused = await self.rewrite_if_needed()\n",
        "        self.wal_debt = 0\n        refused = None\n",
        "a checkpoint runs while a failed fsync still asks for the WAL to be"
        " written back: frames from past a hole reach the database file",
        ("tests/test_failure.py",),
    ),
    Mutant(
        "rewrite-failure-not-counted",
        _J + "_journal_file.py",
        "    io_error = isinstance(exc, OSError) or (\n",
        "    io_error = (\n",
        "a rewrite whose fsync fails (an OSError) never counts toward the"
        " three-failures rule: appends are refused forever",
        ("tests/test_failure.py",),
    ),
    Mutant(
        "backend-name-repair-valid-only",
        _J + "_rows.py",
        "    if sound_numbers:\n        for index in range(len(raw_name) * 8):",
        "    if sound_numbers and name is not None:\n"
        "        for index in range(len(raw_name) * 8):",
        "one flipped bit that makes a backend's name not UTF-8 is not undone: the"
        " journal is refused at every open",
        ("tests/test_damage.py",),
    ),
    Mutant(
        "sqlite-content-any-type",
        _B + "_sqlite_read.py",
        "    \"SELECT CAST(record AS BLOB), CASE typeof(content_md) WHEN 'text'\"\n"
        "    \" THEN CAST(content_md AS BLOB) WHEN 'blob' THEN content_md END\"\n",
        '    "SELECT CAST(record AS BLOB), CAST(content_md AS BLOB)"\n',
        "SqliteArchive's hot read takes a content_md of any type: an INTEGER comes"
        " back as the text of its digits",
        ("tests/backends/test_sqlite_archive.py",),
    ),
    Mutant(
        "files-follow-symlinks",
        _J + "_private_files.py",
        "fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, FILE_MODE)",
        "fd = os.open(path, flags | _CLOEXEC | _NONBLOCK, FILE_MODE)",
        "files are opened without O_NOFOLLOW: a planted symlink at the lock file"
        " makes the open overwrite the target's first bytes",
        ("tests/test_private_files.py",),
    ),
    Mutant(
        "files-hard-links-allowed",
        _J + "_private_files.py",
        "    if info.st_nlink != 1:\n",
        "    if info.st_nlink < 1:\n",
        "a file with a second hard link is used: writing it changes the other file",
        ("tests/test_private_files.py",),
    ),
    Mutant(
        "folders-take-the-umask",
        _J + "_private_files.py",
        "        _set_folder_mode(new)\n",
        "",
        "folders created for the journal keep mkdir's umask-dependent mode",
        ("tests/test_private_files.py",),
    ),
    Mutant(
        "sticky-shared-folder-allowed",
        _J + "_private_files.py",
        "    if mode & stat.S_IWOTH:\n",
        "    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:\n",
        "a world-writable folder with the sticky bit (/tmp) is trusted, though"
        " anyone can plant names in it",
        ("tests/test_private_files.py",),
    ),
    Mutant(
        "loose-content-tightened",
        _J + "_private_files.py",
        "if mode & 0o077 and secret and info.st_size > 0:",
        "if mode & 0o077 and secret and info.st_size < 0:",
        "a non-empty file others could read is quietly tightened instead of refused",
        ("tests/test_private_files.py",),
    ),
    Mutant(
        "thread-append-refusal-swallowed",
        _J + "_loop_thread.py",
        "        if isinstance(then, BaseException):\n            call.error = then\n",
        "        if isinstance(then, BaseException):\n            pass\n",
        "a SyncArchivist append the committer refused returns as if journaled",
        ("tests/test_blocking.py",),
    ),
    Mutant(
        "thread-append-skips-sync-wait",
        _J + "_loop_thread.py",
        "            self._workers.start(call, then)  # a worker waits for its Sync"
        " backends\n            return\n",
        "            then.close()  # type: ignore[attr-defined]\n",
        "a SyncArchivist append returns at the commit, before its Sync backends"
        " delivered it",
        ("tests/test_blocking.py",),
    ),
    Mutant(
        "append-count-unchecked",
        _J + "_archivist.py",
        "    check_append_count(len(records), max_append_records)\n",
        "",
        "append_messages never checks max_append_records",
        ("tests/test_archivist.py", "tests/test_records.py"),
    ),
    Mutant(
        "append-bytes-off-by-one",
        _J + "_records.py",
        "        if total > byte_limit:\n",
        "        if total >= byte_limit:\n",
        "a call whose records encode to exactly max_append_bytes is refused",
        ("tests/test_records.py", "tests/test_archivist.py"),
    ),
    Mutant(
        "json-depth-one-more",
        _J + "_records.py",
        "    if depth > MAX_JSON_DEPTH:\n",
        "    if depth > MAX_JSON_DEPTH + 1:\n",
        "JSON values may nest one level deeper than MAX_JSON_DEPTH",
        ("tests/test_records.py",),
    ),
    Mutant(
        "jsonl-one-chunk",
        _B + "_jsonl_batch.py",
        "                for at in range(0, len(items), max_open_files):\n"
        "                    chunk = items[at : at + max_open_files]\n",
        "                for at in range(0, len(items), len(items)):\n"
        "                    chunk = items[at : at + len(items)]\n",
        "a JSONL batch holds every session file open at once: EMFILE past the"
        " descriptor limit, on every retry",
        ("tests/backends/test_jsonl_security.py",),
    ),
    Mutant(
        "jsonl-probe-truncates",
        _B + "_jsonl_files.py",
        "        os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,\n",
        "        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC,\n",
        "the JSONL health probe opens its file O_TRUNC instead of O_EXCL",
        ("tests/backends/test_jsonl_security.py",),
    ),
    Mutant(
        "jsonl-line-separators-raw",
        _B + "_jsonl_files.py",
        "        return escape_line_breaks(encode_record(record))\n",
        "        return encode_record(record)\n",
        "JSONL lines keep U+2028/U+2029 and C1 controls raw: splitlines() sees more"
        " lines than records",
        ("tests/backends/test_jsonl_security.py",),
    ),
    Mutant(
        "probe-one-failure-late",
        _J + "_delivery.py",
        "Step.PROBE_FIRST if consecutive_failures >= UNHEALTHY_AFTER else",
        "Step.PROBE_FIRST if consecutive_failures > UNHEALTHY_AFTER else",
        "an unhealthy backend gets one more attempt before its health check",
        ("tests/test_delivery.py", "tests/test_writer.py"),
    ),
    Mutant(
        "replay-past-a-pending-erasure",
        _J + "_maintenance.py",
        "elif erased.get(entry.session, 0) > entry.seq:",
        "elif False:",
        "a replay requeues a dead letter of a session whose erasure is still"
        " pending for the backend: the erased record comes back after it",
        ("tests/test_maintenance.py",),
    ),
    Mutant(
        "replay-keeps-the-dead-letter",
        _J + "_maintenance.py",
        'await tx.discard("dead_letters", request.backend, ids)',
        "pass",
        "a replayed dead letter stays in the table: a second replay delivers it"
        " again and the operator sees it still failed",
        ("tests/test_maintenance.py",),
    ),
    Mutant(
        "replay-to-every-backend",
        _J + "_maintenance.py",
        "mask = request.writer.mask",
        "mask = -1 & ((1 << 62) - 1)",
        "a replay requeues the entry for every backend, not only the one that"
        " dead-lettered it",
        ("tests/test_maintenance.py",),
    ),
)


# -- running -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one mutant's runs found."""

    mutant: Mutant
    status: str  # "caught", "timeout", "survived", "flaky", "error"
    seconds: float
    detail: str  # the first failing test, or why it is an error
    whole_suite: bool  # whether the deciding run was the whole suite

    @property
    def caught(self) -> bool:
        return self.status in ("caught", "timeout")


class Stale(Exception):
    """A mutant that no longer applies to the code (internal)."""


def mutated_source(mutant: Mutant, root: Path = ROOT) -> str:
    """The mutated text of ``mutant.file`` under ``root``.

    Raises:
        Stale: the file is missing, ``old`` is not found exactly once, or the
            result does not compile.
    """
    path = root / mutant.file
    try:
        text = path.read_text()
    except OSError as exc:
        raise Stale(f"{mutant.file}: {exc.strerror}") from None
    found = text.count(mutant.old)
    if found != 1:
        raise Stale(
            f"{mutant.file}: the text to replace is found {found} times, not once"
            f" (first line: {mutant.old.strip().splitlines()[0]!r:.70});"
            " the code changed: rewrite the mutant"
        )
    result = text.replace(mutant.old, mutant.new)
    try:
        compile(result, str(path), "exec")
    except SyntaxError as exc:
        raise Stale(
            f"{mutant.file}: the mutated file does not compile: {exc}"
        ) from None
    return result


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {name for name in names if name in _NOT_COPIED}


def take_snapshot(destination: Path) -> Path:
    """Copy the work tree once, so that every run tests the same code even while
    others go on editing the tree."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(ROOT, destination, ignore=_ignore, symlinks=True)
    return destination


def make_copy(snapshot: Path, destination: Path) -> None:
    """Copy ``snapshot`` to ``destination``, with the probe plugin in it."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(snapshot, destination, symlinks=True)
    (destination / f"{_PROBE_MODULE}.py").write_text(_PROBE_SOURCE)


# A line of pytest's short summary (not a captured log line at level ERROR).
_FIRST_FAILURE: Final = re.compile(
    r"^(?:FAILED|ERROR) (\S+?\.py(?:::.+?)?)(?: - .*)?$", re.MULTILINE
)
_children_lock = threading.Lock()
_children: set[subprocess.Popen[bytes]] = set()


class Run(NamedTuple):
    """One pytest run: its exit status (None: timed out), time and output."""

    returncode: int | None
    seconds: float
    output: str
    imported: str


def run_pytest(
    copy: Path,
    paths: Sequence[str],
    timeout: float,
    log: Path,
    deselect: Sequence[str] = (),
) -> Run:
    """Run pytest in ``copy`` on ``paths`` (all of ``tests`` if empty), leaving
    out the tests ``deselect`` names (node ids or their prefixes)."""
    probe = copy.parent / f"{copy.name}.probe"
    probe.unlink(missing_ok=True)
    basetemp = copy.parent / f"{copy.name}.tmp"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(copy), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["MUTANTS_PROBE_OUT"] = str(probe)
    env["CI"] = "true"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        _PROBE_MODULE,
        f"--basetemp={basetemp}",
        "--ignore=tests/test_tooling.py",
        *(f"--deselect={node}" for node in deselect),
        *paths,
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        # A session of its own, so a timeout kills the tests' children too.
        process = subprocess.Popen(
            command,
            cwd=copy,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with _children_lock:
            _children.add(process)
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            returncode = None
        finally:
            with _children_lock:
                _children.discard(process)
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    imported = probe.read_text() if probe.exists() else "unknown (no probe output)"
    shutil.rmtree(basetemp, ignore_errors=True)
    return Run(returncode, seconds, output, imported)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` and its process group (started by us, by its id)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def first_failure(output: str) -> str:
    summary = output.rfind("short test summary info")
    found = _FIRST_FAILURE.search(output, max(summary, 0))
    return found.group(1) if found else "(no test named in the output)"


def judge(run: Run, copy: Path) -> tuple[str, str]:
    """``(status, detail)`` of one run of the mutated copy."""
    package = str(copy / "journal_archivist")
    if run.returncode is not None and not run.imported.startswith(package):
        return "error", f"imported journal_archivist from {run.imported}, not the copy"
    if run.returncode is None:
        return "timeout", f"no result within the timeout ({first_failure(run.output)})"
    if run.returncode == 0:
        return "survived", ""
    if run.returncode == 1:
        return "caught", first_failure(run.output)
    lines = [line for line in run.output.strip().splitlines() if line.strip()]
    return "error", f"pytest exit status {run.returncode}: {lines[-1] if lines else ''}"


#: Times a failing test is run again alone to tell a catch from a flaky test.
RECHECKS: Final = 2
#: Flaky tests set aside per mutant before it is given up as undecided.
MAX_FLAKY: Final = 3


def run_mutant(
    mutant: Mutant,
    snapshot: Path,
    scratch: Path,
    *,
    timeout: float,
    full: bool,
    confirm: bool,
    recheck: bool,
    deselect: Sequence[str],
    keep: bool,
) -> Outcome:
    """Copy, mutate, test: the subset, then (for a survivor) the whole suite.

    A catch counts only if the failing test fails again when run alone (up to
    ``RECHECKS`` times); one that passes is flaky: it is set aside (deselected)
    and the same tests run again without it.
    """
    copy = scratch / mutant.name
    started = time.monotonic()
    flaky: list[str] = []
    runs = 0

    def log() -> Path:
        nonlocal runs
        runs += 1
        return scratch / f"{mutant.name}.{runs}.log"

    try:
        make_copy(snapshot, copy)
        (copy / mutant.file).write_text(mutated_source(mutant, copy))
        subset = () if full else mutant.tests
        stages = [subset, ()] if subset and confirm else [subset]
        status, detail, whole = "survived", "", False
        for paths in stages:
            whole = not paths
            while True:
                run = run_pytest(copy, paths, timeout, log(), [*deselect, *flaky])
                status, detail = judge(run, copy)
                if status != "caught" or not recheck or "::" not in detail:
                    break
                if not _passes_alone(copy, detail, timeout, log):
                    break
                flaky.append(detail)
                if len(flaky) >= MAX_FLAKY:
                    status = "flaky"
                    break
            if status != "survived":
                break
        if flaky and status == "survived":
            status = "flaky"
        if flaky:
            detail += f" (flaky, set aside: {', '.join(flaky)})"
    except Stale as exc:
        status, detail, whole = "error", f"stale: {exc}", False
    finally:
        if not keep:
            shutil.rmtree(copy, ignore_errors=True)
    return Outcome(mutant, status, time.monotonic() - started, detail, whole)


def _passes_alone(
    copy: Path, node: str, timeout: float, log: Callable[[], Path]
) -> bool:
    """Whether the test ``node`` passes in any of ``RECHECKS`` runs of it alone."""
    for _ in range(RECHECKS):
        again = run_pytest(copy, (node,), timeout, log())
        if again.returncode == 0:
            return True
        if again.returncode != 1:
            return False  # not selectable alone, or a timeout: trust the catch
    return False


def baseline(
    snapshot: Path,
    scratch: Path,
    timeout: float,
    deselect: Sequence[str],
    keep: bool,
) -> Run:
    """Run the whole suite on an unmutated copy; exit if it does not pass."""
    copy = scratch / "baseline"
    make_copy(snapshot, copy)
    run = run_pytest(copy, (), timeout, scratch / "baseline.log", deselect)
    if not keep:
        shutil.rmtree(copy, ignore_errors=True)
    package = str(copy / "journal_archivist")
    if not run.imported.startswith(package):
        sys.exit(
            f"baseline: the tests imported journal_archivist from {run.imported},"
            f" not from the copy {package}: results would be meaningless"
        )
    if run.returncode != 0:
        tail = "\n".join(run.output.strip().splitlines()[-15:])
        status = "timed out" if run.returncode is None else f"exit {run.returncode}"
        sys.exit(
            f"baseline: the unmutated suite does not pass ({status}; first failure:"
            f" {first_failure(run.output)}); fix it or wait for it first.\n{tail}"
        )
    return run


# -- reporting -----------------------------------------------------------------------


def line(outcome: Outcome) -> str:
    label = {
        "caught": "caught",
        "timeout": "caught (timeout)",
        "survived": "SURVIVED",
        "flaky": "FLAKY",
        "error": "ERROR",
    }[outcome.status]
    where = "whole suite" if outcome.whole_suite else "subset"
    detail = outcome.detail or (
        "no test failed" + (", whole suite" if outcome.whole_suite else "")
    )
    return (
        f"{label:<17} {outcome.mutant.name:<36} {outcome.seconds:7.1f} s"
        f"  [{where}] {detail}"
    )


def score(outcomes: list[Outcome]) -> str:
    caught = [o for o in outcomes if o.caught]
    missed = [o for o in outcomes if not o.caught]
    survived = [o.mutant.name for o in missed if o.status == "survived"]
    errors = [o.mutant.name for o in missed if o.status == "error"]
    total = len(outcomes)
    percent = 100.0 * len(caught) / total if total else 0.0
    text = f"mutants: {len(caught)}/{total} caught ({percent:.1f} %)"
    text += f", {len(survived)} survived" + (
        f": {', '.join(survived)}" if survived else ""
    )
    if errors:
        text += f"; {len(errors)} errors (not caught): {', '.join(errors)}"
    flaky = [o.mutant.name for o in missed if o.status == "flaky"]
    if flaky:
        text += f"; {len(flaky)} caught only by a flaky test: {', '.join(flaky)}"
    timeouts = [o.mutant.name for o in caught if o.status == "timeout"]
    if timeouts:
        text += f"; counted as caught by timeout: {', '.join(timeouts)}"
    return text


def list_mutants(selected: list[Mutant]) -> int:
    stale = 0
    for mutant in selected:
        try:
            mutated_source(mutant)
            state = "ok"
        except Stale as exc:
            state, stale = f"STALE: {exc}", stale + 1
        print(f"{mutant.name:<36} {mutant.file}")
        print(f"    {mutant.description}")
        print(f"    tests: {' '.join(mutant.tests) or '(the whole suite)'}; {state}")
    by_file: dict[str, int] = {}
    for mutant in selected:
        by_file[mutant.file] = by_file.get(mutant.file, 0) + 1
    print(f"{len(selected)} mutants, {stale} stale, in {len(by_file)} files")
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Plant one realistic bug at a time; check that a test fails.",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the mutants, run none"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this mutant (repeatable, or comma-separated)",
    )
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="mutants run at once (2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per pytest run before it is killed (900)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="run the whole suite for every mutant, not its subset first",
    )
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="report a survivor of its subset without running the whole suite",
    )
    parser.add_argument(
        "--no-recheck",
        action="store_true",
        help="trust a catch without running the failing test once more",
    )
    parser.add_argument(
        "--deselect",
        action="append",
        default=[],
        metavar="NODE",
        help="leave out this test (a node id or its prefix) in every run,"
        " the baseline too: for a test known to be flaky (repeatable)",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the unmutated run of the whole suite (results may mislead)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch copies and logs"
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        help="a new directory for the copies and logs (default: a temp dir);"
        " it is removed at the end unless --keep",
    )
    args = parser.parse_args(argv)

    selected = list(MUTANTS)
    if args.only:
        wanted = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        known = {m.name: m for m in MUTANTS}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            parser.error(f"unknown mutants: {', '.join(unknown)} (see --list)")
        selected = [known[n] for n in dict.fromkeys(wanted)]
    if args.list:
        return list_mutants(selected)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.scratch is not None and args.scratch.exists():
        # It is removed at the end: never a directory that holds anything else.
        parser.error(f"--scratch {args.scratch} exists; name a new directory")

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="mutants-"))
    scratch.mkdir(parents=True, exist_ok=True)  # new: checked above
    started = time.monotonic()
    print(f"scratch: {scratch}", flush=True)
    try:
        snapshot = take_snapshot(scratch / "snapshot")
        stale = []
        for mutant in selected:
            try:
                mutated_source(mutant, snapshot)
            except Stale as exc:
                stale.append(f"  {mutant.name}: {exc}")
        if stale:
            print(
                "stale mutants, refused (the code moved under them):", *stale, sep="\n"
            )
            return 2
        if not args.no_baseline:
            run = baseline(snapshot, scratch, args.timeout, args.deselect, args.keep)
            print(
                f"baseline: the whole suite passes unmutated ({run.seconds:.0f} s),"
                f" importing {Path(run.imported).parent}",
                flush=True,
            )
        outcomes: dict[str, Outcome] = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(
                    run_mutant,
                    mutant,
                    snapshot,
                    scratch,
                    timeout=args.timeout,
                    full=args.full,
                    confirm=not args.no_confirm,
                    recheck=not args.no_recheck,
                    deselect=args.deselect,
                    keep=args.keep,
                )
                for mutant in selected
            ]
            try:
                for future in concurrent.futures.as_completed(futures):
                    outcome = future.result()
                    outcomes[outcome.mutant.name] = outcome
                    print(line(outcome), flush=True)
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                with _children_lock:
                    for process in list(_children):
                        _kill(process)
                raise
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    ordered = [outcomes[m.name] for m in selected]
    print()
    print("\n".join(line(o) for o in ordered))
    print(f"elapsed: {time.monotonic() - started:.0f} s, {args.jobs} jobs")
    print(score(ordered))
    return 0 if all(o.caught for o in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
