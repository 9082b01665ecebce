"""OCI and Docker image strings Nydus images use: media types, annotation keys, layout file names.

References: ../shared/reference/oci-packaging.md §1.1-§1.5, §2.2; OCI image-spec (image-layout.md).
"""

from __future__ import annotations

from construct import Bytes, Struct

# OCI image layout
OCI_LAYOUT_FILE = "oci-layout"
OCI_LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"

# media types
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"  # the Nydus manifest's config in a merged index
NYDUS_MANIFEST_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"  # artifactType in a merged index

DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

# layer media types that carry a tar (plain, gzip or zstd: the tar source detects which by content).
# Non-distributable (OCI, deprecated in image-spec 1.1 but still written) and foreign (Docker) layers are
# tars too; registries are merely asked not to upload them.
RESTRICTED_LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
TAR_LAYER_TYPES = frozenset({OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_TAR, DOCKER_LAYER_GZIP,
                             DOCKER_LAYER_ZSTD}) | RESTRICTED_LAYER_TYPES

# what a descriptor added to a manifest carries, by the manifest's media type family: (config, gzip layer)
FAMILY_TYPES = {OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER_GZIP), DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER_GZIP)}

# annotations (containerd copies containerd.io/snapshot/* into snapshot labels)
NYDUS_BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
NYDUS_SOURCE_DIGEST_ANNOTATION = "containerd.io/snapshot/nydus-source-digest"
NYDUS_EMPTY_LAYER_ANNOTATION = "containerd.io/snapshot/nydus-empty-layer"
# on each converted blob layer: the source layer digest and the build options, so that a later conversion
# into the same repository can reuse the blob instead of converting the layer again
SOURCE_LAYER_ANNOTATION = "io.github.nydus-py.source-layer"
BUILD_OPTIONS_ANNOTATION = "io.github.nydus-py.build-options"
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"  # legacy platform.os.features marker: read, never written
FS_VERSION = "6"

# the bootstrap layer (a gzip'd tar)
BOOTSTRAP_DIR = "image"
BOOTSTRAP_ENTRY = "image/image.boot"
BLOB_META_SUFFIX = ".blob.meta"

# history entries the converter adds
HISTORY_BOOTSTRAP = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
HISTORY_EMPTY_LAYER = {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"  # 1024 zero bytes


# --- the USTAR header Go's archive/tar writes (the bootstrap layer's tar) -------------------------------

UstarHeader = Struct(  # POSIX ustar header, 512 B; numeric fields kept as the raw octal text
    "name" / Bytes(100),
    "mode" / Bytes(8),  # Go: 7 octal digits + NUL
    "uid" / Bytes(8),
    "gid" / Bytes(8),
    "size" / Bytes(12),  # 11 octal digits + NUL
    "mtime" / Bytes(12),
    "chksum" / Bytes(8),  # Go: 6 octal digits, NUL, space
    "typeflag" / Bytes(1),
    "linkname" / Bytes(100),
    "magic" / Bytes(6),  # "ustar\0"
    "version" / Bytes(2),  # "00"
    "uname" / Bytes(32),
    "gname" / Bytes(32),
    "devmajor" / Bytes(8),
    "devminor" / Bytes(8),
    "prefix" / Bytes(155),
    "pad" / Bytes(12),
)
assert UstarHeader.sizeof() == 512
USTAR_CHKSUM_FIELD = slice(148, 156)  # the bytes the checksum is computed without (read as spaces)


def _octal(value: int, width: int) -> bytes:
    """`width` bytes: octal digits then NUL (Go's formatOctal)."""
    return b"%0*o\0" % (width - 1, value)


def encode_ustar_header(name: str, *, mode: int, size: int, typeflag: bytes) -> bytes:
    """A header as Go's archive/tar writes it for the bootstrap layer (uid/gid 0, mtime 0, no names)."""
    fields = {
        "name": name.encode().ljust(100, b"\0"), "mode": _octal(mode, 8), "uid": _octal(0, 8), "gid": _octal(0, 8),
        "size": _octal(size, 12), "mtime": _octal(0, 12), "chksum": b" " * 8, "typeflag": typeflag,
        "linkname": bytes(100), "magic": b"ustar\0", "version": b"00", "uname": bytes(32), "gname": bytes(32),
        "devmajor": _octal(0, 8), "devminor": _octal(0, 8), "prefix": bytes(155), "pad": bytes(12),
    }
    checksum = sum(UstarHeader.build(fields))
    fields["chksum"] = b"%06o\0 " % checksum
    return UstarHeader.build(fields)  # type: ignore[no-any-return]
