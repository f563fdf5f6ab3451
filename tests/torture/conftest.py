"""Fixtures of the torture tests: the fault-injecting shim library."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tools.torture import _shim

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def library() -> Path:
    """The shim library, built once per module; skips where it cannot be built."""
    try:
        return _shim.build_shim()
    except _shim.ShimUnavailable as exc:
        pytest.skip(str(exc))
