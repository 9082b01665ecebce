"""OCI image sources and targets on disk: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`.

A source resolves to one `SourceImage` per platform: its manifest, config and layer blobs, each layer
opened as a stream when it is converted (an archive is read in place, never extracted). A target is an
OCI image layout directory written blob by blob under temporary names.
References: OCI image-spec image-layout.md, image-index.md; docker save's manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from nydus_py.errors import FormatError, UsageError
from nydus_py.format import oci
from nydus_py.fsutil import atomic_output
from nydus_py.oci.platforms import parse_platform as parse_platform  # re-exported
from nydus_py.oci.platforms import platform_text as platform_text  # re-exported
from nydus_py.oci.platforms import image_platform, select_platforms

Json = dict[str, Any]
MAX_JSON = 64 << 20  # manifests, indexes and configs larger than this are refused


@dataclass(frozen=True, slots=True)
class Descriptor:
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
    def from_json(cls, doc: Json, where: str) -> Descriptor:
        try:
            return cls(media_type=str(doc.get("mediaType", "")), digest=str(doc["digest"]), size=int(doc["size"]),
                       annotations=dict(doc.get("annotations") or {}), platform=doc.get("platform"),
                       artifact_type=doc.get("artifactType"))
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: invalid descriptor ({exc})") from None

    @property
    def hex(self) -> str:
        return digest_hex(self.digest)


def digest_hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or hexpart.strip("0123456789abcdef"):
        raise FormatError(f"{digest!r} is not a sha256 digest")
    return hexpart


def dumps(doc: Json) -> bytes:
    """Stable JSON: the key order we built, no spaces (so equal inputs give equal digests)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# --- sources ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SourceImage:
    """One platform's image: manifest, raw config bytes and layer descriptors, with a way to open blobs."""

    manifest: Json
    manifest_descriptor: Descriptor
    config_bytes: bytes
    layers: list[Descriptor]
    open_blob: Callable[[str], BinaryIO]
    platform: Json | None = None

    @property
    def config(self) -> Json:
        return parse_json(self.config_bytes, "image config")


def parse_json(data: bytes, where: str) -> Json:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: not a JSON object")
    return doc


class BlobSource:
    """Blobs by digest: from a layout directory or an archive's members."""

    def __init__(self, name: str, read: Callable[[str], bytes], open_: Callable[[str], BinaryIO]) -> None:
        self.name = name
        self._read = read
        self.open = open_

    def read_json(self, digest: str, what: str) -> tuple[Json, bytes]:
        data = self._read(digest)
        if hashlib.sha256(data).hexdigest() != digest_hex(digest):
            raise FormatError(f"{self.name}: {what} {digest} does not match its digest")
        return parse_json(data, f"{self.name}: {what} {digest}"), data


def _layout_source(root: Path) -> BlobSource:
    def path(digest: str) -> Path:
        return root / "blobs" / "sha256" / digest_hex(digest)

    def read(digest: str) -> bytes:
        p = path(digest)
        try:
            if p.stat().st_size > MAX_JSON:
                raise FormatError(f"{p}: too large for a manifest or config")
            return p.read_bytes()
        except OSError as exc:
            raise FormatError(f"{root}: blob {digest} is missing ({exc.strerror})") from None

    def open_(digest: str) -> BinaryIO:
        try:
            return open(path(digest), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise FormatError(f"{root}: blob {digest} is missing ({exc.strerror})") from None

    return BlobSource(str(root), read, open_)


def _archive_source(archive: tarfile.TarFile, name: str, member_of: Callable[[str], str]) -> BlobSource:
    members = {m.name.lstrip("./") if m.name.startswith("./") else m.name: m for m in archive.getmembers()}

    def member(key: str) -> tarfile.TarInfo:
        found = members.get(key)
        if found is None or not found.isreg():
            raise FormatError(f"{name}: {key} is missing from the archive")
        return found

    def open_(digest_or_name: str) -> BinaryIO:
        stream = archive.extractfile(member(member_of(digest_or_name)))
        assert stream is not None
        return stream  # type: ignore[return-value]

    def read(digest_or_name: str) -> bytes:
        m = member(member_of(digest_or_name))
        if m.size > MAX_JSON:
            raise FormatError(f"{name}: {m.name} is too large for a manifest or config")
        with open_(digest_or_name) as f:
            return f.read()

    return BlobSource(name, read, open_)


def split_reference(text: str, scheme: str) -> tuple[str, str | None]:
    """`PATH[:TAG]` after the scheme: the tag is what follows the last ':' unless PATH itself exists."""
    rest = text[len(scheme) + 1 :]
    if os.path.exists(rest) or ":" not in rest:
        return rest, None
    path, _, tag = rest.rpartition(":")
    return path, tag or None


def open_source(reference: str, platforms: list[str] | None = None) -> list[SourceImage]:
    """Resolve `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker-archive:FILE` to one image per platform."""
    if reference.startswith("oci:"):
        path, tag = split_reference(reference, "oci")
        root = Path(path)
        if not (root / oci.INDEX_FILE).is_file():
            raise UsageError(f"{path}: not an OCI image layout (no index.json)")
        store = _layout_source(root)
        index = parse_json((root / oci.INDEX_FILE).read_bytes(), f"{path}/index.json")
        return _resolve_index(index, tag, store, platforms)
    if reference.startswith("oci-archive:"):
        path, tag = split_reference(reference, "oci-archive")
        archive = _open_archive(path)
        store = _archive_source(archive, path, lambda d: f"blobs/sha256/{digest_hex(d)}" if d.startswith("sha256:") else d)
        index = parse_json(store._read(oci.INDEX_FILE), f"{path}: index.json")
        return _resolve_index(index, tag, store, platforms)
    if reference.startswith("docker-archive:"):
        path, tag = split_reference(reference, "docker-archive")
        return select_platforms(_docker_archive(path, tag), platforms, path)
    raise UsageError(f"{reference}: use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE")


def _open_archive(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such archive") from None
    except (tarfile.TarError, OSError) as exc:
        raise FormatError(f"{path}: not a readable archive ({exc})") from None


def _resolve_index(index: Json, tag: str | None, store: BlobSource, platforms: list[str] | None) -> list[SourceImage]:
    manifests = [Descriptor.from_json(d, f"{store.name}: index.json") for d in index.get("manifests") or []]
    if tag is not None:
        manifests = [d for d in manifests if d.annotations.get(oci.REF_NAME) == tag]
        if not manifests:
            raise UsageError(f"{store.name}: no image tagged {tag!r}")
    if not manifests:
        raise FormatError(f"{store.name}: the index lists no image")
    if len(manifests) > 1 and tag is None and not all(d.platform for d in manifests):
        raise UsageError(f"{store.name}: holds {len(manifests)} images; name one with :TAG")
    images = []
    for desc in manifests:
        images += _resolve(desc, store, platforms, depth=0)
    return select_platforms(images, platforms, store.name)


def _resolve(desc: Descriptor, store: BlobSource, platforms: list[str] | None, depth: int) -> list[SourceImage]:
    if depth > 4:
        raise FormatError(f"{store.name}: indexes nested too deeply")
    doc, raw = store.read_json(desc.digest, "manifest")
    media_type = doc.get("mediaType") or desc.media_type
    if media_type in oci.INDEX_TYPES or "manifests" in doc:
        out = []
        for child in doc.get("manifests") or []:
            child_desc = Descriptor.from_json(child, f"{store.name}: index {desc.digest}")
            if child_desc.platform and child_desc.platform.get("os") == "unknown":
                continue  # attestation manifests (BuildKit) are not images
            out += _resolve(child_desc, store, platforms, depth + 1)
        return out
    config_desc = Descriptor.from_json(doc.get("config") or {}, f"{store.name}: manifest {desc.digest}")
    _, config_bytes = store.read_json(config_desc.digest, "config")
    layers = [Descriptor.from_json(layer, f"{store.name}: manifest {desc.digest}") for layer in doc.get("layers") or []]
    config = parse_json(config_bytes, "config")
    return [SourceImage(manifest=doc, manifest_descriptor=desc, config_bytes=config_bytes, layers=layers,
                        open_blob=store.open, platform=image_platform(desc.platform, config))]


def _docker_archive(path: str, tag: str | None) -> list[SourceImage]:
    archive = _open_archive(path)
    store = _archive_source(archive, path, lambda name: name)
    entries = json.loads(store._read("manifest.json"))
    if not isinstance(entries, list) or not entries:
        raise FormatError(f"{path}: manifest.json lists no image")
    if tag is not None:
        entries = [e for e in entries if tag in (e.get("RepoTags") or []) or any(
            t.endswith(":" + tag) for t in e.get("RepoTags") or [])]
        if not entries:
            raise UsageError(f"{path}: no image tagged {tag!r}")
    if len(entries) > 1:
        raise UsageError(f"{path}: holds {len(entries)} images; name one with :TAG")
    entry = entries[0]
    config_bytes = store._read(entry["Config"])
    layers = []
    for name in entry.get("Layers") or []:
        member = archive.getmember(name)
        layers.append(Descriptor(media_type=oci.DOCKER_LAYER_TAR, digest=name, size=member.size))
    config = parse_json(config_bytes, f"{path}: {entry['Config']}")
    manifest = {"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST, "config": {
        "mediaType": oci.DOCKER_CONFIG, "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        "size": len(config_bytes)}, "layers": []}
    raw = dumps(manifest)
    desc = Descriptor(oci.DOCKER_MANIFEST, "sha256:" + hashlib.sha256(raw).hexdigest(), len(raw))
    return [SourceImage(manifest=manifest, manifest_descriptor=desc, config_bytes=config_bytes, layers=layers,
                        open_blob=store.open, platform=image_platform(None, config))]


# --- target -------------------------------------------------------------------------------------------


class LayoutWriter:
    """Write an OCI image layout: blobs under blobs/sha256, then oci-layout and index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"

    def prepare(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        digest = hashlib.sha256(data).hexdigest()
        target = self.blobs / digest
        if not target.is_file():
            with atomic_output(target) as f:
                f.write(data)
        return Descriptor(media_type=media_type, digest=f"sha256:{digest}", size=len(data), **extra)

    def put_json(self, doc: Json, media_type: str, **extra: Any) -> Descriptor:
        return self.put_bytes(dumps(doc), media_type, **extra)

    def put_stream(self, stream: BinaryIO, digest: str, what: str) -> Path:
        """Copy a blob from a stream (unless it is there), checking it against `digest`; atomic."""
        target = self.blobs / digest_hex(digest)
        if target.is_file():
            return target
        check = hashlib.sha256()
        with atomic_output(target) as out:
            while block := stream.read(1 << 20):
                check.update(block)
                out.write(block)
            if "sha256:" + check.hexdigest() != digest:
                raise FormatError(f"{what} {digest}: content does not match its digest")
        return target

    def put_file(self, path: Path, digest_hex_: str) -> Path:
        """Place a blob file already named by its digest (a hardlink when possible)."""
        target = self.blobs / digest_hex_
        if path.resolve() != target.resolve():
            tmp = self.blobs / f".{digest_hex_}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        return target

    def write_index(self, manifests: list[Descriptor]) -> None:
        with atomic_output(self.root / oci.OCI_LAYOUT_FILE) as f:
            f.write(dumps(oci.OCI_LAYOUT_VERSION))
        existing: list[Json] = []
        index_path = self.root / oci.INDEX_FILE
        if index_path.is_file():  # keep other tags already in the layout
            try:
                existing = [d for d in json.loads(index_path.read_bytes()).get("manifests", [])
                            if d.get("annotations", {}).get(oci.REF_NAME) not in
                            {m.annotations.get(oci.REF_NAME) for m in manifests if m.annotations.get(oci.REF_NAME)}]
            except (ValueError, AttributeError):
                existing = []
        doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": existing + [m.to_json() for m in manifests]}
        with atomic_output(index_path) as f:
            f.write(dumps(doc))
