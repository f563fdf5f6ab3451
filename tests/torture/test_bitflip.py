"""The bit-flip torture, short: random flips and a few named ones must keep the
promise of docs/guarantees.md ("Detection of damage").

Each trial flips one bit of a pristine journal holding a backlog, opens it in a
child process and delivers; the trial must end clean, refused (``JournalError`` at
open) or with every missing entry counted (``tools/torture/bitflip.py`` says
exactly how it judges). The named flips are the ones that used to kill the
archivist or lose entries silently: a payload BLOB read back as TEXT that is not
UTF-8, a payload read back as an INTEGER, an op changed, a backend's bit cleared
from ``targets``, a negative ``origin``, a backend's cursor moved past its backlog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tools.torture import bitflip

if TYPE_CHECKING:
    from pathlib import Path

SEED = 7
OPS = 120  # the smallest workload that still spans every phase of the build
TRIALS = 30
# Shorter than the tool's defaults: a healthy trial drains in well under a second.
TIMEOUT = 20.0
DRAIN_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bitflip.Pristine:
    """One pristine journal for the module (built by child processes, ~3 s)."""
    return bitflip.build_pristine(tmp_path_factory.mktemp("bitflip"), SEED, OPS)


def test_random_flips_keep_the_promise(
    pristine: bitflip.Pristine, tmp_path: Path
) -> None:
    report = bitflip.run_trials(
        pristine,
        range(TRIALS),
        scratch=tmp_path,
        jobs=2,
        timeout=TIMEOUT,
        drain_timeout=DRAIN_TIMEOUT,
    )
    assert not report.violations, "\n".join(
        [*report.violation_lines(), report.verdict_line()]
    )


@pytest.mark.parametrize("name", bitflip.NAMED_FLIPS)
def test_named_flip_keeps_the_promise(
    pristine: bitflip.Pristine, tmp_path: Path, name: str
) -> None:
    flip = bitflip.named_flip(pristine, name)  # LookupError: the build lacks it
    verdict = bitflip.run_trial(
        pristine, flip, tmp_path, timeout=TIMEOUT, drain_timeout=DRAIN_TIMEOUT
    )
    assert verdict.kind in bitflip.ACCEPTABLE, (
        f"{flip.describe()}: {verdict.kind}: {verdict.detail}"
    )


def test_the_build_leaves_a_row_of_every_kind(pristine: bitflip.Pristine) -> None:
    # build_pristine already ran both variants unflipped and found them clean;
    # this pins what the build left behind (a lost entry, a quarantined one, a
    # dead letter, a live WAL, rows of every table to aim at), so a change to the
    # build or the library cannot quietly hollow the trials.
    journal = pristine.baseline["journal"]
    assert journal["lost_entries"] >= 1
    assert pristine.baseline["backends"]["alpha"]["quarantined"] >= 1
    assert pristine.baseline["backends"]["bravo"]["dead_lettered"] >= 1
    assert pristine.files["wal/journal.db-wal"] > 0
    assert {s.group for s in pristine.sites["ckpt/journal.db"]} >= {
        "entries-serial",
        "entries-routing",
        "backends",
        "side",
    }
