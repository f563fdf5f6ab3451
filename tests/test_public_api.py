"""The public surface: what users import, documented and resolvable."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import msgspec
import pytest

import journal_archivist

PUBLIC_MODULES = [
    "journal_archivist",
    "journal_archivist.backends",
    "journal_archivist.prometheus",
    "journal_archivist.testing",
]


def _isort_key(name: str) -> tuple[int, str]:
    """CONSTANTS, then Classes, then functions (ruff's RUF022 order)."""
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_complete_and_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key)

    def defined_here(value: object) -> bool:
        home = getattr(value, "__module__", None) or ""
        return home == module_name or home.startswith(f"{module_name}._")

    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and defined_here(value)
    }
    assert public <= set(exported), f"not in __all__: {public - set(exported)}"
    for name in exported:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module_name}.{name} has no docstring"


def test_exceptions_show_their_public_path() -> None:
    assert repr(journal_archivist.QueueFull) == "<class 'journal_archivist.QueueFull'>"


@pytest.mark.parametrize(
    "struct",
    [
        value
        for name in journal_archivist.__all__
        if isinstance(value := getattr(journal_archivist, name), type)
        and issubclass(value, msgspec.Struct)
        and value is not journal_archivist.Registration  # holds a backend object
    ],
)
def test_every_config_and_record_type_has_a_json_schema(struct: type) -> None:
    # msgspec resolves annotations in the defining module at first use; this
    # fails if an annotation's import was moved under TYPE_CHECKING.
    assert msgspec.json.schema(struct)


def test_importing_the_package_imports_no_server_driver() -> None:
    code = (
        "import sys, journal_archivist, journal_archivist.backends, "
        "journal_archivist.testing; "
        "print(sorted(m for m in ('asyncpg', 'httpx', 'hypothesis', 'pytest') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_version_is_a_string() -> None:
    assert isinstance(journal_archivist.__version__, str)


@pytest.mark.parametrize(
    ("name", "driver", "extra"),
    [
        ("PostgresArchive", "asyncpg", "postgres"),
        ("WebhookArchive", "httpx", "webhook"),
        ("JetStreamArchive", "nats", "nats"),
    ],
)
def test_a_backend_whose_extra_is_missing_names_the_extra(
    name: str, driver: str, extra: str
) -> None:
    # A None entry in sys.modules makes ``import driver`` fail as if not installed.
    code = (
        f"import sys; sys.modules[{driver!r}] = None\n"
        "import journal_archivist.backends as b\n"
        "try:\n"
        f"    b.{name}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"pip install 'journal-archivist[{extra}]'" in out.stdout, out.stderr


def test_an_unknown_backend_name_is_an_attribute_error() -> None:
    import journal_archivist.backends as backends

    with pytest.raises(AttributeError, match="has no attribute 'MongoArchive'"):
        _ = backends.MongoArchive  # type: ignore[attr-defined]
