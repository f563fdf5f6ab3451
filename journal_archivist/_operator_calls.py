"""The calls an operator makes on a running archivist: its health and numbers,
waiting for drain, compacting, and handling dead letters and quarantined entries.

Rules and theory:
- ``Archivist`` inherits them (``OperatorCalls``); they are public methods of
  ``Archivist`` and documented there. They live apart so the class that appends
  and reads stays readable.
- Dead letters and quarantined entries are changed only by the committer, between
  its rounds (``_maintenance``): a replay or purge never interleaves with a
  commit, and a replay sees every erasure committed before it.
- A replay needs the backend registered and enabled (its writer delivers what is
  requeued); a purge takes any name, so the rows of a backend no longer
  registered can be cleared too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._errors import ArchivistClosed
from ._maintenance import Kind, Request
from ._stats_live import collect_stats

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._health import HealthReport
    from ._lifecycle import Runtime
    from ._slots import Adopter
    from ._stats import Stats
    from ._writer import Writer

__all__ = ["OperatorCalls"]


class OperatorCalls:
    """``Archivist``'s operator calls (see the module)."""

    _runtime: Runtime
    _by_name: dict[str, Writer]
    #: The slot of a journal directory it holds (``Slots``), and its adopter.
    _slot: int | None = None
    _adopter: Adopter | None = None

    def _check_open(self) -> None:  # pragma: no cover - Archivist's
        raise NotImplementedError

    def health(self) -> HealthReport:
        """Frozen snapshots of the journal and of every backend (contract 7)."""
        return self._runtime.health()

    def stats(self) -> Stats:
        """The numbers of the journal and of every backend, and the append and
        commit counters and histograms since open (``docs/metrics.md``). Cheap:
        no journal query."""
        return collect_stats(self._runtime, self._runtime.metrics)

    @property
    def slot(self) -> int | None:
        """The slot it holds of a journal directory (``Slots``); None if it was
        opened on a journal file."""
        return self._slot

    @property
    def orphans_adopted(self) -> int:
        """Orphan slots it drained since it opened (``Slots``)."""
        return 0 if self._adopter is None else self._adopter.adopted

    async def adopt_orphans(self) -> int:
        """Drain the orphan slots of its journal directory now, one at a time;
        how many were drained.

        Orphans are slots no process holds that still have a backlog; one that
        cannot be drained (its archive down, its file damaged) is logged and
        left for the next look (``Slots.adopt_interval``). Waits for a look
        under way to finish first. Use under ``anyio.fail_after``.

        Raises:
            ValueError: it was not opened with ``Slots(adopt_orphans=True)``.
        """
        self._check_open()
        if self._adopter is None:
            raise ValueError(
                "adopt_orphans needs an archivist opened with Slots(adopt_orphans=True)"
            )
        return await self._adopter.adopt_now()

    async def wait_drained(self, backend: str | None = None) -> None:
        """Wait until nothing is pending for ``backend`` (default: every enabled one).

        Also waits for the done-marks to be committed, so the journal no longer
        holds the delivered entries. Use under ``anyio.fail_after`` when a backend
        may be down.

        Raises:
            ValueError: ``backend`` is not registered, or is disabled.
            ArchivistClosed: the archivist is shut down.
            ArchivistFailed: the archivist failed (at once, also while waiting).
        """
        self._check_open()
        if backend is None:
            writers = [w for w in self._runtime.writers if w.enabled]
        else:
            writers = [self._enabled_writer(backend, "will not drain")]
        try:
            for writer in writers:
                await writer.wait_settled()
            await self._runtime.committer.flush()
        except ArchivistClosed:
            self._check_open()  # ArchivistFailed, if that is why
            raise

    async def compact(self) -> None:
        """Return the journal's free pages to the filesystem now.

        The journal reuses the space of delivered entries, so its file keeps the
        size of its largest backlog; the archivist gives free pages back by itself
        once the backlog is drained and more than 64 MiB is free. This does it now,
        in slices between commits (appends are not held up for long).
        """
        self._check_open()
        await self._runtime.committer.compact()
        self._check_open()  # it may have stopped meanwhile

    async def replay_dead_letters(
        self, backend: str, ids: Iterable[int] | None = None
    ) -> int:
        """Requeue ``backend``'s dead letters (only those of ``ids``, if given)
        for ``backend`` alone; how many were requeued.

        Each becomes a new entry, durable once this returns and delivered like
        an append (after everything journaled before it), and leaves the dead
        letters in the same transaction; the other backends' backlogs are not
        touched. Left in place (and logged): a letter whose session has an
        erasure, journaled after it, still pending for ``backend`` (the erasure
        purges it once settled), and a damaged one. Not refused for a full
        backlog. Ids of other backends' letters are ignored.

        Raises:
            ValueError: ``backend`` is not registered, or is disabled.
            JournalWriteFailed: the commit failed; nothing of that transaction
                was requeued (earlier ones of a long replay were).
            ArchivistClosed, ArchivistFailed: the archivist is shut down or failed.
        """
        self._check_open()
        writer = self._enabled_writer(backend, "cannot take a replay")
        return await self._request(
            Request(
                Kind.REPLAY,
                backend,
                _ids(ids),
                asyncio.get_running_loop().create_future(),
                writer=writer,
                reader=self._runtime.query,
            )
        )

    async def purge_dead_letters(
        self, backend: str, ids: Iterable[int] | None = None
    ) -> int:
        """Delete ``backend``'s dead letters (only those of ``ids``, if given),
        durably; how many went. ``backend`` need not be registered any more."""
        return await self._purge(Kind.PURGE_DEAD_LETTERS, backend, ids)

    async def purge_quarantine(
        self, backend: str, ids: Iterable[int] | None = None
    ) -> int:
        """Delete ``backend``'s quarantined entries (only those of ``ids``, if
        given), durably; how many went. ``backend`` need not be registered any
        more. The ``quarantined`` counters keep their count."""
        return await self._purge(Kind.PURGE_QUARANTINE, backend, ids)

    async def _purge(self, kind: Kind, backend: str, ids: Iterable[int] | None) -> int:
        self._check_open()
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name (str), got {backend!r}")
        future = asyncio.get_running_loop().create_future()
        return await self._request(Request(kind, backend, _ids(ids), future))

    async def _request(self, request: Request) -> int:
        self._runtime.committer.submit(request)
        try:
            # Cancelled, a request stops after the transaction it is in.
            return await request.done
        except ArchivistClosed:
            self._check_open()  # ArchivistFailed, if that is why
            raise

    def _enabled_writer(self, backend: str, why: str) -> Writer:
        writer = self._by_name.get(backend)
        if writer is None:
            raise ValueError(f"no backend named {backend!r} is registered")
        if not writer.enabled:
            raise ValueError(f"backend {backend!r} is disabled and {why}")
        return writer


def _ids(ids: Iterable[int] | None) -> frozenset[int] | None:
    if ids is None:
        return None
    chosen = frozenset(ids)
    for row_id in chosen:
        if type(row_id) is not int:
            raise TypeError(f"ids must be ints, got {row_id!r}")
    return chosen
