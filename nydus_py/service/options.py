"""What the service is told: its configuration (`--config FILE`, TOML, or the command line), and the
conversion options that travel in every task, so that every worker converts a key the same way.

Registry access (plain HTTP, TLS verification, credentials) is each process's own: it never travels in a task,
and a request can never set it. Credentials come from a docker config file (`--creds-file`, else
~/.docker/config.json), per host.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from nydus_py.build.config import (BuildConfig, Compressor, Digester, check_chunk_size,
                                   parse_prefetch_patterns, read_prefetch_patterns)
from nydus_py.format.rafs import DEFAULT_CHUNK_SIZE
from nydus_py.errors import UsageError
from nydus_py.oci.chunkdict import open_chunk_dict
from nydus_py.oci.convert import ConvertOptions
from nydus_py.oci.images import RegistryOptions

DEFAULT_LEASE_SECONDS = 120.0  # how long a conversion's lease lasts unless renewed (a dead worker's waits this)
DEFAULT_TAG_SUFFIX = "-nydus"


class ConversionOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How an image is converted (`nydus-py convert`'s options); part of a conversion's key."""

    compressor: Literal["zstd", "lz4_block", "none"] = "zstd"
    digester: Literal["blake3", "sha256"] = "blake3"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    oci_ref: bool = False
    chunk_dict: str | None = None  # a Nydus image (docker://...) or a bootstrap path every worker can read
    prefetch: tuple[str, ...] = ("/",)
    docker_media_types: bool = False
    verify: bool = False  # compare each converted image with its source before it counts as done

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        if self.oci_ref and self.chunk_dict is not None:
            raise UsageError("--oci-ref and --chunk-dict exclude each other")
        if self.oci_ref and self.digester != "sha256":
            raise UsageError("--oci-ref needs --digester sha256")
        parse_prefetch_patterns("\n".join(self.prefetch).encode(), "prefetch")

    def fingerprint(self) -> str:
        """What two conversions must share to be the same (16 hex digits)."""
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:16]

    def build_config(self, registry: RegistryOptions) -> BuildConfig:
        chunk_dict = open_chunk_dict(self.chunk_dict, registry) if self.chunk_dict else None
        return BuildConfig(compressor=Compressor(self.compressor), digester=Digester(self.digester),
                           chunk_size=self.chunk_size, prefetch_patterns=tuple(p.encode() for p in self.prefetch),
                           chunk_dict=chunk_dict)

    def convert_options(self) -> ConvertOptions:
        return ConvertOptions(docker_types=self.docker_media_types, oci_ref=self.oci_ref, with_referrer=True)


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`nydus-py serve` and `nydus-py worker`: one file (`--config`, TOML) holds these keys; the command
    line overrides them."""

    broker: str | None = None  # redis://HOST:PORT/DB; None: the embedded queue in state_dir
    state_dir: str = "~/.local/state/nydus-py"
    listen: str = "127.0.0.1:8080"
    webhook_auth: str | None = None  # the exact Authorization header a request must carry
    allow_registries: tuple[str, ...] = ()  # HOST[:PORT]; an event naming another queues nothing
    tag_suffix: str = DEFAULT_TAG_SUFFIX
    plain_http: bool = False
    insecure: bool = False
    creds_file: str | None = None  # a docker config.json with `auths`
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_queue: int = 1000  # conversions queued or running; a direct request past it gets 429
    concurrency: int = 0  # worker processes (0: one per core)
    attempts: int = 5  # deliveries of one conversion before it fails (a worker dying each time)
    retries: int = 3  # retries of a transient registry error, with backoff
    conversion: ConversionOptions = ConversionOptions()

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.max_queue < 1 or self.attempts < 1 or self.retries < 0:
            raise UsageError("lease_seconds, max_queue and attempts must be positive, retries not negative")
        if not self.tag_suffix or "/" in self.tag_suffix or ":" in self.tag_suffix:
            raise UsageError(f"tag suffix {self.tag_suffix!r}: must be a non-empty part of a tag")

    @property
    def state(self) -> Path:
        return Path(os.path.expanduser(self.state_dir))

    def registry(self) -> RegistryOptions:
        """How this process reaches registries (its own, never a request's)."""
        return RegistryOptions(plain_http=self.plain_http, insecure=self.insecure,
                               creds_file=Path(self.creds_file) if self.creds_file else None)


def read_prefetch_file(path: Path) -> tuple[str, ...]:
    """The prefetch patterns of a file (one absolute path per line), checked as `convert` checks them."""
    try:
        with open(path, "rb") as f:
            patterns = read_prefetch_patterns(f, str(path))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read prefetch patterns: {exc.strerror}") from None
    return tuple(p.decode("utf-8", "surrogateescape") for p in patterns)


def load_config(path: Path | None, **overrides: object) -> ServiceConfig:
    """The configuration file (TOML) with the command line's `overrides` (those not None) on top; UsageError
    naming the file and the key when it is not what it should be."""
    doc: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the configuration: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not TOML ({exc})") from None
    conversion = dict(doc.pop("conversion", None) or {})  # type: ignore[call-overload]
    for key, value in overrides.items():
        if value is None or value == ():
            continue
        if key in ConversionOptions.__struct_fields__:
            conversion[key] = value
        else:
            doc[key] = value
    doc["conversion"] = conversion
    try:
        return msgspec.convert(doc, ServiceConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise UsageError(f"{path or 'configuration'}: {exc}") from None


__all__ = ["DEFAULT_LEASE_SECONDS", "ConversionOptions", "ServiceConfig", "load_config", "read_prefetch_file"]
