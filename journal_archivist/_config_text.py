"""The config file as text: reading it, ``${NAME}`` substitution, secrets, and
where a key is written. Helpers of ``_config_file``; only ``read_text`` and
``text_now`` touch the disk.

Rules and theory:
- A key's place is a tuple of TOML keys and array indexes, as msgspec's ``$``
  paths give it: ``("backends", 1, "write_policy", "timeout")``. ``split_place``
  turns it into the ``table`` and ``key`` a ``ConfigError`` names
  (``backends[1].write_policy`` and ``timeout``).
- Substitution happens on the decoded TOML, in string values only (never keys):
  ``${NAME}`` is replaced from the environment, ``$$`` is one ``$``, and any other
  ``$`` is an error, so a value never silently keeps a reference meant to be
  replaced. The result stays a string.
- Every value taken from the environment is a secret: the variable's value, and
  the whole string it went into. ``Secrets`` masks them in text we did not write
  (msgspec's and backends' messages) and in reprs; our own messages name the
  variable and the key, never the value. Like the webhook's masking, text is
  searched only for secrets of ``MIN_SEARCHED`` characters or more (a shorter one
  would mask ordinary words and numbers); a value that *is* a secret is masked
  whatever its length.
- TOML parsers give no positions, so ``find_line`` scans the text: it follows the
  ``[table]`` and ``[[array]]`` headers and looks for the key in its table, or on
  the line of an inline table (``write_policy = { timeout = 0 }``) or dotted key
  that holds it. Multi-line strings and arrays can fool it; it is a best effort,
  and None when nothing matches.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import msgspec

from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence, Set

__all__ = [
    "MIN_SEARCHED",
    "MISSING",
    "Place",
    "Refused",
    "Secrets",
    "find_line",
    "lookup",
    "msgspec_place",
    "read_text",
    "split_place",
    "strings",
    "substitute",
    "text_now",
]

Place = tuple[str | int, ...]

#: Secrets shorter than this are masked only where a whole value equals them.
MIN_SEARCHED: Final = 4
_MASK: Final = "***"
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$))")


class Refused(Exception):
    """A value refused at ``place``; the caller adds the file, table and line.

    ``problem`` never shows a secret: messages from elsewhere are scrubbed first.
    """

    def __init__(self, place: Place, problem: str) -> None:
        super().__init__(problem)
        self.place = place
        self.problem = problem


def split_place(place: Place) -> tuple[str | None, str | None]:
    """``place`` as a ``(table, key)`` pair: the last key (with any indexes after
    it) and the tables before it, written ``backends[1].write_policy``."""
    last = max((i for i, part in enumerate(place) if isinstance(part, str)), default=-1)
    if last < 0:
        return None, None
    return _dotted(place[:last]) or None, _dotted(place[last:])


def _dotted(place: Place) -> str:
    text = ""
    for part in place:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


class Secrets:
    """Values taken from the environment, masked as ``***`` wherever we show text."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(value for value in values if value)
        # Longest first, so a secret that contains another is masked whole.
        self._searched = sorted(
            (value for value in self.values if len(value) >= MIN_SEARCHED),
            key=len,
            reverse=True,
        )

    def __repr__(self) -> str:
        return f"<{len(self.values)} secrets>"

    def shows(self, text: str) -> bool:
        """Whether ``text`` is or contains a secret."""
        return text in self.values or any(value in text for value in self._searched)

    def scrub(self, text: str) -> str:
        """``text`` with every secret in it replaced by ``***``."""
        if text in self.values:
            return _MASK
        for value in self._searched:
            text = text.replace(value, _MASK)
        return text

    def masked(self, value: object) -> object:
        """``value`` (nested dicts and lists too) with each string that shows a
        secret replaced by ``***``, for a repr."""
        if isinstance(value, str):
            return _MASK if self.shows(value) else value
        if isinstance(value, dict):
            return {key: self.masked(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.masked(item) for item in value)
        return value

    def repr(self, value: object) -> str:
        """``repr(value)``, Structs and tuples too, with every secret as ``***``
        (a ``secrets`` field is left out)."""
        if isinstance(value, msgspec.Struct):
            fields = ", ".join(
                f"{name}={self.repr(getattr(value, name))}"
                for name in value.__struct_fields__
                if name != "secrets"
            )
            return f"{type(value).__name__}({fields})"
        if isinstance(value, tuple):
            items = [self.repr(item) for item in value]
            return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
        return repr(self.masked(value))


def strings(value: object) -> Iterable[str]:
    """Every string in ``value``, nested dicts and lists too (not keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


#: What ``lookup`` returns for a place that holds nothing.
MISSING: Final = object()


def lookup(value: object, place: Sequence[str | int]) -> object:
    """The value at ``place`` inside ``value``, or ``MISSING``."""
    for part in place:
        found = isinstance(value, dict) and part in value
        if isinstance(value, list) and isinstance(part, int):
            found = part < len(value)
        if not found:
            return MISSING
        value = value[part]  # type: ignore[index]
    return value


def msgspec_place(message: str, fields: Set[str]) -> tuple[str, list[str | int]]:
    """A ``msgspec.ValidationError`` message as the problem and its place.

    msgspec ends a message with the ``$`` path of the key, except for our own
    ``__post_init__`` checks, which end at the table; their messages start with
    the field's name (one of ``fields``; "registration name" is ``name``).
    """
    at = re.search(r" - at `\$((?:\.\w+|\[\d+\])*)`$", message)
    problem = message[: at.start()] if at else message
    path = at.group(1) if at else ""
    place: list[str | int] = [
        int(index) if index else key
        for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", path)
    ]
    missing = re.fullmatch(r"Object missing required field `(\w+)`", problem)
    if missing is not None:
        place.append(missing.group(1))
        return f"missing key {missing.group(1)!r}", place
    first = problem.split(" ", 1)[0]
    first = "name" if first == "registration" else first
    if first in fields and place[-1:] != [first]:
        place.append(first)
    return problem, place


def read_text(source: str) -> str:
    """The config file's text.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8.
    """
    try:
        with open(source, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ConfigError("no such file", path=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", path=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=source) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start})", path=source, line=line
        ) from None


def text_now(source: str | None) -> str:
    """The file's text now, to find a line in; empty if it cannot be read."""
    if source is None:
        return ""
    try:
        with open(source, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return ""


def substitute(
    value: object, environ: Mapping[str, str] | None, place: Place, found: set[str]
) -> object:
    """``value`` with ``${NAME}`` replaced in every string inside it.

    The values used, and each string they went into, are added to ``found``.
    ``environ`` None means substitution is off (the built-in default).

    Raises:
        Refused: an unset variable (named, its value never shown) or a stray
            ``$``.
    """
    if isinstance(value, dict):
        return {
            key: substitute(item, environ, (*place, key), found)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            substitute(item, environ, (*place, i), found)
            for i, item in enumerate(value)
        ]
    if not isinstance(value, str) or "$" not in value or environ is None:
        return value
    used: list[str] = []
    out: list[str] = []
    pos = 0
    for match in _REFERENCE.finditer(value):
        if "$" in value[pos : match.start()]:
            break
        out.append(value[pos : match.start()])
        pos = match.end()
        name = match.group(1)
        if name is None:  # "$$"
            out.append("$")
            continue
        if name not in environ:
            raise Refused(place, f"environment variable {name} is not set")
        used.append(environ[name])
        out.append(environ[name])
    if "$" in value[pos:]:
        raise Refused(
            place, "a '$' must start a ${NAME} reference or be doubled as '$$'"
        )
    out.append(value[pos:])
    result = "".join(out)
    if used:
        found.update(used)
        found.add(result)
    return result


# -- where a key is written --------------------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?")
_KEY_LINE = re.compile(r"\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def _key_parts(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def _sections(text: str) -> list[tuple[Place, int, list[tuple[int, str]]]]:
    """The tables of ``text``: each one's place, header line, and its lines."""
    sections: list[tuple[Place, int, list[tuple[int, str]]]] = [((), 0, [])]
    arrays: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.fullmatch(line)
        if header is None:
            sections[-1][2].append((number, line))
            continue
        names = _key_parts(header.group(2))
        if header.group(1) == "[[":
            arrays[names] = arrays.get(names, -1) + 1
        place: list[str | int] = []
        for i in range(1, len(names) + 1):
            place.append(names[i - 1])
            if names[:i] in arrays:
                place.append(arrays[names[:i]])
        sections.append((tuple(place), number, []))
    return sections


def find_line(text: str, place: Place) -> int | None:
    """The line (1-based) where the key at ``place`` is written, else the header
    of the innermost table holding it; None if there is none.

    A best effort (see the module docstring).
    """
    sections = [s for s in _sections(text) if place[: len(s[0])] == s[0]]
    sections.sort(key=lambda s: len(s[0]), reverse=True)
    for section_place, _, lines in sections:
        rest = place[len(section_place) :]
        # Keys past an array index live inside a value: find the key holding it.
        cut = next((i for i, p in enumerate(rest) if isinstance(p, int)), len(rest))
        wanted = tuple(str(p) for p in rest[:cut])
        if not wanted:
            break
        holder: int | None = None
        for number, line in lines:
            match = _KEY_LINE.match(line)
            if match is None:
                continue
            parts = _key_parts(match.group(1))
            if parts == wanted:
                return number
            if wanted[: len(parts)] == parts and holder is None:
                after = line[match.end() :]
                inline = re.search(rf"\b{re.escape(wanted[-1])}\s*=", after)
                if inline is not None or len(parts) == len(wanted) - 1:
                    holder = number
        if holder is not None:
            return holder
    return next((header for _, header, _ in sections if header), None)
