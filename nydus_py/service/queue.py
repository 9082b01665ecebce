"""The embedded broker: a kombu transport over one SQLite file, for `nydus-py serve` without a Redis server.

kombu's own SQLAlchemy and filesystem transports lose a message whose worker dies: they mark it taken (or
delete it) before the task runs and never give it back. This one leases: a message taken by a worker is
invisible for `visibility_timeout` seconds and deleted only when the task is acknowledged (late, after it
ran). If the worker dies, its lease runs out and the message is delivered again, as the Redis transport's
visibility timeout does (kombu `transport/redis.py` `QoS.restore_visible`). A clean stop gives its leases back at
once (`restore_unacked`). The message table lives in `<state dir>/queue.db`; URL `nydus-sqlite:///<path>`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.utils.json import dumps, loads

SCHEME = "nydus-sqlite"


class QoS(virtual.QoS):
    """Acknowledgement deletes the message; a requeue or a clean stop gives its lease back."""

    def ack(self, delivery_tag: str) -> None:
        self.channel.forget(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.channel.release(delivery_tag)
        else:
            self.channel.forget(delivery_tag)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        self._flush()
        for tag in list(self._delivered):
            self.channel.release(tag)
        self._delivered.clear()
        return []


class Channel(virtual.Channel):
    QoS = QoS
    visibility_timeout = 120.0  # seconds a delivered, unacknowledged message stays invisible
    sweep_interval = 2.0  # how often expired leases are given back
    from_transport_options = (*virtual.Channel.from_transport_options, "visibility_timeout",  # type: ignore[assignment]
                              "sweep_interval")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        url = self.connection.client.hostname or ""  # the whole URL (can_parse_url): nydus-sqlite:///PATH
        path = url.partition("://")[2] if "://" in url else url
        self._lock = threading.Lock()
        self._db = sqlite3.connect(f"/{path.lstrip('/')}", isolation_level=None, check_same_thread=False,
                                   timeout=30)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "queue TEXT NOT NULL, tag TEXT UNIQUE NOT NULL, payload TEXT NOT NULL, leased REAL, "
                             "deliveries INTEGER NOT NULL DEFAULT 0)")
        self._swept = 0.0

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO messages (queue, tag, payload) VALUES (?,?,?)",
                             (queue, message["properties"]["delivery_tag"], dumps(message)))

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            now = time.time()
            if now - self._swept >= self.sweep_interval:  # leases of dead workers run out: deliver again
                self._swept = now
                self._db.execute("UPDATE messages SET leased=NULL WHERE leased < ?", (now - self.visibility_timeout,))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id, payload, deliveries FROM messages WHERE queue=? AND leased IS NULL "
                                       "ORDER BY id LIMIT 1", (queue,)).fetchone()
                if row is not None:
                    self._db.execute("UPDATE messages SET leased=?, deliveries=deliveries+1 WHERE id=?", (now, row[0]))
            finally:
                self._db.execute("COMMIT")
        if row is None:
            raise Empty()
        message: dict[str, Any] = loads(row[1])
        if row[2]:
            message["properties"]["delivery_info"]["redelivered"] = True
        return message

    def forget(self, tag: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE tag=?", (tag,))

    def release(self, tag: str) -> None:
        with self._lock:
            self._db.execute("UPDATE messages SET leased=NULL WHERE tag=?", (tag,))

    def _size(self, queue: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM messages WHERE queue=? AND leased IS NULL",
                                        (queue,)).fetchone()[0])

    def _purge(self, queue: str) -> int:
        with self._lock:
            return int(self._db.execute("DELETE FROM messages WHERE queue=? AND leased IS NULL", (queue,)).rowcount)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE queue=?", (queue,))

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def close(self) -> None:
        super().close()
        with self._lock:
            self._db.close()


class Transport(virtual.Transport):
    Channel = Channel
    can_parse_url = True
    polling_interval = 0.2
    driver_type = driver_name = SCHEME

    def driver_version(self) -> str:
        return sqlite3.sqlite_version


def queue_depth(path: str) -> int:
    """Messages waiting (not leased) in an embedded queue file, for /metrics and the page."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return int(db.execute("SELECT count(*) FROM messages WHERE leased IS NULL").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"

__all__ = ["SCHEME", "Transport", "queue_depth"]
