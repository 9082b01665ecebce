"""The conversion service under a burst (tools/bench.py --corpus service): IMAGES images pushed to a
docker-registry at once, converted by `nydus-py serve` + `nydus-py worker` over a redis-server, with 1 and 2
worker processes (one pool process each), against a serial loop of `nydus-py convert` of the same images.
Reports the time until every Nydus twin exists, the worker's peak RSS and the service's overhead per conversion
(its time with one worker, less the serial loop's, per image). Needs redis-server, docker-registry and skopeo."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench service: {what} not within {seconds} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _answers(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(url, timeout=1).status_code == 200
    return False


def _image(layout: Path, seed: int, size: int) -> None:
    """A two-layer gzip image: a base (half text, half random) and an app layer of its own."""
    rng = random.Random(seed)
    words = b"the quick brown fox jumps over lazy dog nydus rafs chunk blob layer ".split()
    layers, diff_ids = [], []
    for part in range(2):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(8):
                n = max(1, size // 16)
                data = rng.randbytes(n) if i % 2 else b" ".join(rng.choice(words) for _ in range(n // 5))[:n]
                info = tarfile.TarInfo(f"layer{part}/f{i}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
        raw = out.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append(gzip.compress(raw, compresslevel=1, mtime=0))
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(d)} for d in layers]}
    entry = {"mediaType": manifest["mediaType"], **put(json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def _tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                stack += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return total


def _rss_sampler(pids: list[int]) -> tuple[threading.Event, list[int]]:
    stop, peak = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], max((_tree_rss(p) for p in pids), default=0))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    return stop, peak


def run(work: Path, images: int, size: int) -> list[str]:
    """The burst, measured; table rows for bench.py."""
    for tool in ("redis-server", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench service: needs {tool}")
    work.mkdir(parents=True, exist_ok=True)
    rport, gport = _free_port(), _free_port()
    registry = f"127.0.0.1:{gport}"
    (work / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
        f"http:\n  addr: {registry}\n")
    rows = []
    with _process(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                  work / "redis.log"), \
            _process(["docker-registry", "serve", str(work / "registry.yml")], work / "registry.log"):
        _wait(lambda: _answers(f"http://{registry}/v2/"), 30, "docker-registry")
        for i in range(images):
            _image(work / f"src{i}", i, size)
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{work / f'src{i}'}:v1",
                            f"docker://{registry}/bench/img{i}:v1"], check=True, capture_output=True)
        broker = f"redis://127.0.0.1:{rport}/0"

        def serial(tag: str) -> float:
            started = time.perf_counter()
            for i in range(images):
                subprocess.run([PY, "-m", "nydus_py.cli", "convert", "-q", "--plain-http",
                                f"docker://{registry}/bench/img{i}:v1", f"docker://{registry}/bench/img{i}:{tag}"],
                               check=True, capture_output=True)
            return time.perf_counter() - started

        serial("warm")  # every blob exists in the registry from here on, for every run alike
        serial_s = serial("serial")
        rows.append(f"| {images} images burst | serial nydus-py convert | {serial_s:.2f} | 1.00 | - | - | - | - |")
        for workers in (1, 2):
            subprocess.run(["redis-cli", "-p", str(rport), "FLUSHALL"], check=False, capture_output=True)
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            common = ["--broker", broker, "--plain-http"]
            with _process([PY, "-m", "nydus_py.cli", "serve", *common, "--workers", "0", "--listen",
                           f"127.0.0.1:{port}", "--allow-registry", registry], work / f"serve{workers}.log"), \
                    contextlib.ExitStack() as stack:
                _wait(lambda url=url: _answers(f"{url}/healthz"), 30, "serve")
                pids = []
                for w in range(workers):
                    log = work / f"worker{workers}-{w}.log"
                    process = stack.enter_context(_process([PY, "-m", "nydus_py.cli", "worker", *common,
                                                            "--concurrency", "1"], log))
                    pids.append(process.pid)
                    _wait(lambda log=log: b"ready." in log.read_bytes(), 60, "worker")
                stop, peak = _rss_sampler(pids)
                started = time.perf_counter()
                ids = [requests.post(f"{url}/api/v1/conversions", timeout=30,
                                     json={"source": f"docker://{registry}/bench/img{i}:v1",
                                           "target": f"docker://{registry}/bench/img{i}:w{workers}"}
                                     ).json()["tasks"][0]["id"] for i in range(images)]

                def finished(url: str = url, ids: list[str] = ids) -> bool:
                    jobs = requests.get(f"{url}/api/v1/conversions?limit=1000", timeout=10).json()["conversions"]
                    states = {j["id"]: j["status"] for j in jobs}
                    failed = [j for j in jobs if j["status"] == "failed"]
                    if failed:
                        raise SystemExit(f"bench service: {failed[0]['reason']}")
                    return all(states.get(i) == "completed" for i in ids)

                _wait(finished, 600, "the burst")
                elapsed = time.perf_counter() - started
                stop.set()
                overhead = (elapsed - serial_s) / images
                rows.append(f"| {images} images burst | service, {workers} worker(s) | {elapsed:.2f} | "
                            f"{serial_s / elapsed:.2f} | - | {peak[0] / (1 << 20):.0f} | - | - |")
                if workers == 1:
                    print(f"service: overhead per conversion with 1 worker: {overhead:+.3f} s "
                          f"({elapsed:.2f} s vs serial {serial_s:.2f} s for {images} images)", file=sys.stderr)
    return rows
