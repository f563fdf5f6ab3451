"""docs/cli.md documents every command, subcommand, option and exit code the
parser has, and every field ``status --json`` prints (sqlite-utils' test_docs)."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

import msgspec
import pytest

from journal_archivist._cli import PROG, build_parser
from journal_archivist._cli_common import ExitCode
from journal_archivist._stats import BackendStats, JournalStats, Stats
from tests.helpers import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

CLI_DOC = (ROOT / "docs" / "cli.md").read_text()


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of ``parser``, with its own parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


COMMANDS = list(commands(build_parser()))


def test_the_parser_has_the_commands_we_expect() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"status", "check", "drain", "dead-letters replay", "quarantine purge",
            "export", "probe", "compact", "demo"} <= names  # fmt: skip


@pytest.mark.parametrize(
    ("path", "parser"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS]
)
def test_every_command_is_documented(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert f"{PROG} {' '.join(path)}" in CLI_DOC
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert re.search(rf"`[^`]*{re.escape(option)}\b", CLI_DOC), option


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda code: code.name)
def test_every_exit_code_is_documented(code: ExitCode) -> None:
    assert f"\n| {code.value} | " in CLI_DOC


@pytest.mark.parametrize("struct", [Stats, JournalStats, BackendStats])
def test_every_status_field_is_documented(struct: type[msgspec.Struct]) -> None:
    for field in msgspec.structs.fields(struct):
        assert f'"{field.name}"' in CLI_DOC, field.name


@pytest.mark.parametrize(
    "module",
    sorted(path.stem for path in (ROOT / "journal_archivist").glob("*.py")),
)
def test_every_module_is_in_the_architecture_table(module: str) -> None:
    table = (ROOT / "docs" / "architecture.md").read_text()
    assert f"`{module}`" in table, f"docs/architecture.md does not name {module}"
