"""Record content stays out of the errors backends raise (and so out of logs,
``health()`` and dead-letter rows); see also tests/backends/test_webhook_privacy.py.
"""

from __future__ import annotations

import pytest

asyncpg = pytest.importorskip("asyncpg")

from journal_archivist.backends import _postgres_sql  # noqa: E402


@pytest.mark.parametrize(
    "message",
    [
        # asyncpg quotes the start of a value it cannot encode.
        "invalid input for query argument $5: ['private words of a record', 'and"
        " more'] (expected str, got int)",
        "invalid input for query argument $3 in element #7 of executemany()"
        " sequence: 'private words' (invalid UUID 'private words')",
    ],
)
def test_a_postgres_value_that_cannot_be_encoded_is_not_quoted(message: str) -> None:
    retryable, what = _postgres_sql.classify(asyncpg.exceptions.DataError(message))
    assert not retryable
    assert "private" not in what
    assert "invalid input for query argument $" in what
    assert what.endswith(": value withheld")
