"""journal-archivist: archive chat message records durably, through a SQLite journal.

Every append is committed to a local journal first; per-backend writer loops then
deliver it in coalesced batches, so nothing acknowledged is lost to a crash, a
restart or a backend outage. See docs/guarantees.md for the contract.
"""

from __future__ import annotations

import msgspec

from ._archivist import DEFAULT_CLOSE_TIMEOUT, Archivist, OpeningArchivist
from ._blocking import SyncArchivist
from ._config import (
    DEFAULT_FREE_SPACE_RESERVE,
    DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_MAX_APPEND_RECORDS,
    DEFAULT_MAX_RECORD_BYTES,
    Registration,
)
from ._config_file import ArchivistConfig, BackendConfig, load_config
from ._errors import (
    ArchivistClosed,
    ArchivistError,
    ArchivistFailed,
    BackendError,
    ConfigError,
    DeliveryFailed,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalIncompatible,
    JournalLocked,
    JournalWriteFailed,
    NoFreeSlot,
    QueueFull,
    ReadFailed,
    ValidationError,
    WrongEventLoop,
    WrongProcess,
)
from ._health import BackendHealth, HealthReport, HealthStatus, JournalHealth
from ._options import Slots
from ._policies import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_SYNC_TIMEOUT,
    Durability,
    FailureMode,
    OverflowPolicy,
    Queued,
    RetryPolicy,
    Sync,
    WritePolicy,
)
from ._records import MAX_JSON_DEPTH, Attachment, JsonValue, MessageRecord, uuid7
from ._stats import BackendStats, HistogramSnapshot, JournalStats, Stats

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BATCH_WINDOW_MS",
    "DEFAULT_CAPACITY",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FREE_SPACE_RESERVE",
    "DEFAULT_MAX_APPEND_BYTES",
    "DEFAULT_MAX_APPEND_RECORDS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_SYNC_TIMEOUT",
    "MAX_JSON_DEPTH",
    "Archivist",
    "ArchivistClosed",
    "ArchivistConfig",
    "ArchivistError",
    "ArchivistFailed",
    "Attachment",
    "BackendConfig",
    "BackendError",
    "BackendHealth",
    "BackendStats",
    "ConfigError",
    "DeliveryFailed",
    "Durability",
    "FailureMode",
    "HealthReport",
    "HealthStatus",
    "HistogramSnapshot",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalHealth",
    "JournalIncompatible",
    "JournalLocked",
    "JournalStats",
    "JournalWriteFailed",
    "JsonValue",
    "MessageRecord",
    "NoFreeSlot",
    "OpeningArchivist",
    "OverflowPolicy",
    "QueueFull",
    "Queued",
    "ReadFailed",
    "Registration",
    "RetryPolicy",
    "Slots",
    "Stats",
    "Sync",
    "SyncArchivist",
    "ValidationError",
    "WritePolicy",
    "WrongEventLoop",
    "WrongProcess",
    "__version__",
    "load_config",
    "uuid7",
]

# Tracebacks and reprs show the public path, not the private module. Not for
# msgspec Structs: msgspec resolves their annotations in their own module.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and not issubclass(_obj, msgspec.Struct):
        _obj.__module__ = __name__
del _name, _obj
