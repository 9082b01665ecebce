"""Typed OCI and Docker documents: index, manifest, config, descriptor, platform and docker-archive
`manifest.json`, decoded once, size-capped and validated (msgspec strict Structs).

A document of the wrong shape (`manifests: [1]`, `config: "x"`, `platform: "linux"`), size (over
`MAX_DOCUMENT`), depth (JSON nested past the decoder's limit) or fan-out (over `MAX_ENTRIES`) is a
`FormatError` naming the image, the document and the field (`$.manifests[0]`). Unknown fields are kept
where we rewrite a document (configs, manifests) and ignored elsewhere, as the image spec asks.
References: OCI image-spec descriptor.md, image-index.md, manifest.md, config.md; containerd's 4 MiB
manifest limit (core/remotes/docker: `MaxManifestSize`); docker save's manifest.json (moby image/tarexport).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, overload

import msgspec

from nydus_py.errors import FormatError
from nydus_py.format import oci

Json = dict[str, Any]

MAX_DOCUMENT = 4 << 20  # manifests, indexes, configs, index.json, manifest.json: containerd's limit
MAX_ENTRIES = 1024  # descriptors in one index, layers in one manifest, images in one docker archive
MAX_INDEX_DEPTH = 4  # indexes nested in indexes
MAX_MANIFESTS = 4096  # distinct manifests one image reference may resolve to

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
Size = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class PlatformDoc(msgspec.Struct, frozen=True, omit_defaults=True):
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")


class DescriptorDoc(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    digest: Digest
    size: Size
    media_type: str = ""
    annotations: dict[str, str] | None = None
    platform: PlatformDoc | None = None
    artifact_type: str | None = None
    urls: list[str] | None = None


Entries = Annotated[list[DescriptorDoc], msgspec.Meta(max_length=MAX_ENTRIES)]


class IndexDoc(msgspec.Struct, frozen=True, rename="camel"):
    manifests: Entries
    schema_version: int = 2
    media_type: str | None = None
    annotations: dict[str, str] | None = None


class ManifestDoc(msgspec.Struct, frozen=True, rename="camel"):
    config: DescriptorDoc
    layers: Entries
    schema_version: int = 2
    media_type: str | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None
    subject: DescriptorDoc | None = None  # OCI 1.1: the manifest this one refers to


class RootFsDoc(msgspec.Struct, frozen=True):
    type: str = "layers"
    diff_ids: Annotated[list[str], msgspec.Meta(max_length=MAX_ENTRIES)] = []


class HistoryDoc(msgspec.Struct, frozen=True):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


class ConfigDoc(msgspec.Struct, frozen=True):
    """The fields of an image config we read; the rest is kept as it is when the config is rewritten."""

    architecture: str = ""
    os: str = ""
    variant: str | None = None
    rootfs: RootFsDoc | None = None
    history: list[HistoryDoc] | None = None
    config: dict[str, Any] | None = None


class DockerArchiveEntry(msgspec.Struct, frozen=True, rename="pascal"):
    """One image of `docker save`'s manifest.json."""

    config: str
    layers: Annotated[list[str], msgspec.Meta(max_length=MAX_ENTRIES)]
    repo_tags: list[str] | None = None


DockerArchive = Annotated[list[DockerArchiveEntry], msgspec.Meta(min_length=1, max_length=MAX_ENTRIES)]

T = TypeVar("T")


@overload
def decode(data: bytes, kind: type[T], where: str) -> T: ...
@overload
def decode(data: bytes, kind: Any, where: str) -> Any: ...  # an Annotated type (a capped list)


def decode(data: bytes, kind: Any, where: str) -> Any:
    """`data` as `kind`, or a FormatError naming `where` and the field."""
    if len(data) > MAX_DOCUMENT:
        raise FormatError(f"{where}: {len(data)} bytes is over the {MAX_DOCUMENT >> 20} MiB document limit")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise FormatError(f"{where}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested too deeply") from None


def decode_object(data: bytes, where: str) -> Json:
    """A JSON object kept whole (a config or manifest we rewrite), after the same caps."""
    return decode(data, dict[str, Any], where)


def referrers_tag(digest: str) -> str:
    """The tag that lists a manifest's referrers where a registry has no referrers API: `sha256-<hex>`
    (distribution-spec v1.1 "Referrers Tag Schema")."""
    return "sha256-" + digest_hex(digest)


def is_index(media_type: str | None, data: bytes) -> bool:
    """Whether a manifest-or-index document is an index: by media type, else by having `manifests`."""
    if media_type in oci.INDEX_TYPES:
        return True
    if media_type in oci.MANIFEST_TYPES:
        return False
    return decode(data, _IndexProbe, "document").manifests is not None


class _IndexProbe(msgspec.Struct):
    manifests: Any = None


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A descriptor as we hand it around and write it (platform kept as its JSON object)."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Json | None = None
    artifact_type: str | None = None

    def to_json(self) -> Json:
        out: Json = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform
        return out

    @classmethod
    def of(cls, doc: DescriptorDoc) -> Descriptor:
        platform = msgspec.to_builtins(doc.platform) if doc.platform is not None else None
        return cls(media_type=doc.media_type, digest=doc.digest, size=doc.size, annotations=dict(doc.annotations or {}),
                   platform=platform, artifact_type=doc.artifact_type)

    @property
    def hex(self) -> str:
        return digest_hex(self.digest)


def referenced_layers(layers: Sequence[Descriptor]) -> dict[str, int]:
    """The original gzip layers a zran image's blob layers reference in place (their `nydus-ref`
    annotation), by digest, with the index of the layer naming each; the manifest does not list them
    (docs/oci.md §1.7)."""
    out: dict[str, int] = {}
    for i, layer in enumerate(layers[:-1]):
        ref = layer.annotations.get(oci.NYDUS_REF_ANNOTATION)
        if ref is not None:
            out.setdefault(ref, i)
    return out


def digest_hex(digest: str, where: str = "") -> str:
    """The hex part of a sha256 digest (the only algorithm we read or write); FormatError, naming `where`
    the digest came from, when it is not one."""
    if not _DIGEST.fullmatch(digest):
        raise FormatError(f"{where}: {digest!r} is not a sha256 digest" if where else
                          f"{digest!r} is not a sha256 digest")
    return digest[len("sha256:") :]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc: Json) -> bytes:
    """Stable JSON: the key order we built, no spaces (so equal inputs give equal digests)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["MAX_DOCUMENT", "MAX_ENTRIES", "MAX_INDEX_DEPTH", "ConfigDoc", "Descriptor", "DescriptorDoc",
           "DockerArchive", "DockerArchiveEntry", "IndexDoc", "ManifestDoc", "PlatformDoc", "decode", "decode_object",
           "digest_hex", "dumps", "is_index", "referenced_layers", "referrers_tag", "sha256_digest"]
