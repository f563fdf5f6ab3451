"""``python -m journal_archivist``: the ``journal-archivist`` command line."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
