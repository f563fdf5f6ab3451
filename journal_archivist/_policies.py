"""How each backend is written to: write policies, overflow, failure modes, retries.

Every policy is a frozen, keyword-only msgspec Struct validated in ``__post_init__``,
which msgspec runs both on construction and when decoding config, so config built in
Python and config read from a file go through one check. Defaults are the module
constants below; the docs quote the same names.
"""

from __future__ import annotations

import enum
import math
import random
from typing import Final, TypeAlias

import msgspec

__all__ = [
    "DEFAULT_BATCH_WINDOW_MS",
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_SYNC_TIMEOUT",
    "Durability",
    "FailureMode",
    "OverflowPolicy",
    "Queued",
    "RetryPolicy",
    "Sync",
    "WritePolicy",
]

DEFAULT_BATCH_WINDOW_MS: Final = 25
DEFAULT_CAPACITY: Final = 100_000
DEFAULT_MAX_BATCH: Final = 512
DEFAULT_MAX_BATCH_BYTES: Final = 4 * 1024 * 1024
DEFAULT_SYNC_TIMEOUT: Final = 10.0


class Durability(enum.Enum):
    """What an acknowledged append survives (contract 1)."""

    #: ``synchronous=FULL``: survives a process crash and a power loss.
    FULL = "full"
    #: ``synchronous=NORMAL``: survives a process crash; a power loss may lose
    #: appends acknowledged since the last checkpoint.
    NORMAL = "normal"


class OverflowPolicy(enum.Enum):
    """What happens to an append when a backend's backlog is at capacity."""

    #: The appender waits until the backlog has room (backpressure), or raises
    #: ``QueueFull`` after ``block_timeout`` seconds if one is set.
    BLOCK = "block"
    #: The new entry is not queued for this backend (other backends still get it);
    #: the drop is counted.
    DROP_NEWEST = "drop_newest"
    #: The oldest entries not yet handed to the backend are dropped to make room;
    #: each drop is counted.
    DROP_OLDEST = "drop_oldest"
    #: The append raises ``QueueFull``; nothing of it is journaled for anyone.
    REJECT = "reject"


class FailureMode(enum.Enum):
    """How much a backend's failures matter (contract 6)."""

    #: Retried until delivered, never dead-lettered automatically; ``Sync`` writes
    #: raise ``DeliveryFailed`` on failure.
    REQUIRED = "required"
    #: After its retry budget a failing batch is bisected and the poison entry is
    #: dead-lettered; its failures never fail an append.
    BEST_EFFORT = "best_effort"


class _Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The backlog and batch limits ``Queued`` and ``Sync`` share, checked once.

    Not a policy of its own (it has no tag); ``Queued``'s docstring documents the
    fields. A subclass adds its own fields and, in its ``__post_init__``, checks
    them and then calls this one. msgspec puts these fields first, before the
    subclass's own, in ``repr`` and in encoded output.
    """

    capacity: int = DEFAULT_CAPACITY
    capacity_bytes: int | None = None
    overflow: OverflowPolicy = OverflowPolicy.BLOCK
    block_timeout: float | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")
        if self.capacity_bytes is not None and self.capacity_bytes < 1:
            raise ValueError(
                f"capacity_bytes must be at least 1 or None, got {self.capacity_bytes}"
            )
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_batch_bytes < 1:
            raise ValueError(
                f"max_batch_bytes must be at least 1, got {self.max_batch_bytes}"
            )
        # "not (x >= 0)" refuses NaN too.
        if self.block_timeout is not None and not self.block_timeout >= 0:
            raise ValueError(
                f"block_timeout must be >= 0 or None, got {self.block_timeout}"
            )


class Queued(_Limits, frozen=True, kw_only=True, tag="queued"):
    """Acknowledge after the journal commit; the writer delivers in batches.

    Args:
        batch_window_ms: after the first entry of a batch is available, how long the
            writer lingers for more before dispatching (0: dispatch at once).
        capacity: the most entries that may be pending for this backend.
        capacity_bytes: optionally, the most payload bytes that may be pending.
        overflow: what an append does when the backlog is full.
        block_timeout: under ``BLOCK``, seconds an append may wait for room before
            ``QueueFull`` (None: wait as long as it takes).
        max_batch: the most entries in one dispatched batch.
        max_batch_bytes: the most payload bytes in one batch (a single larger entry
            is a batch of its own).
    """

    batch_window_ms: int = DEFAULT_BATCH_WINDOW_MS

    def __post_init__(self) -> None:
        if self.batch_window_ms < 0:
            raise ValueError(
                f"batch_window_ms must be >= 0, got {self.batch_window_ms}"
            )
        super().__post_init__()


class Sync(_Limits, frozen=True, kw_only=True, tag="sync"):
    """Acknowledge after the journal commit *and* this backend's delivery.

    ``append_messages`` waits up to ``timeout`` seconds for the writer to deliver
    the entry. For a ``REQUIRED`` backend the first failed attempt while it waits
    (its entry's, or one ahead of it) or the timeout raises ``DeliveryFailed``
    (the entry stays journaled and is retried); for a
    ``BEST_EFFORT`` one the append returns quietly. The backlog limits work as in
    ``Queued``; the writer never lingers.
    """

    timeout: float = DEFAULT_SYNC_TIMEOUT

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        super().__post_init__()

    @property
    def batch_window_ms(self) -> int:
        """A Sync writer dispatches as soon as an entry is available."""
        return 0


WritePolicy: TypeAlias = Queued | Sync


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with full jitter between failed deliveries.

    The delay before retry ``n`` (1-based) is uniform in
    ``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]``. ``max_attempts``
    is the budget of a ``BEST_EFFORT`` backend before a batch is bisected and its
    poison entry dead-lettered; ``REQUIRED`` backends retry without end.
    ``attempt_timeout`` bounds one backend call (a timeout counts as a retryable
    failure; None: no bound).
    """

    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    max_attempts: int = 5
    attempt_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        # Written as "not (x > bound)" so that NaN is refused too. A zero delay
        # would retry a backend that is down in a busy loop, starving the rest.
        if not self.initial_delay > 0:
            raise ValueError(f"initial_delay must be > 0, got {self.initial_delay}")
        if not self.max_delay >= self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= initial_delay"
                f" ({self.initial_delay})"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.attempt_timeout is not None and not self.attempt_timeout > 0:
            raise ValueError(
                f"attempt_timeout must be > 0 or None, got {self.attempt_timeout}"
            )

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (1-based)."""
        if attempt <= 1 or self.multiplier == 1:
            return float(min(self.max_delay, self.initial_delay))
        # Compare in log space: multiplier ** (attempt - 1) overflows a float
        # long before a long outage ends.
        log_delay = math.log(self.initial_delay) + (attempt - 1) * math.log(
            self.multiplier
        )
        if log_delay >= math.log(self.max_delay):
            return float(self.max_delay)
        # exp(log(x)) can round to just below x: never below the first delay.
        return max(float(self.initial_delay), math.exp(log_delay))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A full-jitter delay before retry number ``attempt`` (1-based)."""
        return (rng or random).uniform(0.0, self.ceiling(attempt))
