"""The shared stores of the fan-in proof: building their backends, reading them back.

``sqlite`` is one ``SqliteArchive`` file under the run's directory (several
processes write it, serialised by SQLite's lock); ``postgres`` a
``PostgresArchive`` in a schema of the run's own; ``jetstream`` a
``JetStreamArchive`` on a stream of the run's own. Each call of
``registrations`` builds new backends: one set per worker and per orphan adopted.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from journal_archivist import Queued, Registration, RetryPolicy
from journal_archivist.backends import ArchiveBackend, PostgresArchive, SqliteArchive

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence
    from uuid import UUID

STORES: Final = ("sqlite", "postgres", "jetstream")
DEFAULT_PG_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
_RETRY: Final = RetryPolicy(initial_delay=0.01, max_delay=0.2, attempt_timeout=30.0)
_POLICY: Final = Queued(batch_window_ms=2, capacity=1_000_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming the stores (shared by the parent and its workers)."""
    parser.add_argument("--stores", default="sqlite,postgres,jetstream")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    parser.add_argument("--pg-schema", default="fanin")
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL)
    parser.add_argument("--nats-stream", default="FANIN")


def names(args: argparse.Namespace) -> list[str]:
    """The stores ``--stores`` names, checked."""
    chosen = [name for name in args.stores.split(",") if name]
    unknown = sorted(set(chosen) - set(STORES))
    if unknown or not chosen:
        raise ValueError(f"--stores takes some of {', '.join(STORES)}, got {unknown}")
    return chosen


def backend(name: str, args: argparse.Namespace, *, create: bool) -> ArchiveBackend:
    """A new backend of store ``name`` (``create``: its schema or stream too)."""
    if name == "sqlite":
        return SqliteArchive(os.path.join(args.dir, "archive.db"))
    if name == "postgres":
        return PostgresArchive(args.pg_dsn, schema=args.pg_schema, create_schema=create)
    from journal_archivist.backends import JetStreamArchive

    return JetStreamArchive(
        args.nats_url, stream=args.nats_stream, create_stream=create
    )


def registrations(args: argparse.Namespace) -> list[Registration]:
    """One registration per store, each with a backend of its own."""
    return [
        Registration(
            name=name,
            backend=backend(name, args, create=False),
            write_policy=_POLICY,
            retry=_RETRY,
        )
        for name in names(args)
    ]


async def drop(args: argparse.Namespace) -> None:
    """Drop the run's PostgreSQL schema and JetStream stream, if it made them."""
    chosen = names(args)
    if "postgres" in chosen:
        import asyncpg

        conn = await asyncpg.connect(args.pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.pg_schema}" CASCADE')
        finally:
            await conn.close()
    if "jetstream" in chosen:
        import nats

        client = await nats.connect(args.nats_url)
        try:
            await client.jetstream().delete_stream(args.nats_stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await client.close()


async def contents(
    name: str, args: argparse.Namespace, sessions: Iterable[UUID]
) -> dict[UUID, Sequence[UUID]]:
    """Each session's ``message_id`` values in store ``name``, in read order."""
    async with backend(name, args, create=False) as store:
        return {
            session: [r.message_id for r in await store.read_session(session)]
            for session in sessions
        }
