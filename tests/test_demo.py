"""The ``demo`` workload, run small: outage, backlog, drain, read-back check."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest

from journal_archivist import _demo
from journal_archivist._demo import run_demo

if TYPE_CHECKING:
    from pathlib import Path

    from journal_archivist.backends import ArchiveBackend


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_every_message_reaches_both_backends_through_the_outage(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    code = await run_demo(
        str(tmp_path / "demo"), sessions=6, messages=60, out=out, duration=2.5
    )
    text = out.getvalue()
    assert code == 0, text
    assert "archive  60/60  all there" in text
    assert "jsonl    60/60  all there" in text
    # The first progress line (after 1 s) falls in the outage (1.25 s).
    first = next(line for line in text.splitlines() if "appended" in line)
    assert "jsonl DOWN: delivered 0" in first or "jsonl degraded: delivered 0" in first
    assert "\r" not in text
    assert text.rstrip().endswith("OK")


async def test_json_output_is_one_object_with_the_summary(tmp_path: Path) -> None:
    out = io.StringIO()
    code = await run_demo(
        str(tmp_path), sessions=3, messages=10, out=out, json_output=True, duration=0.2
    )
    (line,) = out.getvalue().splitlines()
    summary = json.loads(line)
    assert code == 0
    assert summary["ok"] is True
    assert summary["appended"] == 10
    assert summary["drained"] is True
    for name in ("archive", "jsonl"):
        backend = summary["backends"][name]
        assert backend == backend | {"read_back": 10, "complete": True}
        assert backend["delivered"] == 10
    assert summary["backends"]["jsonl"]["peak_backlog"] >= 1  # it was offline


async def test_progress_is_redrawn_in_place_on_a_terminal(tmp_path: Path) -> None:
    out = Terminal()
    assert (
        await run_demo(str(tmp_path), sessions=2, messages=6, out=out, duration=0.6)
        == 0
    )
    assert "\r" in out.getvalue()


async def test_a_directory_with_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    out = io.StringIO()
    assert await run_demo(str(tmp_path), sessions=1, messages=1, out=out) == 2
    assert "not empty" in out.getvalue()


async def test_a_message_missing_on_read_back_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _demo._verify

    async def lose_one(backends: dict[str, ArchiveBackend], sent: dict) -> dict:  # type: ignore[type-arg]
        found = await real(backends, sent)
        return found | {"jsonl": found["jsonl"] - 1}

    monkeypatch.setattr(_demo, "_verify", lose_one)
    out = io.StringIO()
    assert (
        await run_demo(str(tmp_path), sessions=2, messages=4, out=out, duration=0) == 1
    )
    assert "jsonl    3/4  MISSING SOME" in out.getvalue()
    assert out.getvalue().rstrip().endswith("FAILED")


@pytest.mark.parametrize(
    ("sessions", "messages", "duration"),
    [
        (0, 10, 1.0),  # no session to run
        (1, 0, 1.0),  # nothing to append
        (1, 1, -1.0),  # a negative duration
    ],
)
async def test_bad_arguments_are_value_errors(
    tmp_path: Path, sessions: int, messages: int, duration: float
) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        await run_demo(
            str(tmp_path), sessions=sessions, messages=messages, duration=duration
        )
