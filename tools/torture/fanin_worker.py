"""One worker of the fan-in proof: a slot of a shared journal directory, appending
to shared sessions and erasing some, until killed or told to stop.

    python -m tools.torture.fanin_worker DIR --run R --seed S --max-slots M
        [--stores sqlite,postgres,jetstream] [--sessions 12] [--producers 6]
        [--erase-rate 0.03] [--pg-dsn DSN --pg-schema NAME]
        [--nats-url URL --nats-stream NAME]

It opens ``DIR/journals`` with ``Slots(max_slots=M, adopt_interval=0.5)``, so it
claims the lowest free slot and drains orphans, and delivers to every store of
``--stores`` (``fanin.stores`` builds them: each worker and each orphan it adopts
gets backends of its own). Producers pick sessions at random from one shared
list (every worker the same ``--sessions`` sessions, derived from the seed), so a
session's appends and erasures race through several slots.

The op log (stdout, one line per event, written before the fact it announces can
have happened elsewhere; see ``fanin_oracle.parse_log``)::

    O <run> <slot>                          opened, holding <slot>
    A <run> <op> <session> <start> <ids>    right before append_messages
    E <run> <op> <session> <start>          right before delete_session
    K <run> <op> <at>                       the call returned
    F <run> <op> <at> <ErrorClass>          the call raised
    S <run> <adopted>                       stopped cleanly (SIGTERM)

On SIGTERM it stops its producers, drains every orphan it can see
(``adopt_orphans``), shuts down (each within ``STOP_LIMIT``) and exits 0. Exit 3 if the
archivist failed, 2 if the open raised.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
import uuid
from typing import TYPE_CHECKING

import anyio

from journal_archivist import (
    Archivist,
    ArchivistError,
    ArchivistFailed,
    JournalError,
    MessageRecord,
    Slots,
)

from . import fanin_stores

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_REFUSED = 2
#: Seconds it may take on SIGTERM to drain orphans, then its own backlog.
STOP_LIMIT = 280.0
EXIT_FAILED = 3


def session_ids(seed: int, count: int) -> list[uuid.UUID]:
    """The sessions every worker of a run shares."""
    rng = random.Random(f"fanin-sessions/{seed}")
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]


class Worker:
    """The producers of one worker process and its op log."""

    def __init__(self, args: argparse.Namespace, archivist: Archivist) -> None:
        self._args = args
        self._archivist = archivist
        self._sessions = session_ids(args.seed, args.sessions)
        self._rng = random.Random(f"fanin/{args.seed}/{args.run}")
        self._ops = 0

    def log(self, line: str) -> None:
        """Write one op-log line in one write (a killed worker leaves no half
        line but the last)."""
        os.write(1, (line + "\n").encode())

    async def produce(self) -> None:
        """Append and erase until cancelled."""
        run, rng = self._args.run, self._rng
        while True:
            session = rng.choice(self._sessions)
            self._ops += 1
            op = self._ops
            if rng.random() < self._args.erase_rate:
                self.log(f"E {run} {op} {session} {time.time()!r}")
                call = self._archivist.delete_session(session)
            else:
                records = [
                    MessageRecord(
                        session=session, role="user", content_md=f"{run}/{op}"
                    )
                    for _ in range(rng.randint(1, 3))
                ]
                ids = " ".join(str(r.message_id) for r in records)
                self.log(f"A {run} {op} {session} {time.time()!r} {ids}")
                call = self._archivist.append_messages(session, records)
            try:
                await call
            except ArchivistFailed:
                raise
            except ArchivistError as exc:
                self.log(f"F {run} {op} {time.time()!r} {type(exc).__name__}")
                await anyio.sleep(0.01)  # a refusal (a full backlog): back off
            else:
                self.log(f"K {run} {op} {time.time()!r}")


async def run_worker(args: argparse.Namespace) -> int:
    """Open a slot, produce until SIGTERM, stop cleanly."""
    slots = Slots(max_slots=args.max_slots, adopt_interval=0.5)
    try:
        archivist = await Archivist.open(
            os.path.join(args.dir, "journals"),
            lambda: fanin_stores.registrations(args),
            slots=slots,
        )
    except JournalError as exc:
        print(f"REFUSED {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    worker = Worker(args, archivist)
    worker.log(f"O {args.run} {archivist.slot}")
    try:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as group:
                for _ in range(args.producers):
                    group.start_soon(worker.produce)
                async for _ in signals:
                    group.cancel_scope.cancel()
                    break
        with anyio.fail_after(STOP_LIMIT):
            await archivist.adopt_orphans()
        adopted = archivist.orphans_adopted
    except ArchivistFailed as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        await archivist.aclose()
        return EXIT_FAILED
    await archivist.shutdown(timeout=STOP_LIMIT)
    worker.log(f"S {args.run} {adopted}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.torture.fanin_worker")
    parser.add_argument("dir")
    parser.add_argument("--run", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-slots", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--producers", type=int, default=6)
    parser.add_argument("--erase-rate", type=float, default=0.03)
    fanin_stores.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return anyio.run(run_worker, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
