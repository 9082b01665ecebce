"""Built layers + merged bootstrap -> a Nydus OCI image: N blob layers, then the bootstrap layer, a config
whose diff_ids follow the layers, a manifest.

Blob layers: media type `application/vnd.oci.image.layer.nydus.blob.v1`, annotation
`containerd.io/snapshot/nydus-blob: "true"`, digest = blob id (the layer's diff_id too). The bootstrap
layer: a gzip'd tar with `image/`, `image/image.boot` (0444, mtime 0) and `image/<blob id>.blob.meta` per
layer with chunk data, as nydus-snapshotter's converter writes for fs v6; annotations nydus-bootstrap and
nydus-fs-version. The source config is patched only in `rootfs` and `history`.
References: docs/oci.md §1.3-§1.5, §2.2.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.errors import InternalError
from nydus_py.blob.reader import BlobReader, RandomAccess
from nydus_py.format import blobmeta, oci, tar
from nydus_py.image import BlobInfo
from nydus_py.oci.documents import Descriptor, Json
from nydus_py.oci.targets import LayoutWriter

GZIP_LEVEL = 6  # Go compress/gzip's default


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A Nydus blob layer as it goes into the manifest."""

    info: BlobInfo  # its entry in the bootstrap's blob table
    path: Path | None  # the blob file, or
    remote: RandomAccess | None  # where a reused blob already is
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def blob_id(self) -> str:
        """The layer's digest (hex): the blob file's sha256 (a zran blob's: its meta blob's)."""
        return self.info.file_id

    @property
    def size(self) -> int:
        return self.info.file_size

    @property
    def has_data(self) -> bool:
        """Chunk data, so a blob.meta cache file."""
        return self.info.chunk_count > 0

    @property
    def source(self) -> Path | RandomAccess:
        """Where the blob's bytes are read from."""
        found = self.path or self.remote
        if found is None:
            raise InternalError(f"blob {self.blob_id}: neither a file nor a remote blob")
        return found


def blob_meta_cache(source: Path | RandomAccess, info: BlobInfo | None = None) -> bytes:
    """`<blob id>.blob.meta`: the uncompressed chunk info array padded to 4 KiB, then the 4 KiB header (found
    through the TOC, or through `info`, the blob's table entry, for a blob without one)."""
    with BlobReader(source) as blob:
        header = blob.ci_header(info)
        data = blob.chunk_info_data(header)
        header_bytes = blob.read_at(header.offset, blobmeta.BLOB_CCT_HEADER_SIZE, "chunk info header")
    return data + bytes(blobmeta.cache_file_ci_size(len(data)) - len(data)) + header_bytes


def bootstrap_tar(bootstrap: bytes, blob_metas: list[tuple[str, bytes]]) -> bytes:
    """The bootstrap layer's tar, with USTAR headers as Go's archive/tar writes them."""
    out = io.BytesIO()
    out.write(tar.encode_tar_header(oci.BOOTSTRAP_DIR, 0, tar.TarDialect.GO_USTAR, mode=0o755, typeflag=b"5"))
    for name, data in [(oci.BOOTSTRAP_ENTRY, bootstrap),
                       *((f"{oci.BOOTSTRAP_DIR}/{hex_id}{oci.BLOB_META_SUFFIX}", meta) for hex_id, meta in blob_metas)]:
        out.write(tar.encode_tar_header(name, len(data), tar.TarDialect.GO_USTAR, mode=0o444))
        out.write(data)
        out.write(bytes(-len(data) % tar.TAR_BLOCK_SIZE))
    out.write(bytes(2 * tar.TAR_BLOCK_SIZE))  # two zero blocks end the archive; Go does not pad to a 10 KiB record
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def patched_config(base: Json, blobs: list[LayerBlob], bootstrap_diff_id: str,
                   layer_history: list[Json] | None) -> Json:
    """`base` with only `rootfs` and `history` replaced: diff_ids = blob digests + the bootstrap tar's;
    history gains entries for layers it lacks and one for the bootstrap layer."""
    config = copy.deepcopy(base)
    config["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{b.blob_id}" for b in blobs] + [bootstrap_diff_id]}
    dictionary = sum(1 for b in blobs if oci.CHUNK_DICT_ANNOTATION in b.annotations)  # they come last
    history = history_per_layer(config.get("history") if layer_history is None else layer_history,
                                len(blobs) - dictionary)
    config["history"] = [*history, *(dict(oci.HISTORY_CHUNK_DICT) for _ in range(dictionary)),
                         dict(oci.HISTORY_BOOTSTRAP)]
    return config


def history_per_layer(history: list[Json] | None, layers: int) -> list[Json]:
    """`history` with an entry added for each layer it lacks, so that it has one non-empty entry per layer
    (image-spec config.md: the non-empty entries correspond to the layers, in order)."""
    out = list(history or [])
    missing = layers - sum(1 for h in out if not h.get("empty_layer"))
    return out + [{"created_by": "nydus-py build"} for _ in range(max(0, missing))]


def write_nydus_image(writer: LayoutWriter, blobs: list[LayerBlob], bootstrap: bytes, base_config: Json, *,
                      docker_types: bool = False, layer_history: list[Json] | None = None,
                      config_media_type: str | None = None, subject: Descriptor | None = None
                      ) -> tuple[Descriptor, Json]:
    """Write the bootstrap layer, config and manifest of one image; returns (manifest descriptor, config)."""
    metas = [(b.blob_id, blob_meta_cache(b.source, b.info)) for b in blobs if b.has_data]
    tar = bootstrap_tar(bootstrap, metas)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    manifest_type = oci.DOCKER_MANIFEST if docker_types else oci.OCI_MANIFEST
    family_config_type, layer_type = oci.FAMILY_TYPES[manifest_type]
    boot_desc = writer.put_bytes(gzip_bytes(tar), layer_type, annotations={
        oci.NYDUS_BOOTSTRAP_ANNOTATION: "true", oci.NYDUS_FS_VERSION_ANNOTATION: oci.FS_VERSION})
    config = patched_config(base_config, blobs, diff_id, layer_history)
    config_type = config_media_type or family_config_type
    config_desc = writer.put_json(config, config_type)
    layers = [Descriptor(oci.NYDUS_BLOB, f"sha256:{b.blob_id}", b.size,
                         annotations={oci.NYDUS_BLOB_ANNOTATION: "true", **b.annotations}) for b in blobs]
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_desc.to_json(),
        "layers": [layer.to_json() for layer in [*layers, boot_desc]],
    }
    if subject is not None:  # OCI 1.1: the image this one is the Nydus twin of
        manifest["subject"] = subject.to_json()
    return writer.put_json(manifest, manifest_type), config
