"""The config file: one TOML file decodes to the options and registrations of the
Python API, and every bad input is a ConfigError naming file, table, key and line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from journal_archivist import (
    Archivist,
    Durability,
    FailureMode,
    NoFreeSlot,
    OverflowPolicy,
    Queued,
    Registration,
    RetryPolicy,
    Slots,
    Sync,
)
from journal_archivist._config_backends import BUILTIN_BACKENDS
from journal_archivist._config_file import (
    ArchivistConfig,
    BackendConfig,
    default_config,
    load_config,
)
from journal_archivist._errors import ConfigError
from journal_archivist._options import ArchivistOptions
from journal_archivist._slots import slot_indexes
from journal_archivist.backends import (
    ArchiveBackend,
    JsonlArchive,
    PostgresArchive,
    SqliteArchive,
    WebhookArchive,
)
from tests.helpers import ROOT, record

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from uuid import UUID

    from journal_archivist import MessageRecord

DOCS = ROOT / "docs" / "configuration.md"


class ListBackend(ArchiveBackend):
    """A user's own backend, named in a config as ``tests.test_config_file:...``."""

    def __init__(self, label: str, *, limit: int = 10) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.label = label
        self.limit = limit
        self.got: list[MessageRecord] = []

    def __repr__(self) -> str:
        return f"ListBackend({self.label!r})"

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:
        self.got.extend(records)

    async def delete_session(self, session: UUID) -> None:
        self.got = [r for r in self.got if r.session != session]

    async def health_check(self) -> None:
        return None


class NotABackend:
    """Named as a backend type by mistake."""


def write(folder: Path, text: str, name: str = "archivist.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


FULL = """
[journal]
journal_path = "data/journal.db"
durability = "normal"
max_record_bytes = 2048
max_append_records = 50
max_append_bytes = 4096
free_space_reserve = 0
close_timeout = "none"

[[backends]]
name = "archive"
type = "sqlite"
failure_mode = "best_effort"
priority = 3
readable = true
enabled = true

[backends.settings]
path = "data/archive.db"
busy_timeout = 2.5

[backends.write_policy]
type = "queued"
batch_window_ms = 0
capacity = 10
capacity_bytes = 1000
overflow = "drop_oldest"
block_timeout = "none"
max_batch = 4
max_batch_bytes = 500

[backends.retry]
initial_delay = 0.5
max_delay = 2.0
multiplier = 1.5
max_attempts = 2
attempt_timeout = "none"

[[backends]]
name = "files"
type = "jsonl"
settings = { directory = "/srv/jsonl", max_cached_sessions = 8 }
write_policy = { type = "sync", timeout = 5, block_timeout = 1.0 }
readable = false
enabled = false

[[backends]]
name = "warehouse"
type = "postgres"
settings = { dsn = "postgresql://app:${PGPASSWORD}@db.internal/archive" }
write_policy = "sync"

[[backends]]
name = "hook"
type = "webhook"
[backends.settings]
url = "https://hooks.example/in"
headers = { Authorization = "Bearer ${TOKEN}" }

[[backends]]
name = "mine"
type = "tests.test_config_file:ListBackend"
settings = { label = "x", limit = 3 }
"""

ENV = {"PGPASSWORD": "pg-pass-5ecret", "TOKEN": "tok-5ecret-value"}


def test_a_full_file_decodes_to_what_the_python_api_builds(tmp_path: Path) -> None:
    path = write(tmp_path / "conf", FULL)
    config = load_config(path, environ=ENV)

    folder = tmp_path / "conf"
    assert config.journal == ArchivistOptions(
        journal_path=str(folder / "data" / "journal.db"),
        durability=Durability.NORMAL,
        max_record_bytes=2048,
        max_append_records=50,
        max_append_bytes=4096,
        free_space_reserve=0,
        close_timeout=None,
    )
    assert config.source == str(path)
    expected = [
        Registration(
            name="archive",
            backend=SqliteArchive(folder / "data" / "archive.db", busy_timeout=2.5),
            write_policy=Queued(
                batch_window_ms=0,
                capacity=10,
                capacity_bytes=1000,
                overflow=OverflowPolicy.DROP_OLDEST,
                block_timeout=None,
                max_batch=4,
                max_batch_bytes=500,
            ),
            failure_mode=FailureMode.BEST_EFFORT,
            retry=RetryPolicy(
                initial_delay=0.5,
                max_delay=2.0,
                multiplier=1.5,
                max_attempts=2,
                attempt_timeout=None,
            ),
            priority=3,
        ),
        Registration(
            name="files",
            backend=JsonlArchive("/srv/jsonl", max_cached_sessions=8),
            write_policy=Sync(timeout=5.0, block_timeout=1.0),
            readable=False,
            enabled=False,
        ),
        Registration(
            name="warehouse",
            backend=PostgresArchive(
                "postgresql://app:pg-pass-5ecret@db.internal/archive"
            ),
            write_policy=Sync(),
        ),
        Registration(
            name="hook",
            backend=WebhookArchive(
                "https://hooks.example/in",
                headers={"Authorization": "Bearer tok-5ecret-value"},
            ),
        ),
        Registration(name="mine", backend=ListBackend("x", limit=3)),
    ]
    got = config.registrations()
    for mine, theirs in zip(got, expected, strict=True):
        assert type(mine.backend) is type(theirs.backend)
        assert repr(mine.backend) == repr(theirs.backend)
        assert msgspec.structs.replace(mine, backend=theirs.backend) == theirs


def test_registrations_are_built_fresh_on_each_call(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ=ENV)
    first, second = config.registrations(), config.registrations()
    assert all(a.backend is not b.backend for a, b in zip(first, second, strict=True))
    assert config.backends[4].registration().backend is not first[4].backend


def test_the_default_config_is_a_sqlite_archive_beside_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config == default_config()
    assert config.source is None
    assert config.journal == ArchivistOptions(journal_path="archivist-data/journal.db")
    [reg] = config.registrations()
    assert reg.name == "archive"
    assert isinstance(reg.backend, SqliteArchive)
    assert reg.backend.path == str(tmp_path / "archivist-data" / "archive.db")
    assert default_config("elsewhere").journal.journal_path == "elsewhere/journal.db"


def test_relative_paths_resolve_against_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "etc",
        """
        [journal]
        journal_path = "../var/journal.db"
        [[backends]]
        name = "archive"
        type = "sqlite"
        settings = { path = "archive.db" }
        [[backends]]
        name = "files"
        type = "jsonl"
        settings = { directory = "/abs/jsonl" }
        """,
    )
    monkeypatch.chdir(tmp_path / "etc")
    monkeypatch.chdir("/")
    config = load_config(os.path.relpath(path))
    assert config.journal.journal_path == str(
        tmp_path / "etc" / ".." / "var" / "journal.db"
    )
    archive, _ = config.registrations()
    assert isinstance(archive.backend, SqliteArchive)
    assert archive.backend.path == str(tmp_path / "etc" / "archive.db")
    assert config.backends[1].settings["directory"] == "/abs/jsonl"


def test_environment_variables_are_substituted_and_double_dollar_escapes(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
        [journal]
        journal_path = "${DATA}/journal.db"
        [[backends]]
        name = "${NAME}"
        type = "tests.test_config_file:ListBackend"
        settings = { label = "cost: $$5, ${DATA}$${DATA}" }
        """,
    )
    config = load_config(path, environ={"DATA": "/srv/x", "NAME": "mine"})
    assert config.journal.journal_path == "/srv/x/journal.db"
    assert config.backends[0].name == "mine"
    assert config.backends[0].settings["label"] == "cost: $5, /srv/x${DATA}"


def test_the_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVIST_TEST_DIR", str(tmp_path))
    path = write(
        tmp_path,
        """
        [journal]
        journal_path = "${ARCHIVIST_TEST_DIR}/j.db"
        [[backends]]
        name = "a"
        type = "sqlite"
        settings = { path = "a.db" }
        """,
    )
    assert load_config(path).journal.journal_path == f"{tmp_path}/j.db"


JOURNAL = '[journal]\njournal_path = "j.db"\n'
SQLITE = '[[backends]]\nname = "a"\ntype = "sqlite"\nsettings = { path = "a.db" }\n'


@pytest.mark.parametrize(
    ("text", "table", "key", "line", "problem"),
    [
        # A key no table has, with the allowed ones listed.
        (JOURNAL + "jurnal_path = 1\n" + SQLITE, "journal", "jurnal_path", 3,
         "unknown key 'jurnal_path'; allowed: journal_path, durability"),
        (JOURNAL + SQLITE + "prio = 1\n", "backends[0]", "prio", 7,
         "unknown key 'prio'; allowed: name, type, settings"),
        (JOURNAL + SQLITE + "[backends.retry]\nmax_attempt = 1\n",
         "backends[0].retry", "max_attempt", 8, "unknown key 'max_attempt'"),
        (JOURNAL + SQLITE + 'write_policy = { type = "sync", timout = 1 }\n',
         "backends[0].write_policy", "timout", 7, "unknown key 'timout'"),
        # batch_window_ms is Queued's, not Sync's.
        (JOURNAL + SQLITE + '[backends.write_policy]\ntype = "sync"\n'
         "batch_window_ms = 1\n", "backends[0].write_policy", "batch_window_ms", 9,
         "unknown key 'batch_window_ms'"),
        (JOURNAL + SQLITE + "[extra]\n", None, "extra", 7,
         "unknown key 'extra'; allowed: journal, backends"),
        # A wrong type, with the value shown.
        (JOURNAL + "max_record_bytes = 'big'\n" + SQLITE, "journal",
         "max_record_bytes", 3, "Expected `int`, got `str`: 'big'"),
        (JOURNAL + SQLITE + "[backends.retry]\nmax_attempts = 'a'\n",
         "backends[0].retry", "max_attempts", 8, "Expected `int`, got `str`: 'a'"),
        # Values the checks of ArchivistOptions, Registration and the policies refuse.
        (JOURNAL + "max_record_bytes = 0\n" + SQLITE, "journal", "max_record_bytes",
         3, "max_record_bytes must be >= 1, got 0"),
        (JOURNAL + SQLITE + 'write_policy = { type = "sync", timeout = 0 }\n',
         "backends[0].write_policy", "timeout", 7, "timeout must be > 0, got 0.0"),
        (JOURNAL + SQLITE + "[backends.retry]\ninitial_delay = 0\n",
         "backends[0].retry", "initial_delay", 8, "initial_delay must be > 0, got 0"),
        (JOURNAL + SQLITE.replace('"a"', '"a b"', 1), "backends[0]", "name", 4,
         "registration name must be 1-64 letters"),
        (JOURNAL + SQLITE + 'failure_mode = "sometimes"\n', "backends[0]",
         "failure_mode", 7, "Invalid enum value 'sometimes'; one of 'required'"),
        (JOURNAL + SQLITE + 'write_policy = { type = "later" }\n',
         "backends[0].write_policy", "type", 7,
         "write policy type must be 'queued' or 'sync', got 'later'"),
        (JOURNAL + SQLITE + "[backends.write_policy]\ncapacity = 5\n",
         "backends[0].write_policy", "type", 7,
         "write policy type must be 'queued' or 'sync', got None"),
        # Missing keys and tables.
        ("[journal]\ndurability = 'full'\n" + SQLITE, "journal", "journal_path", 1,
         "missing key 'journal_path'"),
        (SQLITE, None, "journal", None, "a [journal] table with journal_path"),
        (JOURNAL, None, "backends", None, "at least one [[backends]] table"),
        (JOURNAL + "[backends]\nname = 'a'\n", None, "backends", 3,
         "at least one [[backends]] table"),
        (JOURNAL + '[[backends]]\nname = "a"\n', "backends[0]", "type", 3,
         "missing key 'type'"),
        # An unknown backend type lists the valid ones.
        (JOURNAL + SQLITE.replace('"sqlite"', '"mongo"'), "backends[0]", "type", 5,
         "type 'mongo' is not a backend type; use one of 'sqlite', 'jsonl',"
         " 'postgres', 'webhook', 'jetstream', or 'module:Class'"),
        # The registrations together: a repeated name, nothing enabled.
        (JOURNAL + SQLITE + SQLITE, "backends[1]", "name", 8,
         "registration names must be unique, repeated: ['a']"),
        (JOURNAL + SQLITE + "enabled = false\n", None, "backends", None,
         "at least one registration must be enabled"),
        # A stray dollar, and a variable that is not set.
        (JOURNAL + SQLITE.replace('"a.db"', '"a$b"'),
         "backends[0].settings", "path", 6, "a '$' must start a ${NAME} reference"),
        (JOURNAL + SQLITE.replace('"a.db"', '"${NOPE}/a.db"'),
         "backends[0].settings", "path", 6, "environment variable NOPE is not set"),
    ],
)  # fmt: skip
def test_bad_input_is_a_config_error_naming_table_key_and_line(
    tmp_path: Path,
    text: str,
    table: str | None,
    key: str | None,
    line: int | None,
    problem: str,
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load_config(path, environ={})
    error = caught.value
    assert (error.path, error.table, error.key, error.line) == (
        str(path),
        table,
        key,
        line,
    )
    where = f"{path}:{line}" if line else str(path)
    field = ".".join(part for part in (table, key) if part)
    assert str(error) == f"{where}: {field}: {error.problem}"
    assert isinstance(error, ValueError)


BUILD = JOURNAL + '[[backends]]\nname = "a"\ntype = {type}\n[backends.settings]\n'


@pytest.mark.parametrize(
    ("type_", "settings", "key", "line", "problem"),
    [
        # A setting the constructor does not take, with the ones it does.
        ('"sqlite"', 'path = "a.db"\nbusy = 1\n', "busy", 8,
         "unknown setting 'busy' of SqliteArchive; allowed: path, busy_timeout"),
        # The first argument missing.
        ('"sqlite"', "busy_timeout = 1.0\n", "path", None,
         "SqliteArchive needs setting 'path'"),
        # A value the constructor refuses: its TypeError/ValueError, kept.
        ('"sqlite"', 'path = "a.db"\nbusy_timeout = "soon"\n', "busy_timeout", 8,
         "SqliteArchive refused its settings: busy_timeout must be"),
        ('"tests.test_config_file:ListBackend"', 'label = "x"\nlimit = 0\n',
         "limit", 8, "ListBackend refused its settings: limit must be >= 1, got 0"),
        # module:Class that does not import, or is not a backend.
        ('"tests.no_such_module:Backend"', "", None, 5,
         "cannot import module 'tests.no_such_module' of backend type"
         " 'tests.no_such_module:Backend' (ModuleNotFoundError"),
        ('"tests.test_config_file:Nope"', "", None, 5,
         "module 'tests.test_config_file' has no 'Nope'"),
        ('"tests.test_config_file:NotABackend"', "", None, 5,
         "'tests.test_config_file:NotABackend' is not an ArchiveBackend subclass"),
    ],
)  # fmt: skip
def test_a_backend_that_cannot_be_built_is_a_config_error_from_registrations(
    tmp_path: Path,
    type_: str,
    settings: str,
    key: str | None,
    line: int | None,
    problem: str,
) -> None:
    path = write(tmp_path, BUILD.format(type=type_) + settings)
    config = load_config(path)  # loading builds nothing
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        config.registrations()
    error = caught.value
    table = "backends[0].settings" if key else "backends[0]"
    assert (error.path, error.table, error.key) == (str(path), table, key or "type")
    if line is None:  # a missing key: the line of its table
        line = 6
    assert error.line == line


def test_backend_config_registration_alone_names_the_backend() -> None:
    config = BackendConfig(name="a", type="sqlite", settings={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown setting 'bogus'") as caught:
        config.registration()
    assert (caught.value.path, caught.value.table, caught.value.key) == (
        None,
        "backend 'a'.settings",
        "bogus",
    )
    assert str(caught.value).startswith("<config>: backend 'a'.settings.bogus: ")


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory, not a config file"),
    ],
)
def test_a_missing_file_or_a_directory_is_a_config_error(
    tmp_path: Path, setup: Any, problem: str
) -> None:
    path = tmp_path / "archivist.toml"
    setup(path)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    assert str(caught.value) == f"{path}: {problem}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, JOURNAL + SQLITE)
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read the file: Permission denied"):
        load_config(path)


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "archivist.toml"
    path.write_bytes(b'[journal]\njournal_path = "\xff"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 26\)") as caught:
        load_config(path)
    assert caught.value.line == 2


def test_a_toml_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, JOURNAL + "[[backends]]\nname = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 4
    assert "not valid TOML: Invalid value (at line 4, column 8)" in str(caught.value)
    assert str(caught.value).startswith(f"{path}:4: ")


SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    ("backend", "build_error"),
    [
        # The DSN's password: PostgresArchive masks it in its repr.
        ('type = "postgres"\nsettings = { dsn = "postgresql://u:${S}@db/x",'
         " pool_min_size = 0 }\n", None),
        ('type = "postgres"\nsettings = { dsn = "${S}" }\n',
         "PostgresArchive refused its settings"),
        # A credential header: WebhookArchive masks it.
        ('type = "webhook"\nsettings = { url = "https://h.example/in",'
         ' headers = { Authorization = "Bearer ${S}" }, timeout = -1 }\n',
         "WebhookArchive refused its settings"),
        # A header WebhookArchive shows: refused, since its repr would leak it.
        ('type = "webhook"\nsettings = { url = "https://h.example/in",'
         ' headers = { X-Tenant = "${S}" } }\n',
         "WebhookArchive's repr would show a value taken from the environment"),
        # A URL whose path is the secret: fine once secret_path masks it.
        ('type = "webhook"\nsettings = { url = "https://h.example/${S}",'
         " secret_path = true }\n", None),
        ('type = "webhook"\nsettings = { url = "https://h.example/${S}" }\n',
         "WebhookArchive's repr would show"),
        ('type = "webhook"\nsettings = { url = "ftp://${S}" }\n',
         "WebhookArchive refused its settings: url must be an http(s) URL"),
    ],
)  # fmt: skip
def test_a_value_from_the_environment_never_shows_in_errors_or_reprs(
    tmp_path: Path, backend: str, build_error: str | None
) -> None:
    path = write(tmp_path, JOURNAL + '[[backends]]\nname = "x"\n' + backend)
    config = load_config(path, environ={"S": SECRET})
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.backends[0])
    if build_error is None:
        [reg] = config.registrations()
        assert SECRET not in repr(reg)
        return
    with pytest.raises(ConfigError, match=re.escape(build_error)) as caught:
        config.registrations()
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    seen: BaseException | None = caught.value
    while seen is not None:  # nor anywhere down the chain a traceback prints
        assert SECRET not in str(seen)
        seen = seen.__cause__ or (
            None if seen.__suppress_context__ else seen.__context__
        )


def test_a_secret_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    path = write(tmp_path, JOURNAL + SQLITE + 'priority = "${S}"\n')
    with pytest.raises(ConfigError, match="from the environment, not shown") as caught:
        load_config(path, environ={"S": SECRET})
    assert SECRET not in str(caught.value)
    assert caught.value.key == "priority"


def test_a_missing_driver_names_the_extra_and_loading_still_works(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        JOURNAL + '[[backends]]\nname = "pg"\ntype = "postgres"\n'
        'settings = { dsn = "postgresql://db/x" }\n',
    )
    code = textwrap.dedent(f"""
        import sys
        sys.modules["asyncpg"] = None  # as if not installed
        from journal_archivist._config_file import load_config
        config = load_config({str(path)!r})
        print("loaded", config.backends[0].type)
        try:
            config.registrations()
        except ValueError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.stdout.splitlines()[0] == "loaded postgres", out.stderr
    assert (
        f"ConfigError {path}:5: backends[0].type: backend type 'postgres' needs the"
        " 'postgres' extra: pip install 'journal-archivist[postgres]'"
    ) in out.stdout


async def test_a_config_file_opens_a_real_archivist(
    tmp_path: Path, session: UUID
) -> None:
    path = write(
        tmp_path / "conf",
        """
        [journal]
        journal_path = "data/journal.db"
        durability = "normal"
        [[backends]]
        name = "archive"
        type = "sqlite"
        settings = { path = "data/archive.db" }
        write_policy = { type = "queued", batch_window_ms = 0 }
        """,
    )
    archivist = await Archivist.from_config(path)
    try:
        await archivist.append_messages(session, [record(session, "from a file")])
        with anyio.fail_after(10):
            await archivist.wait_drained()
        [got] = await archivist.read_session(session)
        assert got.content_md == "from a file"
    finally:
        await archivist.shutdown()
    assert (tmp_path / "conf" / "data" / "journal.db").exists()
    assert (tmp_path / "conf" / "data" / "archive.db").exists()
    # A loaded config opens the same journal; so does ``async with``.
    async with Archivist.from_config(load_config(path)) as again:
        assert again.journal_path == str(tmp_path / "conf" / "data" / "journal.db")
        assert await again.read_session(session) != []


async def test_from_config_without_a_file_opens_the_embedded_default(
    tmp_path: Path, session: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with Archivist.from_config() as archivist:
        await archivist.append_messages(session, [record(session, "default")])
        with anyio.fail_after(10):
            await archivist.wait_drained()
    assert (tmp_path / "archivist-data" / "journal.db").exists()
    assert (tmp_path / "archivist-data" / "archive.db").exists()


def test_archivist_config_checks_its_backends_in_python_too() -> None:
    journal = ArchivistOptions(journal_path="j.db")
    backend = BackendConfig(name="a", type="sqlite", settings={"path": "a.db"})
    with pytest.raises(ValueError, match="must be unique"):
        ArchivistConfig(journal=journal, backends=(backend, backend))
    with pytest.raises(ValueError, match="is not a backend type"):
        BackendConfig(name="a", type="mongo")


def _config_file_section() -> str:
    text = DOCS.read_text()
    start = text.index("## The config file")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


@pytest.mark.parametrize(
    "key",
    sorted(
        {
            field.name
            for struct in (ArchivistOptions, BackendConfig, Queued, Sync, RetryPolicy)
            for field in msgspec.structs.fields(struct)
            if field.name != "secrets"  # filled by load_config, not a key
        }
        | set(BUILTIN_BACKENDS)
        | {"module:Class"}
    ),
)
def test_every_key_and_backend_type_is_documented(key: str) -> None:
    assert f"`{key}`" in _config_file_section(), f"{key} is not in {DOCS.name}"


# -- [slots]: a journal directory ---------------------------------------------------

SLOTS = """
[journal]
journal_path = "journals"

[slots]
max_slots = 2
adopt_interval = 3600.0   # no look of its own: the test calls adopt_orphans()

[[backends]]
name = "archive"
type = "sqlite"
settings = { path = "archive.db" }
write_policy = { type = "queued", batch_window_ms = 0 }
"""


async def test_a_slots_table_opens_slots_of_a_journal_directory(
    tmp_path: Path, session: UUID
) -> None:
    path = write(tmp_path, SLOTS)
    config = load_config(path)
    assert config.slots == Slots(max_slots=2, adopt_interval=3600.0)
    directory = str(tmp_path / "journals")
    assert config.journal.journal_path == directory
    first = await Archivist.from_config(path)
    try:
        second = await Archivist.from_config(config)
        try:
            assert (first.slot, second.slot) == (0, 1)
            with pytest.raises(NoFreeSlot, match="all 2 slots"):
                await Archivist.from_config(path)
        finally:
            await second.shutdown()
        # A worker dies with a backlog in slot 1 (its archive down); the live one
        # drains it with backends ``config.registrations`` makes afresh.
        down = SqliteArchive(tmp_path / "missing" / "archive.db")
        orphan = await Archivist.open(
            directory,
            [Registration(name="archive", backend=down)],
            slots=Slots(adopt_orphans=False),
        )
        await orphan.append_messages(session, [record(session, "orphaned")])
        assert orphan.slot == 1
        await orphan.shutdown(timeout=0)
        with anyio.fail_after(10):
            assert await first.adopt_orphans() == 1
        [got] = await first.read_session(session)
        assert got.content_md == "orphaned"
    finally:
        await first.shutdown()
    assert slot_indexes(directory) == [0, 1]


def test_without_a_slots_table_the_journal_is_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, JOURNAL + SQLITE)
    assert load_config(path).slots is None
    assert default_config().slots is None


SLOTS_ONLY = JOURNAL + SQLITE + "[slots]\n"


@pytest.mark.parametrize(
    ("text", "key", "line", "problem"),
    [
        # A key Slots does not have, with the allowed ones listed.
        (SLOTS_ONLY + "max_slot = 4\n", "max_slot", 8,
         "unknown key 'max_slot'; allowed: max_slots, adopt_orphans, adopt_interval"),
        # Wrong types, with the value shown.
        (SLOTS_ONLY + "max_slots = 'four'\n", "max_slots", 8,
         "Expected `int`, got `str`: 'four'"),
        (SLOTS_ONLY + "adopt_orphans = 'yes'\n", "adopt_orphans", 8,
         "Expected `bool`, got `str`: 'yes'"),
        # Values Slots.__post_init__ refuses.
        (SLOTS_ONLY + "max_slots = 0\n", "max_slots", 8,
         "max_slots must be 1 to 100000, got 0"),
        (SLOTS_ONLY + "adopt_orphans = false\nadopt_interval = 0\n",
         "adopt_interval", 9, "adopt_interval must be > 0 and finite, got 0.0"),
    ],
)  # fmt: skip
def test_bad_slots_values_name_table_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load_config(path)
    error = caught.value
    assert (error.table, error.key, error.line) == ("slots", key, line)
    assert str(error) == f"{path}:{line}: slots.{key}: {error.problem}"


def test_slots_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "slots = 4\n" + JOURNAL + SQLITE)
    with pytest.raises(ConfigError, match=r"must be a \[slots\] table") as caught:
        load_config(path)
    assert (caught.value.key, caught.value.line) == ("slots", 1)


@pytest.mark.parametrize(
    "key", ["[slots]", *(f.name for f in msgspec.structs.fields(Slots))]
)
def test_every_slots_key_is_documented(key: str) -> None:
    assert f"`{key}`" in _config_file_section(), f"{key} is not in {DOCS.name}"
