"""Peak memory of one large append, journaled and delivered to real archives.

    .venv/bin/python tools/memory.py [--mb 50] [--backends sqlite,jsonl] [--repeat 3]

Each run is a fresh child process (a clean heap): it builds one record whose
``content_md`` is ``--mb`` MiB of text, opens a journal (``Durability.FULL``,
``max_record_bytes`` and ``max_append_bytes`` raised to fit) in front of the
chosen archives in a temporary directory, appends and delivers one small record
to warm up, and then measures:
the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` just before) while
the large record is appended and delivered (``wait_drained``), less the RSS just
before. The record itself, which the caller owns, is built before the baseline.
Printed: the growth in MiB and as a multiple of the encoded record's size (the
target is at most 4x for one append delivered to two backends); the median of
``--repeat`` runs. Linux only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, json, sys, uuid
from pathlib import Path
import anyio
from journal_archivist import Archivist, MessageRecord, Registration
from journal_archivist._records import encode_append
from journal_archivist.backends import JsonlArchive, SqliteArchive

directory, mib, backends = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)

async def main():
    session = uuid.uuid4()
    big = MessageRecord(session=session, role="user", content_md="x" * (mib << 20))
    size = len(encode_append(session, [big], max_record_bytes=1 << 40))
    made = {
        "sqlite": lambda: SqliteArchive(directory / "archive.db"),
        "jsonl": lambda: JsonlArchive(directory / "jsonl"),
    }
    regs = [Registration(name=name, backend=made[name]()) for name in backends]
    limit = size + 1024  # max_append_bytes may not be below max_record_bytes
    async with Archivist.open(
        directory / "journal.db",
        regs,
        max_record_bytes=limit,
        max_append_bytes=limit,
    ) as archivist:
        small = MessageRecord(session=session, role="user", content_md="warm up")
        await archivist.append_messages(session, [small])
        await archivist.wait_drained()
        gc.collect()
        before = kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        await archivist.append_messages(session, [big])
        await archivist.wait_drained()
        peak = kib("VmHWM")
    print(json.dumps({"size": size, "growth": (peak - before) * 1024}))

anyio.run(main)
"""


def run_once(mib: int, backends: str) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="ja-memory-") as directory:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, directory, str(mib), backends],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise SystemExit(f"child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=50, help="MiB of content")
    parser.add_argument("--backends", default="sqlite,jsonl")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("memory: SKIP needs Linux /proc")
    runs = [run_once(args.mb, args.backends) for _ in range(args.repeat)]
    size = runs[0]["size"]
    growth = statistics.median(run["growth"] for run in runs)
    each = ", ".join(f"{run['growth'] / size:.2f}x" for run in runs)
    print(
        f"memory: one {size / 2**20:.1f} MiB record to {args.backends}:"
        f" peak RSS growth {growth / 2**20:.1f} MiB = {growth / size:.2f}x the"
        f" record (median of {len(runs)};"
        f" runs: {each})"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
