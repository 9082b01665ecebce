"""The service's shared state: conversions (their status for the API and the page), leases, what is already
converted, layer blobs to reuse, counters for /metrics and the workers seen. One `JobStore` over two
backends with the same few atomic operations: Redis (the broker's server, shared by every machine) and SQLite
(the embedded single-machine mode, a file beside the embedded queue). Every value is a msgspec document,
decoded into its type when read.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import msgspec

from nydus_py.errors import UsageError
from nydus_py.service.options import ConversionOptions

STATUSES = ("queued", "running", "completed", "failed")
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)  # seconds (the /metrics histogram)
KEEP_JOBS = 10_000  # conversions listed (the oldest beyond are dropped from the list and their records)
WORKER_TTL = 30.0  # a worker not heard from for this long is no longer listed


class Worker(msgspec.Struct, frozen=True):
    host: str
    pid: int


class Layers(msgspec.Struct):
    converted: int = 0
    reused: int = 0


class Job(msgspec.Struct, kw_only=True):
    """One conversion asked for, as the API shows it."""

    id: str
    key: str  # what makes two requests the same (source, target, options)
    source: str
    target: str
    options: ConversionOptions
    created: float
    status: str = "queued"
    result: str | None = None  # converted | reused | skipped
    source_digest: str | None = None
    target_digest: str | None = None
    reason: str | None = None
    started: float | None = None
    finished: float | None = None
    worker: Worker | None = None
    layers: Layers = msgspec.field(default_factory=Layers)
    source_bytes: int = 0  # the source's layers
    reused_bytes: int = 0  # of them, already converted (layers reused)
    attempts: int = 0


class Converted(msgspec.Struct, frozen=True):
    """A conversion done: where its Nydus image is."""

    registry: str
    repository: str
    digest: str
    media_type: str
    size: int


class LayerBlob(msgspec.Struct, frozen=True):
    """A converted layer's Nydus blob: where it was pushed (a repository of that registry can mount it)."""

    registry: str
    repository: str
    digest: str
    size: int


class Backend(Protocol):
    """The atomic operations the store needs; keys are text, values bytes, `ttl` seconds."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes, ttl: float | None = None) -> None: ...
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_if(self, key: str, value: bytes) -> bool: ...
    def renew_if(self, key: str, value: bytes, ttl: float) -> bool: ...
    def incr(self, key: str, amount: float = 1.0) -> float: ...
    def add(self, key: str, member: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def index(self, key: str, member: str, score: float) -> None: ...
    def recent(self, key: str, limit: int) -> list[str]: ...
    def trim(self, key: str, keep: int) -> list[str]: ...
    def keys(self, prefix: str) -> list[str]: ...
    def ping(self) -> bool: ...


class JobStore:
    """Conversions, leases and counters over a Backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # --- conversions ----------------------------------------------------------------------------------------

    def submit(self, job: Job, limit: int) -> tuple[Job, bool] | None:
        """Record `job` unless a conversion of its key is queued or running: then that one; (job, whether new),
        or None when `limit` conversions are queued or running already. The job is saved before its key's
        marker is set, so a marker always names a job that can be read."""
        b = self.backend
        while True:
            holder = b.get(f"active:{job.key}")
            if holder is not None:
                existing = self.get(holder.decode())
                if existing is not None and existing.status in ("queued", "running"):
                    return existing, False
                b.delete_if(f"active:{job.key}", holder)  # its job ended (or was dropped from the list)
                continue
            if self.in_flight() >= limit:
                return None
            self.save(job)
            if b.put_new(f"active:{job.key}", job.id.encode()):
                b.index("jobs", job.id, job.created)
                for old in b.trim("jobs", KEEP_JOBS):
                    b.delete(f"job:{old}")
                self.count("submitted")
                return job, True
            b.delete(f"job:{job.id}")  # another request of the key came first: take its job

    def get(self, job_id: str) -> Job | None:
        data = self.backend.get(f"job:{job_id}")
        return msgspec.json.decode(data, type=Job) if data is not None else None

    def save(self, job: Job) -> None:
        self.backend.put(f"job:{job.id}", msgspec.json.encode(job))

    def finish(self, job: Job, status: str, *, result: str | None = None, reason: str | None = None) -> None:
        """The job's end: recorded, counted (result or failure, duration), its key free for a new request."""
        job.status, job.result, job.reason, job.finished = status, result, reason, time.time()
        job.worker = None
        self.save(job)
        self.backend.delete_if(f"active:{job.key}", job.id.encode())
        self.count(f"result:{result or 'failed'}")
        self.count("layers:converted", job.layers.converted)
        self.count("layers:reused", job.layers.reused)
        if job.started is not None:
            self.observe(job.finished - job.started)

    def jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        out = []
        for job_id in self.backend.recent("jobs", KEEP_JOBS):
            job = self.get(job_id)
            if job is not None and (status is None or job.status == status):
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    def in_flight(self) -> int:
        """Conversions queued or running (what `max_queue` caps)."""
        return len(self.backend.keys("active:"))

    # --- conversions done, layers converted -----------------------------------------------------------------

    def converted(self, key: str) -> Converted | None:
        data = self.backend.get(f"converted:{key}")
        return msgspec.json.decode(data, type=Converted) if data is not None else None

    def set_converted(self, key: str, done: Converted) -> None:
        self.backend.put(f"converted:{key}", msgspec.json.encode(done))

    def layer_blob(self, key: str) -> LayerBlob | None:
        data = self.backend.get(f"layer:{key}")
        return msgspec.json.decode(data, type=LayerBlob) if data is not None else None

    def set_layer_blob(self, key: str, blob: LayerBlob) -> None:
        self.backend.put(f"layer:{key}", msgspec.json.encode(blob))

    def expect_layers(self, job_id: str, count: int) -> None:
        self.backend.put(f"pending:{job_id}", str(count).encode())

    def layer_done(self, job_id: str, layer_key: str) -> bool:
        """Record one of a job's layer tasks done (once, however often it ran); True for the one that completed
        the set: it schedules the merge."""
        if not self.backend.add(f"done:{job_id}", layer_key):
            return False
        expected = self.backend.get(f"pending:{job_id}")
        return expected is not None and self.backend.size(f"done:{job_id}") == int(expected)

    # --- leases ---------------------------------------------------------------------------------------------

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        return self.backend.put_new(f"lease:{name}", holder.encode(), ttl)

    def renew(self, name: str, holder: str, ttl: float) -> bool:
        return self.backend.renew_if(f"lease:{name}", holder.encode(), ttl)

    def release(self, name: str, holder: str) -> None:
        self.backend.delete_if(f"lease:{name}", holder.encode())

    def holder(self, name: str) -> str | None:
        data = self.backend.get(f"lease:{name}")
        return data.decode() if data is not None else None

    def take_over(self, name: str, old: str, holder: str, ttl: float) -> bool:
        """Take a lease whose holder is known to be dead."""
        self.backend.delete_if(f"lease:{name}", old.encode())
        return self.acquire(name, holder, ttl)

    # --- counters, workers ----------------------------------------------------------------------------------

    def count(self, name: str, amount: float = 1.0) -> None:
        if amount:
            self.backend.incr(f"count:{name}", amount)

    def counter(self, name: str) -> float:
        data = self.backend.get(f"count:{name}")
        return float(data) if data is not None else 0.0

    def observe(self, seconds: float) -> None:
        for bound in DURATION_BUCKETS:
            if seconds <= bound:
                self.count(f"duration:le:{bound}")
        self.count("duration:count")
        self.count("duration:sum", seconds)

    def seen(self, worker: Worker) -> None:
        self.backend.put(f"worker:{worker.host}:{worker.pid}", msgspec.json.encode(worker), WORKER_TTL)

    def workers(self) -> list[Worker]:
        out = []
        for key in self.backend.keys("worker:"):
            data = self.backend.get(key)
            if data is not None:
                out.append(msgspec.json.decode(data, type=Worker))
        return sorted(out, key=lambda w: (w.host, w.pid))


# --- backends -------------------------------------------------------------------------------------------------


class SqliteBackend:
    """The embedded mode's store: one SQLite file (WAL), every operation its own transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB, expires REAL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS sets (key TEXT, member TEXT, PRIMARY KEY (key, member))")
            self._db.execute("CREATE TABLE IF NOT EXISTS idx (key TEXT, member TEXT, score REAL, "
                             "PRIMARY KEY (key, member))")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _live(self, db: sqlite3.Connection, key: str) -> bytes | None:
        row = db.execute("SELECT value, expires FROM kv WHERE key=?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] < time.time()):
            return None
        return bytes(row[0])

    def get(self, key: str) -> bytes | None:
        with self._tx() as db:
            return self._live(db, key)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (key, value, _expiry(ttl)))

    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._tx() as db:
            if self._live(db, key) is not None:
                return False
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (key, value, _expiry(ttl)))
            return True

    def delete(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE key=?", (key,))

    def delete_if(self, key: str, value: bytes) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM kv WHERE key=? AND value=?", (key, value)).rowcount > 0

    def renew_if(self, key: str, value: bytes, ttl: float) -> bool:
        with self._tx() as db:
            if self._live(db, key) != value:
                return False
            db.execute("UPDATE kv SET expires=? WHERE key=?", (_expiry(ttl), key))
            return True

    def incr(self, key: str, amount: float = 1.0) -> float:
        with self._tx() as db:
            current = self._live(db, key)
            value = (float(current) if current is not None else 0.0) + amount
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,NULL)", (key, repr(value).encode()))
            return value

    def add(self, key: str, member: str) -> bool:
        with self._tx() as db:
            return db.execute("INSERT OR IGNORE INTO sets VALUES (?,?)", (key, member)).rowcount > 0

    def size(self, key: str) -> int:
        with self._tx() as db:
            return int(db.execute("SELECT count(*) FROM sets WHERE key=?", (key,)).fetchone()[0])

    def index(self, key: str, member: str, score: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO idx VALUES (?,?,?)", (key, member, score))

    def recent(self, key: str, limit: int) -> list[str]:
        with self._tx() as db:
            rows = db.execute("SELECT member FROM idx WHERE key=? ORDER BY score DESC LIMIT ?", (key, limit))
            return [row[0] for row in rows]

    def trim(self, key: str, keep: int) -> list[str]:
        with self._tx() as db:
            rows = db.execute("SELECT member FROM idx WHERE key=? ORDER BY score DESC LIMIT -1 OFFSET ?",
                              (key, keep)).fetchall()
            db.executemany("DELETE FROM idx WHERE key=? AND member=?", [(key, row[0]) for row in rows])
            return [row[0] for row in rows]

    def keys(self, prefix: str) -> list[str]:
        with self._tx() as db:
            rows = db.execute("SELECT key FROM kv WHERE key >= ? AND key < ? AND (expires IS NULL OR expires >= ?)",
                              (prefix, prefix + "\U0010ffff", time.time()))
            return [row[0] for row in rows]

    def ping(self) -> bool:
        try:
            with self._tx() as db:
                db.execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False


def _expiry(ttl: float | None) -> float | None:
    return time.time() + ttl if ttl is not None else None


class RedisBackend:
    """The distributed mode's store: the Redis server the broker uses (its own key prefix)."""

    PREFIX = "nydus-py:store:"
    _DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
    _RENEW_IF = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
                 "else return 0 end")

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)

    def _k(self, key: str) -> str:
        return self.PREFIX + key

    def get(self, key: str) -> bytes | None:
        value = self._redis.get(self._k(key))
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._redis.set(self._k(key), value, px=int(ttl * 1000) if ttl is not None else None)

    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return bool(self._redis.set(self._k(key), value, nx=True, px=int(ttl * 1000) if ttl is not None else None))

    def delete(self, key: str) -> None:
        self._redis.delete(self._k(key))

    def delete_if(self, key: str, value: bytes) -> bool:
        return bool(self._redis.eval(self._DELETE_IF, 1, self._k(key), value))

    def renew_if(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(self._redis.eval(self._RENEW_IF, 1, self._k(key), value, int(ttl * 1000)))

    def incr(self, key: str, amount: float = 1.0) -> float:
        return float(self._redis.incrbyfloat(self._k(key), amount))

    def add(self, key: str, member: str) -> bool:
        return bool(self._redis.sadd(self._k(key), member))

    def size(self, key: str) -> int:
        return int(self._redis.scard(self._k(key)))

    def index(self, key: str, member: str, score: float) -> None:
        self._redis.zadd(self._k(key), {member: score})

    def recent(self, key: str, limit: int) -> list[str]:
        return [_text(m) for m in self._redis.zrevrange(self._k(key), 0, limit - 1)]

    def trim(self, key: str, keep: int) -> list[str]:
        old = [_text(m) for m in self._redis.zrevrange(self._k(key), keep, -1)]
        if old:
            self._redis.zrem(self._k(key), *old)
        return old

    def keys(self, prefix: str) -> list[str]:
        start = len(self.PREFIX)
        return [_text(k)[start:] for k in self._redis.scan_iter(match=self._k(prefix) + "*", count=1000)]

    def ping(self) -> bool:
        import redis

        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_store(broker: str | None, state_dir: Path) -> JobStore:
    """The store beside the broker: the same Redis server, or `state_dir`/store.db for the embedded queue."""
    if broker is None:
        return JobStore(SqliteBackend(state_dir / "store.db"))
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return JobStore(RedisBackend(broker))
    raise UsageError(f"--broker {broker}: redis://HOST:PORT/DB (or none, for the embedded queue)")


__all__ = ["STATUSES", "Converted", "Job", "JobStore", "LayerBlob", "Layers", "Worker", "open_store"]
