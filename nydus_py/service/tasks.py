"""The work, as Celery tasks: `convert` (one conversion asked for), `layer` (one layer of it, on whichever
worker is free) and `merge` (the bootstrap, the manifest and the push, once every layer is done).

What the promises rest on (README "The conversion service"):
- Celery: `task_acks_late` (a message is acknowledged after its task ran, not before), `task_reject_on_worker_lost`
  (a pool process killed mid-task puts its message back at once), `worker_prefetch_multiplier=1` (a worker holds
  no more messages than it runs), and the broker's visibility timeout set to the lease time: a message a dead
  worker held comes back after at most that long (Redis: kombu restores unacknowledged messages older than
  `visibility_timeout`; the embedded queue leases them the same way).
- A lease per conversion key (source manifest digest + options) and per layer key, in the store, renewed while
  the work goes on: at most one run converts a key at a time. A task that finds the lease held by a live run
  (a redelivered copy of a long conversion) puts itself back a little later and never converts twice; a lease
  held by a run whose process is gone (on this host) is taken over at once; elsewhere it runs out.
- Outputs are content-addressed and the tag is pushed last, so a conversion run twice publishes the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from celery import Celery, Task

from nydus_py.errors import NydusError
from nydus_py.format import oci
from nydus_py.oci.convert import convert, convert_layer
from nydus_py.oci.documents import Descriptor, ManifestDoc, decode, digest_hex
from nydus_py.oci.images import RegistryOptions, open_source
from nydus_py.oci.nydus import is_nydus_image
from nydus_py.oci.ref import ImageRef, Reference, Transport, strict_reference
from nydus_py.oci.registry import RegistryError
from nydus_py.oci.verify import verify_conversion
from nydus_py.service.options import ConversionOptions, ServiceConfig
from nydus_py.service.queue import SCHEME
from nydus_py.service.queue import queue_depth as embedded_queue_depth
from nydus_py.service.store import Converted, Job, JobStore, LayerBlob, Worker, open_store

log = logging.getLogger("nydus_py.service")
QUEUE = "nydus-py"
TASK_CONVERT, TASK_LAYER, TASK_MERGE = "nydus_py.convert", "nydus_py.layer", "nydus_py.merge"


def broker_url(config: ServiceConfig) -> str:
    """The broker: `config.broker` (Redis), else the embedded queue in the state directory."""
    if config.broker is not None:
        return config.broker
    return f"{SCHEME}:///{(config.state / 'queue.db').absolute()}"


def make_app(config: ServiceConfig) -> Celery:
    """The Celery app both `serve` (which only sends) and `worker` (which runs) use."""
    app = Celery("nydus_py", broker=broker_url(config), set_as_current=False)
    lease = config.lease_seconds
    transport: dict[str, Any] = {"visibility_timeout": lease}
    if config.broker is None:
        transport["sweep_interval"] = max(0.5, min(5.0, lease / 4))
    else:  # kombu >= 5.7: look for messages of dead workers every few seconds, not every 100
        transport.update(unacked_restore_interval=max(1, min(10, int(lease / 4))), unacked_restore_throttle=1,
                         global_keyprefix="nydus-py:")
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_ignore_result=True, task_default_queue=QUEUE, task_serializer="json", accept_content=["json"],
        broker_transport_options=transport, broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True, worker_enable_remote_control=False,
        worker_send_task_events=False, worker_hijack_root_logger=False, broker_connection_timeout=10,
    )
    app.task(name=TASK_CONVERT, bind=True)(_convert_task)
    app.task(name=TASK_LAYER, bind=True)(_layer_task)
    app.task(name=TASK_MERGE, bind=True)(_merge_task)
    return app


# --- the worker process's context ---------------------------------------------------------------------------


@dataclass(slots=True)
class Context:
    config: ServiceConfig
    store: JobStore
    registry: RegistryOptions
    app: Celery
    pid: int  # the process the store connection was made in (a forked pool process makes its own)


_CONTEXT: Context | None = None


def set_context(config: ServiceConfig, app: Celery) -> Context:
    """Set in a worker before its pool forks: every pool process inherits it and opens its own store
    connection on first use (a SQLite or Redis connection is not shared across fork)."""
    global _CONTEXT
    _CONTEXT = Context(config=config, store=open_store(config.broker, config.state), registry=config.registry(),
                       app=app, pid=os.getpid())
    return _CONTEXT


def _context() -> Context:
    if _CONTEXT is None:
        raise NydusError("the worker's context is not set (start it with `nydus-py worker`)")
    if _CONTEXT.pid != os.getpid():
        _CONTEXT.store, _CONTEXT.pid = open_store(_CONTEXT.config.broker, _CONTEXT.config.state), os.getpid()
    return _CONTEXT


def queue_depth(config: ServiceConfig) -> int:
    """Messages waiting in the broker's queue (not taken by a worker)."""
    if config.broker is None:
        return embedded_queue_depth(str(config.state / "queue.db"))
    import redis

    try:
        length = redis.Redis.from_url(config.broker, socket_timeout=5).llen(f"nydus-py:{QUEUE}")
    except redis.RedisError:
        return 0
    return int(length) if isinstance(length, int) else 0


def run_worker(config: ServiceConfig, concurrency: int | None = None) -> None:
    """`nydus-py worker`: a Celery worker (prefork, one process per core by default) of this service's queue,
    telling the store it is alive every few seconds."""
    app = make_app(config)
    set_context(config, app)
    me = _me()
    stop = threading.Event()

    def heartbeat() -> None:
        store = open_store(config.broker, config.state)
        while True:
            with contextlib.suppress(Exception):
                store.seen(me)
            if stop.wait(WORKER_HEARTBEAT):
                return

    thread = threading.Thread(target=heartbeat, name="nydus-py-heartbeat", daemon=True)
    thread.start()
    processes = concurrency or config.concurrency or os.cpu_count() or 1
    try:
        app.worker_main(["worker", "--loglevel=INFO", f"--concurrency={processes}", "--pool=prefork",
                         "--without-gossip", "--without-mingle", "--without-heartbeat", f"--queues={QUEUE}",
                         f"--hostname=nydus-py-{me.pid}@{me.host}"])
    finally:
        stop.set()


WORKER_HEARTBEAT = 5.0  # seconds between a worker's "alive" records (the page and /metrics list workers)


def _me() -> Worker:
    return Worker(host=socket.gethostname(), pid=os.getpid())


class _Wait(Exception):  # noqa: N818 - a signal within this module, not an error
    """The key's lease is held by a live run: try again later."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease in the store by name, and who holds it (`host:pid:job:run`): the tasks of one run share it."""

    name: str
    holder: str


def _holder(job: Job) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{job.id}:{uuid.uuid4().hex}"


# --- at the edge: what `serve` asks of the registry before queuing ---------------------------------------

EDGE_WAIT = 3.0  # seconds a request waits for the source's manifest before it is queued unchecked
_EDGE = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="nydus-py-edge")


@dataclass(frozen=True, slots=True)
class Pinned:
    """A source as `serve` found it: pinned by digest (when the registry answered in time), or a reason to skip."""

    source: Reference
    skip: str | None = None


def pin_source(registry: RegistryOptions, source: Reference) -> Pinned:
    """The source's manifest digest, and whether it is a referrer (a manifest with a `subject`: a signature,
    an SBOM, another tool's Nydus twin), fetched within EDGE_WAIT; past it, or on any error, the source as it
    was (the worker fetches it again and fails the conversion with the registry's answer)."""

    def fetch() -> Pinned:
        client = registry.client(source.registry)
        client.retries = 0
        data, media_type, digest = client.get_manifest(source.repository, source.ref)
        pinned = Reference(registry=source.registry, repository=source.repository, tag=source.tag, digest=digest)
        if media_type in oci.MANIFEST_TYPES and decode(data, ManifestDoc, str(source)).subject is not None:
            return Pinned(pinned, "a referrer (its manifest has a subject)")
        return Pinned(pinned)

    try:
        return _EDGE.submit(fetch).result(timeout=EDGE_WAIT)
    except (concurrent.futures.TimeoutError, NydusError):
        return Pinned(source)


# --- tasks ------------------------------------------------------------------------------------------------


def _convert_task(task: Task, job_id: str) -> None:
    ctx = _context()
    job = ctx.store.get(job_id)
    if job is None or job.status in ("completed", "failed"):
        return  # a duplicate delivery of a conversion already ended
    _guarded(task, ctx, job, lambda: _run(ctx, job))


def _working(ctx: Context, job: Job) -> None:
    """The job is being worked on here (the page and the API show where)."""
    job.status, job.started, job.worker, job.reason = "running", job.started or time.time(), _me(), None
    ctx.store.save(job)


def _layer_task(task: Task, job_id: str, lease: str, holder: str, layer_key: str, source: str,
                layer: dict[str, Any]) -> None:
    ctx = _context()
    job = ctx.store.get(job_id)
    if job is None or job.status != "running":
        return
    _guarded(task, ctx, job, lambda: _run_layer(ctx, job, Lease(lease, holder), layer_key, source, layer))


def _merge_task(task: Task, job_id: str, lease: str, holder: str, source: str,
                prebuilt: dict[str, list[Any]]) -> None:
    ctx = _context()
    job = ctx.store.get(job_id)
    if job is None or job.status != "running":
        return
    blobs = {digest: (str(value[0]), int(value[1])) for digest, value in prebuilt.items()}
    _guarded(task, ctx, job, lambda: _merge(ctx, job, Lease(lease, holder), source, blobs))


def _guarded(task: Task, ctx: Context, job: Job, work: Any) -> None:
    """Run `work`: a transient registry error is retried with backoff (a bounded number of times), a
    permanent one fails the job once, with its reason; a held lease puts the task back a little later."""
    try:
        work()
    except _Wait:
        retry_in = max(1.0, min(30.0, ctx.config.lease_seconds / 3))
        task.apply_async(args=task.request.args, countdown=retry_in)  # a new message: this one is acknowledged
    except RegistryError as exc:
        transient = exc.status is None or exc.status >= 500 or exc.status == 429
        if transient and task.request.retries < ctx.config.retries:
            raise task.retry(countdown=2 ** task.request.retries, max_retries=ctx.config.retries) from exc
        ctx.store.finish(job, "failed", reason=str(exc)[:1000])
    except NydusError as exc:
        ctx.store.finish(job, "failed", reason=str(exc)[:1000])
    except OSError as exc:  # this worker's disk or system, not the image: said, not retried for ever
        ctx.store.finish(job, "failed", reason=f"{exc.filename or 'worker'}: {exc.strerror or exc}"[:1000])
    except Exception as exc:  # noqa: BLE001 - a bug must end the conversion, not leave it "running" for ever
        log.exception("conversion %s: internal error", job.id)
        ctx.store.finish(job, "failed", reason=f"internal error (a bug in nydus-py): {type(exc).__name__}: {exc}"
                         [:1000])


# --- one conversion ----------------------------------------------------------------------------------------


def conversion_key(source: Reference, digest: str, options: ConversionOptions) -> str:
    """What makes two conversions the same: the source manifest (by digest) and the options."""
    return hashlib.sha256(f"{source.registry}/{source.repository}@{digest}|{options.fingerprint()}".encode()
                          ).hexdigest()


def layer_key(layer_digest: str, options: ConversionOptions) -> str:
    return hashlib.sha256(f"{layer_digest}|{options.fingerprint()}".encode()).hexdigest()


def _run(ctx: Context, job: Job) -> None:
    source, target = strict_reference(job.source), strict_reference(job.target)
    job.started = job.started or time.time()
    client = ctx.registry.client(source.registry)
    data, media_type, digest = client.get_manifest(source.repository, source.digest or source.tag or "latest")
    job.source_digest = digest
    pinned = Reference(registry=source.registry, repository=source.repository, digest=digest)
    if media_type in oci.MANIFEST_TYPES and decode(data, ManifestDoc, f"{job.source}").subject is not None:
        ctx.store.finish(job, "completed", result="skipped", reason="a referrer (its manifest has a subject)")
        return
    key = conversion_key(source, digest, job.options)
    if _republish(ctx, job, key, target):
        return
    lease = Lease(f"convert:{key}", _holder(job))
    if not _acquire(ctx.store, lease, ctx.config.lease_seconds):
        if job.status != "running":
            job.reason = "waiting: this image is being converted by another run"
            ctx.store.save(job)
        raise _Wait
    job.attempts += 1  # a run of the conversion (a redelivery that found a live run waited above, uncounted)
    if job.attempts > ctx.config.attempts:
        ctx.store.release(lease.name, lease.holder)
        ctx.store.finish(job, "failed", reason=f"gave up after {job.attempts - 1} attempts (its worker died each time)")
        return
    _working(ctx, job)
    pinned_text = f"docker://{pinned}"
    with _renewing(ctx.store, lease, ctx.config.lease_seconds):
        images = open_source(ImageRef(Transport.DOCKER, pinned_text, remote=pinned), None, ctx.registry)
        if any(is_nydus_image(image) for image in images):
            ctx.store.release(lease.name, lease.holder)
            ctx.store.finish(job, "completed", result="skipped", reason="already a Nydus image")
            return
        job.source_bytes = sum(layer.size for image in images for layer in image.layers)
        if job.options.oci_ref or job.options.chunk_dict is not None:  # one task: zran and dictionaries
            ctx.store.save(job)
            _merge(ctx, job, lease, pinned_text, {})
            return
        prebuilt: dict[str, tuple[str, int]] = {}
        pending: dict[str, Descriptor] = {}
        for image in images:
            for layer in image.layers:
                found = _reusable_blob(ctx, layer_key(layer.digest, job.options), target)
                if found is not None:
                    prebuilt[layer.digest] = found
                else:
                    pending.setdefault(layer_key(layer.digest, job.options), layer)
    job.layers.reused = len(prebuilt)
    job.reused_bytes = sum(layer.size for image in images for layer in image.layers if layer.digest in prebuilt)
    ctx.store.save(job)
    if not pending:
        _merge(ctx, job, lease, pinned_text, prebuilt)
        return
    ctx.store.expect_layers(job.id, len(pending))
    for lkey, layer in pending.items():
        ctx.app.send_task(TASK_LAYER, args=[job.id, lease.name, lease.holder, lkey, pinned_text, layer.to_json()],
                          queue=QUEUE)


def _republish(ctx: Context, job: Job, key: str, target: Reference) -> bool:
    """A key already converted into the target's repository: its Nydus image is pushed under the target tag
    again if the tag is gone or names another manifest (the bytes are there by digest); True when done so."""
    done = ctx.store.converted(key)
    if done is None or (done.registry, done.repository) != (target.registry, target.repository):
        return False
    client, repo, tag = ctx.registry.client(target.registry), target.repository, target.tag or "latest"
    if not client.manifest_exists(repo, done.digest):
        return False  # deleted since: convert again (its layers are likely reused)
    current = client.get_manifest(repo, tag)[2] if client.manifest_exists(repo, tag) else None
    if current != done.digest:
        data, media_type, _ = client.get_manifest(repo, done.digest)
        client.put_manifest(repo, tag, data, media_type or done.media_type)
    job.target_digest = done.digest
    ctx.store.finish(job, "completed", result="reused")
    return True


def _reusable_blob(ctx: Context, lkey: str, target: Reference) -> tuple[str, int] | None:
    """A layer converted before with these options: its blob in the target repository (mounted there from
    another repository of the registry if need be), or None."""
    found = ctx.store.layer_blob(lkey)
    if found is None or found.registry != target.registry:
        return None
    client = ctx.registry.client(target.registry)
    if found.repository != target.repository:
        try:
            client.push_blob(target.repository, found.digest, found.size,
                             lambda: client.open_blob(found.repository, found.digest, found.size),
                             mount_from=found.repository)
        except NydusError:
            return None
    elif client.blob_size(target.repository, found.digest) != found.size:
        return None
    return found.digest, found.size


def _run_layer(ctx: Context, job: Job, lease: Lease, lkey: str, source: str, layer: dict[str, Any]) -> None:
    target = strict_reference(job.target)
    desc = Descriptor(str(layer.get("mediaType") or ""), str(layer.get("digest")), int(layer.get("size") or 0))
    digest_hex(desc.digest)  # a task's arguments come from the broker: checked like anything else
    if _reusable_blob(ctx, lkey, target) is None:
        mine = Lease(f"layer:{lkey}", _holder(job))
        if not _acquire(ctx.store, mine, ctx.config.lease_seconds):
            raise _Wait
        _working(ctx, job)
        try:
            with _renewing(ctx.store, mine, ctx.config.lease_seconds), \
                    _renewing(ctx.store, lease, ctx.config.lease_seconds):
                remote = strict_reference(source)
                digest, size = convert_layer(ImageRef(Transport.DOCKER, source, remote=remote), desc,
                                             ImageRef(Transport.DOCKER, job.target, remote=target),
                                             job.options.build_config(ctx.registry), ctx.registry)
                ctx.store.set_layer_blob(lkey, LayerBlob(registry=target.registry, repository=target.repository,
                                                         digest=digest, size=size))
        finally:
            ctx.store.release(mine.name, mine.holder)
    if not ctx.store.layer_done(job.id, lkey):
        return
    prebuilt: dict[str, list[Any]] = {}  # the last layer done: the merge is next
    for image in open_source(ImageRef(Transport.DOCKER, source, remote=strict_reference(source)), None, ctx.registry):
        for each in image.layers:
            found = ctx.store.layer_blob(layer_key(each.digest, job.options))
            if found is not None:
                prebuilt[each.digest] = [found.digest, found.size]
    fresh = ctx.store.get(job.id)
    if fresh is not None:
        fresh.layers.converted = len(prebuilt) - fresh.layers.reused
        ctx.store.save(fresh)
    ctx.app.send_task(TASK_MERGE, args=[job.id, lease.name, lease.holder, source, prebuilt], queue=QUEUE)


def _merge(ctx: Context, job: Job, lease: Lease, source: str, prebuilt: dict[str, tuple[str, int]]) -> None:
    """The conversion itself, with the layers already built (or all of it here): `convert`, the tag last."""
    target = strict_reference(job.target)
    _working(ctx, job)
    with _renewing(ctx.store, lease, ctx.config.lease_seconds):
        opts = replace(job.options.convert_options(), prebuilt=prebuilt)
        result = convert(ImageRef(Transport.DOCKER, source, remote=strict_reference(source)),
                         ImageRef(Transport.DOCKER, job.target, remote=target), job.options.build_config(ctx.registry),
                         opts, ctx.registry)
    assert result.top is not None
    fresh = ctx.store.get(job.id) or job
    fresh.target_digest = result.top.digest
    if job.options.verify:  # compared with its source before it counts (its tag is pushed: say so if it differs)
        pinned_target = Reference(registry=target.registry, repository=target.repository, digest=result.top.digest)
        report = verify_conversion(ImageRef(Transport.DOCKER, source, remote=strict_reference(source)),
                                   ImageRef(Transport.DOCKER, f"docker://{pinned_target}", remote=pinned_target),
                                   ctx.registry)
        if not report.equal:
            ctx.store.release(lease.name, lease.holder)
            first = "; ".join(report.lines()[:3])
            ctx.store.finish(fresh, "failed", reason=f"the Nydus image {report.verdict()}: {first}"[:1000])
            return
    if not prebuilt:
        fresh.layers.converted = sum(len(built.layers) for _, built in result.platforms) - result.reused_layers
        fresh.layers.reused = result.reused_layers
    key = lease.name.removeprefix("convert:")
    ctx.store.set_converted(key, Converted(registry=target.registry, repository=target.repository,
                                           digest=result.top.digest, media_type=result.top.media_type,
                                           size=result.top.size))
    ctx.store.release(lease.name, lease.holder)
    ctx.store.finish(fresh, "completed", result="converted" if fresh.layers.converted else "reused")


# --- leases -----------------------------------------------------------------------------------------------


def _acquire(store: JobStore, lease: Lease, ttl: float) -> bool:
    """The lease, or the lease of a run whose process is gone (on this host: its pid is in the holder)."""
    if store.acquire(lease.name, lease.holder, ttl):
        return True
    current = store.holder(lease.name)
    if current is None:
        return store.acquire(lease.name, lease.holder, ttl)
    host, _, rest = current.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
        return store.take_over(lease.name, current, lease.holder, ttl)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _renewing(store: JobStore, lease: Lease, ttl: float) -> Iterator[None]:
    """Renew a lease every third of its time while the block runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            with contextlib.suppress(Exception):  # a store that does not answer: the lease runs out, as it should
                store.renew(lease.name, lease.holder, ttl)

    thread = threading.Thread(target=renew, name="nydus-py-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


__all__ = ["QUEUE", "TASK_CONVERT", "Pinned", "broker_url", "conversion_key", "make_app", "pin_source", "queue_depth",
           "run_worker", "set_context"]
