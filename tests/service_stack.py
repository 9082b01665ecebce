"""The conversion service as real processes for the tests: redis-server, `nydus-py serve` and `nydus-py worker`,
each on a free loopback port, stopped by PID (a worker's whole process group), plus small images to push."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import need_tool
from tests.test_registry import free_port

AUTH = "Bearer s3cret"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 (no persistence); yields its redis:// URL."""
    binary = need_tool("redis-server")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _redis_answers(port), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_for(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.1)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nydus_py.cli", *args]


class Serve:
    """`nydus-py serve` as a process in its own group, its log in `log`."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Serve:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(_command("serve", "--listen", f"127.0.0.1:{self.port}", *self.args),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_for(self._healthy, 30, f"serve on {self.url} (log {self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"serve exited:\n{self.log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def post(self, body: object, auth: str | None = AUTH, **headers: str) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if auth is not None:
            headers["Authorization"] = auth
        return requests.post(f"{self.url}/api/v1/conversions", data=data, headers=headers, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/api/v1/conversions/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def jobs(self) -> list[dict[str, Any]]:
        doc: dict[str, Any] = requests.get(f"{self.url}/api/v1/conversions?limit=1000", timeout=10).json()
        return list(doc["conversions"])

    def wait(self, job_id: str, seconds: float = 120, statuses: tuple[str, ...] = ("completed", "failed")
             ) -> dict[str, Any]:
        return dict(wait_for(lambda: (lambda j: j if j["status"] in statuses else None)(self.job(job_id)),
                             seconds, f"conversion {job_id} to reach {statuses}"))

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


class Worker:
    """`nydus-py worker` as a process group of its own (the main process and its pool)."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"worker-{time.monotonic_ns()}.log"

    def start(self) -> Worker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(_command("worker", *self.args), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for(lambda: b"ready." in self.log.read_bytes() or self._died(), 60, f"worker (log {self.log})")
        return self

    def _died(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"worker exited:\n{self.log.read_text()[-3000:]}")
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def parent_of(pid: int) -> int:
    """The parent's pid (/proc/PID/stat, field 4)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


# --- images ---------------------------------------------------------------------------------------------------


def _put(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image_layout(layout: Path, layers: list[dict[str, bytes]], tag: str = "v1") -> list[str]:
    """An OCI image of gzip layers (each a dict of path -> content) in a layout; returns the layer digests."""
    descs, diff_ids = [], []
    for files in layers:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
        raw = out.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": GZIP_LAYER, **_put(layout, gzip.compress(raw, compresslevel=1, mtime=0))})
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **_put(layout, json.dumps(config).encode())}, "layers": descs}
    entry = {"mediaType": OCI_MANIFEST, **_put(layout, json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return [str(d["digest"]) for d in descs]


def push(layout: Path, destination: str, tag: str = "v1") -> None:
    """skopeo copy of the layout's TAG to docker://DESTINATION (plain HTTP)."""
    subprocess.run([need_tool("skopeo"), "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                    f"docker://{destination}"], check=True, capture_output=True, timeout=120)


def random_files(seed: int, count: int, size: int, prefix: str = "f") -> dict[str, bytes]:
    rng = __import__("random").Random(seed)
    return {f"{prefix}{i}": rng.randbytes(size) for i in range(count)}
