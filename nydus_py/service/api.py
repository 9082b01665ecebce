"""`nydus-py serve`'s HTTP API (Starlette, served by uvicorn): conversions asked for and looked up, health,
Prometheus metrics, the OpenAPI description and a status page for people.

Every request body is read with a cap and decoded once into typed requests (events.py). An authenticated,
decodable webhook or registry notification is always answered 2xx (a registry retries anything else for ever);
4xx is for a bad `Authorization`, a body that is not one of the three shapes, and a direct request the service
will not take. Handlers are plain functions: Starlette runs them on its thread pool, so a store or broker call
never blocks the event loop. References: docs/service.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Iterable
from importlib import resources
from typing import Any

import msgspec
from celery import Celery
from jinja2 import Environment, select_autoescape
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nydus_py.errors import FormatError, UsageError
from nydus_py.service.events import MAX_BODY, ConversionRequest, Refused, decode_body
from nydus_py.service.options import ServiceConfig
from nydus_py.service.store import DURATION_BUCKETS, STATUSES, Job, JobStore
from nydus_py.oci.ref import Reference
from nydus_py.service.tasks import QUEUE, TASK_CONVERT, pin_source, queue_depth

log = logging.getLogger("nydus_py.service")
RETRY_AFTER = 30  # seconds a client told "queue full" waits


def create_app(config: ServiceConfig, store: JobStore, celery: Celery) -> Starlette:
    """The ASGI app: `config` decides auth, registries and limits; jobs go to `store`, tasks to `celery`."""
    api = _Api(config, store, celery)
    registry = CollectorRegistry()
    registry.register(_Collector(config, store))
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    page = environment.from_string(resources.files("nydus_py.service").joinpath("status.html").read_text())
    openapi = resources.files("nydus_py.service").joinpath("openapi.json").read_bytes()

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def status_page(request: Request) -> Response:
        return HTMLResponse(page.render(**api.overview()))

    routes = [
        Route("/api/v1/conversions", api.create, methods=["POST"]),
        Route("/api/v1/conversions", api.list, methods=["GET"]),
        Route("/api/v1/conversions/{job_id}", api.get, methods=["GET"]),
        Route("/healthz", api.health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", lambda request: Response(openapi, media_type="application/json"), methods=["GET"]),
        Route("/", status_page, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def job_view(job: Job) -> dict[str, Any]:
    """A conversion as the API shows it (GET /api/v1/conversions/{id})."""
    doc: dict[str, Any] = msgspec.to_builtins(job)
    doc.pop("key", None)
    doc["options"] = job.options.fingerprint()
    return doc


class _Api:
    def __init__(self, config: ServiceConfig, store: JobStore, celery: Celery) -> None:
        self.config, self.store, self.celery = config, store, celery
        self.allowed = frozenset(config.allow_registries)
        self.registry = config.registry()

    async def create(self, request: Request) -> Response:
        if not self._authorized(request):
            log.warning("conversions: refused: bad Authorization from %s",
                        request.client.host if request.client else "?")
            return _error(401, "Authorization does not match")
        body = await _read_capped(request)
        if body is None:
            log.warning("conversions: refused: body over %d bytes", MAX_BODY)
            return _error(413, f"request body over {MAX_BODY} bytes")
        return await run_in_threadpool(self._create, body)

    def _create(self, body: bytes) -> Response:
        try:
            decoded = decode_body(body, allowed=self.allowed, tag_suffix=self.config.tag_suffix)
        except Refused as exc:
            log.warning("conversions: refused: %s", exc)
            return _error(403, str(exc))
        except (FormatError, UsageError) as exc:
            log.warning("conversions: refused: %s", exc)
            return _error(400, str(exc))
        tasks, skipped = [], [{"event": event, "reason": reason} for event, reason in decoded.skipped]
        for event, reason in decoded.skipped:
            log.info("conversions: skipped %s: %s", event, reason)
            self.store.count("skipped")
        for wanted in decoded.requests:
            pinned = pin_source(self.registry, wanted.source)
            if pinned.skip is not None:
                skipped.append({"event": wanted.event, "reason": pinned.skip})
                log.info("conversions: skipped %s: %s", wanted.event, pinned.skip)
                self.store.count("skipped")
                continue
            job = self._submit(wanted, pinned.source)
            if job is None:  # the queue is full (a request of a key queued or running still gets its id)
                if decoded.kind == "direct":
                    return _error(429, "the queue is full", **{"Retry-After": str(RETRY_AFTER)})
                skipped.append({"event": wanted.event, "reason": "the queue is full"})
                log.warning("conversions: skipped %s: the queue is full", wanted.event)
                self.store.count("skipped")
                continue
            tasks.append({"id": job.id, "source": job.source, "target": job.target, "status": job.status})
        return JSONResponse({"tasks": tasks, "skipped": skipped}, status_code=202 if tasks else 200)

    def _submit(self, wanted: ConversionRequest, pinned: Reference) -> Job | None:
        """Queue a conversion, or find the one of its key queued or running (the same source manifest,
        target and options); None when the queue is full."""
        options = self.config.conversion
        source, target = f"docker://{wanted.source}", f"docker://{wanted.target}"
        same = Reference(registry=pinned.registry, repository=pinned.repository, digest=pinned.digest,
                         tag=None if pinned.digest else pinned.tag)
        key = hashlib.sha256(f"{same}|{target}|{options.fingerprint()}".encode()).hexdigest()
        submitted = self.store.submit(Job(id=uuid.uuid4().hex, key=key, source=source, target=target,
                                          options=options, created=time.time()), self.config.max_queue)
        if submitted is None:
            return None
        job, new = submitted
        if new:
            self.celery.send_task(TASK_CONVERT, args=[job.id], task_id=job.id, queue=QUEUE)
            log.info("conversions: queued %s -> %s as %s", source, target, job.id)
        return job

    def _authorized(self, request: Request) -> bool:
        expected = self.config.webhook_auth
        if expected is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def get(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = self.store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
        if job is None:
            return _error(404, "no such conversion")
        return JSONResponse(job_view(job))

    def list(self, request: Request) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            return _error(400, f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = max(1, min(1000, int(request.query_params.get("limit", "100"))))
        except ValueError:
            return _error(400, "limit must be a number")
        return JSONResponse({"conversions": [job_view(j) for j in self.store.jobs(status, limit)]})

    def health(self, request: Request) -> Response:
        broker = _broker_answers(self.celery)
        if broker and self.store.backend.ping():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "the broker does not answer"}, status_code=503)

    def overview(self) -> dict[str, Any]:
        """What the status page shows."""
        jobs = self.store.jobs(None, 50)
        return {"jobs": [_row(job) for job in jobs], "queue_depth": queue_depth(self.config),
                "in_flight": self.store.in_flight(), "workers": self.store.workers(),
                "counts": {r: int(self.store.counter(f"result:{r}")) for r in ("converted", "reused", "skipped",
                                                                                "failed")},
                "now": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def _row(job: Job) -> dict[str, Any]:
    duration = (job.finished or time.time()) - job.started if job.started else None
    return {"id": job.id, "status": job.status, "result": job.result or "", "source": job.source,
            "target": job.target, "duration": f"{duration:.1f} s" if duration is not None else "",
            "reason": job.reason or "", "layers": f"{job.layers.converted} converted, {job.layers.reused} reused",
            "bytes": f"{job.reused_bytes} of {job.source_bytes} reused" if job.source_bytes else ""}


async def _read_capped(request: Request) -> bytes | None:
    """The body, or None past MAX_BODY (read no further than that, whatever Content-Length says)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _broker_answers(celery: Celery) -> bool:
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
        return True
    except Exception:  # noqa: BLE001 - any failure to reach it means the broker does not answer
        return False


class _Collector:
    """Metrics read from the shared store at each scrape: the work of every worker on every host."""

    def __init__(self, config: ServiceConfig, store: JobStore) -> None:
        self.config, self.store = config, store

    def collect(self) -> Iterable[Metric]:
        store = self.store
        conversions = CounterMetricFamily("nydus_py_conversions", "Conversions ended, by result.", labels=["result"])
        for result in ("converted", "reused", "skipped", "failed"):
            conversions.add_metric([result], store.counter(f"result:{result}"))
        yield conversions
        layers = CounterMetricFamily("nydus_py_layers", "Layers of ended conversions.", labels=["kind"])
        for kind in ("converted", "reused"):
            layers.add_metric([kind], store.counter(f"layers:{kind}"))
        yield layers
        skipped = CounterMetricFamily("nydus_py_events_skipped", "Events not acted on (logged with their reason).")
        skipped.add_metric([], store.counter("skipped"))
        yield skipped
        buckets = [(str(b), store.counter(f"duration:le:{b}")) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", store.counter("duration:count")))
        duration = HistogramMetricFamily("nydus_py_conversion_duration_seconds", "Time from start to end.",
                                         buckets=buckets, sum_value=store.counter("duration:sum"))
        yield duration
        yield GaugeMetricFamily("nydus_py_queue_depth", "Messages waiting in the queue.",
                                value=queue_depth(self.config))
        yield GaugeMetricFamily("nydus_py_conversions_in_flight", "Conversions queued or running.",
                                value=store.in_flight())
        yield GaugeMetricFamily("nydus_py_workers", "Worker processes seen in the last 30 s.",
                                value=len(store.workers()))


__all__ = ["create_app", "job_view"]
