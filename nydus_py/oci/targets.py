"""Targets: an OCI image layout written through one `OutputDir` transaction, or a registry (pushed from a
temporary layout).

`open_target(ref)` is the one way in. Blobs go to `blobs/sha256/` (an existing blob is kept only after it is
verified), then `oci-layout`, and `index.json` last, atomically: the new entries replace those of the same
tag and platform already there (the index is decoded as a typed document first: a malformed one stops the
command before anything is published). A failure leaves the layout as it was (outdir.py).
References: OCI image-spec image-layout.md; OCI distribution-spec (push).
"""

from __future__ import annotations

import contextlib
import hashlib

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from nydus_py.errors import FormatError, UsageError
from nydus_py.format import oci
from nydus_py.oci.documents import (MAX_DOCUMENT, Descriptor, IndexDoc, Json, ManifestDoc, decode, dumps, is_index,
                                   referenced_layers, referrers_tag)
from nydus_py.oci.platforms import platform_of
from nydus_py.oci.ref import ImageRef, Transport
from nydus_py.oci.ref import Reference
from nydus_py.oci.images import LayoutStore, RegistryOptions, VerifiedStream
from nydus_py.util.fsutil import remove_staging, staging_dir
from nydus_py.util.outdir import OutputDir

if TYPE_CHECKING:  # the HTTP stack is imported only by commands that reach a registry
    from nydus_py.oci.registry import RegistryClient


class LayoutWriter:
    """Write an OCI image layout inside an `OutputDir` transaction."""

    def __init__(self, out: OutputDir) -> None:
        self.out = out
        self.root = out.path
        self.blobs = out.path / "blobs" / "sha256"
        existing = out.read_file(oci.INDEX_FILE, MAX_DOCUMENT)
        # decoded before anything is written: a malformed index.json stops the command here
        self._existing = decode(existing, IndexDoc, f"{self.root}/index.json") if existing is not None else None

    @property
    def work(self) -> Path:
        return self.out.staging

    def put_file(self, tmp: Path, digest_hex: str, size: int) -> Path:
        """Publish a staged blob file named by its sha256."""
        return self.out.publish_blob(tmp, digest_hex, size)

    def put_bytes(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        digest = hashlib.sha256(data).hexdigest()
        if not self.out.has_verified_blob(f"blobs/sha256/{digest}", digest, len(data)):
            f, tmp = self.out.temporary(digest)
            with f:
                f.write(data)
            self.out.publish(tmp, f"blobs/sha256/{digest}")
        return Descriptor(media_type=media_type, digest=f"sha256:{digest}", size=len(data), **extra)

    def put_json(self, doc: Json, media_type: str, **extra: Any) -> Descriptor:
        return self.put_bytes(dumps(doc), media_type, **extra)

    def put_stream(self, stream: VerifiedStream, desc: Descriptor) -> Path:
        """Copy a verified stream into the layout (unless a verified copy is there)."""
        if self.out.has_verified_blob(f"blobs/sha256/{desc.hex}", desc.hex, desc.size):
            stream.release()
            return self.blobs / desc.hex
        f, tmp = self.out.temporary(desc.hex)
        try:
            with f:
                while block := stream.read(1 << 20):
                    f.write(block)
            stream.verify()
        finally:
            stream.release()
        return self.out.publish(tmp, f"blobs/sha256/{desc.hex}")

    def write_index(self, manifests: list[Descriptor]) -> None:
        """`oci-layout`, then `index.json` last: earlier entries of the same tag (or, untagged, the same
        manifest or platform) are replaced, others kept."""
        self.out.publish_bytes(dumps(oci.OCI_LAYOUT_VERSION), oci.OCI_LAYOUT_FILE)
        kept: list[Json] = []
        if self._existing is not None:
            for entry in self._existing.manifests:
                desc = Descriptor.of(entry)
                if not any(_same_entry(desc, new) for new in manifests):
                    kept.append(msgspec.to_builtins(entry))
        doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": kept + [m.to_json() for m in manifests]}
        self.out.publish_bytes(dumps(doc), oci.INDEX_FILE)


def _same_entry(old: Descriptor, new: Descriptor) -> bool:
    """Whether `new` takes the place of `old` in index.json: the same tag; untagged, the same manifest or
    the same platform."""
    old_tag, new_tag = old.annotations.get(oci.REF_NAME), new.annotations.get(oci.REF_NAME)
    if old_tag or new_tag:
        return old_tag == new_tag
    if old.digest == new.digest:
        return True
    return old.platform is not None and new.platform is not None and platform_of(old.platform) == platform_of(
        new.platform)


@dataclass(slots=True)
class Target:
    """Where an image goes: `writer` (a layout in a transaction); for a registry, `remote` and `client` say
    where the layout is pushed after it is complete."""

    ref: ImageRef
    writer: LayoutWriter
    tag: str | None
    remote: Reference | None = None
    client: RegistryClient | None = None

    @property
    def layout(self) -> Path | None:
        return None if self.remote is not None else self.writer.root

    def publish(self, top: Descriptor, *, tag: str | None = None, mount_from: str | None = None,
                foreign: dict[str, ForeignBlob] | None = None) -> tuple[Descriptor, PushStats | None]:
        """The last step of every command that writes an image: `top` (a manifest or index already in the
        layout) goes into index.json under `tag` (default: the target's), then, for a registry target, the
        layout is pushed (`mount_from`: a repository of the same registry to mount blobs from). Returns the
        index entry and the push statistics (None for a layout)."""
        tag = tag or self.tag
        entry = Descriptor(top.media_type, top.digest, top.size, annotations={oci.REF_NAME: tag} if tag else {})
        self.writer.write_index([entry])
        if self.remote is None or self.client is None:
            return entry, None
        return entry, push_layout(self.writer.root, top, self.remote, self.client, mount_from=mount_from,
                                  foreign=foreign)


@contextlib.contextmanager
def open_target(ref: ImageRef, registry: RegistryOptions | None = None,
                source_dirs: tuple[Path, ...] = ()) -> Iterator[Target]:
    """The one way to write an image: a layout (`oci:DIR[:TAG]`, in place, transactionally) or a registry
    (a temporary layout, removed afterwards). An output inside one of `source_dirs` is refused."""
    if ref.transport is Transport.OCI:
        assert ref.path is not None
        refuse_inside(Path(ref.path), source_dirs)
        with OutputDir.open(ref.path) as out:
            yield Target(ref=ref, writer=LayoutWriter(out), tag=ref.tag)
        return
    if ref.transport is not Transport.DOCKER:
        raise UsageError(f"{ref}: a target is oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG]")
    remote = ref.registry_ref()
    # the layout pushed from, in a directory of this process's (one a killed run left is removed by the next)
    tmp = staging_dir(tempfile.gettempdir(), "nydus-py-push-")
    try:
        with OutputDir.open(tmp / "layout") as out:
            yield Target(ref=ref, writer=LayoutWriter(out), tag=remote.tag or "latest", remote=remote,
                         client=(registry or RegistryOptions()).client(remote.registry))
    finally:
        remove_staging(tmp)


def refuse_inside(output: Path, sources: tuple[Path, ...]) -> None:
    """An output directory inside a source directory would end up in its own image."""
    out = Path(os.path.realpath(output))
    for source in sources:
        src = Path(os.path.realpath(source))
        if src.is_dir() and (out == src or src in out.parents):
            raise UsageError(f"{output}: the output directory is inside the source {source}")


# --- pushing a layout -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PushStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    existing: int = 0
    existing_bytes: int = 0
    mounted: int = 0


@dataclass(frozen=True, slots=True)
class ForeignBlob:
    """A blob an image lists that is not in the layout pushed (a chunk dictionary's, in a repository of the
    same registry): mounted from `repository`, else streamed by `open`."""

    repository: str
    open: Callable[[], VerifiedStream]


def add_referrer(client: RegistryClient, repo: str, subject: str, desc: Descriptor, data: bytes) -> None:
    """List the manifest `desc` under the referrers tag of `subject` (distribution-spec v1.1 "Pushing Manifests
    with Subject", for a registry without the referrers API): the tag's index, or a new one, with a descriptor
    carrying the manifest's artifactType (else its config's media type) and annotations; nothing twice."""
    doc = decode(data, ManifestDoc, f"{repo}: {desc.digest}")
    tag = referrers_tag(subject)
    manifests: list[Json] = []
    if client.manifest_exists(repo, tag):
        existing, _, _ = client.get_manifest(repo, tag)
        try:
            manifests = [msgspec.to_builtins(m) for m in decode(existing, IndexDoc, f"{repo}:{tag}").manifests]
        except FormatError:  # not an index: as if there were no referrers (the spec's rule)
            manifests = []
    if any(m.get("digest") == desc.digest for m in manifests):
        return
    entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations=doc.annotations or {},
                       artifact_type=doc.artifact_type or doc.config.media_type).to_json()
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [*manifests, entry]}
    client.put_manifest(repo, tag, dumps(index), oci.OCI_INDEX)


def push_layout(root: Path, top: Descriptor, ref: Reference, client: RegistryClient,
                mount_from: str | None = None, foreign: dict[str, ForeignBlob] | None = None) -> PushStats:
    """Upload the image `top` of the layout at `root` to `ref` (tag or digest); every blob read from the
    layout is verified as it goes. `foreign` blobs, by digest, are not in the layout."""
    foreign = foreign or {}
    store = LayoutStore(root, str(root))
    stats = PushStats()
    visited: set[str] = set()

    def push(desc: Descriptor, depth: int) -> bytes:
        data = store.read(desc, "manifest")
        if desc.digest in visited:
            return data
        visited.add(desc.digest)
        if depth > 4:
            raise FormatError(f"{root}: indexes nested too deeply")
        if is_index(desc.media_type, data):
            for child in decode(data, IndexDoc, f"{root}: {desc.digest}").manifests:
                push(Descriptor.of(child), depth + 1)
        else:
            doc = decode(data, ManifestDoc, f"{root}: {desc.digest}")
            layers = [Descriptor.of(layer) for layer in doc.layers]
            # a zran image's originals go with it, though no manifest lists them (docs/oci.md §1.7)
            originals = [Descriptor(oci.OCI_LAYER_GZIP, digest, store.size(digest, "original layer"))
                         for digest in referenced_layers(layers)]
            for blob_desc in [Descriptor.of(doc.config), *layers, *originals]:

                def opener(d: Descriptor = blob_desc) -> VerifiedStream:
                    return store.open(d)

                elsewhere = foreign.get(blob_desc.digest)
                how = client.push_blob(ref.repository, blob_desc.digest, blob_desc.size,
                                       elsewhere.open if elsewhere else opener,
                                       mount_from=elsewhere.repository if elsewhere else mount_from)
                if how == "exists":
                    stats.existing += 1
                    stats.existing_bytes += blob_desc.size
                elif how == "mounted":
                    stats.mounted += 1
                else:
                    stats.uploaded += 1
                    stats.uploaded_bytes += blob_desc.size
        subject_api = client.put_manifest(ref.repository, desc.digest, data, desc.media_type)
        if not is_index(desc.media_type, data):
            subject = decode(data, ManifestDoc, f"{root}: {desc.digest}").subject
            if subject is not None and subject_api is None:
                add_referrer(client, ref.repository, subject.digest, desc, data)
        return data

    data = push(top, 0)
    if ref.tag:
        client.put_manifest(ref.repository, ref.tag, data, top.media_type)
    return stats


__all__ = ["ForeignBlob", "LayoutWriter", "PushStats", "Target", "add_referrer", "open_target", "push_layout",
           "refuse_inside"]
