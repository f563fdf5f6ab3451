"""A private ``nats-server`` with JetStream on loopback, for tests that stop it.

The shared test server (``127.0.0.1:4222``, started by ``.ci/run``) serves most
JetStream tests; a test that stops and restarts a server runs its own:
``NatsServer(store_dir)`` picks a free port on 127.0.0.1, and ``start()`` runs
``nats-server -a 127.0.0.1 -p PORT -js -sd STORE`` and returns once the server
logs "Server is ready" (read from its stderr, never by sleeping). ``stop()`` ends
it (SIGTERM, then waits); ``start()`` again serves the same port and store.
Further arguments are the server's own options (``"--user", "alice"``).
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["NATS_SERVER", "NatsServer", "free_port"]

#: The server binary, if installed (Debian's is in /usr/sbin, not always on PATH).
NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server",) if os.access(p, os.X_OK)), None
)
_READY = b"Server is ready"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (once the probe is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class NatsServer:
    """One private server; a context manager that stops it at exit."""

    def __init__(self, store: Path, *options: str) -> None:
        if NATS_SERVER is None:
            raise RuntimeError("nats-server is not installed")
        self.store = store
        self.options = options
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the server; return once it accepts connections."""
        assert self._process is None, "already running"
        assert NATS_SERVER is not None
        command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        process = subprocess.Popen(
            [*command, "-sd", str(self.store), *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._process = process
        assert process.stderr is not None
        seen = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            while _READY not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop()
                    raise RuntimeError(f"nats-server did not start: {seen[-500:]!r}")
                chunk = process.stderr.read1(65536)
                if not chunk:
                    self.stop()
                    raise RuntimeError(f"nats-server exited: {seen[-500:]!r}")
                seen += chunk
        # Keep draining its log, so a full pipe never blocks the server.
        self._drainer = threading.Thread(
            target=self._drain, args=(process,), daemon=True
        )
        self._drainer.start()

    @staticmethod
    def _drain(process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        while process.stderr.read1(65536):
            pass

    def stop(self) -> None:
        """Stop the server and wait for it to exit (idempotent)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.join()  # it reads to the end of the log, then returns
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
