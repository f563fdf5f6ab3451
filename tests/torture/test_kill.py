"""Kill torture, short: SIGKILL the workload child at random moments, then judge.

A real end-to-end run of ``python -m tools.torture.kill`` (its ``main``): five
children on one journal, each killed at a random moment, then a drain and the
oracle over both archives. Strict: any violation, any child that exits by itself,
any lost or quarantined entry fails.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from tools.torture import kill

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("durability", ["full"])
def test_kill_cycles_lose_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], durability: str
) -> None:
    code = kill.main(
        [
            "--cycles",
            "5",
            "--seed",
            "1",
            "--durability",
            durability,
            "--max-run",
            "1.2",
            "--dir",
            str(tmp_path),
        ]
    )
    output = capsys.readouterr().out
    verdict = output.strip().splitlines()[-1]
    assert code == 0, output
    assert verdict.startswith("kill: PASS 5 cycles"), output
    acknowledged = int(re.search(r"(\d+) acknowledged", verdict).group(1))  # type: ignore[union-attr]
    assert acknowledged > 0, output  # the run proved something
