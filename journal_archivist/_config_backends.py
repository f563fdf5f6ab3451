"""The backend types a config file names, and building a backend from its settings.

Rules and theory:
- A ``type`` is a built-in name (``BUILTIN_BACKENDS``) or ``"module:Class"``, a
  user's ``ArchiveBackend`` subclass. Nothing is imported until a backend is
  built, so a config whose drivers are not installed still loads; a missing
  driver then names the extra to install.
- ``settings`` are the constructor's keyword arguments (a built-in's first
  argument too, by its name). They are bound to the constructor's signature
  before the call, so an unknown or missing one is named with the allowed keys
  instead of surfacing as a ``TypeError`` from inside.
- A backend's ``repr`` is its own, and it ends up in logs (a ``Registration``
  shows it). A built backend whose repr shows a value taken from the
  environment is refused: such a value must go where the backend masks it (a
  DSN's password, a credential header, a ``secret_path`` URL).
- Failures are raised as ``Refused`` (``_config_text``): a place relative to the
  backend's table
  and a message already scrubbed of secrets; ``_config_file`` turns it into a
  ``ConfigError`` with the file, table and line. A foreign error that showed a
  secret is not kept as the cause.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ._config_text import Refused
from .backends._base import ArchiveBackend

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from ._config_text import Place, Secrets
    from ._records import MessageRecord

__all__ = [
    "BUILTIN_BACKENDS",
    "UNBUILT",
    "BuiltinBackend",
    "build_backend",
    "check_type",
]


class BuiltinBackend(NamedTuple):
    """A built-in backend type of the config file."""

    #: Its class, in ``journal_archivist.backends``.
    class_name: str
    #: The constructor's first argument, given by this name in ``settings``.
    first: str
    #: Whether ``first`` is a filesystem path (resolved against the file's folder).
    is_path: bool
    #: The extra that installs its driver, if it needs one.
    extra: str | None


BUILTIN_BACKENDS: Final = {
    "sqlite": BuiltinBackend("SqliteArchive", "path", True, None),
    "jsonl": BuiltinBackend("JsonlArchive", "directory", True, None),
    "postgres": BuiltinBackend("PostgresArchive", "dsn", False, "postgres"),
    "webhook": BuiltinBackend("WebhookArchive", "url", False, "webhook"),
    "jetstream": BuiltinBackend("JetStreamArchive", "servers", False, "nats"),
}

_CUSTOM = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_VALID = ", ".join(repr(name) for name in BUILTIN_BACKENDS)


def check_type(type_: object) -> None:
    """Refuse a ``type`` that is neither a built-in name nor ``module:Class``.

    Raises:
        ValueError: naming the valid types.
    """
    if type_ in BUILTIN_BACKENDS:
        return
    if isinstance(type_, str) and _CUSTOM.fullmatch(type_):
        return
    raise ValueError(
        f"type {type_!r} is not a backend type; use one of {_VALID}, or"
        " 'module:Class' for your own ArchiveBackend subclass"
    )


def _import_class(type_: str) -> type[ArchiveBackend]:
    builtin = BUILTIN_BACKENDS.get(type_)
    if builtin is not None:
        # The package imports an optional driver on first access of its class.
        from . import backends

        try:
            cls: object = getattr(backends, builtin.class_name)
        except ImportError as exc:
            raise Refused(
                ("type",),
                f"backend type {type_!r} needs the {builtin.extra!r} extra: pip"
                f" install 'journal-archivist[{builtin.extra}]'",
            ) from exc
        assert isinstance(cls, type)
        assert issubclass(cls, ArchiveBackend)
        return cls
    module_name, _, qualname = type_.partition(":")
    try:
        # The config file names code to run: it is trusted like that code.
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the user's module is bad input
        raise Refused(
            ("type",),
            f"cannot import module {module_name!r} of backend type {type_!r}"
            f" ({type(exc).__name__}: {exc})",
        ) from exc
    for attr in qualname.split("."):
        try:
            found = getattr(found, attr)
        except AttributeError as exc:
            raise Refused(
                ("type",), f"module {module_name!r} has no {qualname!r} ({type_!r})"
            ) from exc
    if not (isinstance(found, type) and issubclass(found, ArchiveBackend)):
        raise Refused(
            ("type",), f"{type_!r} is not an ArchiveBackend subclass: {found!r:.80}"
        )
    return found


def _check_settings(cls: type[ArchiveBackend], settings: dict[str, Any]) -> None:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to check: let the call decide
        return
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = [p.name for p in named if p.kind is not p.POSITIONAL_ONLY]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for key in settings:
            if key not in names:
                raise Refused(
                    ("settings", key),
                    f"unknown setting {key!r} of {cls.__name__}; allowed:"
                    f" {', '.join(names) or 'none'}",
                )
    for p in named:
        if p.default is p.empty and p.name not in settings:
            raise Refused(
                ("settings", p.name), f"{cls.__name__} needs setting {p.name!r}"
            )


def build_backend(
    type_: str, settings: dict[str, Any], secrets: Secrets
) -> ArchiveBackend:
    """A new backend of ``type_``, called with ``settings`` as keywords.

    Raises:
        Refused: the type does not import or is not a backend, a setting is
            unknown or missing, the constructor refused one (``TypeError``,
            ``ValueError``, ``OSError``), or the backend's repr shows a secret.
    """
    cls = _import_class(type_)
    _check_settings(cls, settings)
    try:
        backend = cls(**settings)
    except (TypeError, ValueError, OSError) as exc:
        text = str(exc)
        first = text.split(" ", 1)[0]
        place: Place = ("settings", first) if first in settings else ("settings",)
        refused = Refused(
            place, f"{cls.__name__} refused its settings: {secrets.scrub(text)}"
        )
        if secrets.shows(text):
            raise refused from None  # the cause would show the secret
        raise refused from exc
    if secrets.shows(repr(backend)):
        raise Refused(
            ("settings",),
            f"{cls.__name__}'s repr would show a value taken from the environment;"
            " put environment values only where the backend masks them (a DSN's"
            " password, a credential header such as Authorization, a URL with"
            " secret_path = true)",
        )
    return backend


class _Unbuilt(ArchiveBackend):
    """Stands in for a backend not built yet, so a ``Registration`` made for its
    checks alone (name, policy) needs no driver. Never opened or written to."""

    def __repr__(self) -> str:
        return "<backend not built>"

    async def append_messages(
        self, session: UUID, records: Sequence[MessageRecord]
    ) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    async def delete_session(self, session: UUID) -> None:  # pragma: no cover
        raise NotImplementedError

    async def health_check(self) -> None:  # pragma: no cover
        raise NotImplementedError


#: The one stand-in backend: it holds nothing.
UNBUILT: Final = _Unbuilt()
