"""Registry trust rules (issue 14), each fault against a loopback registry built to misbehave on cue (127.0.0.1
only, bounded loops and times), and the token cross-repository conversion against Debian's docker-registry with
token auth (a small JWT token service below). Every failure is exit 2 with one line naming the registry, the
repository and the request, within a bounded time."""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.oci import registry as reg
from tests.test_registry import registry as distribution_registry
from tests.test_registry import serving

TAG = "v1"
CREDS = "alice:s3cret"
BASIC = "Basic " + base64.b64encode(CREDS.encode()).decode()


# --- a small OCI image, made here -------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(root: Path, payload: bytes = b"hello from a trusted layer\n") -> Path:
    """An OCI layout with one gzip layer (a directory and a file), tagged TAG."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("etc")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1
        tar.addfile(d)
        f = tarfile.TarInfo("etc/hello")
        f.size, f.mode, f.mtime = len(payload), 0o644, 1
        tar.addfile(f, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(raw.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                    "size": len(layer)}]}).encode()
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / _digest(blob).split(":")[1]).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    return root


# --- a loopback registry that misbehaves on cue -----------------------------------------------------------


@dataclass
class Store:
    """What the fake registry holds: blobs by digest, manifests by (repository, tag or digest)."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)

    def seed(self, repo: str, layout: Path) -> tuple[str, str]:
        """Puts the layout's image at REPO:TAG; returns (config digest, layer digest)."""
        index = json.loads((layout / "index.json").read_text())["manifests"][0]
        data = (layout / "blobs" / "sha256" / index["digest"].split(":")[1]).read_bytes()
        doc = json.loads(data)
        for desc in [doc["config"], *doc["layers"]]:
            self.blobs[desc["digest"]] = (layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes()
        self.manifests[(repo, TAG)] = self.manifests[(repo, index["digest"])] = (data, doc["mediaType"])
        return doc["config"]["digest"], doc["layers"][0]["digest"]


Fault = Callable[["Handler", bytes], bool]  # True: the fault answered the request


class Fake(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: Store, *, fault: Fault | None = None, auth: Fault | None = None,
                 upload_base: str = "") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = store
        self.fault = fault
        self.auth = auth
        self.upload_base = upload_base  # where upload Locations point ("" = this server)
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.sent = 0  # body bytes written by misbehaving replies
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a misbehaving reply is the point, not news for stderr


class QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)


class Handler(QuietHandler):
    server: Fake

    def stream_forever(self, headers: dict[str, str] | None = None, block: bytes = b"x" * 65536,
                       pause: float = 0.0, limit_s: float = 20.0, limit_bytes: int = 1 << 30) -> None:
        """A 200 whose chunked body does not end (until the client goes, or the server's own bounds)."""
        self.send_response(200)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = time.monotonic() + limit_s
        sent = 0
        with contextlib.suppress(OSError):
            while time.monotonic() < end and sent < limit_bytes:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                self.wfile.flush()
                sent += len(block)
                with self.server.lock:
                    self.server.sent += len(block)
                if pause:
                    time.sleep(pause)
        self.close_connection = True

    def _handle(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        srv.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if srv.auth and srv.auth(self, body):
            return
        if srv.fault and srv.fault(self, body):
            return
        self.route(body)

    def route(self, body: bytes) -> None:
        store, url = self.server.store, urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/v2/":
            return self.reply(200, b"{}", {"Content-Type": "application/json"})
        if m := re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", url.path):
            key = (m[1], m[2])
            if self.command == "PUT":
                store.manifests[key] = store.manifests[(m[1], _digest(body))] = (body, self.headers["Content-Type"])
                return self.reply(201, headers={"Location": url.path})
            if key not in store.manifests:
                return self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
            data, media_type = store.manifests[key]
            return self.reply(200, data, {"Content-Type": media_type, "Docker-Content-Digest": _digest(data)})
        if m := re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", url.path):
            if m[2] not in store.blobs:
                return self.reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
            return self.reply(200, store.blobs[m[2]], {"Content-Type": "application/octet-stream"})
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/", url.path):
            if query.get("mount") in store.blobs and query.get("from"):
                return self.reply(201, headers={"Location": f"/v2/{m[1]}/blobs/{query['mount']}"})
            upload = uuid.uuid4().hex
            store.uploads[upload] = bytearray()
            return self.reply(202, headers={"Location": f"{self.server.upload_base}/upload/{upload}?_state=s"})
        if m := re.fullmatch(r"/upload/([0-9a-f]+)", url.path):
            if m[1] not in store.uploads:
                return self.reply(404, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"no such upload"}]}')
            store.uploads[m[1]] += body
            if self.command == "PATCH":
                return self.reply(202, headers={"Location": f"{self.server.upload_base}/upload/{m[1]}"})
            data = bytes(store.uploads.pop(m[1]))
            if _digest(data) != query.get("digest"):
                return self.reply(400, b'{"errors":[{"code":"DIGEST_INVALID","message":"digest mismatch"}]}')
            store.blobs[_digest(data)] = data
            return self.reply(201, headers={"Location": f"/v2/x/blobs/{_digest(data)}"})
        return self.reply(404, b"{}")

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


def fake(store: Store, **kwargs: object) -> contextlib.AbstractContextManager[Fake]:
    return serving(Fake(store, **kwargs))  # type: ignore[arg-type]


def basic_auth(handler: Handler, body: bytes) -> bool:
    """The registry wants alice's basic credentials."""
    if handler.headers.get("Authorization") == BASIC:
        return False
    handler.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                  {"WWW-Authenticate": 'Basic realm="fake"', "Content-Type": "application/json"})
    return True


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, float]:
    """nydus-py ARGS --plain-http: (exit status, stderr, seconds)."""
    capsys.readouterr()
    start = time.monotonic()
    status = main([*args, "--plain-http"])
    return status, capsys.readouterr().err, time.monotonic() - start


def one_line_naming(err: str, host: str, repo: str, request: str) -> bool:
    return err.count("\n") == 1 and f"{host}/{repo}" in err and request in err


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "image")


@pytest.fixture
def tight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds small enough for tests: a fault must end each command in a few seconds."""
    monkeypatch.setattr(reg, "READ_TIMEOUT", 1.0)
    monkeypatch.setattr(reg, "DOCUMENT_TIME_LIMIT", 2.0)
    monkeypatch.setattr(reg, "BLOB_TIME_FLOOR", 1.5)
    monkeypatch.setattr(reg, "MAX_DOCUMENT", 256 << 10)
    monkeypatch.setenv("NYDUS_PY_RETRY_BUDGET", "3")


# --- 1. credentials only where they belong ----------------------------------------------------------------


def test_upload_location_on_another_origin_gets_no_credentials(layout: Path, capsys: pytest.CaptureFixture[str],
                                                               tight: None) -> None:
    store = Store()
    with fake(store) as storage, fake(store, auth=basic_auth) as registry:
        registry.upload_base = f"http://{storage.host}"  # the same host, another port: another origin
        status, err, _ = run(capsys, "copy", f"oci:{layout}:{TAG}", f"docker://{registry.host}/team/app:{TAG}",
                             "--creds", CREDS)
        assert status == 0, err
    assert (("team/app", TAG) in store.manifests) and len(store.blobs) == 2
    uploads = [s for s in storage.seen if s[1].startswith("/upload/")]
    assert uploads and all(authz is None for _, _, authz in uploads)
    assert [s for s in registry.seen if s[0] == "POST" and s[2] == BASIC]  # the registry itself got them


def test_redirects_keep_credentials_on_the_origin_and_drop_them_elsewhere(
        layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    store.seed("team/app", layout)
    storage = fake(store)
    with storage as blobs:
        def redirect(handler: Handler, body: bytes) -> bool:
            path = urllib.parse.urlsplit(handler.path).path
            if "/blobs/sha256:" in path and handler.command == "GET":  # blobs: to storage on another origin
                handler.reply(307, headers={"Location": f"http://{blobs.host}{path}"})
                return True
            if path.endswith(f"/manifests/{TAG}"):  # a same-origin redirect keeps the credentials
                handler.reply(307, headers={"Location": path.replace(TAG, "moved")})
                return True
            if path.endswith("/manifests/moved"):
                handler.path = handler.path.replace("moved", TAG)
            return False

        with fake(store, auth=basic_auth, fault=redirect) as registry:
            status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}",
                                 "--creds", CREDS)
            assert status == 0, err
    assert [s for s in registry.seen if s[1].endswith("/manifests/moved") and s[2] == BASIC]
    storage_gets = [s for s in blobs.seen if "/blobs/" in s[1]]
    assert len(storage_gets) == 2 and all(authz is None for _, _, authz in storage_gets)


class TokenRealm(http.server.ThreadingHTTPServer):
    """A token endpoint that records what it was sent and hands out one token."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _TokenHandler)
        self.seen: list[tuple[str | None, list[str]]] = []  # Authorization, scopes asked
        self.answer: Callable[[], tuple[int, bytes]] = lambda: (200, b'{"token":"t0ken"}')

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _TokenHandler(QuietHandler):
    server: TokenRealm

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.server.seen.append((self.headers.get("Authorization"), query.get("scope", [])))
        status, body = self.server.answer()
        self.reply(status, body, {"Content-Type": "application/json"})


def token_realm() -> contextlib.AbstractContextManager[TokenRealm]:
    return serving(TokenRealm())


def bearer(realm: str) -> Fault:
    def auth(handler: Handler, body: bytes) -> bool:
        if handler.headers.get("Authorization") == "Bearer t0ken":
            return False
        handler.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                      {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:team/app:pull"'})
        return True
    return auth


@pytest.mark.parametrize(("realm_host", "gets_creds"), [("localhost", False), ("127.0.0.1", True)])
def test_plain_http_token_realm_gets_credentials_only_on_the_registry_host(
        layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None, realm_host: str,
        gets_creds: bool) -> None:
    """With --plain-http, user credentials go to a realm on the registry's own host (any port), not to another
    host (`localhost` is another name); the anonymous token request still works."""
    store = Store()
    store.seed("team/app", layout)
    with token_realm() as tokens:
        realm = f"http://{realm_host}:{tokens.server_address[1]}/token"
        with fake(store, auth=bearer(realm)) as registry:
            status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}",
                                 "--creds", CREDS)
    assert status == 0, err
    assert tokens.seen and all((authz == BASIC) == gets_creds for authz, _ in tokens.seen)


def test_withheld_credentials_are_named_when_the_registry_refuses(
        layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    store.seed("team/app", layout)
    with token_realm() as tokens:
        tokens.answer = lambda: (200, b'{"token":"anonymous"}')
        realm = f"http://localhost:{tokens.server_address[1]}/token"
        with fake(store, auth=bearer(realm)) as registry:
            status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}",
                                    f"oci:{tmp_path / 'o'}", "--creds", CREDS)
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "401 unauthorized" in err and "credentials not sent to the token realm" in err and took < 5


# --- 2. token scopes and refused mounts -------------------------------------------------------------------


def test_refused_mount_falls_back_to_an_upload(layout: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    store.seed("team-a/app", layout)

    def refuse_mounts(handler: Handler, body: bytes) -> bool:
        if "mount=" in handler.path:
            handler.reply(403, b'{"errors":[{"code":"DENIED","message":"no pull on team-a/app"}]}')
            return True
        return False

    with fake(store, fault=refuse_mounts) as registry:
        status, err, _ = run(capsys, "convert", f"docker://{registry.host}/team-a/app:{TAG}",
                             f"docker://{registry.host}/team-b/app:nydus", "--merge-platform")
    assert status == 0, err
    assert [s for s in registry.seen if "mount=" in s[1]]
    assert ("team-b/app", "nydus") in store.manifests


def test_error_messages_name_method_path_and_the_registry_text(
        layout: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()

    def deny_uploads(handler: Handler, body: bytes) -> bool:
        if handler.command == "POST":
            handler.reply(403, b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}')
            return True
        return False

    with fake(store, fault=deny_uploads) as registry:
        status, err, _ = run(capsys, "copy", f"oci:{layout}:{TAG}", f"docker://{registry.host}/team-b/app:{TAG}")
    assert status == 2 and one_line_naming(err, registry.host, "team-b/app", "POST /v2/team-b/app/blobs/uploads/")
    assert "403 denied (DENIED: requested access to the resource is denied)" in err and "credentials" not in err


# --- 3. bounded responses ---------------------------------------------------------------------------------


def test_manifest_that_never_ends(capsys: pytest.CaptureFixture[str], tmp_path: Path, tight: None) -> None:
    def endless(handler: Handler, body: bytes) -> bool:
        if "/manifests/" in handler.path:
            handler.stream_forever({"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b"{" * 65536)
            return True
        return False

    with fake(Store(), fault=endless) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
        sent = registry.sent
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "larger than the 262144 bytes" in err and took < 5
    assert sent < 64 << 20  # the client hung up: the server did not get to write much


def test_manifest_declared_too_large_is_not_read(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 tight: None) -> None:
    def huge(handler: Handler, body: bytes) -> bool:
        if "/manifests/" in handler.path:
            handler.reply(200, b"{}", length=1 << 40)
            return True
        return False

    with fake(Store(), fault=huge) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and "manifest of 1099511627776 bytes" in err and took < 5


def test_layer_that_never_ends_does_not_fill_the_temp_dir(
        layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    _, layer = store.seed("team/app", layout)

    def endless(handler: Handler, body: bytes) -> bool:
        if handler.path.endswith(layer) and handler.command == "GET":
            handler.stream_forever()
            return True
        return False

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with fake(store, fault=endless) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
        sent = registry.sent
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/blobs/{layer}")
    assert f"longer than the {len(store.blobs[layer])} bytes its descriptor gives" in err and took < 5
    assert list(temp.iterdir()) == [] and sent < 64 << 20


def test_layer_trickle_hits_the_blob_time_limit(layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                tight: None) -> None:
    store = Store()
    _, layer = store.seed("team/app", layout)

    def trickle(handler: Handler, body: bytes) -> bool:  # one byte every 0.2 s: never a read timeout
        if handler.path.endswith(layer) and handler.command == "GET":
            handler.stream_forever(block=b"x", pause=0.2, limit_s=10)
            return True
        return False

    with fake(store, fault=trickle) as registry:
        status, err, took = run(capsys, "convert", f"docker://{registry.host}/team/app:{TAG}",
                                f"oci:{tmp_path / 'o'}")
    assert status == 2 and f"GET /v2/team/app/blobs/{layer}" in err and err.count("\n") == 1
    assert "time limit" in err and f"{registry.host}/team/app" in err and took < 5


def test_stalled_registry_hits_the_read_timeout_within_the_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    def stall(handler: Handler, body: bytes) -> bool:  # headers never come
        time.sleep(5)
        return True

    with fake(Store(), fault=stall) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "cannot reach the registry (ReadTimeout)" in err and "tries" in err and took < 5


def test_blob_with_a_wrong_content_length_is_refused(layout: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    _, layer = store.seed("team/app", layout)

    def liar(handler: Handler, body: bytes) -> bool:
        if handler.path.endswith(layer):
            handler.reply(200, store.blobs[layer] + b"more", {"Content-Type": "application/octet-stream"})
            return True
        return False

    with fake(store, fault=liar) as registry:
        status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and f"sends {len(store.blobs[layer]) + 4} bytes for a blob of {len(store.blobs[layer])}" in err


# --- 4. Retry-After ---------------------------------------------------------------------------------------


def unavailable(retry_after: str | Callable[[], str], times: int = 1 << 30) -> Fault:
    left = [times]

    def fault(handler: Handler, body: bytes) -> bool:
        if "/manifests/" in handler.path and left[0] > 0:
            left[0] -= 1
            value = retry_after() if callable(retry_after) else retry_after
            handler.reply(503, b'{"errors":[{"code":"UNAVAILABLE","message":"come back later"}]}',
                          {"Retry-After": value} if value else {})
            return True
        return False
    return fault


@pytest.mark.parametrize("value", ["100000", "9" * 400])
def test_retry_after_beyond_the_cap_ends_at_once(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 tight: None) -> None:
    with fake(Store(), fault=unavailable(value)) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "503" in err and f"asks us to wait {value[:20]}" in err and took < 1
    assert len([s for s in registry.seen if "/manifests/" in s[1]]) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date", "garbage"])
def test_retry_after_forms_are_honoured(form: str, layout: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], tight: None) -> None:
    def value() -> str:
        if form == "seconds":
            return "1"
        if form == "http-date":
            return email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2),
                                               usegmt=True)
        return "soon, perhaps"

    store = Store()
    store.seed("team/app", layout)
    with fake(store, fault=unavailable(value, times=1)) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 0, err
    assert {"seconds": 0.9 < took < 3, "http-date": 0.9 < took < 4, "garbage": took < 2}[form]


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert reg.parse_retry_after("7") == 7 and reg.parse_retry_after(" 0 ") == 0
    assert reg.parse_retry_after("9" * 400) == float("inf")
    assert reg.parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert reg.parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0
    for garbage in (None, "", "-5", "1.5", "soon", "Fri, 99 Foo 2024", "\u0661\u0662", "Wed, 21 Oct 2015 07:28:00"):
        assert reg.parse_retry_after(garbage) is None, garbage


def test_503_forever_ends_within_the_retry_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  tight: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYDUS_PY_RETRY_BUDGET", "2.5")
    with fake(Store(), fault=unavailable("1")) as registry:
        status, err, took = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "503" in err and "come back later" in err and "tries in" in err and took < 2.5 + 0.5


# --- 5. shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"errors": ["broken", 3]}', b'{"errors": "broken"}',
                                  b'{"errors": [{"code": 5, "message": ["x"]}]}', b"\xff\xfe", b'"x"' * 3,
                                  b"[" * 100000])
def test_error_bodies_of_any_shape(body: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   tight: None) -> None:
    def bad(handler: Handler, _: bytes) -> bool:
        handler.reply(400, body, {"Content-Type": "application/json"})
        return True

    with fake(Store(), fault=bad) as registry:
        status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "400" in err


@pytest.mark.parametrize("answer", [b"[]", b'{"token": 5}', b'{"token": "a\\r\\nX-Evil: 1"}', b"{" * 10,
                                    b'{"token": ""}'])
def test_token_responses_of_any_shape(answer: bytes, layout: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    store.seed("team/app", layout)
    with token_realm() as tokens:
        tokens.answer = lambda: (200, answer)
        with fake(store, auth=bearer(f"http://127.0.0.1:{tokens.server_address[1]}/token")) as registry:
            status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", "token request")
    assert "no usable token" in err


def test_a_manifest_that_is_not_an_object(tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None) -> None:
    store = Store()
    store.manifests[("team/app", TAG)] = (b'["x"]', "application/vnd.oci.image.manifest.v1+json")
    with fake(store) as registry:
        status, err, _ = run(capsys, "copy", f"docker://{registry.host}/team/app:{TAG}", f"oci:{tmp_path / 'o'}")
    assert status == 2 and one_line_naming(err, registry.host, "team/app", f"GET /v2/team/app/manifests/{TAG}")
    assert "not a JSON object" in err


def test_challenge_parsing() -> None:
    scheme, params = reg._parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team-b/app:pull,push repository:team-a/app:pull",error="insufficient_scope"')
    assert scheme == "bearer" and params["realm"] == "https://auth.example/token"
    assert params["scope"].split() == ["repository:team-b/app:pull,push", "repository:team-a/app:pull"]
    assert reg._parse_challenge('Basic realm="a \\"quoted\\" realm"') == ("basic", {"realm": 'a "quoted" realm'})
    assert reg._parse_challenge("Bearer ,,,=,") == ("bearer", {})


# --- the real registry with token auth --------------------------------------------------------------------


class TokenService(http.server.ThreadingHTTPServer):
    """The distribution token flow (docs/spec/auth/token.md): basic credentials in, an RS256 JWT out whose
    `access` is what was asked for and the policy allows; the certificate travels in the `x5c` header."""

    daemon_threads = True

    def __init__(self, key_pem: bytes, cert_der: bytes, policy: dict[str, dict[str, set[str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _TokenServiceHandler)
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self.key = load_pem_private_key(key_pem, None)
        self.cert_der = cert_der
        self.policy = policy  # user -> repository -> actions
        self.requests: list[list[str]] = []

    def token(self, user: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = sorted(set(actions.split(",")) & self.policy.get(user, {}).get(name, set()))
            if kind == "repository" and granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "nydus-py-test", "sub": user, "aud": "test-registry", "exp": now + 600, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        return f"{signing_input}.{b64(signature)}"


class _TokenServiceHandler(QuietHandler):
    server: TokenService

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        self.server.requests.append(scopes)
        user = ""
        authz = self.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            name, _, password = base64.b64decode(authz[6:]).decode().partition(":")
            if password != "s3cret":
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad password"}]}')
            user = name
        token = self.server.token(user, scopes).encode()
        self.reply(200, b'{"token":"%s","access_token":"%s","expires_in":600}' % (token, token),
                   {"Content-Type": "application/json"})


def _key_and_cert(directory: Path) -> tuple[bytes, bytes]:
    """An RSA key and a self-signed certificate for it (PEM key, DER cert); the PEM cert is the registry's
    rootcertbundle."""
    if os.environ.get("NYDUS_PY_REQUIRE_MOUNT") != "1":  # CI installs it (the test extra): there it must run
        pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nydus-py test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.DER)


@contextlib.contextmanager
def token_registry(root: Path, policy: dict[str, dict[str, set[str]]]) -> Iterator[tuple[str, TokenService]]:
    """Debian's docker-registry on 127.0.0.1 with token auth, and its token service; yields (HOST:PORT, service)."""
    root.mkdir(parents=True)
    key_pem, cert_der = _key_and_cert(root)
    with serving(TokenService(key_pem, cert_der, policy)) as service:
        auth = (f"auth:\n  token:\n    realm: http://127.0.0.1:{service.server_address[1]}/token\n"
                f"    service: test-registry\n    issuer: nydus-py-test\n    rootcertbundle: {root}/signer.pem\n")
        with distribution_registry(root, auth=auth) as host:
            yield host, service


def test_token_cross_repository_conversion_on_a_real_registry(layout: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """team-a/app:v1 -> team-b/app:nydus on docker-registry with token auth: the mount asks for pull on team-a/app
    as well, so the token must carry the union of scopes; tokens are cached per scope set."""
    policy = {"alice": {"team-a/app": {"pull", "push"}, "team-b/app": {"pull", "push"}},
              "bob": {"team-a/app": {"pull"}, "team-b/app": {"pull", "push"}}}
    with token_registry(tmp_path / "registry", policy) as (host, service):
        status, err, _ = run(capsys, "copy", f"oci:{layout}:{TAG}", f"docker://{host}/team-a/app:{TAG}",
                             "--creds", CREDS)
        assert status == 0, err
        service.requests.clear()
        status, err, _ = run(capsys, "convert", f"docker://{host}/team-a/app:{TAG}",
                             f"docker://{host}/team-b/app:nydus", "--creds", CREDS)
        assert status == 0, err
        assert any({"repository:team-b/app:pull,push", "repository:team-a/app:pull"} <= set(s)
                   for s in service.requests)
        assert len(service.requests) <= 4  # one per client and scope set, not one per request
        # with --merge-platform the original layers are mounted from team-a/app
        out = tmp_path / "merged.json"
        status, err, _ = run(capsys, "convert", f"docker://{host}/team-a/app:{TAG}",
                             f"docker://{host}/team-b/app:merged", "--merge-platform", "--creds", "bob:s3cret",
                             "--output-json", str(out))
        assert status == 0, err
        assert json.loads(out.read_text())["push"]["mounted"] >= 1
        status, err, _ = run(capsys, "copy", f"docker://{host}/team-b/app:nydus", f"oci:{tmp_path / 'pulled'}:{TAG}",
                             "--creds", CREDS)
        assert status == 0, err
        assert main(["check", f"oci:{tmp_path / 'pulled'}:{TAG}"]) == 0
        # a user without pull on the source gets one line naming the request and the registry's own words
        status, err, _ = run(capsys, "convert", f"docker://{host}/team-a/app:{TAG}",
                             f"docker://{host}/team-b/app:x", "--creds", "carol:s3cret")
        assert status == 2 and one_line_naming(err, host, "team-a/app", f"GET /v2/team-a/app/manifests/{TAG}")
        assert "401 unauthorized" in err and "UNAUTHORIZED" in err


@pytest.mark.parametrize("manifest", [b'{"schemaVersion": 2, "config": {"digest": "sha256:' + b"a" * 64 + b'", '
                                      b'"size": 2}, "layers": ["x"]}', b'{"schemaVersion": 2, "layers": []}'])
def test_a_registry_manifest_of_the_wrong_shape(manifest: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                tight: None) -> None:
    """Registry documents go through the same typed decoding as local ones: exit 2, never 3."""
    store = Store()
    store.manifests[("team/app", TAG)] = (manifest, "application/vnd.oci.image.manifest.v1+json")
    with fake(store) as registry:
        for command in ("copy", "convert"):
            status, err, _ = run(capsys, command, f"docker://{registry.host}/team/app:{TAG}",
                                 f"oci:{tmp_path / command}")
            assert status == 2 and err.count("\n") == 1 and "internal error" not in err, err
            assert f"{registry.host}/team/app" in err


# --- 6. every wait bounded from the start of the request --------------------------------------------------


def _trickle_headers(handler: Handler) -> None:
    """A status line and headers sent one byte every 0.5 s (each byte resets a read timeout)."""
    with contextlib.suppress(OSError):
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"y" * 100:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.5)
    handler.close_connection = True


@pytest.mark.parametrize(("kind", "request_line"), [
    ("manifest", f"GET /v2/team/app/manifests/{TAG}"),
    ("blob", "GET /v2/team/app/blobs/sha256:"),
    ("upload", "POST /v2/team/app/blobs/uploads/"),
    ("token", "token request"),
])
def test_a_registry_trickling_its_headers_is_cut_off_at_the_response_limit(
        kind: str, request_line: str, layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tight: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reg, "RESPONSE_TIME_LIMIT", 2.0)
    store = Store()
    _, layer = store.seed("team/app", layout)

    def slow(handler: Handler, body: bytes) -> bool:
        path = handler.path.split("?")[0]
        wanted = {"manifest": handler.command == "GET" and path.endswith(f"/manifests/{TAG}") and kind == "manifest",
                  "blob": handler.command == "GET" and path.endswith(layer),
                  "upload": handler.command == "POST" and path.endswith("/blobs/uploads/"),
                  "token": path == "/token"}[kind]
        if wanted:
            _trickle_headers(handler)
            return True
        if kind == "token" and handler.headers.get("Authorization") is None:
            handler.reply(401, b"{}", {"WWW-Authenticate": f'Bearer realm="http://{handler.server.host}/token",'
                                                           'service="fake"'})
            return True
        return False

    with fake(store if kind != "upload" else Store(), fault=slow) as registry:
        source = f"docker://{registry.host}/team/app:{TAG}"
        if kind == "upload":
            args = ["copy", f"oci:{layout}:{TAG}", source]
        elif kind == "blob":
            args = ["convert", source, f"oci:{tmp_path / 'o'}"]
        else:
            args = ["copy", source, f"oci:{tmp_path / 'o'}"]
        status, err, took = run(capsys, *args)
    assert status == 2 and err.count("\n") == 1 and request_line in err and registry.host in err, err
    assert "no response within 2 s" in err and took < 4.5, (err, took)
