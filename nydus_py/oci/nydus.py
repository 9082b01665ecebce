"""Reading Nydus images out of an OCI layout: the bootstrap layer, the blobs, and the manifest rules.

The rules (../shared/reference/oci-packaging.md §1.2-§1.4, what nydusify check and the snapshotter need):
blob layers have the Nydus media type and `nydus-blob: "true"`; the last layer is a gzip'd tar with
`nydus-bootstrap: "true"` holding `image/image.boot`; `len(diff_ids) == len(layers)`, a blob's diff_id is
its digest and the bootstrap's is the digest of the uncompressed tar; every blob id in the merged bootstrap
is a layer digest of the manifest; every blob is present and matches its digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from nydus_py.errors import FormatError
from nydus_py.format import oci
from nydus_py.fsutil import file_sha256
from nydus_py.oci.layout import SourceImage, digest_hex, open_source, platform_text, split_reference
from nydus_py.validate import Defect

MAX_BOOTSTRAP_TAR = 4 << 30


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
    """(image/image.boot, sha256 of the uncompressed tar) from the manifest's last layer."""
    if not image.layers:
        raise FormatError(f"manifest {image.manifest_descriptor.digest}: has no layers")
    layer = image.layers[-1]
    digest = hashlib.sha256()
    boot = None
    try:
        with image.open_blob(layer.digest) as raw, gzip.GzipFile(fileobj=raw) as plain:
            data = plain.read(MAX_BOOTSTRAP_TAR + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"bootstrap layer {layer.digest}: not a gzip'd tar ({exc})") from None
    if len(data) > MAX_BOOTSTRAP_TAR:
        raise FormatError(f"bootstrap layer {layer.digest}: larger than {MAX_BOOTSTRAP_TAR} bytes")
    digest.update(data)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name.lstrip("./") in (oci.BOOTSTRAP_ENTRY, "image.boot") and member.isreg():
                    f = tar.extractfile(member)
                    assert f is not None
                    boot = f.read()
    except tarfile.TarError as exc:
        raise FormatError(f"bootstrap layer {layer.digest}: corrupt tar ({exc})") from None
    if boot is None:
        raise FormatError(f"bootstrap layer {layer.digest}: has no {oci.BOOTSTRAP_ENTRY}")
    return boot, "sha256:" + digest.hexdigest()


def open_nydus_images(reference: str, platforms: list[str] | None = None) -> list[NydusImage]:
    """Every Nydus manifest of `oci:DIR[:TAG]` (the plain manifests of a merged index are skipped)."""
    images = [i for i in open_source(reference, platforms) if has_bootstrap_layer(i)]
    if not images:
        raise FormatError(f"{reference}: no Nydus image (no manifest ends with a nydus-bootstrap layer)")
    layout = Path(split_reference(reference, "oci")[0])
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
    config = image.source.config
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layers):
        out.append(Defect(f"{where} config", 0, f"{len(diff_ids)} diff_ids for {len(layers)} layers"))
    else:
        for i, (layer, diff_id) in enumerate(zip(layers[:-1], diff_ids, strict=False)):
            if diff_id != layer.digest:
                out.append(Defect(f"{where} config", 0, f"diff_ids[{i}] is not the blob layer's digest"))
        if diff_ids[-1] != image.bootstrap_tar_digest:
            out.append(Defect(f"{where} config", 0, "the last diff_id is not the digest of the bootstrap tar"))
    digests = {layer.digest for layer in layers}
    for blob_id in blob_ids:
        if f"sha256:{blob_id}" not in digests:
            out.append(Defect(where, 0, f"the bootstrap references blob {blob_id}, which is not a layer"))
    for i, layer in enumerate(layers):
        path = image.layout / "blobs" / "sha256" / digest_hex(layer.digest)
        if not path.is_file():
            out.append(Defect(f"{where} layer {i}", 0, f"blob {layer.digest} is missing from the layout"))
            continue
        if path.stat().st_size != layer.size or file_sha256(path) != digest_hex(layer.digest):
            out.append(Defect(f"{where} layer {i}", 0, f"blob {layer.digest} does not match its digest and size"))
    return out

