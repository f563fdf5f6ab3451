"""The config file, ``archivist.toml``: the journal's options and its backends.

Rules and theory:
- One code path with the Python API. ``[journal]`` decodes into
  ``ArchivistOptions`` (``Archivist.open``'s keywords), an optional ``[slots]``
  into ``Slots`` (``journal_path`` then names a journal directory), and each
  ``[[backends]]`` table into a ``BackendConfig`` whose ``__post_init__`` makes a
  ``Registration`` around a stand-in backend: every value passes the checks
  ``open`` and ``Registration`` run, and ``ArchivistConfig.__post_init__`` runs
  ``check_registrations`` (unique names, one enabled).
- Loading imports no backend. ``registrations()`` builds them, fresh each call, so
  a tool can read a config whose drivers are not installed.
- Before decoding, in this order: ``${NAME}`` is substituted from the environment
  (``_config_text``); ``"none"`` becomes None for a key that may be None (TOML
  has no null); relative paths (``journal_path``, a sqlite ``path``, a jsonl
  ``directory``) are joined to the file's folder; every table's keys are checked
  against its fields, since ``ArchivistOptions`` and the policies do not forbid
  unknown fields themselves.
- Every refusal of input is a ``ConfigError`` naming the file, table, key and
  line: ``_error`` is the one place that builds it, and it scrubs every value
  taken from the environment out of text we did not write.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
import types
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._config import Registration
from ._config_backends import BUILTIN_BACKENDS, UNBUILT, build_backend, check_type
from ._config_text import (
    MISSING,
    Place,
    Refused,
    Secrets,
    find_line,
    lookup,
    msgspec_place,
    read_text,
    split_place,
    strings,
    substitute,
    text_now,
)
from ._errors import ConfigError
from ._options import ArchivistOptions, Slots, check_registrations
from ._policies import (
    Durability,
    FailureMode,
    OverflowPolicy,
    Queued,
    RetryPolicy,
    Sync,
    WritePolicy,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_DIRECTORY",
    "ArchivistConfig",
    "BackendConfig",
    "default_config",
    "load_config",
]

#: Where the default config (``load_config()`` without a file) keeps its files,
#: relative to the current directory.
DEFAULT_DIRECTORY: Final = "archivist-data"
#: The string that stands for None in a config file (TOML has no null).
NONE: Final = "none"

_POLICIES: Final[dict[str, type[Queued | Sync]]] = {"queued": Queued, "sync": Sync}
_ENUMS: Final[dict[str, type[Durability | FailureMode | OverflowPolicy]]] = {
    "durability": Durability,
    "failure_mode": FailureMode,
    "overflow": OverflowPolicy,
}


class BackendConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """One ``[[backends]]`` table: a backend type, its settings and a registration.

    Args:
        name: the registration's name (its identity in the journal).
        type: ``"sqlite"``, ``"jsonl"``, ``"postgres"``, ``"webhook"``, or
            ``"module:Class"`` for your own ``ArchiveBackend`` subclass.
        settings: the backend constructor's keyword arguments (a built-in's first
            argument by its name: sqlite ``path``, jsonl ``directory``, postgres
            ``dsn``, webhook ``url``).
        write_policy, failure_mode, retry, priority, readable, enabled: as
            ``Registration``'s, with the same defaults.
        secrets: values taken from the environment, masked in ``repr`` and
            errors (filled by ``load_config``; not a key of the file).

    Raises:
        ValueError, TypeError: a bad type or registration value (wrapped in
            ``msgspec.ValidationError`` when decoded).
    """

    name: str
    type: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    write_policy: WritePolicy = msgspec.field(default_factory=Queued)
    failure_mode: FailureMode = FailureMode.REQUIRED
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    priority: int = 0
    readable: bool = True
    enabled: bool = True
    secrets: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_type(self.type)
        if not isinstance(self.settings, dict) or not all(
            isinstance(key, str) for key in self.settings
        ):
            raise TypeError("settings must be a table with string keys")
        self._registration(UNBUILT)  # Registration's own checks, no driver needed

    def __repr__(self) -> str:
        return Secrets(self.secrets).repr(self)

    def _registration(self, backend: Any) -> Registration:
        return Registration(
            name=self.name,
            backend=backend,
            write_policy=self.write_policy,
            failure_mode=self.failure_mode,
            retry=self.retry,
            priority=self.priority,
            readable=self.readable,
            enabled=self.enabled,
        )

    def _build(self) -> Registration:
        """The registration with a new backend; raises ``Refused``."""
        settings = copy.deepcopy(self.settings)
        secrets = Secrets(self.secrets)
        builtin = BUILTIN_BACKENDS.get(self.type)
        if builtin is not None and builtin.is_path:
            # A built-in's path shows in its repr by design: only secrets of its
            # other settings are held against that repr.
            others = [
                text
                for key, value in settings.items()
                if key != builtin.first
                for text in strings(value)
            ]
            secrets = Secrets(s for s in self.secrets if any(s in t for t in others))
        return self._registration(build_backend(self.type, settings, secrets))

    def registration(self) -> Registration:
        """A ``Registration`` with a newly built backend (a fresh object each call).

        Raises:
            ConfigError: the type does not import (a missing driver names its
                extra) or is not an ``ArchiveBackend``, or the settings are
                refused; nothing was opened.
        """
        try:
            return self._build()
        except Refused as refused:
            raise _error(
                refused.problem,
                (f"backend {self.name!r}", *refused.place),
                None,
                "",
                Secrets(self.secrets),
            ) from refused.__cause__


class ArchivistConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A whole config: the journal's options and the backends' registrations.

    ``journal`` holds ``Archivist.open``'s keywords; ``registrations()`` builds
    its registrations. ``source`` is the file it was loaded from (None for the
    default config) and ``secrets`` the values taken from the environment
    (masked in ``repr``); neither is a key of the file.

    Raises:
        ValueError: two backends share a name, none is enabled, or there are too
            many (``check_registrations``).
    """

    journal: ArchivistOptions
    backends: tuple[BackendConfig, ...]
    #: A ``[slots]`` table: ``journal_path`` is a journal directory of slots.
    slots: Slots | None = None
    source: str | None = None
    secrets: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_registrations(
            [backend._registration(UNBUILT) for backend in self.backends]
        )

    def __repr__(self) -> str:
        return Secrets(self.secrets).repr(self)

    def registrations(self) -> list[Registration]:
        """The backends' registrations, each with a newly built backend.

        Raises:
            ConfigError: a backend could not be built (see
                ``BackendConfig.registration``); none of them was opened.
        """
        registrations = []
        for index, backend in enumerate(self.backends):
            try:
                registrations.append(backend._build())
            except Refused as refused:
                raise _error(
                    refused.problem,
                    ("backends", index, *refused.place),
                    self.source,
                    text_now(self.source),
                    Secrets(self.secrets),
                ) from refused.__cause__
        return check_registrations(registrations)


def default_config(directory: str = DEFAULT_DIRECTORY) -> ArchivistConfig:
    """The config used without a file: the journal ``<directory>/journal.db`` and
    one ``SqliteArchive`` registration named ``archive`` at
    ``<directory>/archive.db``, relative to the current directory."""
    return ArchivistConfig(
        journal=ArchivistOptions(journal_path=os.path.join(directory, "journal.db")),
        backends=(
            BackendConfig(
                name="archive",
                type="sqlite",
                settings={"path": os.path.join(directory, "archive.db")},
            ),
        ),
    )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ArchivistConfig:
    """Read a TOML config file (docs/configuration.md, "The config file").

    ``${NAME}`` in a string value is replaced from ``environ`` (default:
    ``os.environ``) and ``$$`` is a ``$``. Relative paths in the file are resolved
    against the file's folder. No backend is built (``registrations()`` does).

    Args:
        path: the file; None for ``default_config()``.
        environ: the environment to substitute from.

    Raises:
        ConfigError: the file is missing or unreadable, not TOML, or a key or
            value in it is refused; names the file, table, key and line.
    """
    if path is None:
        return default_config()
    source = os.path.abspath(os.fspath(path))
    text = read_text(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))
        line = int(at.group(1)) if at else text.count("\n") + 1
        raise ConfigError(f"not valid TOML: {exc}", path=source, line=line) from exc
    return _Loader(source, text).load(data, os.environ if environ is None else environ)


def _error(
    problem: str, place: Place, source: str | None, text: str, secrets: Secrets
) -> ConfigError:
    table, key = split_place(place)
    line = find_line(text, place) if text else None
    return ConfigError(
        secrets.scrub(problem), path=source, table=table, key=key, line=line
    )


def _fields(struct: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(struct) if f.name != "secrets"]


class _Loader:
    """Turns one file's decoded TOML into an ``ArchivistConfig``."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.folder = os.path.dirname(source)
        self.text = text
        self.found: set[str] = set()

    def error(self, problem: str, place: Place) -> ConfigError:
        return _error(problem, place, self.source, self.text, Secrets(self.found))

    def load(self, data: dict[str, Any], environ: Mapping[str, str]) -> ArchivistConfig:
        try:
            data = substitute(data, environ, (), self.found)  # type: ignore[assignment]
        except Refused as refused:
            raise self.error(refused.problem, refused.place) from None
        self.check_keys(data, ["journal", "backends", "slots"], ())
        journal = data.get("journal")
        if not isinstance(journal, dict):
            raise self.error(
                "a [journal] table with journal_path is needed", ("journal",)
            )
        options = self.convert(
            self.prepare(journal, ArchivistOptions, ("journal",)),
            ArchivistOptions,
            ("journal",),
        )
        slots = self.slots(data)
        tables = data.get("backends")
        if not isinstance(tables, list) or not tables:
            raise self.error(
                "at least one [[backends]] table is needed (an array of tables)",
                ("backends",),
            )
        backends = []
        for index, table in enumerate(tables):
            place: Place = ("backends", index)
            if not isinstance(table, dict):
                raise self.error("each backend is a [[backends]] table", place)
            backends.append(
                self.convert(self.backend(table, place), BackendConfig, place)
            )
        try:
            return ArchivistConfig(
                journal=options,
                backends=tuple(backends),
                slots=slots,
                source=self.source,
                secrets=frozenset(self.found),
            )
        except ValueError as exc:
            names = [backend.name for backend in backends]
            repeated = [i for i, name in enumerate(names) if name in names[:i]]
            where: Place = (
                ("backends", repeated[0], "name") if repeated else ("backends",)
            )
            raise self.error(str(exc), where) from None

    def slots(self, data: dict[str, Any]) -> Slots | None:
        """The ``[slots]`` table, if there is one, as ``Slots``."""
        if "slots" not in data:
            return None
        table = data["slots"]
        if not isinstance(table, dict):
            raise self.error(
                "must be a [slots] table (max_slots, adopt_orphans, adopt_interval)",
                ("slots",),
            )
        slots: Slots = self.convert(
            self.prepare(table, Slots, ("slots",)), Slots, ("slots",)
        )
        return slots

    def check_keys(
        self, table: dict[str, Any], allowed: list[str], place: Place
    ) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(
                    f"unknown key {key!r}; allowed: {', '.join(allowed)}", (*place, key)
                )

    def prepare(
        self, table: dict[str, Any], struct: type[msgspec.Struct], place: Place
    ) -> dict[str, Any]:
        """``table`` with its keys checked, ``"none"`` as None and paths resolved."""
        table = dict(table)
        self.check_keys(table, _fields(struct), place)
        for field in msgspec.structs.fields(struct):
            admits_none = (
                isinstance(field.type, types.UnionType)
                and type(None) in field.type.__args__
            )
            if admits_none and table.get(field.name) == NONE:
                table[field.name] = None
        if struct is ArchivistOptions:
            self.resolve(table, "journal_path")
        return table

    def resolve(self, table: dict[str, Any], key: str) -> None:
        value = table.get(key)
        if isinstance(value, str) and value not in ("", ":memory:"):
            table[key] = os.path.join(self.folder, value)  # an absolute one stays

    def backend(self, table: dict[str, Any], place: Place) -> dict[str, Any]:
        table = self.prepare(table, BackendConfig, place)
        policy = table.get("write_policy")
        if isinstance(policy, str):  # shorthand: write_policy = "sync"
            policy = {"type": policy}
        if isinstance(policy, dict):
            kind = policy.get("type")
            if kind not in _POLICIES:
                raise self.error(
                    f"write policy type must be 'queued' or 'sync', got {kind!r}",
                    (*place, "write_policy", "type"),
                )
            policy = self.prepare(
                {k: v for k, v in policy.items() if k != "type"},
                _POLICIES[kind],
                (*place, "write_policy"),
            )
            table["write_policy"] = {"type": kind, **policy}
        if isinstance(table.get("retry"), dict):
            table["retry"] = self.prepare(
                table["retry"], RetryPolicy, (*place, "retry")
            )
        builtin = BUILTIN_BACKENDS.get(table.get("type"))  # type: ignore[arg-type]
        settings = table.get("settings")
        if builtin is not None and builtin.is_path and isinstance(settings, dict):
            table["settings"] = settings = dict(settings)
            self.resolve(settings, builtin.first)
        texts = list(strings(table))
        table["secrets"] = sorted(v for v in self.found if any(v in t for t in texts))
        return table

    def convert(self, table: dict[str, Any], struct: type[Any], place: Place) -> Any:
        try:
            return msgspec.convert(table, struct)
        except msgspec.ValidationError as exc:
            raise self.validation_error(str(exc), table, place) from None

    def validation_error(
        self, message: str, table: dict[str, Any], place: Place
    ) -> ConfigError:
        """msgspec's ``message`` as a ``ConfigError`` at the key it is about."""
        problem, sub = msgspec_place(message, _ALL_FIELDS)
        value = lookup(table, sub)
        if problem.startswith("Expected") and value is not MISSING:
            secret = isinstance(value, str) and Secrets(self.found).shows(value)
            shown = "(a value from the environment, not shown)" if secret else value
            problem += f": {shown!r:.80}" if not secret else f": {shown}"
        enum = _ENUMS.get(str(sub[-1])) if sub else None
        if problem.startswith("Invalid enum value") and enum is not None:
            problem += f"; one of {', '.join(repr(m.value) for m in enum)}"
        return self.error(problem, (*place, *sub))


_ALL_FIELDS: Final = frozenset(
    name
    for struct in (ArchivistOptions, BackendConfig, Queued, Sync, RetryPolicy, Slots)
    for name in _fields(struct)
)
