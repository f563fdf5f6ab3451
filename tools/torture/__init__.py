"""The torture suite: drive a real archivist into crashes, hangs and full disks.

Every tool drives the same child workload (``tools.torture.workload``: concurrent
producers appending and erasing over many sessions, printing an op log) and judges
the result with the same oracle (``tools.torture.oracle``: what the archives must
and may hold, given the op log, exactly as docs/guarantees.md allows).

- ``python -m tools.torture.kill``: SIGKILL the child at random moments, restart.
- ``python -m tools.torture.powerloss``: the same under an ``LD_PRELOAD`` shim of our
  own (``shim.c``, built with the system's C compiler) that logs every write and
  fsync of the journal and archives, then rolls back what no successful fsync
  covered, as a power cut does (``_shim``).
- ``python -m tools.torture.ioerrors``: the shim also fails the journal's writes or
  fsyncs for random stretches, then cuts the power.
- ``python -m tools.torture.bitflip``: flip one bit of a journal with a backlog,
  open it, deliver, and classify the trial (its own pristine journals, not the
  workload).
- ``python -m tools.torture.hung``: a backend that never answers next to SQLite.
- ``python -m tools.torture.diskfull``: the journal on a small filesystem that fills
  up and goes read-only.

docs/reliability.md has the promise of each, the commands and the figures.

Each prints one verdict line that ends in the counts and exits 0 on a pass, 1 on
any violation.
"""

from __future__ import annotations
