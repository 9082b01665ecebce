"""Registry: convert from and to a real registry (Debian's docker-registry, the distribution registry, on
127.0.0.1), with basic auth, a bearer-token stub, and a proxy that injects a 500 and a connection reset."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.layers import make_umoci_image

TAG = "v1"
ServerT = TypeVar("ServerT", bound=socketserver.BaseServer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def registry(root: Path, htpasswd: Path | None = None, auth: str = "", notify: str | None = None,
             notify_auth: str = "") -> Iterator[str]:
    """A distribution registry on 127.0.0.1 with its storage in `root`; yields HOST:PORT. `auth` is the config's
    `auth:` section (YAML), if not htpasswd. `notify`: a URL its notifications go to (manifest events only: blob
    events are ignored by media type), with `notify_auth` as their Authorization header."""
    binary = need_tool("docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else auth
    if notify is not None:  # distribution 2.8 configuration.go Notifications; blob events carry octet-stream
        auth += (f"notifications:\n  endpoints:\n    - name: nydus-py\n      url: {notify}\n"
                 f"      headers:\n        Authorization: [{notify_auth}]\n      timeout: 5s\n      threshold: 5\n"
                 "      backoff: 1s\n      ignoredmediatypes: [application/octet-stream]\n")
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_mount()
    return make_umoci_image(tmp_path_factory.mktemp("src"), need_tool("umoci"), TAG)


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Iterator[str]:
    skopeo = need_tool("skopeo")
    with registry(tmp_path_factory.mktemp("registry")) as host:
        subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{source / 'image'}:{TAG}",
                        f"docker://{host}/src:{TAG}"], check=True, capture_output=True)
        yield host


def convert(*args: str) -> tuple[int, str]:
    out = Path(f"/tmp/nydus-py-registry-{time.monotonic_ns()}.json")
    status = main(["convert", *args, "--plain-http", "--output-json", str(out)])
    doc = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    return status, json.dumps(doc)


def test_registry_to_registry(open_registry: str, source: Path, tmp_path: Path) -> None:
    skopeo = need_tool("skopeo")
    host = open_registry
    status, raw = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/nydus:{TAG}")
    doc = json.loads(raw)
    assert status == 0 and doc["push"]["uploaded"] == 5 and doc["reused"]["layers"] == 0
    digest = doc["manifest"]["digest"]
    subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{host}/nydus:{TAG}",
                    f"oci:{tmp_path / 'by-skopeo'}:{TAG}"], check=True, capture_output=True)
    assert main(["copy", f"docker://{host}/nydus:{TAG}", f"oci:{tmp_path / 'by-us'}:{TAG}", "--plain-http"]) == 0
    tops = [json.loads((tmp_path / d / "index.json").read_text())["manifests"][0]["digest"]
            for d in ("by-skopeo", "by-us")]
    assert tops == [digest, digest]
    assert main(["check", f"oci:{tmp_path / 'by-us'}:{TAG}"]) == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", f"oci:{tmp_path / 'by-skopeo'}:{TAG}", str(mnt), "--cache-dir", str(tmp_path / "c")]) == 0
    try:
        assert differences(source / "truth" / "rootfs", mnt) == []
    finally:
        main(["umount", str(mnt)])
    # a second run converts nothing again and uploads nothing
    status, raw = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/nydus:{TAG}")
    again = json.loads(raw)
    assert status == 0 and again["manifest"]["digest"] == digest
    assert again["reused"]["layers"] == 3 and again["reused"]["source_bytes"] > 0
    assert again["push"]["uploaded"] == 0 and again["push"]["existing"] == 5


def test_zran_image_takes_its_originals_to_the_registry(open_registry: str, source: Path, tmp_path: Path) -> None:
    """A zran image converted from a layout: the original layers, which no manifest lists, are uploaded to the
    target repository; `copy` brings them back with the image."""
    host = open_registry
    status, raw = convert("--oci-ref", f"oci:{source / 'image'}:{TAG}", f"docker://{host}/zran:{TAG}")
    assert status == 0, raw
    (warning,) = json.loads(raw)["warnings"]  # nothing in the registry lists them: GC would delete them
    assert "uploaded into" in warning and "garbage collection" in warning
    manifest = requests.get(f"http://{host}/v2/zran/manifests/{TAG}", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    originals = [layer["annotations"]["containerd.io/snapshot/nydus-ref"] for layer in manifest["layers"][:-1]]
    assert len(originals) == 3
    for digest in originals:
        assert requests.head(f"http://{host}/v2/zran/blobs/{digest}", timeout=10).status_code == 200
    assert main(["copy", f"docker://{host}/zran:{TAG}", f"oci:{tmp_path / 'copy'}:{TAG}", "--plain-http"]) == 0
    assert main(["check", f"oci:{tmp_path / 'copy'}:{TAG}", "--require-data"]) == 0


def test_zran_image_defaults_to_the_source_repository(open_registry: str, tmp_path: Path) -> None:
    """No TARGET: the source's own repository, tag TAG-nydus, where the originals already are (no warning)."""
    status, raw = convert("--oci-ref", f"docker://{open_registry}/src:{TAG}")
    assert status == 0, raw
    assert json.loads(raw)["warnings"] == [] and json.loads(raw)["push"]["mounted"] == 0
    assert main(["copy", f"docker://{open_registry}/src:{TAG}-nydus", f"oci:{tmp_path / 'copy'}:{TAG}",
                 "--plain-http"]) == 0
    assert main(["check", f"oci:{tmp_path / 'copy'}:{TAG}", "--require-data"]) == 0


def test_a_dictionary_in_the_registry_is_mounted_not_uploaded(open_registry: str, tmp_path: Path) -> None:
    """A chunk dictionary made from a Nydus image in the registry, used by a conversion into another
    repository: the dictionary blobs the image references are mounted there, none uploaded again."""
    host = open_registry
    status, raw = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/base:{TAG}")
    assert status == 0, raw
    assert main(["chunkdict", f"docker://{host}/base:{TAG}", "--min-count", "1", "-o", f"docker://{host}/dict:{TAG}",
                 "--plain-http"]) == 0
    status, raw = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/deduped:{TAG}", "--chunk-dict",
                          f"docker://{host}/dict:{TAG}")
    assert status == 0, raw
    doc = json.loads(raw)
    dict_blobs = {b["id"] for b in doc["blobs"] if b["chunk_dict"]}
    assert dict_blobs and doc["push"]["mounted"] == len(dict_blobs)
    assert main(["copy", f"docker://{host}/deduped:{TAG}", f"oci:{tmp_path / 'copy'}:{TAG}", "--plain-http"]) == 0
    assert main(["check", f"oci:{tmp_path / 'copy'}:{TAG}", "--require-data"]) == 0


def test_build_pushes_to_a_registry(open_registry: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"pushed by build")
    assert main(["build", str(src), "-o", f"docker://{open_registry}/built:{TAG}", "--plain-http"]) == 0
    assert main(["copy", f"docker://{open_registry}/built:{TAG}", f"oci:{tmp_path / 'pulled'}:{TAG}",
                 "--plain-http"]) == 0
    assert main(["check", f"oci:{tmp_path / 'pulled'}:{TAG}"]) == 0


def test_unknown_tag_is_a_clear_404(open_registry: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _ = convert(f"docker://{open_registry}/src:nope", f"oci:{tmp_path / 'out'}")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"{open_registry}/src" in err and "not found" in err and "nope" in err
    assert not (tmp_path / "out").exists()


def test_basic_auth(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    htpasswd_tool = need_tool("htpasswd")
    skopeo = need_tool("skopeo")
    htpasswd = tmp_path / "htpasswd"
    done = subprocess.run([htpasswd_tool, "-Bbn", "alice", "s3cret"], check=True, capture_output=True, text=True)
    htpasswd.write_text(done.stdout)
    with registry(tmp_path / "reg", htpasswd) as host:
        subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--dest-creds=alice:s3cret",
                        f"oci:{source / 'image'}:{TAG}", f"docker://{host}/src:{TAG}"], check=True, capture_output=True)
        status, _ = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/nydus:{TAG}", "--creds", "alice:s3cret")
        assert status == 0
        capsys.readouterr()
        status, _ = convert(f"docker://{host}/src:{TAG}", f"oci:{tmp_path / 'o'}", "--creds", "alice:wrong")
        err = capsys.readouterr().err
        assert status == 2 and "unauthorized" in err and f"{host}/src" in err and err.count("\n") == 1
        status, _ = convert(f"docker://{host}/src:{TAG}", f"oci:{tmp_path / 'o'}")
        assert status == 2 and "credentials" in capsys.readouterr().err


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards to a registry; fails the first request matching each fault once; optionally demands a bearer
    token that its own /token endpoint hands out."""

    daemon_threads = True

    def __init__(self, upstream: str, faults: dict[str, str], bearer: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.faults = dict(faults)  # path part -> "reset", or the HTTP status to answer once
        self.hits: list[str] = []
        self.delays: dict[str, float] = {}  # path part -> seconds every GET of it waits before it is forwarded
        self.requests: list[str] = []  # "METHOD path" of every request
        self.bearer = bearer
        self.tokens_issued = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("PUT", "POST",
                                                                                                   "PATCH") else None
        if self.path.startswith("/token"):
            self.server.tokens_issued += 1
            self._reply(200, {"Content-Type": "application/json"}, json.dumps({"token": "t0ken"}).encode())
            return
        if self.server.bearer and self.headers.get("Authorization") != "Bearer t0ken":
            challenge = (f'Bearer realm="http://{self.server.host}/token",service="test",'
                         'scope="repository:src:pull"')
            self._reply(401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, b'{"errors":[]}')
            return
        self.server.requests.append(f"{self.command} {self.path}")
        for pattern, seconds in list(self.server.delays.items()):
            if pattern in self.path and self.command == "GET":
                time.sleep(seconds)
        for pattern, fault in list(self.server.faults.items()):
            if pattern in self.path and self.command == "GET":
                del self.server.faults[pattern]
                self.server.hits.append(fault)
                if fault == "reset":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.connection.close()
                    self.close_connection = True
                    return
                self._reply(int(fault) if fault.isdigit() else 500, {"Content-Type": "text/plain"}, b"injected")
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
        response = requests.request(self.command, f"http://{self.server.upstream}{self.path}", headers=headers,
                                    data=body, allow_redirects=False, timeout=30)
        out = {k: v for k, v in response.headers.items() if k.lower() not in ("transfer-encoding", "content-encoding",
                                                                              "content-length", "connection")}
        if "Location" in out:
            out["Location"] = out["Location"].replace(self.server.upstream, self.server.host)
        self._reply(response.status_code, out, b"" if self.command == "HEAD" else response.content,
                    length=response.headers.get("Content-Length") if self.command == "HEAD" else None)

    def _reply(self, status: int, headers: dict[str, str], body: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", length if length is not None else str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


@contextlib.contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """Runs an http.server on a thread while the block runs."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def proxy(upstream: str, faults: dict[str, str], bearer: bool = False) -> contextlib.AbstractContextManager[FaultProxy]:
    return serving(FaultProxy(upstream, faults, bearer))


def test_faults_are_retried(open_registry: str, tmp_path: Path) -> None:
    with proxy(open_registry, {"/manifests/": "reset", "/blobs/": "500"}) as p:
        status, _ = convert(f"docker://{p.host}/src:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}")
        assert status == 0 and sorted(p.hits) == ["500", "reset"]
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0


def test_bearer_token_flow(open_registry: str, tmp_path: Path) -> None:
    with proxy(open_registry, {}, bearer=True) as p:
        status, _ = convert(f"docker://{p.host}/src:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}")
        assert status == 0 and p.tokens_issued >= 1
    shutil.rmtree(tmp_path / "out")


def test_reference_parsing() -> None:
    from nydus_py.oci.ref import parse_reference

    assert str(parse_reference("docker://alpine")) == "registry-1.docker.io/library/alpine:latest"
    ref = parse_reference("docker://localhost:5000/a/b:t")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "a/b", "t")
    ref = parse_reference("docker://r.example/x@sha256:" + "a" * 64)
    assert ref.digest == "sha256:" + "a" * 64 and ref.ref == ref.digest


def test_chunked_uploads_and_cross_repository_mounts(open_registry: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Blobs over the chunk size go up in PATCH chunks; with --merge-platform the original layers are mounted
    from the source repository instead of uploaded again."""
    monkeypatch.setattr("nydus_py.oci.registry.CHUNK_UPLOAD_SIZE", 64 << 10)
    host = open_registry
    status, raw = convert(f"docker://{host}/src:{TAG}", f"docker://{host}/merged:{TAG}", "--merge-platform")
    doc = json.loads(raw)
    assert status == 0 and doc["push"]["mounted"] >= 3 and doc["push"]["uploaded"] > 0
    assert main(["copy", f"docker://{host}/merged:{TAG}", f"oci:{tmp_path / 'pulled'}:{TAG}", "--plain-http"]) == 0
    assert main(["check", f"oci:{tmp_path / 'pulled'}:{TAG}"]) == 0
    layers = [p for p in (tmp_path / "pulled" / "blobs" / "sha256").iterdir() if p.stat().st_size > 64 << 10]
    assert layers  # at least one blob really crossed the chunk size


def test_with_referrer_links_the_nydus_image_to_its_source(open_registry: str) -> None:
    """--with-referrer: the Nydus manifest's `subject` is the source manifest's descriptor (no platform), and
    this registry (distribution 2.8: no referrers API, no OCI-Subject) gets the sha256-<hex> tag index."""
    host = open_registry
    status, raw = convert("--with-referrer", f"docker://{host}/src:{TAG}", f"docker://{host}/linked:{TAG}")
    assert status == 0
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    source = requests.get(f"http://{host}/v2/src/manifests/{TAG}", headers={"Accept": accept}, timeout=10)
    nydus = requests.get(f"http://{host}/v2/linked/manifests/{TAG}", headers={"Accept": accept}, timeout=10).json()
    digest = source.headers["Docker-Content-Digest"]
    assert nydus["subject"] == {"mediaType": source.headers["Content-Type"], "digest": digest,
                                "size": len(source.content)}
    fallback = requests.get(f"http://{host}/v2/linked/manifests/sha256-{digest.removeprefix('sha256:')}",
                            headers={"Accept": accept}, timeout=10).json()
    assert [m["digest"] for m in fallback["manifests"]] == [json.loads(raw)["manifest"]["digest"]]
