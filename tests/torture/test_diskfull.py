"""Disk-full torture, short: the journal on a small filesystem that fills up and
goes read-only.

A real end-to-end run of ``python -m tools.torture.diskfull`` (its ``main``): one
cycle of full, resume and read-only. It mounts a filesystem, so it needs root;
without it (or when mounting fails) the tool says SKIP and so does this test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tools.torture import diskfull

if TYPE_CHECKING:
    from pathlib import Path


def test_a_full_then_read_only_disk_loses_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = diskfull.main(["--cycles", "1", "--seed", "5", "--dir", str(tmp_path)])
    output = capsys.readouterr().out
    verdict = output.strip().splitlines()[-1]
    if verdict.startswith("diskfull: SKIP"):
        pytest.skip(verdict.removeprefix("diskfull: "))
    assert code == 0, output
    assert verdict.startswith("diskfull: PASS 1 cycles"), output
