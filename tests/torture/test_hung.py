"""Hung-backend torture, short: a backend that never answers, next to SQLite.

A real end-to-end run of ``python -m tools.torture.hung`` (its ``main``), in this
process: attempts are bounded by the attempt timeout, SQLite keeps (here at least
a quarter of) its throughput, ``shutdown(timeout=...)`` returns in time although
the hung backend's ``aclose`` never returns either, and SQLite holds everything
acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.torture import hung

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_a_hung_backend_holds_up_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Phases of one second each on a shared machine: only a hung neighbour that
    # really holds SQLite up (a rate near 0) fails the ratio here.
    code = hung.main(
        [
            *("--seconds", "4", "--seed", "3", "--min-ratio", "0.25"),
            *("--dir", str(tmp_path), "--hang-aclose"),
        ]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert output.strip().splitlines()[-1].startswith("hung: PASS"), output
