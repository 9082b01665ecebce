"""A registry client for the distribution spec: pull manifests and blobs (streamed), push blobs and
manifests, with basic and bearer-token auth, retries with backoff, and one-line errors.

Credentials come from `--creds USER:PASS` or ~/.docker/config.json (`auths`, `credHelpers`, `credsStore`).
References: OCI distribution-spec (pull, push, blob mounts, chunked uploads); the Docker token auth flow.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import requests

from nydus_py.errors import NydusError, UsageError

CHUNK_UPLOAD_SIZE = 16 << 20  # blobs larger than this are pushed in chunks
ACCEPT_MANIFESTS = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
_RETRY_STATUS = {429, 500, 502, 503, 504}
_MESSAGES = {401: "unauthorized (check the credentials)", 403: "denied (no permission)",
             404: "not found", 405: "method not allowed by this registry"}


class RegistryError(NydusError):
    """A registry answered with an error, or could not be reached."""


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"{self.registry}/{self.repository}{suffix}"


def parse_reference(text: str) -> Reference:
    """`docker://REGISTRY/REPO[:TAG|@sha256:...]`; Docker Hub names as docker does."""
    if not text.startswith("docker://"):
        raise UsageError(f"{text}: a registry reference starts with docker://")
    rest = text[len("docker://") :]
    name, digest = (rest.split("@", 1) + [None])[:2] if "@" in rest else (rest, None)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, _, remainder = name.partition("/")
    if not remainder or ("." not in first and ":" not in first and first != "localhost"):
        registry, repository = "registry-1.docker.io", name if "/" in name else f"library/{name}"
    else:
        registry, repository = first, remainder
    if not repository or (digest is not None and not digest.startswith("sha256:")):
        raise UsageError(f"{text}: not a valid image reference")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


# --- credentials ----------------------------------------------------------------------------------------


def docker_credentials(registry: str) -> tuple[str, str] | None:
    """(user, secret) for `registry` from ~/.docker/config.json (or $DOCKER_CONFIG), if any."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "registry-1.docker.io":
        keys += ["docker.io", "https://index.docker.io/v1/"]
    helper = next((config.get("credHelpers", {}).get(k) for k in keys if k in config.get("credHelpers", {})), None)
    helper = helper or config.get("credsStore")
    for key in keys:
        entry = (config.get("auths") or {}).get(key)
        if entry and entry.get("auth"):
            user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, secret
    if helper:
        for key in keys:
            try:
                done = subprocess.run([f"docker-credential-{helper}", "get"], input=key, capture_output=True,
                                      text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return None
            if done.returncode == 0:
                doc = json.loads(done.stdout)
                return doc.get("Username", ""), doc.get("Secret", "")
    return None


def parse_creds(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, secret = text.partition(":")
    if not sep:
        raise UsageError("--creds takes USER:PASSWORD")
    return user, secret


# --- the client -------------------------------------------------------------------------------------------


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    out = {}
    for part in params.split(","):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.lower()] = value.strip('"')
    return scheme.lower(), out


class RegistryClient:
    """One registry host: requests with auth, retries and clear errors."""

    def __init__(self, registry: str, *, plain_http: bool = False, insecure: bool = False,
                 creds: tuple[str, str] | None = None, retries: int = 4, backoff: float = 0.5) -> None:
        self.registry = registry
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        self.session = requests.Session()
        self.session.verify = not insecure
        self.creds = creds if creds is not None else docker_credentials(registry)
        self.retries = retries
        self.backoff = backoff
        self._auth: dict[str, str] = {}  # scope -> Authorization header

    # -- plumbing --

    def request(self, method: str, path: str, repo: str, *, push: bool = False, ok: tuple[int, ...] = (200,),
                stream: bool = False, data: Any = None, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None, allow: tuple[int, ...] = ()) -> requests.Response:
        """One API call; `allow` statuses are returned to the caller instead of raising."""
        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        url = path if path.startswith("http") else self.base + path
        attempt = 0
        authed = False
        while True:
            hdrs = dict(headers or {})
            if scope in self._auth:
                hdrs["Authorization"] = self._auth[scope]
            body = data() if callable(data) else data
            try:
                response = self.session.request(method, url, headers=hdrs, data=body, params=params, stream=stream,
                                                timeout=(30, 300), allow_redirects=True)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise RegistryError(f"{self.registry}/{repo}: cannot reach the registry ({exc.__class__.__name__})") \
                    from None
            if response.status_code == 401 and not authed and "WWW-Authenticate" in response.headers:
                authed = True
                self._authenticate(response.headers["WWW-Authenticate"], scope, repo)
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.retries:
                attempt += 1
                delay = response.headers.get("Retry-After")
                time.sleep(float(delay) if delay and delay.isdigit() else self.backoff * 2 ** (attempt - 1))
                continue
            if response.status_code in ok or response.status_code in allow:
                return response
            raise self._error(response, repo, method, path)

    def _error(self, response: requests.Response, repo: str, method: str, path: str) -> RegistryError:
        status = response.status_code
        what = _MESSAGES.get(status, f"HTTP {status}")
        detail = ""
        try:
            errors = response.json().get("errors") or []
            if errors:
                detail = f" ({errors[0].get('code', '')}: {errors[0].get('message', '')})"
        except ValueError:
            pass
        target = path.rsplit("/", 1)[-1] if "/manifests/" in path or "/blobs/" in path else path
        return RegistryError(f"{self.registry}/{repo}: {method} {target}: {what}{detail}")

    def _authenticate(self, challenge: str, scope: str, repo: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.creds is None:
                raise RegistryError(f"{self.registry}/{repo}: unauthorized (the registry wants credentials; "
                                    "give --creds or docker login)")
            token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
            self._auth[scope] = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.registry}/{repo}: unsupported auth challenge {challenge!r}")
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        if query["scope"] != scope:
            query["scope"] = scope
        auth = self.creds if self.creds is not None else None
        try:
            response = self.session.get(params["realm"], params=query, auth=auth, timeout=(30, 60))
        except requests.RequestException as exc:
            raise RegistryError(f"{self.registry}/{repo}: token server unreachable ({exc.__class__.__name__})") \
                from None
        if response.status_code != 200:
            raise RegistryError(f"{self.registry}/{repo}: token request failed: "
                                f"{_MESSAGES.get(response.status_code, f'HTTP {response.status_code}')}")
        doc = response.json()
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise RegistryError(f"{self.registry}/{repo}: the token server sent no token")
        self._auth[scope] = f"Bearer {token}"

    # -- pull --

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index."""
        response = self.request("GET", f"/v2/{repo}/manifests/{ref}", repo, headers={"Accept": ACCEPT_MANIFESTS})
        data = response.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise RegistryError(f"{self.registry}/{repo}: manifest {ref} does not match its digest")
        return data, response.headers.get("Content-Type", "").split(";")[0], digest

    def manifest_exists(self, repo: str, ref: str) -> bool:
        response = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", repo, headers={"Accept": ACCEPT_MANIFESTS},
                                allow=(404,))
        return response.status_code == 200

    def blob_size(self, repo: str, digest: str, *, push: bool = False) -> int | None:
        response = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo, push=push, allow=(404,))
        if response.status_code == 404:
            return None
        return int(response.headers.get("Content-Length", "0"))

    def open_blob(self, repo: str, digest: str) -> BinaryIO:
        """A stream of the blob, checked against its digest when it ends."""
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo, stream=True)
        return io.BufferedReader(_VerifiedStream(response, digest, f"{self.registry}/{repo}"), 1 << 20)  # type: ignore[return-value]

    def read_range(self, repo: str, digest: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo, ok=(206, 200),
                                headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        data = response.content
        if response.status_code == 200:  # the registry ignored the range
            data = data[offset : offset + size]
        return data

    # -- push --

    def push_blob(self, repo: str, digest: str, size: int, open_data: Callable[[], BinaryIO],
                  mount_from: str | None = None) -> str:
        """Upload a blob unless it is there; returns how: 'exists', 'mounted' or 'uploaded'."""
        if self.blob_size(repo, digest, push=True) is not None:
            return "exists"
        params = {"mount": digest, "from": mount_from} if mount_from else None
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, push=True, ok=(201, 202), params=params)
        if response.status_code == 201:
            return "mounted"
        location = self._location(response)
        if size <= CHUNK_UPLOAD_SIZE:
            def body() -> bytes:
                with open_data() as f:
                    return f.read()
            self.request("PUT", location, repo, push=True, ok=(201,), data=body, params={"digest": digest},
                         headers={"Content-Type": "application/octet-stream"})
            return "uploaded"
        with open_data() as f:
            offset = 0
            while True:
                block = f.read(CHUNK_UPLOAD_SIZE)
                if not block:
                    break
                response = self.request("PATCH", location, repo, push=True, ok=(202,), data=block, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(block) - 1}"})
                location = self._location(response)
                offset += len(block)
        self.request("PUT", location, repo, push=True, ok=(201,), params={"digest": digest})
        return "uploaded"

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry}: upload without a Location")
        return location if location.startswith("http") else self.base + location

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo, push=True, ok=(201,), data=data,
                     headers={"Content-Type": media_type})


class _VerifiedStream(io.RawIOBase):
    """A streamed HTTP body whose sha256 is checked when it has been read to the end."""

    def __init__(self, response: requests.Response, digest: str, where: str) -> None:
        super().__init__()
        self._response = response
        self._iter: Iterator[bytes] = response.iter_content(1 << 20)
        self._buffer = b""
        self._hash = hashlib.sha256()
        self._digest = digest
        self._where = where
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            try:
                block = next(self._iter)
            except StopIteration:
                self._done = True
                if "sha256:" + self._hash.hexdigest() != self._digest:
                    raise RegistryError(f"{self._where}: blob {self._digest} does not match its digest") from None
                break
            except requests.RequestException as exc:
                raise RegistryError(f"{self._where}: blob {self._digest} download broke ({exc.__class__.__name__})") \
                    from None
            self._hash.update(block)
            self._buffer = block
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._response.close()
        super().close()


class RemoteBlob:
    """A registry blob as RandomAccess (HTTP ranges), the tail fetched once: for reading TOC and bootstrap."""

    TAIL = 256 << 10

    def __init__(self, client: RegistryClient, repo: str, digest: str, size: int) -> None:
        self.client, self.repo, self.digest = client, repo, digest
        self.name = digest.split(":")[-1]
        self.size = size
        start = max(0, size - self.TAIL)
        self._tail_start = start
        self._tail = client.read_range(repo, digest, start, size - start)

    def pread(self, offset: int, size: int) -> bytes:
        if offset >= self._tail_start:
            return self._tail[offset - self._tail_start : offset - self._tail_start + size]
        return self.client.read_range(self.repo, self.digest, offset, size)

    def close(self) -> None:
        pass
