"""nydus_py/service/api.py and events.py: `nydus-py serve`'s HTTP API as a real process (embedded queue, no
worker: nothing here converts). What it takes (Harbor webhooks, registry notification envelopes, direct
requests), what it refuses and how (4xx, one log line, nothing queued), what it skips and says so (2xx), the
queue cap (429), its OpenAPI description fuzzed by schemathesis, and the status page as headless Chromium
shows it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.conftest import need_tool
from tests.service_stack import AUTH, OCI_MANIFEST, Serve

ALLOWED = "registry.test:5000"  # never contacted: nothing here is converted
UNREACHABLE = "127.0.0.1:9"  # allowed, refuses connections at once (its requests are queued unpinned)
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    work = tmp_path_factory.mktemp("serve")
    server = Serve(work, ["--state-dir", str(work / "state"), "--workers", "0", "--webhook-auth", AUTH,
                          "--allow-registry", ALLOWED, "--allow-registry", UNREACHABLE, "--plain-http"]).start()
    yield server
    server.stop()


def refusals(serve: Serve) -> int:
    return serve.log.read_text().count("conversions: refused")


def notification(*events: dict[str, object]) -> dict[str, object]:
    return {"events": list(events)}


def push_event(repository: str, tag: str, media_type: str = OCI_MANIFEST, host: str = ALLOWED,
               action: str = "push") -> dict[str, object]:
    return {"id": "e1", "action": action, "target": {"mediaType": media_type, "digest": DIGEST, "size": 100,
                                                     "repository": repository, "tag": tag},
            "request": {"host": host, "method": "PUT"}}


def test_wrong_or_missing_authorization_is_401_and_queues_nothing(serve: Serve) -> None:
    body = {"source": f"docker://{ALLOWED}/team/app:v1"}
    for auth in ("Bearer wrong", None, AUTH.lower()):
        before = refusals(serve)
        response = serve.post(body, auth=auth)
        assert response.status_code == 401 and "Authorization" in response.json()["error"]
        assert refusals(serve) == before + 1
    assert serve.jobs() == []


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "request body"),
    (b"[1, 2]", 400, "request body"),
    (json.dumps({"foo": 1}).encode(), 400, "neither a Harbor webhook"),
    (json.dumps({"source": 5}).encode(), 400, "got `int` - at `$.source`"),
    (json.dumps({"source": "docker://x/y:z", "extra": 1}).encode(), 400, "unknown field"),
    (json.dumps({"events": [push_event("a", "v1")] * 300}).encode(), 400, "over the limit of 256"),
    (b"{" + b" " * (2 << 20) + b"}", 413, "over 1048576 bytes"),
], ids=["not-json", "array", "wrong-shape", "mistyped", "unknown-field", "too-many-events", "oversized"])
def test_bad_bodies_are_4xx_with_one_log_line(serve: Serve, body: bytes, status: int, says: str) -> None:
    before = refusals(serve)
    response = serve.post(body)
    assert response.status_code == status and says in response.json()["error"], response.text
    assert refusals(serve) == before + 1
    assert serve.jobs() == []


def test_events_not_acted_on_are_2xx_and_listed_with_their_reason(serve: Serve) -> None:
    """A registry retries anything but 2xx for ever: every event it sends that is not a conversion is
    answered 200 and listed in `skipped`, decided from the body alone."""
    envelope = notification(
        push_event("team/app", "v1", action="pull"),
        push_event("team/app", "v1", action="delete"),
        push_event("team/app", "", media_type="application/octet-stream"),
        push_event("team/app", ""),
        push_event("team/app", "v1-nydus"),
        push_event("team/app", "sha256-" + "cd" * 32),
        push_event("team/app", "v1", host="evil.example:443"),
        push_event("Team/App!", "v1"),
    )
    response = serve.post(envelope, **{"Content-Type": "application/vnd.docker.distribution.events.v1+json"})
    assert response.status_code == 200, response.text
    doc = response.json()
    reasons = [s["reason"] for s in doc["skipped"]]
    assert doc["tasks"] == [] and len(reasons) == 8
    for expected in ("not a push (pull)", "not a push (delete)", "not an image manifest", "untagged",
                     "a Nydus image", "a referrers tag", "registry evil.example:443 is not allowed",
                     "not a valid image reference"):
        assert any(expected in r for r in reasons), (expected, reasons)
    harbor = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [
        {"resource_url": "evil.example/team/app:v1", "tag": "v1", "digest": DIGEST}]}}
    response = serve.post(harbor)
    assert response.status_code == 200 and "is not allowed" in response.json()["skipped"][0]["reason"]
    response = serve.post({"type": "DELETE_ARTIFACT", "event_data": {"resources": []}})
    assert response.status_code == 200 and "not a push" in response.json()["skipped"][0]["reason"]
    assert serve.jobs() == []


def test_a_direct_request_naming_a_registry_not_allowed_is_refused(serve: Serve) -> None:
    for body in ({"source": "docker://evil.example/team/app:v1"},
                 {"source": f"docker://{ALLOWED}/team/app:v1", "target": "docker://evil.example/x:y"},
                 {"source": f"docker://{ALLOWED}/team/app:v1", "target": f"docker://{ALLOWED}/x@{DIGEST}"}):
        response = serve.post(body)
        assert response.status_code == 403, response.text
    assert serve.jobs() == []


def test_lookups(serve: Serve) -> None:
    assert requests.get(f"{serve.url}/api/v1/conversions/{'0' * 32}", timeout=5).status_code == 404
    assert requests.get(f"{serve.url}/api/v1/conversions/..%2f..%2fetc", timeout=5).status_code == 404
    assert requests.get(f"{serve.url}/api/v1/conversions?status=lost", timeout=5).status_code == 400
    assert requests.get(f"{serve.url}/api/v1/conversions?limit=x", timeout=5).status_code == 400
    assert requests.get(f"{serve.url}/nope", timeout=5).status_code == 404


def test_a_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    """With --max-queue 1 and no worker: the first direct request is queued (its registry refuses connections,
    so it is queued unpinned), the next gets 429; a webhook past the cap is 2xx with the event skipped."""
    server = Serve(tmp_path, ["--state-dir", str(tmp_path / "state"), "--workers", "0", "--max-queue", "1",
                              "--allow-registry", UNREACHABLE, "--plain-http"]).start()
    try:
        first = server.post({"source": f"docker://{UNREACHABLE}/team/app:v1"}, auth=None)
        assert first.status_code == 202 and first.json()["tasks"][0]["status"] == "queued"
        again = server.post({"source": f"docker://{UNREACHABLE}/team/app:v1"}, auth=None)
        assert again.status_code == 202 and again.json()["tasks"][0]["id"] == first.json()["tasks"][0]["id"]
        full = server.post({"source": f"docker://{UNREACHABLE}/team/app:v2"}, auth=None)
        assert full.status_code == 429 and int(full.headers["Retry-After"]) > 0
        envelope = notification(push_event("team/app", "v3", host=UNREACHABLE))
        skipped = server.post(envelope, auth=None)
        assert skipped.status_code == 200 and skipped.json()["skipped"][0]["reason"] == "the queue is full"
        assert [j["source"] for j in server.jobs()] == [f"docker://{UNREACHABLE}/team/app:v1"]
        assert server.metric("nydus_py_conversions_in_flight") == 1
        assert server.metric("nydus_py_queue_depth") == 1
    finally:
        server.stop()


def test_the_api_holds_to_its_openapi_description(serve: Serve) -> None:
    """schemathesis generates requests from /openapi.json (25 per operation) and checks every answer: no 5xx,
    statuses, content types and bodies as documented (data it finds valid may still be refused by rules the
    description cannot say, such as a registry not allowed)."""
    schema = schemathesis.openapi.from_url(f"{serve.url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def exchange(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": AUTH}, checks=checks)

        exchange()
    assert operations == 6  # every path but /openapi.json itself, which schemathesis leaves out
    assert serve.process is not None and serve.process.poll() is None


def test_the_status_page_shows_the_queue(tmp_path: Path) -> None:
    """Rendered by Debian's chromium, headless: the page lists the conversions asked for, the queue and the
    workers seen."""
    chromium = need_tool("chromium")
    server = Serve(tmp_path, ["--state-dir", str(tmp_path / "state"), "--workers", "0",
                              "--allow-registry", UNREACHABLE, "--plain-http"]).start()
    try:
        job = server.post({"source": f"docker://{UNREACHABLE}/team/app:v1"}, auth=None).json()["tasks"][0]
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", server.url],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        server.stop()
    assert f'id="job-{job["id"]}"' in dom
    row = dom.split(f'id="job-{job["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert "queued" in row and f"docker://{UNREACHABLE}/team/app:v1" in row and "app:v1-nydus" in row
    assert "queue depth: 1" in dom and "in flight: 1" in dom and 'http-equiv="refresh"' in dom
