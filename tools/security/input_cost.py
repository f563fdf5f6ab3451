"""What hostile input costs an archivist: the input-cost probes of issue 8.

    .venv/bin/python -m tools.security.input_cost [--repeat 3] [--records 2000000]

Each probe prints one line of figures:

nested  One record of about 0.95 MB whose ``metadata`` is 63 levels of dicts, each
        with one 7,900-character key, around a list of 450,000 small ints (the
        innermost values sit exactly ``MAX_JSON_DEPTH`` levels deep, so the record
        is accepted). Times ``encode_append`` on it, which runs on the event loop:
        how long one such append holds the loop (median and max of ``--repeat``).
flood   ``append_messages(session, records)`` with ``--records`` (2,000,000) small
        records in one call, to a fresh journal. Reports whether it was refused
        (``ValidationError``, by ``max_append_records``), the time to the refusal,
        the peak RSS growth during the call (``VmHWM``, reset through
        ``/proc/self/clear_refs`` just before; the records, which the caller owns,
        are built before the baseline) and the peak of what Python allocated
        during a second refused call (``tracemalloc``).
bulk    One call of 10,000 records of 100,000 characters each (sharing one
        string, so the caller holds little): about 1 GB encoded, over
        ``DEFAULT_MAX_APPEND_BYTES`` but within ``DEFAULT_MAX_APPEND_RECORDS``.
        Refused by ``max_append_bytes`` once the encoded total passes it, so the
        peak RSS growth stays near that limit whatever the call carries.

RSS figures need Linux ``/proc``; elsewhere they print as ``n/a``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import anyio

from journal_archivist import (
    DEFAULT_MAX_RECORD_BYTES,
    Archivist,
    ArchivistError,
    JsonValue,
    MessageRecord,
    Registration,
    ValidationError,
)
from journal_archivist._records import encode_append
from journal_archivist.testing import MockBackend

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The nested probe's shape, as issue 8 describes it.
NESTED_LEVELS = 63
NESTED_KEY_CHARS = 7_900
NESTED_ITEMS = 450_000
#: Records of the flood probe.
FLOOD_RECORDS = 2_000_000
#: Characters of content of each record of the bulk probe, and how many records.
BULK_CHARS = 100_000
BULK_RECORDS = 10_000

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def nested_record(session: UUID) -> MessageRecord:
    """The 0.95 MB record of the nested probe."""
    value: JsonValue = [0] * NESTED_ITEMS
    for level in range(NESTED_LEVELS):
        key = f"{level:02d}".ljust(NESTED_KEY_CHARS, "k")
        value = {key: value}
    return MessageRecord(session=session, role="user", metadata=value)


def _kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> int | None:
    """Reset ``VmHWM`` to the current RSS and return that RSS, in bytes."""
    gc.collect()
    before = _kib("VmRSS")
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return None if before is None else before * 1024


def _peak_growth(before: int | None) -> int | None:
    peak = _kib("VmHWM")
    return None if before is None or peak is None else peak * 1024 - before


def _mib(value: int | None) -> str:
    if value is None:
        return "n/a"
    if value < 2**20:
        return f"{value / 2**10:.0f} KiB"
    return f"{value / 2**20:.1f} MiB"


def probe_nested(repeat: int) -> str:
    session = uuid4()
    record = nested_record(session)
    times = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        payload = encode_append(
            session, [record], max_record_bytes=DEFAULT_MAX_RECORD_BYTES
        )
        times.append(time.perf_counter() - started)
        size = len(payload)
    return (
        f"nested: one {size / 1e6:.2f} MB record ({NESTED_LEVELS} levels of"
        f" {NESTED_KEY_CHARS}-char keys around {NESTED_ITEMS} items): accepted;"
        f" encode_append holds the loop {statistics.median(times) * 1e3:.1f} ms"
        f" (median of {repeat}; max {max(times) * 1e3:.1f} ms)"
    )


async def _append(
    directory: Path, session: UUID, records: Sequence[MessageRecord]
) -> tuple[str, float, int | None, int | None]:
    """Append ``records`` in one call; return the outcome, its seconds, the peak
    RSS growth and (if refused) the peak traced allocation of a second call."""
    backend = MockBackend()
    backend.hold()  # nothing is delivered: the call's own cost is measured
    registration = Registration(name="probe", backend=backend)
    async with Archivist.open(
        directory / "journal.db", [registration], close_timeout=0
    ) as archivist:
        before = _reset_peak()
        started = time.perf_counter()
        try:
            await archivist.append_messages(session, records)
        except ValidationError as exc:
            outcome = f"refused ({exc})"
        except ArchivistError as exc:  # e.g. past SQLite's limit on a blob's size
            outcome = f"failed late: {type(exc).__name__} ({exc})"
        else:
            outcome = "accepted (journaled)"
        elapsed = time.perf_counter() - started
        growth = _peak_growth(before)
        traced = None
        if outcome.startswith("refused"):
            tracemalloc.start()
            try:
                await archivist.append_messages(session, records)
            except ValidationError:
                traced = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        backend.release()
    return outcome, elapsed, growth, traced


def _figures(
    name: str,
    what: str,
    payload: int,
    result: tuple[str, float, int | None, int | None],
) -> str:
    outcome, elapsed, growth, traced = result
    ratio = "" if growth is None else f" = {growth / payload:.3f}x the payload"
    return (
        f"{name}: {what} (~{payload / 2**20:.0f} MiB encoded): {outcome};"
        f" {elapsed * 1e3:.3f} ms; peak RSS growth {_mib(growth)}{ratio};"
        f" traced peak of a refusal {_mib(traced)}"
    )


def probe_flood(count: int) -> str:
    session = uuid4()
    records = [
        MessageRecord(session=session, role="user", content_md="hi")
        for _ in range(count)
    ]
    payload = count * len(encode_append(session, records[:1], max_record_bytes=1024))
    with tempfile.TemporaryDirectory(prefix="ja-input-cost-") as directory:
        result = anyio.run(_append, Path(directory), session, records)
    return _figures("flood", f"{count} small records in one call", payload, result)


def probe_bulk() -> str:
    session = uuid4()
    content = "x" * BULK_CHARS
    records = [
        MessageRecord(session=session, role="user", content_md=content)
        for _ in range(BULK_RECORDS)
    ]
    payload = BULK_RECORDS * len(
        encode_append(session, records[:1], max_record_bytes=1 << 20)
    )
    with tempfile.TemporaryDirectory(prefix="ja-input-cost-") as directory:
        result = anyio.run(_append, Path(directory), session, records)
    return _figures(
        "bulk", f"{BULK_RECORDS} records of {BULK_CHARS} chars", payload, result
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of nested")
    parser.add_argument("--records", type=int, default=FLOOD_RECORDS)
    parser.add_argument(
        "--probe",
        choices=["nested", "flood", "bulk"],
        action="append",
        help="run only these (default: all)",
    )
    args = parser.parse_args()
    chosen = args.probe or ["nested", "flood", "bulk"]
    if "nested" in chosen:
        print(probe_nested(args.repeat), flush=True)
    if "flood" in chosen:
        print(probe_flood(args.records), flush=True)
    if "bulk" in chosen:
        print(probe_bulk(), flush=True)


if __name__ == "__main__":
    main()
