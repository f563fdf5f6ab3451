"""Which text of a PostgreSQL DSN is secret, for ``PostgresArchive``: pure, no I/O.

The password of a DSN must never reach a ``repr``, a log record or an error
message. ``postgres.py`` masks the DSN once, when constructed, and
``_postgres_pool`` scrubs every secret from the errors it raises.

Rules and theory:
- The mask trusts no URL parser: in a URL, everything between ``://`` and the
  last ``@`` after a ``:`` is user info; any ``password=`` value (query or libpq
  keyword string) is masked.
- Each secret is kept in every form it may be shown in: as written,
  percent-decoded, plus-decoded and with libpq quoting undone.
- A DSN that a URL parser reads differently (``misread_dsn``) makes the driver
  quote pieces of the password, which no scrub list can recognise.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

__all__ = ["mask_dsn", "misread_dsn"]

#: ``password=`` (and ``sslpassword=``) in a URL's query: the value runs to the
#: next ``&``, a ``#`` included.
_QUERY_PASSWORD: Final = re.compile(r"(?i)([?&][a-z_]*password=)([^&]*)")
#: ``password = value`` in a libpq keyword/value string, the value maybe quoted.
_KEYWORD_PASSWORD: Final = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def _secret_forms(secret: str) -> set[str]:
    """``secret`` as written and as decoded (percent, plus, libpq quoting)."""
    unquoted = (
        secret[1:-1] if len(secret) > 1 and secret[0] == secret[-1] == "'" else secret
    )
    return {
        secret,
        unquoted,
        re.sub(r"\\(.)", r"\1", unquoted),
        urllib.parse.unquote(secret),
        urllib.parse.unquote_plus(secret),
    }


def _url_userinfo(dsn: str) -> str | None:
    """The user info a URL parser (asyncpg's) reads from ``dsn``, if any."""
    try:
        netloc = urllib.parse.urlsplit(dsn).netloc
    except ValueError:  # an unbalanced "[": no parser agrees on anything
        return None
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo if at else None


def mask_dsn(dsn: str) -> tuple[str, frozenset[str]]:
    """Return ``dsn`` with its passwords replaced by ``***``, and the secrets.

    Parses nothing the way a URL parser would, so a password with an unescaped
    ``/``, ``?``, ``#`` or ``@`` is masked whole: in a URL, everything between
    ``://`` and the last ``@`` after a ``:`` is user info (more than a password,
    if a query value holds an ``@``: masking too much is the safe side). A libpq
    keyword/value string has its ``password=`` value masked.
    """
    secrets: set[str] = set()

    def hide(match: re.Match[str]) -> str:
        secrets.update(_secret_forms(match[2]))
        return f"{match[1]}***"

    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return _KEYWORD_PASSWORD.sub(hide, dsn), frozenset(s for s in secrets if s)
    userinfo, at, tail = rest.rpartition("@")
    if at and ":" in userinfo:
        user, _, password = userinfo.partition(":")
        secrets.update(_secret_forms(password))
        rest = f"{user}:***@{tail}"
    parsed = _url_userinfo(dsn)  # what the driver will read, if it differs
    if parsed is not None and ":" in parsed:
        secrets.update(_secret_forms(parsed.partition(":")[2]))
    masked = f"{scheme}{sep}{_QUERY_PASSWORD.sub(hide, rest)}"
    return masked, frozenset(s for s in secrets if s)


def misread_dsn(dsn: str) -> bool:
    """Whether a URL parser reads ``dsn``'s user info differently from the mask.

    Then the driver may quote pieces of the password (``invalid literal for
    int(): 'pa'`` for ``u:pa/ss@host``), which no scrub list can recognise: a
    password with an unescaped ``/``, ``?``, ``#`` or ``@``.
    """
    _, sep, rest = dsn.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return False
    # asyncpg splits the netloc at its first "@", urlsplit at its last.
    return "@" in userinfo or _url_userinfo(dsn) != userinfo
