"""This process's open loop threads: closed at interpreter exit, forgotten in a
forked child; and this process's id, kept current across forks.

A child of ``fork`` has copies of its parent's loop threads but not their
threads: they are the parent's to close, so the child's registry is emptied at
the fork, and every call compares ``current_pid()`` with its opener's.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._loop_thread import LoopThread

__all__ = ["current_pid", "register", "unregister"]

logger = logging.getLogger("journal_archivist")

_OPEN: set[LoopThread] = set()
#: This process's id, kept current at fork: every call checks it, and
#: ``os.getpid()`` is a system call.
_pid = os.getpid()
_OPEN_LOCK = threading.Lock()


def register(loop_thread: LoopThread) -> None:
    with _OPEN_LOCK:
        _OPEN.add(loop_thread)


def unregister(loop_thread: LoopThread) -> None:
    with _OPEN_LOCK:
        _OPEN.discard(loop_thread)


def _forget_after_fork() -> None:
    # The parent's loop threads are the parent's to close; the lock may have been
    # held by another thread at the fork, so a fresh one replaces it.
    global _OPEN_LOCK, _pid
    _pid = os.getpid()
    _OPEN_LOCK = threading.Lock()
    _OPEN.clear()


@atexit.register
def _close_all_at_exit() -> None:
    """Close every SyncArchivist still open, each with its ``close_timeout``."""
    with _OPEN_LOCK:
        loop_threads = list(_OPEN)
    for loop_thread in loop_threads:
        if loop_thread.pid != _pid:
            continue
        try:
            loop_thread.close(loop_thread.close_timeout)
        except Exception as exc:
            logger.error(
                "journal %s: closing at exit failed: %s",
                loop_thread.path,
                exc,
                exc_info=exc,
            )


os.register_at_fork(after_in_child=_forget_after_fork)


def current_pid() -> int:
    """This process's id, without a system call (kept current at fork)."""
    return _pid
