"""Reading Nydus images out of an OCI layout: the bootstrap layer, the blobs, and the manifest rules.

The rules (docs/oci.md §1.2-§1.4, what nydusify check and the snapshotter need):
blob layers have the Nydus media type and `nydus-blob: "true"`; the last layer is a gzip'd tar with
`nydus-bootstrap: "true"` holding `image/image.boot`; `len(diff_ids) == len(layers)`, a blob's diff_id is
its digest and the bootstrap's is the digest of the uncompressed tar; every blob id in the merged bootstrap
is a layer digest of the manifest; every blob is present and matches its digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.errors import BrokenImageError, FormatError, UsageError
from nydus_py.format import oci
from nydus_py.bootstrap.reader import MAX_BOOTSTRAP_SIZE
from nydus_py.read.locate import OpenedImage, locate_blobs, open_image
from nydus_py.sources.tarstream import TarReader
from nydus_py.util.fsutil import Readable
from nydus_py.oci.documents import Json, digest_hex, referenced_layers
from nydus_py.oci.platforms import platform_text
from nydus_py.oci.ref import ImageRef, Transport, parse_image_ref
from nydus_py.oci.images import SourceImage, open_regular, open_source
from nydus_py.read.validate import Defect



if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

@dataclass(slots=True)
class NydusImage:
    source: SourceImage
    layout: Path
    bootstrap: bytes
    bootstrap_tar_digest: str  # sha256 of the uncompressed bootstrap tar

    @property
    def name(self) -> str:
        return platform_text(self.source.platform)


def read_bootstrap_layer(image: SourceImage) -> tuple[bytes, str]:
    """(image/image.boot, sha256 of the uncompressed tar) from the manifest's last layer, streamed: the layer is
    verified against its digest, the tar hashed as it is read, the bootstrap at most MAX_BOOTSTRAP_SIZE."""
    if not image.layers:
        raise FormatError(f"manifest {image.manifest_descriptor.digest}: has no layers")
    layer = image.layers[-1]
    where = f"bootstrap layer {layer.digest}"
    raw = image.open_blob(layer)
    boot = None
    try:
        plain = _Hashing(gzip.GzipFile(fileobj=raw))
        reader = TarReader(plain, where)
        for member in reader.members():
            if _bootstrap_entry(member.name) and member.is_regular and member.sparse is None:
                if member.size > MAX_BOOTSTRAP_SIZE:
                    raise FormatError(f"{where}: {oci.BOOTSTRAP_ENTRY} of {member.size} bytes is too big")
                boot = reader.read(member.size)
        raw.verify()
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"{where}: not a gzip'd tar ({exc})") from None
    finally:
        raw.release()
    if boot is None:
        raise FormatError(f"{where}: has no {oci.BOOTSTRAP_ENTRY}")
    return boot, "sha256:" + plain.hash.hexdigest()


def _bootstrap_entry(name: bytes) -> bool:
    """`image/image.boot` (as the converter writes it; `./` before it, or the bare `image.boot` of older ones)."""
    return name.removeprefix(b"./") in (oci.BOOTSTRAP_ENTRY.encode(), b"image.boot")


class _Hashing(io.RawIOBase):
    """A stream that hashes what is read through it (sha256)."""

    def __init__(self, stream: Readable) -> None:
        super().__init__()
        self._stream = stream
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        data = self._stream.read(len(buffer))
        self.hash.update(data)
        buffer[: len(data)] = data
        return len(data)


def open_nydus_images(reference: ImageRef, platforms: list[str] | None = None) -> list[NydusImage]:
    """Every Nydus manifest of `oci:DIR[:TAG]` (the plain manifests of a merged index are skipped)."""
    if reference.transport is not Transport.OCI or reference.path is None:
        raise UsageError(f"{reference}: the read side takes oci:DIR[:TAG] layouts")
    images = [i for i in open_source(reference, platforms) if has_bootstrap_layer(i)]
    if not images:
        raise FormatError(f"{reference}: no Nydus image (no manifest ends with a nydus-bootstrap layer)")
    layout = reference.path
    out = []
    for image in images:
        boot, tar_digest = read_bootstrap_layer(image)
        out.append(NydusImage(source=image, layout=layout, bootstrap=boot, bootstrap_tar_digest=tar_digest))
    return out


def has_bootstrap_layer(image: SourceImage) -> bool:
    return bool(image.layers) and oci.NYDUS_BOOTSTRAP_ANNOTATION in image.layers[-1].annotations


def is_nydus_image(image: SourceImage) -> bool:
    """A Nydus manifest: it ends with a nydus-bootstrap layer, or its index entry says it is one (our
    `artifactType`, or nydusify's `platform.os.features: ["nydus.remoteimage.v1"]`)."""
    features = (image.platform or {}).get("os.features") or []
    return (has_bootstrap_layer(image) or image.manifest_descriptor.artifact_type == oci.NYDUS_MANIFEST_ARTIFACT
            or oci.NYDUS_OS_FEATURE in features)


def manifest_defects(image: NydusImage, blob_ids: list[str]) -> list[Defect]:
    """The manifest rules for one Nydus image whose merged bootstrap references `blob_ids`."""
    where = f"manifest {image.source.manifest_descriptor.digest[:19]} ({image.name})"
    out = []
    layers = image.source.layers
    manifest_type = image.source.manifest.get("mediaType") or image.source.manifest_descriptor.media_type
    if manifest_type not in oci.MANIFEST_TYPES:
        out.append(Defect(where, 0, f"mediaType {manifest_type!r} is not an image manifest"))
    for i, layer in enumerate(layers[:-1]):
        if layer.media_type != oci.NYDUS_BLOB or layer.annotations.get(oci.NYDUS_BLOB_ANNOTATION) != "true":
            out.append(Defect(f"{where} layer {i}", 0, f"a blob layer needs media type {oci.NYDUS_BLOB} and "
                              f"{oci.NYDUS_BLOB_ANNOTATION}: \"true\""))
    last = layers[-1]
    if last.media_type not in (oci.OCI_LAYER_GZIP, oci.DOCKER_LAYER_GZIP) or \
            last.annotations.get(oci.NYDUS_BOOTSTRAP_ANNOTATION) != "true":
        out.append(Defect(f"{where} layer {len(layers) - 1}", 0, "the last layer must be the gzip bootstrap layer "
                          f"with {oci.NYDUS_BOOTSTRAP_ANNOTATION}: \"true\""))
    rootfs = image.source.config_doc.rootfs
    diff_ids = list(rootfs.diff_ids) if rootfs is not None else []
    if len(diff_ids) != len(layers):
        out.append(Defect(f"{where} config", 0, f"{len(diff_ids)} diff_ids for {len(layers)} layers"))
    else:
        for i, (layer, diff_id) in enumerate(zip(layers[:-1], diff_ids, strict=False)):
            if diff_id != layer.digest:
                out.append(Defect(f"{where} config", 0, f"diff_ids[{i}] is not the blob layer's digest"))
        if diff_ids[-1] != image.bootstrap_tar_digest:
            out.append(Defect(f"{where} config", 0, "the last diff_id is not the digest of the bootstrap tar"))
    originals = referenced_layers(layers)
    digests = {layer.digest for layer in layers} | set(originals)
    for blob_id in blob_ids:
        if f"sha256:{blob_id}" not in digests:
            out.append(Defect(where, 0, f"the bootstrap references blob {blob_id}, which is not a layer"))
    for i, layer in enumerate(layers):
        problem = _blob_problem(image.layout, layer.digest, layer.size)
        if problem:
            out.append(Defect(f"{where} layer {i}", 0, f"blob {layer.digest} {problem}"))
    for digest, i in originals.items():
        try:
            digest_hex(digest)
        except FormatError:
            out.append(Defect(f"{where} layer {i}", 0, f"{oci.NYDUS_REF_ANNOTATION} {digest!r} is not a sha256 digest"))
            continue
        problem = _blob_problem(image.layout, digest, None)
        if problem:
            out.append(Defect(f"{where} layer {i}", 0, f"the original layer {digest} it references {problem}"))
    return out


def _blob_problem(layout: Path, digest: str, size: int | None) -> str | None:
    """Why the layout's blob `digest` is not a regular file (of `size` bytes when given) hashing to it (None:
    it is)."""
    try:
        dir_fd = os.open(layout / "blobs" / "sha256", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return "is missing from the layout"
    try:
        fd = open_regular(dir_fd, digest_hex(digest), digest)
    except FormatError as exc:
        return "is missing from the layout" if "is missing" in str(exc) else "is not a regular file"
    finally:
        os.close(dir_fd)
    hasher = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if size is not None and os.fstat(f.fileno()).st_size != size:
            return "does not match its digest and size"
        while block := f.read(1 << 20):
            hasher.update(block)
    return None if "sha256:" + hasher.hexdigest() == digest else "does not match its digest and size"


def is_layout_argument(image: str) -> ImageRef | None:
    """IMAGE as an OCI layout reference: `oci:DIR[:TAG]`, or a directory with index.json and no bootstrap."""
    if image.partition(":")[0] in {t.value for t in Transport} and ":" in image:
        return parse_image_ref(image)
    path = Path(image)
    if path.is_dir() and not (path / "bootstrap").exists() and (path / oci.INDEX_FILE).is_file():
        return ImageRef(Transport.OCI, image, path=path)
    return None


def open_images(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None) -> list[OpenedImage]:
    """Every image IMAGE holds, for the read commands: one per Nydus manifest of an OCI layout, else the one
    bootstrap, blob or output directory (locate.py)."""
    return [opened for _, opened in open_platform_images(image, blob_dir)]


def open_platform_images(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None
                         ) -> list[tuple[Json | None, OpenedImage]]:
    """`open_images`, each with the platform of its manifest (None for a bootstrap, blob or output directory,
    which carry none)."""
    ref = is_layout_argument(os.fspath(image))
    if ref is None:
        return [(None, open_image(image, blob_dir))]
    return open_layout_images(ref)


def open_layout_images(ref: ImageRef) -> list[tuple[Json | None, OpenedImage]]:
    """Every Nydus image of the layout `oci:DIR[:TAG]`, opened, with the platform of its manifest."""
    return [(nydus.source.platform, _from_layout(nydus)) for nydus in open_nydus_images(ref)]


def open_first_image(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None) -> OpenedImage:
    """IMAGE's bootstrap and blobs; for an OCI layout with several platforms, the first one."""
    return open_images(image, blob_dir)[0]


def _from_layout(nydus: NydusImage) -> OpenedImage:
    dictionary = frozenset(layer.hex for layer in nydus.source.layers[:-1]
                           if layer.annotations.get(oci.CHUNK_DICT_ANNOTATION) == "true")
    try:
        bootstrap = read_bootstrap(nydus.bootstrap)
    except FormatError as exc:
        raise BrokenImageError(f"{nydus.layout} manifest {nydus.source.manifest_descriptor.digest} ({nydus.name}): "
                               f"bootstrap: {exc}") from None
    opened = OpenedImage(source=nydus.layout / oci.INDEX_FILE, bootstrap=bootstrap,
                         bootstrap_bytes=nydus.bootstrap, packaged=True,
                         container_defects=lambda blob_ids: manifest_defects(nydus, blob_ids),
                         dictionary_blobs=dictionary)
    locate_blobs(opened, [nydus.layout / "blobs" / "sha256"])
    return opened

