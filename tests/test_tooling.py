"""The code stays lint-clean, formatted and strictly typed (run as part of the suite).

Needs the ``dev`` extra (ruff, mypy). Without it these skip, except in CI
(``CI=true``), where a missing tool is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ROOT

if TYPE_CHECKING:
    from pathlib import Path

PATHS = ["journal_archivist", "tests", "tools"]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (pip install -e '.[dev]')")
        pytest.skip(f"{module} is not installed; pip install -e '.[dev]'")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_check_is_clean() -> None:
    _require("ruff")
    result = _run("ruff", "check", *PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    _require("ruff")
    result = _run("ruff", "format", "--check", *PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    _require("mypy")
    result = _run("mypy", "--strict", "journal_archivist")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_demo_runs_to_the_end(tmp_path: Path) -> None:
    # README's first command runs it: keep it true.
    result = subprocess.run(
        [sys.executable, "tools/demo.py", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered 4, pending 0" in result.stdout
    assert "in the archive file: 0 records" in result.stdout
    assert "in the journal: 0 rows" in result.stdout


def test_every_mutant_still_applies() -> None:
    # A mutant whose text the code no longer holds plants nothing: tools/mutants.py
    # refuses it, and a change that moved the code must rewrite it.
    result = subprocess.run(
        [sys.executable, "tools/mutants.py", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert " 0 stale," in summary, result.stdout
