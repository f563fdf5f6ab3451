"""The layers of ``journal_archivist`` only import downwards.

Every module of the package belongs to one layer of ``LAYERS``, listed from the
bottom up. A module may import modules of its own layer and of any layer below,
never of a layer above: the pure decisions never reach for the journal, the
journal never for the drivers, the drivers never for the API. The built-in
backends stand apart from the core: they import only the leaves, the shared file
helpers, the backend protocol and each other (``BACKENDS_MAY_IMPORT``), never the
journal or anything that runs it.

Rules of the check:
- Only *run-time* imports count: an import under ``if TYPE_CHECKING:`` is for
  annotations and creates no import-time dependency, so it may point anywhere
  (the committer may name ``Journal`` in a signature). Imports inside functions
  count: they run.
- A module counts as importing the module it names (``from .backends._base import
  SessionGroup`` imports ``backends._base``), or, for ``from .pkg import name``
  where ``pkg.name`` is a module, that module. The parent packages Python runs
  first are not counted.
- Read from the source with ``ast``, so a wrong import fails here before anyone
  runs into an import cycle. ``tests/test_layers.py`` checks the other half of
  the line: that the pure modules import no I/O library.

A new module must be given a layer here, or this test fails naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from collections.abc import Sequence

PACKAGE = Path(__file__).resolve().parent.parent / "journal_archivist"


class Layer(NamedTuple):
    name: str
    modules: frozenset[str]


#: The layers, bottom first. Module names are dotted and relative to the package;
#: ``__init__`` is the package itself and ``backends`` the backends package.
LAYERS: tuple[Layer, ...] = (
    # Values, errors and small pure functions: import nothing of ours but each
    # other.
    Layer(
        "leaves",
        frozenset(
            {
                "_errors",
                "_failure",
                "_health",
                "_journal_types",
                "_metrics",
                "_policies",
                "_printable",
                "_records",
                "_schema",
                "_stats",
                "_throttle",
            }
        ),
    ),
    # File, SQLite and OS helpers that know nothing of entries: leaves only. The
    # journal and the file backends share the first two.
    Layer(
        "shared helpers",
        frozenset(
            {
                "_backoff",
                "_large_values",
                "_lockfile",
                "_ownership",
                "_private_files",
                "_process",
                "_space",
            }
        ),
    ),
    # What a writer hands a backend, and how a record is encoded for one.
    Layer("backend protocol", frozenset({"backends._base", "backends._codec"})),
    # Sans-IO decisions: no event loop, no database (tests/test_layers.py).
    Layer(
        "pure decisions",
        frozenset(
            {
                "_admission",
                "_backlog",
                "_batching",
                "_delivery",
                "_intake",
                "_ledger",
                "_read_merge",
            }
        ),
    ),
    # Registrations and open()'s settings, validated.
    Layer("config", frozenset({"_config", "_options"})),
    # The built-in backends and their private modules.
    Layer(
        "backends",
        frozenset(
            {
                "backends",
                "backends._jetstream_batch",
                "backends._jetstream_conn",
                "backends._jetstream_ops",
                "backends._jetstream_wire",
                "backends._jsonl_batch",
                "backends._jsonl_directory",
                "backends._jsonl_files",
                "backends._jsonl_scan",
                "backends._postgres_dsn",
                "backends._redact",
                "backends._postgres_pool",
                "backends._postgres_sql",
                "backends._sqlite_open",
                "backends._sqlite_read",
                "backends._sqlite_sql",
                "backends._webhook_http",
                "backends._webhook_secrets",
                "backends._webhook_wire",
                "backends.jetstream",
                "backends.jsonl",
                "backends.postgres",
                "backends.sqlite",
                "backends.webhook",
            }
        ),
    ),
    # A config file read into options and registrations (it builds backends).
    Layer(
        "config file",
        frozenset({"_config_backends", "_config_file", "_config_text"}),
    ),
    # The SQLite journal: its file, rows, transactions, loading and reading.
    # (_rows is sans-IO, tests/test_layers.py, but it is the journal's row format.)
    Layer(
        "journal",
        frozenset(
            {
                "_journal",
                "_journal_file",
                "_journal_load",
                "_offline",
                "_offline_check",
                "_offline_tables",
                "_reader",
                "_rows",
                "_salvage",
                "_transaction",
            }
        ),
    ),
    # The loops that carry out decisions: one committer, one writer per backend.
    Layer(
        "drivers",
        frozenset(
            {
                "_bookkeeping",
                "_committer",
                "_dispatch",
                "_maintenance",
                "_upkeep",
                "_waiters",
                "_writer",
            }
        ),
    ),
    # The running archivist and its API.
    Layer(
        "archivist",
        frozenset(
            {
                "_acknowledge",
                "_archivist",
                "_blocking",
                "_demo",
                "_lifecycle",
                "_loop_calls",
                "_loop_thread",
                "_operator_calls",
                "_reading",
                "_slots",
                "_stats_live",
            }
        ),
    ),
    # What users import: the package and its testing helpers.
    Layer(
        "public surface",
        frozenset(
            {"__init__", "_contract", "_contract_marks", "prometheus", "testing"}
        ),
    ),
    # What operators run: the command line, over the public API.
    Layer(
        "command line",
        frozenset(
            {
                "__main__",
                "_cli",
                "_cli_common",
                "_cli_offline",
                "_cli_online",
                "_cli_slots",
            }
        ),
    ),
)

#: The only layers a built-in backend imports from.
BACKENDS_MAY_IMPORT = frozenset(
    {"leaves", "shared helpers", "backend protocol", "backends"}
)

LAYER_OF: dict[str, int] = {
    module: index for index, layer in enumerate(LAYERS) for module in layer.modules
}


def module_name(path: Path) -> str:
    """``path``'s module name, dotted and relative to the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def discovered() -> set[str]:
    """Every module of the package, by its name here."""
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements under ``node`` that run (not under TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        children: Sequence[ast.AST] = (child,)
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            children = child.orelse  # its body is for annotations only
        for grandchild in children:
            if isinstance(grandchild, ast.Import | ast.ImportFrom):
                found.append(grandchild)
            else:
                found.extend(_runtime_imports(grandchild))
    return found


def _package_of(module: str) -> list[str]:
    """The package ``module``'s relative imports start in, as name parts."""
    if module == "__init__":
        return []
    if _source(module).name == "__init__.py":  # a package: it starts inside
        return module.split(".")
    return module.split(".")[:-1]


def _resolve(dotted: str, modules: set[str]) -> str | None:
    """``dotted`` (relative to the package) as a module name here, if it is one."""
    if dotted == "":
        return "__init__"
    return dotted if dotted in modules else None


def _source(module: str) -> Path:
    if module == "__init__":
        return PACKAGE / "__init__.py"
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def package_imports(module: str, modules: set[str]) -> list[tuple[str, int]]:
    """The package modules ``module`` imports at run time, with the line of each."""
    source = _source(module)
    tree = ast.parse(source.read_text(), filename=str(source))
    found: list[tuple[str, int]] = []
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "journal_archivist" and (hit := _resolve(rest, modules)):
                    found.append((hit, node.lineno))
            continue
        if node.level:
            package = _package_of(module)
            if node.level - 1 > len(package):
                continue  # above the package: not ours
            parts = package[: len(package) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            top, _, base = (node.module or "").partition(".")
            if top != "journal_archivist":
                continue
        for alias in node.names:
            submodule = f"{base}.{alias.name}" if base else alias.name
            hit = submodule if submodule in modules else _resolve(base, modules)
            if hit is not None and hit != module and (hit, node.lineno) not in found:
                found.append((hit, node.lineno))
    return found


def _where(module: str) -> str:
    index = LAYER_OF[module]
    return f"{module} ({LAYERS[index].name}, layer {index})"


def test_every_module_is_in_a_layer() -> None:
    missing = sorted(discovered() - set(LAYER_OF))
    assert not missing, (
        f"in no layer: {', '.join(missing)}. Add each to LAYERS in"
        " tests/test_layering.py: the lowest layer that holds everything it imports"
        " at run time."
    )


def test_every_module_of_a_layer_exists() -> None:
    stale = sorted(set(LAYER_OF) - discovered())
    assert not stale, (
        f"LAYERS names modules that do not exist: {', '.join(stale)}. Remove them"
        " from tests/test_layering.py, or fix the spelling."
    )


def test_no_module_is_in_two_layers() -> None:
    named = [module for layer in LAYERS for module in layer.modules]
    assert len(named) == len(set(named))


@pytest.mark.parametrize("module", sorted(discovered() & set(LAYER_OF)))
def test_a_module_imports_nothing_from_a_higher_layer(module: str) -> None:
    modules = discovered()
    upward = [
        f"line {line}: imports {_where(target)}"
        for target, line in package_imports(module, modules)
        if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[module]
    ]
    assert not upward, (
        f"{_where(module)} imports upwards; the layers only import downwards:\n  "
        + "\n  ".join(upward)
    )


BACKENDS = next(layer for layer in LAYERS if layer.name == "backends").modules


@pytest.mark.parametrize("module", sorted(discovered() & BACKENDS))
def test_a_backend_imports_only_the_protocol_and_shared_helpers(module: str) -> None:
    modules = discovered() & set(LAYER_OF)
    beyond = [
        f"line {line}: imports {_where(target)}"
        for target, line in package_imports(module, modules)
        if LAYERS[LAYER_OF[target]].name not in BACKENDS_MAY_IMPORT
    ]
    assert not beyond, (
        f"backend module {module} imports from the core beyond the leaves, the"
        f" shared helpers and the backend protocol:\n  " + "\n  ".join(beyond)
    )


# --- the check itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # Relative imports, one level: the drivers import the pure decisions.
        ("_writer", {"_backlog", "_dispatch"}),
        # Two levels up, from a backend to the core.
        ("backends.sqlite", {"_errors", "_private_files", "backends._base"}),
        # The package imports its modules.
        ("__init__", {"_archivist", "_errors"}),
        # A package-relative import inside the backends package itself.
        ("backends", {"backends._base", "backends.sqlite"}),
    ],
)
def test_imports_are_resolved_to_package_modules(
    module: str, expected: set[str]
) -> None:
    found = {target for target, _ in package_imports(module, discovered())}
    assert expected <= found


def test_an_import_under_type_checking_is_not_counted() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import typing\n"
        "from . import a\n"
        "if TYPE_CHECKING:\n"
        "    from . import b\n"
        "else:\n"
        "    from . import c\n"
        "if typing.TYPE_CHECKING:\n"
        "    from . import d\n"
        "def f():\n"
        "    from . import e\n"
    )
    names = [
        alias.name
        for node in _runtime_imports(tree)
        if isinstance(node, ast.ImportFrom) and node.level
        for alias in node.names
    ]
    assert names == ["a", "c", "e"]
