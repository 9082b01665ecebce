"""A registry client for the distribution spec: pull manifests and blobs (streamed), push blobs and
manifests, with basic and bearer-token auth, retries with backoff, and one-line errors.

Credentials come from `--creds USER:PASS` or ~/.docker/config.json (`auths`, `credHelpers`, `credsStore`).
Trust rules (DESIGN.md): an Authorization header goes only to the origin (scheme, host, port) of the registry;
user credentials go to a token realm only over HTTPS (or, with --plain-http, to a realm on the registry's own
host); every body is read with a bound (a blob's descriptor size, MAX_DOCUMENT for everything else) and a time
limit; every retry of one request shares one time budget, and a Retry-After longer than the cap is not waited for.
References: OCI distribution-spec (pull, push, blob mounts, chunked uploads); the Docker token auth flow
(distribution docs/spec/auth/token.md, scope.md); RFC 9110 10.2.3 (Retry-After), 11.6.1 (WWW-Authenticate).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import email.utils
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO, TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection

from nydus_py.errors import NydusError, UsageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

CHUNK_UPLOAD_SIZE = 16 << 20  # blobs larger than this are pushed in chunks
ACCEPT_MANIFESTS = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
# Bounds on what a registry can make us spend (DESIGN.md "Trust rules"); module constants so tests can shrink them.
MAX_DOCUMENT = 4 << 20  # manifests, indexes, error bodies, token responses (containerd's manifest limit)
CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 30.0  # seconds without a byte from an open connection
RESPONSE_TIME_LIMIT = 30.0  # seconds from the start of a request to its status line and headers (plus an upload's
# body at BLOB_MIN_RATE): a server trickling them byte by byte is cut off then
DOCUMENT_TIME_LIMIT = 60.0  # seconds to read a whole document (a manifest, an error body, a token)
BLOB_TIME_FLOOR = 60.0  # seconds any blob download may take ...
BLOB_MIN_RATE = 256 << 10  # ... plus its size at this many bytes per second
RETRY_AFTER_MAX = 10.0  # a Retry-After asking for longer than this is not waited for ($NYDUS_PY_RETRY_AFTER_MAX)
RETRY_BUDGET = 15.0  # seconds all the tries of one request may take together ($NYDUS_PY_RETRY_BUDGET)
_READ_BLOCK = 1 << 20
_RETRY_STATUS = {429, 500, 502, 503, 504}
_MESSAGES = {401: "unauthorized", 403: "denied", 404: "not found", 405: "method not allowed by this registry",
             429: "too many requests"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


class _Watch:
    """A deadline for one request: when it passes, the connection the request uses is shut down, so that a
    read blocked on it (a status line, headers or a body trickled byte by byte) returns at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._sock: socket.socket | None = None
        self.expired = False

    def arm(self, seconds: float) -> None:
        with self._lock:
            self.expired = False
            self._timer = threading.Timer(max(seconds, 0.0), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the request is on (a connection announces it before it sends)."""
        with self._lock:
            self._sock = sock
            if self.expired and sock is not None:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:  # disarmed meanwhile
                return
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# the watch of the request the current thread is sending (read by the connection that sends it)
_WATCH: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar("nydus_py_registry_watch", default=None)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = _WATCH.get()
        if watch is not None:
            if self.sock is None:
                self.connect()  # bounded by CONNECT_TIMEOUT; the watch then owns the socket it made
            watch.attach(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = _WATCH.get()
        if watch is not None:
            if self.sock is None:
                self.connect()
            watch.attach(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that announce their socket to the request's deadline watch."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class RegistryError(NydusError):
    """A registry answered with an error, or could not be reached; `status` is the HTTP status, if one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --- credentials ----------------------------------------------------------------------------------------


def docker_credentials(registry: str, config_file: Path | None = None) -> tuple[str, str] | None:
    """(user, secret) for `registry` from a docker config file: `config_file`, else ~/.docker/config.json (or
    $DOCKER_CONFIG's), if any."""
    if config_file is None:
        config_file = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
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


# --- small parsers for what a registry sends ---------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme and parameters of the first challenge in a WWW-Authenticate header (RFC 9110 11.6.1); quoted
    values may hold commas (`scope="repository:a:pull,push"`)."""
    scheme, _, rest = header.strip().partition(" ")
    out: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _CHALLENGE_PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.setdefault(match.group(1).lower(), value)
        pos = match.end()
    return scheme.lower(), out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` asks for (RFC 9110 10.2.3: delay-seconds or an HTTP-date); None for no or a
    malformed hint; math.inf for a number too long to be meant."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 12 else math.inf
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of a URL, the default port filled in; UsageError for a URL that has none."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port is None:
        raise ValueError(f"not an http(s) URL: {_clean(url, 120)}")
    return scheme, parts.hostname.lower(), port


def _clean(text: str, limit: int = 300) -> str:
    """Text from a registry made fit for a one-line message: no control characters, bounded length."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _registry_error_text(body: bytes) -> str:
    """The registry's own words from an error body: the distribution spec's `{"errors": [{"code", "message",
    "detail"}]}`, any other shape tolerated (a list, strings for objects), else short plain text."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = body[:400].decode("utf-8", "replace")
        return _clean(text, 200) if text.strip() and "<" not in text[:1] else ""
    entries = doc.get("errors") if isinstance(doc, dict) else doc
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list):
        return ""
    parts = []
    for entry in entries[:3]:
        if isinstance(entry, dict):
            code, message = entry.get("code"), entry.get("message")
            words = [w for w in (code, message) if isinstance(w, str) and w]
            parts.append(": ".join(words))
        elif isinstance(entry, str):
            parts.append(entry)
    return _clean("; ".join(p for p in parts if p), 300)


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"${name}={text!r}: not a number of seconds") from None
    if not 0 <= value < 86400:
        raise UsageError(f"${name}={text!r}: must be between 0 and 86400 seconds")
    return value


# --- the client -------------------------------------------------------------------------------------------


class RegistryClient:
    """One registry host: requests with auth per origin and scope set, bounded reads, retries in a time budget,
    and one-line errors naming the registry, the repository, the method and the URL path."""

    def __init__(self, registry: str, *, plain_http: bool = False, insecure: bool = False,
                 creds: tuple[str, str] | None = None, retries: int = 4, backoff: float = 0.5,
                 retry_budget: float | None = None, retry_after_max: float | None = None) -> None:
        self.registry = registry
        self.plain_http = plain_http
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        try:
            self.origin = origin_of(self.base)
        except ValueError:
            raise UsageError(f"{registry}: not a registry host[:port]") from None
        self.session = requests.Session()
        for prefix in ("http://", "https://"):  # every connection registers with the request's deadline watch
            self.session.mount(prefix, _WatchedAdapter())
        self.session.verify = not insecure
        # identity only: a body's bytes are what its digest and size describe, and no decompression bomb
        self.session.headers["Accept-Encoding"] = "identity"
        self.creds = creds if creds is not None else docker_credentials(registry)
        self.retries = retries
        self.backoff = backoff
        self.retry_budget = retry_budget if retry_budget is not None else _env_seconds("NYDUS_PY_RETRY_BUDGET",
                                                                                       RETRY_BUDGET)
        self.retry_after_max = retry_after_max if retry_after_max is not None else _env_seconds(
            "NYDUS_PY_RETRY_AFTER_MAX", RETRY_AFTER_MAX)
        self._basic: str | None = None  # Authorization for a registry that asked for basic auth
        self._tokens: dict[frozenset[str], str] = {}  # scope set -> "Bearer ..." (for this origin only)
        self._withheld: str | None = None  # why credentials were not sent to a token realm, for the error

    # -- plumbing --

    def _authorization(self, scopes: frozenset[str]) -> str | None:
        if scopes in self._tokens:
            return self._tokens[scopes]
        for held, header in self._tokens.items():
            if scopes <= held:
                return header
        return self._basic

    def request(self, method: str, path: str, repo: str, *, push: bool = False, ok: tuple[int, ...] = (200,),
                data: Any = None, headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                allow: tuple[int, ...] = (), extra_scopes: tuple[str, ...] = ()) -> requests.Response:
        """One API call, its body not yet read (read it with `read_document` or `open_blob`'s stream, or close
        it); `allow` statuses are returned to the caller instead of raising. `path` is a path on the registry or
        a URL the registry named (an upload Location), which gets credentials only on the registry's origin."""
        scopes = frozenset({f"repository:{repo}:{'pull,push' if push else 'pull'}", *extra_scopes})
        url = urljoin(self.base + "/", path)
        try:
            same_origin = origin_of(url) == self.origin
        except ValueError as exc:
            raise RegistryError(f"{self.registry}/{repo}: {method}: the registry named a bad URL ({exc})") from None
        if not same_origin and self.origin[0] == "https" and url.lower().startswith("http:"):
            raise RegistryError(f"{self.registry}/{repo}: {method} {_clean(url, 120)}: the registry sent us from "
                                "HTTPS to plain HTTP")
        where = f"{self.registry}/{repo}: {method} {_url_path(url)}"
        start = time.monotonic()
        attempt = 0
        authed = False
        while True:
            hdrs = dict(headers or {})
            authorization = self._authorization(scopes) if same_origin else None
            if authorization:
                hdrs["Authorization"] = authorization
            body = data() if callable(data) else data
            limit = RESPONSE_TIME_LIMIT + (len(body) if isinstance(body, bytes) else 0) / BLOB_MIN_RATE
            try:
                # requests drops Authorization when a redirect leaves the host (Session.rebuild_auth)
                response = self._send(method, url, limit, where, headers=hdrs, data=body, params=params)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._pause(where, attempt, start, None, f"cannot reach the registry ({exc.__class__.__name__})")
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and not authed and same_origin and "WWW-Authenticate" in response.headers:
                authed = True
                response.close()
                self._authenticate(response.headers["WWW-Authenticate"], scopes, repo, where)
                continue
            if status in _RETRY_STATUS:
                hint = parse_retry_after(response.headers.get("Retry-After"))
                if hint is not None and hint > self.retry_after_max:
                    response.close()
                    raise RegistryError(f"{where}: {status} {_MESSAGES.get(status, 'unavailable')}, and the registry "
                                        f"asks us to wait {_seconds(hint, response.headers['Retry-After'])} (more than "
                                        f"the {self.retry_after_max:g} s we wait)", status)
                if attempt < self.retries and self._fits(start, hint, attempt):
                    response.close()
                    self._pause(where, attempt, start, hint, "")
                    attempt += 1
                    continue
            if status in ok or status in allow:
                return response
            raise self._error(response, where, same_origin,
                              f", {attempt + 1} tries in {time.monotonic() - start:.1f} s" if attempt else "")

    def _send(self, method: str, url: str, limit: float, where: str, **kwargs: Any) -> requests.Response:
        """One HTTP exchange up to its headers, cut off `limit` seconds after it starts however slowly the server
        trickles them (a read timeout alone restarts with every byte). The body is left unread."""
        watch = _Watch()
        token = _WATCH.set(watch)
        watch.arm(limit)
        try:
            response = self.session.request(method, url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                                            allow_redirects=True, **kwargs)
        except requests.RequestException as exc:
            if watch.expired:
                raise RegistryError(f"{where}: no response within {limit:.0f} s") from None
            if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
                raise
            raise RegistryError(f"{where}: {exc.__class__.__name__}") from None
        finally:
            watch.disarm()
            _WATCH.reset(token)
        response.raw._nydus_watch = watch  # the body's reads are cut off the same way (see _blocks)
        return response

    def _fits(self, start: float, hint: float | None, attempt: int) -> bool:
        delay = hint if hint is not None else self.backoff * 2 ** attempt
        return time.monotonic() - start + delay <= self.retry_budget

    def _pause(self, where: str, attempt: int, start: float, hint: float | None, failure: str) -> None:
        """Sleep before try `attempt + 1`, or raise when the tries or the time budget are spent."""
        if failure and (attempt >= self.retries or not self._fits(start, hint, attempt)):
            raise RegistryError(f"{where}: {failure}, {attempt + 1} tries in {time.monotonic() - start:.1f} s")
        time.sleep(hint if hint is not None else self.backoff * 2 ** attempt)

    def _error(self, response: requests.Response, where: str, same_origin: bool, tries: str) -> RegistryError:
        status = response.status_code
        what = _MESSAGES.get(status, response.reason if isinstance(response.reason, str) else "")
        text = ""
        if response.request.method != "HEAD":
            try:
                text = _registry_error_text(self.read_document(response, where, "error body"))
            except RegistryError:
                text = ""
        response.close()
        detail = f" ({text})" if text else ""
        if status == 401 and same_origin:
            detail += (f" ({self._withheld})" if self._withheld else
                       " (no credentials given: --creds or docker login)" if self.creds is None else "")
        detail += tries
        return RegistryError(f"{where}: {status} {_clean(what, 60)}{detail}".rstrip(), status)

    def _authenticate(self, challenge: str, scopes: frozenset[str], repo: str, where: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.creds is None:
                raise RegistryError(f"{where}: unauthorized (the registry wants credentials; give --creds or "
                                    "docker login)", 401)
            token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
            self._basic = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{where}: unsupported auth challenge {_clean(challenge, 120)!r}", 401)
        # the union of what this operation needs and what the challenge names (a mount also needs pull on its
        # source repository, which the registry names in the challenge; distribution token spec, "scope")
        wanted = frozenset(scopes | set(params.get("scope", "").split()))
        realm = params["realm"]
        try:
            realm_origin = origin_of(realm)
        except ValueError:
            raise RegistryError(f"{where}: the token realm is not an http(s) URL: {_clean(realm, 120)}") from None
        auth = None
        if self.creds is not None:
            # user credentials only over HTTPS, or with --plain-http to the registry's own host (any port)
            if realm_origin[0] == "https" or (self.plain_http and realm_origin[1] == self.origin[1]):
                auth = self.creds
            else:
                self._withheld = (f"credentials not sent to the token realm {realm_origin[0]}://{realm_origin[1]}:"
                                  f"{realm_origin[2]}: only to an HTTPS realm, or with --plain-http one on the "
                                  "registry's host")
                log.warning("%s: %s", where, self._withheld)
        query = {"service": params.get("service", ""), "scope": sorted(wanted)}
        token_where = f"{where}: token request to {realm_origin[1]}:{realm_origin[2]}"
        try:
            response = self._send("GET", realm, RESPONSE_TIME_LIMIT, token_where, params=query, auth=auth)
        except requests.RequestException as exc:
            raise RegistryError(f"{token_where}: token server unreachable ({exc.__class__.__name__})") from None
        body = self.read_document(response, token_where, "token response")
        if response.status_code != 200:
            text = _registry_error_text(body)
            status = response.status_code
            raise RegistryError(f"{token_where}: {status} {_MESSAGES.get(status, 'failed')}"
                                f"{f' ({text})' if text else ''}", status)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        issued = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        # a token goes into a header: printable ASCII without spaces (RFC 6750 b64token is stricter still)
        if not isinstance(issued, str) or not re.fullmatch(r"[\x21-\x7e]{1,65536}", issued):
            raise RegistryError(f"{token_where}: the token server sent no usable token")
        self._tokens[wanted] = self._tokens[scopes] = f"Bearer {issued}"

    def read_document(self, response: requests.Response, where: str, what: str = "document",
                      limit: int | None = None) -> bytes:
        """The whole body of `response`, at most `limit` (MAX_DOCUMENT) bytes, within DOCUMENT_TIME_LIMIT."""
        limit = MAX_DOCUMENT if limit is None else limit
        try:
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise RegistryError(f"{where}: {what} of {declared} bytes, more than the {limit} we read")
            out = bytearray()
            deadline = time.monotonic() + DOCUMENT_TIME_LIMIT
            for block in _blocks(response, limit + 1, where, what, deadline):
                out += block
                if len(out) > limit:
                    raise RegistryError(f"{where}: {what} larger than the {limit} bytes we read")
            return bytes(out)
        finally:
            response.close()

    # -- pull --

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index: at most MAX_DOCUMENT bytes, checked against its
        digest when asked for by digest, and a JSON object (typed decoding is the caller's)."""
        path = f"/v2/{repo}/manifests/{ref}"
        response = self.request("GET", path, repo, headers={"Accept": ACCEPT_MANIFESTS})
        where = f"{self.registry}/{repo}: GET {path}"
        data = self.read_document(response, where, "manifest")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            raise RegistryError(f"{where}: the manifest does not match its digest")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise RegistryError(f"{where}: the manifest is not a JSON object")
        return data, response.headers.get("Content-Type", "").split(";")[0].strip(), digest

    def manifest_exists(self, repo: str, ref: str) -> bool:
        response = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", repo, headers={"Accept": ACCEPT_MANIFESTS},
                                allow=(404,))
        response.close()
        return response.status_code == 200

    def blob_size(self, repo: str, digest: str, *, push: bool = False) -> int | None:
        path = f"/v2/{repo}/blobs/{digest}"
        response = self.request("HEAD", path, repo, push=push, allow=(404,))
        response.close()
        if response.status_code == 404:
            return None
        size = _content_length(response)
        if size is None:
            raise RegistryError(f"{self.registry}/{repo}: HEAD {path}: no usable Content-Length")
        return size

    def open_blob(self, repo: str, digest: str, size: int) -> BinaryIO:
        """A stream of the blob the descriptor (`digest`, `size`) names: exactly `size` bytes, within
        BLOB_TIME_FLOOR + size / BLOB_MIN_RATE seconds. Its digest is checked by the caller's one
        `VerifiedStream` (nydus_py/oci/images.py), which every blob passes through."""
        path = f"/v2/{repo}/blobs/{digest}"
        response = self.request("GET", path, repo)
        where = f"{self.registry}/{repo}: GET {path}"
        declared = _content_length(response)
        if declared is not None and declared != size:
            response.close()
            raise RegistryError(f"{where}: the registry sends {declared} bytes for a blob of {size}")
        return io.BufferedReader(_BoundedBody(response, size, where), _READ_BLOCK)

    def read_range(self, repo: str, digest: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        path = f"/v2/{repo}/blobs/{digest}"
        response = self.request("GET", path, repo, ok=(206, 200),
                                headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        where = f"{self.registry}/{repo}: GET {path} (range)"
        skip = offset if response.status_code == 200 else 0  # 200: the registry ignored the range
        out = bytearray()
        try:
            deadline = time.monotonic() + BLOB_TIME_FLOOR + (skip + size) / BLOB_MIN_RATE
            for block in _blocks(response, skip + size, where, "blob range", deadline):
                out += block
        finally:
            response.close()
        return bytes(out[skip : skip + size])

    # -- push --

    def push_blob(self, repo: str, digest: str, size: int, open_data: Callable[[], io.RawIOBase | BinaryIO],
                  mount_from: str | None = None) -> str:
        """Upload a blob unless it is there; returns how: 'exists', 'mounted' or 'uploaded'."""
        if self.blob_size(repo, digest, push=True) is not None:
            return "exists"
        uploads = f"/v2/{repo}/blobs/uploads/"
        response = None
        if mount_from and mount_from != repo:
            try:
                response = self.request("POST", uploads, repo, push=True, ok=(201, 202), allow=(401, 403, 404),
                                        params={"mount": digest, "from": mount_from},
                                        extra_scopes=(f"repository:{mount_from}:pull",))
            except RegistryError as exc:  # the token server would not grant pull on the source repository
                if exc.status not in (401, 403):
                    raise
                log.info("%s: cross-repository mount refused (%s); uploading", repo, exc)
            if response is not None and response.status_code == 201:
                response.close()
                return "mounted"
            if response is not None and response.status_code != 202:  # refused: upload instead
                log.info("%s: cross-repository mount from %s refused (%d); uploading", repo, mount_from,
                         response.status_code)
                response.close()
                response = None
        if response is None:
            response = self.request("POST", uploads, repo, push=True, ok=(202,))
        response.close()
        location = self._location(response, repo)
        if size <= CHUNK_UPLOAD_SIZE:
            def body() -> bytes:
                with open_data() as f:
                    return f.read()
            self.request("PUT", location, repo, push=True, ok=(201,), data=body, params={"digest": digest},
                         headers={"Content-Type": "application/octet-stream"}).close()
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
                response.close()
                location = self._location(response, repo)
                offset += len(block)
        self.request("PUT", location, repo, push=True, ok=(201,), params={"digest": digest}).close()
        return "uploaded"

    def _location(self, response: requests.Response, repo: str) -> str:
        """The upload URL a response names, resolved against the URL it came from. It may be on another origin
        (distribution spec: storage redirects); `request` then sends it no credentials."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry}/{repo}: {response.request.method} {_url_path(response.url)}: "
                                "upload without a Location")
        return urljoin(response.url, location)

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str | None:
        """Push a manifest or index; returns the `OCI-Subject` header of a registry with the referrers API (None
        without one: then the pusher keeps the referrers tag, distribution-spec v1.1)."""
        response = self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo, push=True, ok=(201,), data=data,
                                headers={"Content-Type": media_type})
        response.close()
        return response.headers.get("OCI-Subject")


def _url_path(url: str) -> str:
    """The path of a URL, for messages: no query (an upload's state), no credentials."""
    try:
        return _clean(urlsplit(url).path or "/", 160)
    except ValueError:
        return "?"


def _seconds(value: float, raw: str) -> str:
    return f"{value:.0f} s" if math.isfinite(value) else f"{_clean(raw, 24)} s"


def _content_length(response: requests.Response) -> int | None:
    text = response.headers.get("Content-Length")
    if text is None or not text.strip().isascii() or not text.strip().isdigit() or len(text.strip()) > 18:
        return None
    return int(text)


def _blocks(response: requests.Response, want: int, where: str, what: str,
            deadline: float) -> Generator[bytes, None, None]:
    """The body of `response` as it arrives, undecoded, at most `want` bytes in all (a caller that wants `limit + 1`
    learns there was more); the deadline is checked between reads, and each read waits at most READ_TIMEOUT
    (read1 returns what one receive brought, so a trickle of bytes cannot hold a read open)."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2
    watch: _Watch | None = getattr(raw, "_nydus_watch", None)
    if watch is not None:  # a read blocked past the deadline is cut off then, not a read timeout later
        watch.arm(deadline - time.monotonic())
    try:
        while want > 0:
            if time.monotonic() > deadline or (watch is not None and watch.expired):
                raise RegistryError(f"{where}: {what} still arriving at its time limit")
            try:
                block = read1(min(want, _READ_BLOCK), decode_content=False) if read1 else \
                    raw.read(min(want, 64 << 10), decode_content=False)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if watch is not None and watch.expired:
                    raise RegistryError(f"{where}: {what} still arriving at its time limit") from None
                raise RegistryError(f"{where}: {what} download broke ({exc.__class__.__name__})") from None
            if not block:
                return
            want -= len(block)
            yield block
    finally:
        if watch is not None:
            watch.disarm()


class _BoundedBody(io.RawIOBase):
    """A blob's body that must be exactly `size` bytes, arriving within its time limit (the digest is the
    business of the one VerifiedStream the blob store wraps around it)."""

    def __init__(self, response: requests.Response, size: int, where: str) -> None:
        super().__init__()
        self._response = response
        self._size = size
        deadline = time.monotonic() + BLOB_TIME_FLOOR + size / BLOB_MIN_RATE
        self._iter: Generator[bytes, None, None] = _blocks(response, size + 1, where, "blob", deadline)
        self._buffer = b""
        self._read = 0
        self._where = where
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        while not self._buffer and not self._done:
            block = next(self._iter, b"")
            if not block:
                self._done = True
                self._response.close()
                if self._read != self._size:
                    raise RegistryError(f"{self._where}: the blob ended after {self._read} of its {self._size} bytes")
                break
            self._read += len(block)
            if self._read > self._size:
                self._response.close()
                raise RegistryError(f"{self._where}: the blob is longer than the {self._size} bytes its descriptor "
                                    "gives")
            self._buffer = block
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._iter.close()  # its deadline watch is disarmed
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
