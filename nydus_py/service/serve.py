"""`nydus-py serve`: the HTTP API on uvicorn and, in the embedded mode (no broker), the local worker processes it
starts and restarts.

The embedded mode keeps the distributed mode's promises on one machine: the queue is a SQLite file that leases
messages (queue.py), the store another (store.py), both in the state directory, so a restarted `serve` finds its
queued and running conversions where they were. One `serve` owns a state directory (an flock); when it starts,
messages leased by workers of a previous run are delivered again at once instead of after their lease, and the
conversions those workers held are taken over by the tasks' own leases (tasks.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from nydus_py.errors import UsageError
from nydus_py.service.options import ServiceConfig
from nydus_py.service.store import open_store
from nydus_py.util.fsutil import lock_or_refuse

log = logging.getLogger("nydus_py.service")
RESTART_DELAY = 1.0  # seconds before a local worker that exited is started again
STOP_GRACE = 10.0  # seconds local workers get to finish (warm shutdown) before they are killed
_PR_SET_PDEATHSIG = 1


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); UsageError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"--listen {listen!r}: HOST:PORT")
    return host.strip("[]"), int(port)


def run_serve(config: ServiceConfig, local_workers: int) -> None:
    """Serve the API until SIGINT or SIGTERM; in the embedded mode with `local_workers` worker processes (each a
    Celery worker of `config.concurrency` pool processes) started and supervised here."""
    import uvicorn

    from nydus_py.service.api import create_app
    from nydus_py.service.tasks import make_app

    host, port = parse_listen(config.listen)
    config.state.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if config.broker is None:
            stack.enter_context(_owning(config.state))
            _release_leases(config.state / "queue.db")
        store = open_store(config.broker, config.state)
        app = create_app(config, store, make_app(config))
        workers = _LocalWorkers(config, local_workers if config.broker is None else 0)
        stack.callback(workers.stop)
        workers.start()
        log.info("serving on http://%s:%d/ (%s)", host, port,
                 config.broker or f"embedded queue in {config.state}")
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5,
                    log_config=None)


@contextlib.contextmanager
def _owning(state: Path) -> Iterator[None]:
    """An exclusive lock on the state directory for the life of this `serve`."""
    fd = os.open(state / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    lock_or_refuse(fd, f"{state}: another `nydus-py serve` uses this state directory")
    try:
        yield
    finally:
        os.close(fd)


def _release_leases(queue_file: Path) -> None:
    """Messages leased by workers of a previous `serve` (which this one's lock says are gone with it): visible
    again now, not when their lease runs out."""
    if not queue_file.exists():
        return
    with contextlib.closing(sqlite3.connect(queue_file, timeout=30)) as db, \
            contextlib.suppress(sqlite3.OperationalError):  # no table yet
        released = db.execute("UPDATE messages SET leased=NULL WHERE leased IS NOT NULL").rowcount
        db.commit()
        if released:
            log.info("%d message(s) of a previous run delivered again", released)


class _LocalWorkers:
    """Worker processes of the embedded mode: each in its own process group (a signal to the group reaches
    its pool), started again when one exits, told to stop (SIGTERM: a warm shutdown) with `serve`, and killed
    by the kernel if `serve` dies first (PR_SET_PDEATHSIG)."""

    def __init__(self, config: ServiceConfig, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._config = msgspec.json.encode(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="nydus-py-workers", daemon=True)

    def start(self) -> None:
        if self.count:
            for i in range(self.count):
                self._spawn(i)
            self._thread.start()

    def _spawn(self, i: int) -> None:
        process = subprocess.Popen([sys.executable, "-m", "nydus_py.service.serve"], stdin=subprocess.PIPE,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        assert process.stdin is not None
        process.stdin.write(self._config)
        process.stdin.close()
        self.processes[i] = process
        log.info("local worker %d started (pid %d)", i, process.pid)

    def _supervise(self) -> None:
        while not self._stop.wait(RESTART_DELAY):
            for i, process in enumerate(self.processes):
                if process is not None and process.poll() is not None and not self._stop.is_set():
                    log.warning("local worker %d (pid %d) exited with %s: starting another", i, process.pid,
                                process.returncode)
                    self._spawn(i)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        live = [p for p in self.processes if p is not None and p.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in live:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `serve` dies (prctl(2) PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _local_worker() -> None:
    """A local worker: its configuration on stdin, from `serve`."""
    import gc

    from nydus_py.service.tasks import run_worker

    gc.enable()
    config = msgspec.json.decode(sys.stdin.buffer.read(), type=ServiceConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(config)


if __name__ == "__main__":
    _local_worker()


__all__ = ["parse_listen", "run_serve"]
