"""Tests for journal_archivist._policies: checks, defaults, config decoding, backoff."""

from __future__ import annotations

import random
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given, strategies as st

from journal_archivist._policies import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_SYNC_TIMEOUT,
    OverflowPolicy,
    Queued,
    RetryPolicy,
    Sync,
    WritePolicy,
    _Limits,
)

NAN = float("nan")

# --- __post_init__ checks -----------------------------------------------------------

#: Limits ``Queued`` and ``Sync`` share: (fields, message).
SHARED_LIMITS = [
    # No room at all.
    pytest.param({"capacity": 0}, "capacity must be at least 1, got 0", id="capacity"),
    # A negative byte capacity.
    pytest.param(
        {"capacity_bytes": -5},
        "capacity_bytes must be at least 1 or None, got -5",
        id="capacity-bytes",
    ),
    # A zero byte capacity (None is how to say "unbounded").
    pytest.param(
        {"capacity_bytes": 0},
        "capacity_bytes must be at least 1 or None, got 0",
        id="capacity-bytes-zero",
    ),
    # A batch of nothing.
    pytest.param(
        {"max_batch": 0}, "max_batch must be at least 1, got 0", id="max-batch"
    ),
    # A batch of no bytes.
    pytest.param(
        {"max_batch_bytes": 0},
        "max_batch_bytes must be at least 1, got 0",
        id="max-batch-bytes",
    ),
    # A negative wait under BLOCK.
    pytest.param(
        {"block_timeout": -0.5},
        "block_timeout must be >= 0 or None, got -0.5",
        id="block-timeout",
    ),
]


@pytest.mark.parametrize("policy", [Queued, Sync])
@pytest.mark.parametrize(("fields", "message"), SHARED_LIMITS)
def test_a_bad_backlog_limit_is_refused_naming_field_and_value(
    policy: type[Queued | Sync], fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        policy(**fields)


@pytest.mark.parametrize(
    ("policy", "fields", "message"),
    [
        # Queued: a negative linger.
        (Queued, {"batch_window_ms": -1}, "batch_window_ms must be >= 0, got -1"),
        # Sync: a zero timeout.
        (Sync, {"timeout": 0}, "timeout must be > 0, got 0"),
        # Sync: a negative timeout.
        (Sync, {"timeout": -2.5}, "timeout must be > 0, got -2.5"),
        # Sync: a NaN timeout is not > 0.
        (Sync, {"timeout": NAN}, "timeout must be > 0, got nan"),
        # RetryPolicy: a negative first delay.
        (RetryPolicy, {"initial_delay": -1.0}, "initial_delay must be > 0, got -1.0"),
        # RetryPolicy: no delay would retry a dead backend in a busy loop.
        (RetryPolicy, {"initial_delay": 0.0}, "initial_delay must be > 0, got 0.0"),
        # RetryPolicy: a cap below the first delay.
        (
            RetryPolicy,
            {"initial_delay": 5.0, "max_delay": 1.0},
            "max_delay (1.0) must be >= initial_delay (5.0)",
        ),
        # RetryPolicy: a shrinking backoff.
        (RetryPolicy, {"multiplier": 0.5}, "multiplier must be >= 1, got 0.5"),
        # RetryPolicy: no attempt at all.
        (RetryPolicy, {"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        # RetryPolicy: a zero per-attempt bound.
        (
            RetryPolicy,
            {"attempt_timeout": 0},
            "attempt_timeout must be > 0 or None, got 0",
        ),
        # RetryPolicy: a NaN per-attempt bound.
        (
            RetryPolicy,
            {"attempt_timeout": NAN},
            "attempt_timeout must be > 0 or None, got nan",
        ),
    ],
)
def test_a_bad_setting_is_refused_naming_field_and_value(
    policy: type[Queued | Sync | RetryPolicy], fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        policy(**fields)


@pytest.mark.parametrize(
    ("policy", "fields"),
    [
        # Queued: dispatch at once, the smallest limits, never wait under BLOCK.
        (
            Queued,
            {
                "batch_window_ms": 0,
                "capacity": 1,
                "capacity_bytes": 1,
                "max_batch": 1,
                "max_batch_bytes": 1,
                "block_timeout": 0,
            },
        ),
        # Sync: the smallest limits and a tiny timeout.
        (Sync, {"timeout": 1e-9, "capacity": 1, "capacity_bytes": 1}),
        # RetryPolicy: a tiny constant backoff, one attempt, no bound.
        (
            RetryPolicy,
            {
                "initial_delay": 1e-9,
                "max_delay": 1e-9,
                "multiplier": 1.0,
                "max_attempts": 1,
                "attempt_timeout": None,
            },
        ),
    ],
)
def test_boundary_values_are_accepted(
    policy: type[Queued | Sync | RetryPolicy], fields: dict[str, Any]
) -> None:
    built = policy(**fields)
    for name, value in fields.items():
        assert getattr(built, name) == value


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        # How long BLOCK waits.
        (Queued, "block_timeout"),
        # The same limit on Sync.
        (Sync, "block_timeout"),
        # The first backoff delay.
        (RetryPolicy, "initial_delay"),
        # The backoff cap.
        (RetryPolicy, "max_delay"),
        # The backoff growth.
        (RetryPolicy, "multiplier"),
    ],
)
def test_a_nan_setting_is_refused(
    policy: type[Queued | Sync | RetryPolicy], field: str
) -> None:
    fields: dict[str, Any] = {field: NAN}
    with pytest.raises(ValueError, match=f"^{field} .*nan"):
        policy(**fields)


def test_queued_and_sync_take_their_shared_limits_from_one_base() -> None:
    shared = set(_Limits.__struct_fields__)
    assert set(Queued.__struct_fields__) == shared | {"batch_window_ms"}
    assert set(Sync.__struct_fields__) == shared | {"timeout"}


@pytest.mark.parametrize(
    ("policy", "fields", "message"),
    [
        # Queued checks its own field before the shared limits.
        (Queued, {"batch_window_ms": -1, "capacity": 0}, "batch_window_ms"),
        # Sync checks its own field before the shared limits.
        (Sync, {"timeout": 0, "capacity": 0}, "timeout"),
    ],
)
def test_a_policy_checks_its_own_field_before_the_shared_limits(
    policy: type[Queued | Sync], fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message} must be"):
        policy(**fields)


# --- defaults -----------------------------------------------------------------------


def test_queued_defaults_are_the_module_constants() -> None:
    policy = Queued()
    assert policy.batch_window_ms == DEFAULT_BATCH_WINDOW_MS
    assert policy.capacity == DEFAULT_CAPACITY
    assert policy.capacity_bytes is None
    assert policy.overflow is OverflowPolicy.BLOCK
    assert policy.block_timeout is None
    assert policy.max_batch == DEFAULT_MAX_BATCH
    assert policy.max_batch_bytes == DEFAULT_MAX_BATCH_BYTES


def test_sync_defaults_are_the_module_constants_and_it_never_lingers() -> None:
    policy = Sync()
    assert policy.timeout == DEFAULT_SYNC_TIMEOUT
    assert policy.capacity == DEFAULT_CAPACITY
    assert policy.capacity_bytes is None
    assert policy.overflow is OverflowPolicy.BLOCK
    assert policy.block_timeout is None
    assert policy.max_batch == DEFAULT_MAX_BATCH
    assert policy.max_batch_bytes == DEFAULT_MAX_BATCH_BYTES
    assert policy.batch_window_ms == 0


def test_retry_policy_defaults_are_documented_values() -> None:
    assert RetryPolicy() == RetryPolicy(
        initial_delay=0.1,
        max_delay=30.0,
        multiplier=2.0,
        max_attempts=5,
        attempt_timeout=60.0,
    )


# --- decoding config ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # A bare tag gives the defaults.
        ({"type": "queued"}, Queued()),
        # Every Queued field, with an enum given by value.
        (
            {
                "type": "queued",
                "batch_window_ms": 0,
                "capacity": 10,
                "capacity_bytes": 4096,
                "overflow": "drop_oldest",
                "block_timeout": 1.5,
                "max_batch": 3,
                "max_batch_bytes": 100,
            },
            Queued(
                batch_window_ms=0,
                capacity=10,
                capacity_bytes=4096,
                overflow=OverflowPolicy.DROP_OLDEST,
                block_timeout=1.5,
                max_batch=3,
                max_batch_bytes=100,
            ),
        ),
        # The sync tag picks Sync.
        (
            {"type": "sync", "timeout": 2.0, "overflow": "reject"},
            Sync(timeout=2.0, overflow=OverflowPolicy.REJECT),
        ),
    ],
)
def test_write_policy_config_decodes_by_its_type_tag(
    config: dict[str, Any], expected: WritePolicy
) -> None:
    assert msgspec.convert(config, type=Queued | Sync) == expected
    assert msgspec.json.decode(msgspec.json.encode(config), type=WritePolicy) == (
        expected
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=WritePolicy) == (
        expected
    )


@pytest.mark.parametrize(
    "policy",
    [
        # The defaults.
        Queued(),
        # A non-default Queued.
        Queued(capacity=7, overflow=OverflowPolicy.DROP_NEWEST, block_timeout=0.0),
        # A Sync with a byte capacity.
        Sync(timeout=0.25, capacity_bytes=1024),
    ],
)
def test_a_write_policy_round_trips_through_json_with_its_tag(
    policy: WritePolicy,
) -> None:
    encoded = msgspec.json.encode(policy)
    assert msgspec.json.decode(encoded)["type"] == type(policy).__name__.lower()
    assert msgspec.json.decode(encoded, type=WritePolicy) == policy


def _decode_convert(config: dict[str, Any], kind: Any) -> object:
    return msgspec.convert(config, type=kind)


def _decode_json(config: dict[str, Any], kind: Any) -> object:
    return msgspec.json.decode(msgspec.json.encode(config), type=kind)


def _decode_msgpack(config: dict[str, Any], kind: Any) -> object:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(config), type=kind)


@pytest.mark.parametrize("decode", [_decode_convert, _decode_json, _decode_msgpack])
@pytest.mark.parametrize(
    ("config", "kind", "message"),
    [
        # Queued's own check runs on decode.
        (
            {"type": "queued", "batch_window_ms": -1},
            WritePolicy,
            "batch_window_ms must be >= 0, got -1",
        ),
        # A shared limit, on Queued.
        ({"type": "queued", "capacity": 0}, WritePolicy, "capacity must be at least 1"),
        # A shared limit, on Sync.
        (
            {"type": "sync", "block_timeout": -1.0},
            WritePolicy,
            "block_timeout must be >= 0 or None, got -1.0",
        ),
        # Sync's own check runs on decode.
        ({"type": "sync", "timeout": 0.0}, WritePolicy, "timeout must be > 0, got 0.0"),
        # RetryPolicy's cross-field check runs on decode.
        (
            {"initial_delay": 5.0, "max_delay": 1.0},
            RetryPolicy,
            "max_delay (1.0) must be >= initial_delay (5.0)",
        ),
    ],
)
def test_a_bad_value_in_decoded_config_raises_msgspec_validation_error(
    decode: Any, config: dict[str, Any], kind: Any, message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        decode(config, kind)


def test_an_unknown_write_policy_tag_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'nope'"):
        msgspec.convert({"type": "nope"}, type=WritePolicy)


def test_an_unknown_overflow_policy_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'spill'"):
        msgspec.convert({"type": "queued", "overflow": "spill"}, type=WritePolicy)


# --- backoff ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [
        # The first retry waits at most initial_delay.
        (1, 0.5),
        # Then it doubles...
        (2, 1.0),
        # ...and doubles...
        (3, 2.0),
        # ...until it reaches max_delay...
        (4, 3.0),
        # ...where it stays.
        (5, 3.0),
        # Even after a very long outage.
        (10_000, 3.0),
        # Or a ludicrously long one.
        (10**12, 3.0),
    ],
)
def test_the_ceiling_grows_by_multiplier_up_to_max_delay(
    attempt: int, ceiling: float
) -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=2.0, max_delay=3.0)
    assert policy.ceiling(attempt) == ceiling


def test_the_ceiling_of_the_default_policy_is_capped_after_a_long_outage() -> None:
    policy = RetryPolicy()
    assert policy.ceiling(10_000) == policy.max_delay
    assert isinstance(policy.ceiling(10_000), float)


def test_the_ceiling_of_a_steep_backoff_is_capped_without_overflow() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=1e5, max_delay=60.0)
    assert policy.ceiling(10_000) == 60.0


@st.composite
def retry_policies(draw: st.DrawFn, max_multiplier: float = 16.0) -> RetryPolicy:
    """Valid retry policies with finite settings."""
    initial = draw(st.floats(min_value=1e-300, max_value=1e6))
    extra = draw(st.floats(min_value=0.0, max_value=1e6))
    return RetryPolicy(
        initial_delay=initial,
        max_delay=initial + extra,
        multiplier=draw(st.floats(min_value=1.0, max_value=max_multiplier)),
        max_attempts=draw(st.integers(min_value=1, max_value=100)),
    )


@given(retry_policies(), st.integers(min_value=1, max_value=10**6))
def test_the_ceiling_never_shrinks_and_stays_within_the_delays(
    policy: RetryPolicy, attempt: int
) -> None:
    ceiling = policy.ceiling(attempt)
    assert policy.initial_delay <= ceiling <= policy.max_delay
    assert policy.ceiling(attempt + 1) >= ceiling


@given(
    retry_policies(),
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=0, max_value=2**32),
)
def test_a_delay_is_always_between_zero_and_the_ceiling(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= policy.ceiling(attempt)


def test_a_delay_without_an_rng_uses_the_module_random() -> None:
    policy = RetryPolicy(initial_delay=0.01, max_delay=0.05)
    delays = [policy.delay(n) for n in range(1, 50)]
    assert all(0.0 <= d <= policy.ceiling(n) for n, d in enumerate(delays, start=1))
    # Full jitter: the delays are not all the same.
    assert len(set(delays)) > 1


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(7)) for n in range(1, 10)]
    second = [policy.delay(n, random.Random(7)) for n in range(1, 10)]
    assert first == second


def test_the_ceiling_never_rounds_below_the_initial_delay() -> None:
    # Found by Hypothesis: exp(log(x) + log(m)) rounded to just below x.
    policy = RetryPolicy(
        initial_delay=1.020591767142075e-159,
        max_delay=1.0,
        multiplier=1.0000000000000002,
    )
    assert policy.ceiling(2) >= policy.ceiling(1) == policy.initial_delay
