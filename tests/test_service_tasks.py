"""nydus_py/service/tasks.py (and queue.py, store.py, serve.py): conversions run by real workers.

Distributed mode: redis-server, `nydus-py serve` (no local workers) and two `nydus-py worker` processes of two
pool processes each; a docker-registry whose notifications go to `serve`, and a second, quiet one behind a
proxy that can slow or fail requests. Embedded mode: `serve` alone, its queue in a SQLite file, restarted with
conversions queued. The lease (and the Redis visibility timeout with it) is 4 s here, so recoveries are quick.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from nydus_py.cli.main import main
from tests.service_stack import (AUTH, OCI_MANIFEST, Serve, Worker, image_layout, parent_of, push, random_files,
                                 redis_server, wait_for)
from tests.test_registry import FaultProxy, registry, serving

LEASE = 4.0


@dataclass
class Stack:
    serve: Serve
    workers: list[Worker]
    notifying: str  # HOST:PORT of the registry that notifies serve
    quiet: str  # HOST:PORT of the registry that does not
    proxy: FaultProxy  # in front of `quiet`
    work: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("service")
    with redis_server(work / "redis") as broker:
        serve = Serve(work, [])
        with registry(work / "notifying", notify=f"{serve.url}/api/v1/conversions", notify_auth=AUTH) as notifying, \
                registry(work / "quiet") as quiet, serving(FaultProxy(quiet, {})) as proxy:
            common = ["--broker", broker, "--plain-http", "--lease-seconds", str(LEASE)]
            serve.args = [*common, "--workers", "0", "--webhook-auth", AUTH, "--allow-registry", notifying,
                          "--allow-registry", proxy.host]
            serve.start()
            workers = [Worker(work, [*common, "--concurrency", "2"]).start() for _ in range(2)]
            try:
                yield Stack(serve, workers, notifying, quiet, proxy, work)
            finally:
                for worker in workers:
                    worker.stop()
                serve.stop()


def manifest(host: str, repo: str, ref: str) -> tuple[dict, str, int]:  # type: ignore[type-arg]
    """(document, digest, size) of a manifest or index in the registry."""
    response = requests.get(f"http://{host}/v2/{repo}/manifests/{ref}", timeout=10,
                            headers={"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"})
    assert response.status_code == 200, (repo, ref, response.text)
    return response.json(), response.headers["Docker-Content-Digest"], len(response.content)


def direct(stack: Stack, repo: str, tag: str = "v1") -> str:
    """A direct request for PROXY/REPO:TAG; its conversion's id."""
    response = stack.serve.post({"source": f"docker://{stack.proxy.host}/{repo}:{tag}"})
    assert response.status_code == 202, response.text
    return str(response.json()["tasks"][0]["id"])


def blob_gets(stack: Stack, digest: str) -> int:
    return sum(1 for r in stack.proxy.requests if r.startswith("GET ") and r.endswith(f"/blobs/{digest}"))


def test_a_notified_push_becomes_its_nydus_twin(stack: Stack, tmp_path: Path) -> None:
    """skopeo pushes to the notifying registry; its notification makes TAG-nydus, linked to its source by
    `subject` (and the sha256-<hex> tag, the registry having no referrers API), and nydusd serves it equal to
    the source. The service's own pushes that follow are skipped (no loop)."""
    files = [{"etc/os-release": b"ID=test\n", "usr/bin/tool": os.urandom(300_000)}, {"app/data": os.urandom(50_000)}]
    image_layout(tmp_path / "src", files)
    push(tmp_path / "src", f"{stack.notifying}/team/app:v1")
    _, source_digest, source_size = manifest(stack.notifying, "team/app", "v1")
    target = f"docker://{stack.notifying}/team/app:v1-nydus"
    job = wait_for(lambda: next((j for j in stack.serve.jobs() if j["target"] == target), None), 30,
                   "the notification's conversion")
    job = stack.serve.wait(job["id"])
    assert job["status"] == "completed" and job["result"] == "converted", job
    assert job["source_digest"] == source_digest and job["layers"] == {"converted": 2, "reused": 0}
    twin, twin_digest, _ = manifest(stack.notifying, "team/app", "v1-nydus")
    assert twin_digest == job["target_digest"]
    assert twin["subject"] == {"mediaType": OCI_MANIFEST, "digest": source_digest, "size": source_size}
    referrers, _, _ = manifest(stack.notifying, "team/app", "sha256-" + source_digest.removeprefix("sha256:"))
    assert [m["digest"] for m in referrers["manifests"]] == [twin_digest]
    layout = tmp_path / "twin"
    assert main(["copy", target, f"oci:{layout}:v1", "--plain-http"]) == 0
    assert main(["check", f"oci:{layout}:v1", "--require-data"]) == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", f"oci:{layout}:v1", str(mnt), "--cache-dir", str(tmp_path / "cache")]) == 0
    try:
        for layer in files:
            for name, data in layer.items():
                assert (mnt / name).read_bytes() == data
    finally:
        main(["umount", str(mnt)])
    # the twin's own push and its referrers tag came back as notifications: skipped, never sources
    wait_for(lambda: stack.serve.metric("nydus_py_events_skipped_total") >= 2, 30, "the service's pushes skipped")
    assert not [j for j in stack.serve.jobs() if "v1-nydus" in j["source"] or "sha256-" in j["source"]]


def test_a_harbor_payload_for_a_converted_image_is_reused(stack: Stack, tmp_path: Path) -> None:
    image_layout(tmp_path / "src", [{"etc/hello": b"hello\n"}])
    push(tmp_path / "src", f"{stack.notifying}/team/harbor:v2")
    target = f"docker://{stack.notifying}/team/harbor:v2-nydus"
    first = wait_for(lambda: next((j for j in stack.serve.jobs() if j["target"] == target), None), 30,
                     "the notification's conversion")
    first = stack.serve.wait(first["id"])
    assert first["result"] == "converted"
    converted = stack.serve.metric("nydus_py_conversions_total", result="converted")
    _, digest, _ = manifest(stack.notifying, "team/harbor", "v2")
    payload = {"type": "PUSH_ARTIFACT", "occur_at": 1700000000, "operator": "admin",
               "event_data": {"resources": [{"digest": digest, "tag": "v2",
                                             "resource_url": f"{stack.notifying}/team/harbor:v2"}],
                              "repository": {"name": "harbor", "namespace": "team", "repo_full_name": "team/harbor",
                                             "repo_type": "private"}}}
    response = stack.serve.post(payload)
    assert response.status_code == 202, response.text
    again = stack.serve.wait(response.json()["tasks"][0]["id"])
    assert again["result"] == "reused" and again["target_digest"] == first["target_digest"]
    assert stack.serve.metric("nydus_py_conversions_total", result="converted") == converted


def test_eight_concurrent_requests_make_one_conversion(stack: Stack, tmp_path: Path) -> None:
    layers = image_layout(tmp_path / "src", [random_files(8, 3, 200_000), random_files(9, 2, 100_000, "g")])
    push(tmp_path / "src", f"{stack.quiet}/team/burst:v1")
    converted = stack.serve.metric("nydus_py_conversions_total", result="converted")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: direct(stack, "team/burst"), range(8)))
    (job_id,) = ids
    job = stack.serve.wait(job_id)
    assert job["result"] == "converted" and job["layers"]["converted"] == 2
    assert stack.serve.metric("nydus_py_conversions_total", result="converted") == converted + 1
    assert [blob_gets(stack, digest) for digest in layers] == [1, 1]


def running_on(stack: Stack, job_id: str, layer: str) -> dict:  # type: ignore[type-arg]
    """The job once a worker process is reading `layer` for it."""
    return dict(wait_for(lambda: (lambda j: j if j["status"] == "running" and j["worker"]
                                  and blob_gets(stack, layer) else None)(stack.serve.job(job_id)),
                         60, "the conversion running"))


def test_sigkill_of_the_pool_process_converting(stack: Stack, tmp_path: Path) -> None:
    """The pool process converting a layer is SIGKILLed: its message is put back at once
    (task_reject_on_worker_lost), the run's leases are taken over (their holder's pid is dead) and the
    conversion completes."""
    (layer,) = image_layout(tmp_path / "src", [random_files(10, 2, 300_000)])
    push(tmp_path / "src", f"{stack.quiet}/team/kill-pool:v1")
    stack.proxy.delays[layer] = 2.0
    job_id = direct(stack, "team/kill-pool")
    job = running_on(stack, job_id, layer)
    killed = time.monotonic()
    os.kill(job["worker"]["pid"], signal.SIGKILL)
    done = stack.serve.wait(job_id)
    recovery = time.monotonic() - killed
    print(f"pool process SIGKILL: completed {recovery:.1f} s after the kill")
    assert done["result"] == "converted" and done["layers"]["converted"] == 1, done
    assert blob_gets(stack, layer) == 2 and recovery < LEASE * 3


def test_sigkill_of_a_whole_worker(stack: Stack, tmp_path: Path) -> None:
    """A whole worker (its process group: main process and pool) is SIGKILLed, as when its host dies: its
    unacknowledged message comes back after the visibility timeout (the lease), the other worker takes the
    conversion over and completes it."""
    (layer,) = image_layout(tmp_path / "src", [random_files(11, 2, 300_000)])
    push(tmp_path / "src", f"{stack.quiet}/team/kill-worker:v1")
    stack.proxy.delays[layer] = 2.0
    job_id = direct(stack, "team/kill-worker")
    job = running_on(stack, job_id, layer)
    victim = next(w for w in stack.workers if w.pid == parent_of(job["worker"]["pid"]))
    killed = time.monotonic()
    victim.stop(signal.SIGKILL)
    done = stack.serve.wait(job_id)
    recovery = time.monotonic() - killed
    print(f"whole worker SIGKILL: completed {recovery:.1f} s after the kill (lease {LEASE} s)")
    victim.start()
    assert done["result"] == "converted", done
    assert done["worker"] is None and blob_gets(stack, layer) == 2 and recovery < LEASE * 5


def test_a_conversion_longer_than_the_visibility_timeout_converts_once(stack: Stack, tmp_path: Path) -> None:
    """The layer takes 3 leases to read: Redis gives its message to another worker while it runs; that copy
    finds the layer's lease held by a live run, puts itself back, and never converts it a second time."""
    (layer,) = image_layout(tmp_path / "src", [random_files(12, 1, 100_000)])
    push(tmp_path / "src", f"{stack.quiet}/team/slow:v1")
    stack.proxy.delays[layer] = LEASE * 3
    converted = stack.serve.metric("nydus_py_conversions_total", result="converted")
    done = stack.serve.wait(direct(stack, "team/slow"))
    assert done["result"] == "converted" and done["attempts"] == 1
    assert blob_gets(stack, layer) == 1
    assert stack.serve.metric("nydus_py_conversions_total", result="converted") == converted + 1


def test_a_503_is_retried_and_a_404_fails_once(stack: Stack, tmp_path: Path) -> None:
    (layer,) = image_layout(tmp_path / "src", [{"etc/flaky": b"flaky\n"}])
    push(tmp_path / "src", f"{stack.quiet}/team/flaky:v1")
    stack.proxy.faults[f"/blobs/{layer}"] = "503"
    done = stack.serve.wait(direct(stack, "team/flaky"))
    assert done["result"] == "converted" and "503" in stack.proxy.hits
    before = len(stack.proxy.requests)
    failed = stack.serve.wait(direct(stack, "team/none", "v9"))
    time.sleep(LEASE)  # a retry storm would show here
    asked = [r for r in stack.proxy.requests[before:] if "/team/none/" in r]
    assert failed["status"] == "failed" and "not found" in failed["reason"] and failed["attempts"] <= 1, failed
    assert len(asked) <= 3, asked
    assert stack.serve.metric("nydus_py_conversions_total", result="failed") >= 1


def test_the_embedded_mode_keeps_queued_conversions_across_a_restart(stack: Stack, tmp_path: Path) -> None:
    """No broker: `serve` with no worker takes two requests, is SIGKILLed, and started again with a local
    worker on the same state directory: both conversions complete, each compared with its source first
    (--verify)."""
    for i in range(2):
        image_layout(tmp_path / f"src{i}", [random_files(20 + i, 2, 50_000)])
        push(tmp_path / f"src{i}", f"{stack.quiet}/embedded/app{i}:v1")
    state = ["--state-dir", str(tmp_path / "state"), "--allow-registry", stack.quiet, "--plain-http",
             "--lease-seconds", str(LEASE), "--verify"]
    first = Serve(tmp_path, [*state, "--workers", "0"]).start()
    ids = []
    for i in range(2):
        response = first.post({"source": f"docker://{stack.quiet}/embedded/app{i}:v1"}, auth=None)
        ids.append(response.json()["tasks"][0]["id"])
    assert [first.job(i)["status"] for i in ids] == ["queued", "queued"]
    first.stop(signal.SIGKILL)
    second = Serve(tmp_path, [*state, "--workers", "1", "--concurrency", "2"]).start()
    second_digests = {}
    try:
        for job_id in ids:
            done = second.wait(job_id)
            assert done["result"] == "converted", done
            second_digests[job_id] = done["target_digest"]
        assert second.metric("nydus_py_workers") == 1
    finally:
        second.stop()
    for i, job_id in enumerate(ids):
        assert manifest(stack.quiet, f"embedded/app{i}", "v1-nydus")[1] == second_digests[job_id]
