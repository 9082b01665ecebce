"""OCI and Docker image strings Nydus images use: media types, annotation keys, layout file names.

References: docs/oci.md §1.1-§1.5, §2.2; OCI image-spec (image-layout.md).
"""

from __future__ import annotations

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
# the layers an OCI-reference (zran) image can point into: gzip'd tars a registry distributes
ZRAN_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, DOCKER_LAYER_GZIP})
TAR_LAYER_TYPES = frozenset({OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_TAR, DOCKER_LAYER_GZIP,
                             DOCKER_LAYER_ZSTD}) | RESTRICTED_LAYER_TYPES

# what a descriptor added to a manifest carries, by the manifest's media type family: (config, gzip layer)
FAMILY_TYPES = {OCI_MANIFEST: (OCI_CONFIG, OCI_LAYER_GZIP), DOCKER_MANIFEST: (DOCKER_CONFIG, DOCKER_LAYER_GZIP)}

# annotations (containerd copies containerd.io/snapshot/* into snapshot labels)
NYDUS_BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
# a zran (OCI-reference) blob layer: the original gzip layer its chunks point into (nydus-snapshotter
# pkg/label/label.go NydusRefLayer)
NYDUS_REF_ANNOTATION = "containerd.io/snapshot/nydus-ref"
NYDUS_FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
NYDUS_SOURCE_DIGEST_ANNOTATION = "containerd.io/snapshot/nydus-source-digest"
NYDUS_EMPTY_LAYER_ANNOTATION = "containerd.io/snapshot/nydus-empty-layer"
# on each converted blob layer: the source layer digest and the build options, so that a later conversion
# into the same repository can reuse the blob instead of converting the layer again
SOURCE_LAYER_ANNOTATION = "io.github.nydus-py.source-layer"
CHUNK_DICT_ANNOTATION = "io.github.nydus-py.chunk-dict"  # "true" on a chunk dictionary's blob an image lists
BUILD_OPTIONS_ANNOTATION = "io.github.nydus-py.build-options"
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"  # legacy platform.os.features marker: read, never written
FS_VERSION = "6"

# the bootstrap layer (a gzip'd tar)
BOOTSTRAP_DIR = "image"
BOOTSTRAP_ENTRY = "image/image.boot"
BLOB_META_SUFFIX = ".blob.meta"

# history entries the converter adds
HISTORY_BOOTSTRAP = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
HISTORY_CHUNK_DICT = {"created_by": "nydus-py", "comment": "Chunk dictionary blob"}  # ours: a blob the image references
HISTORY_EMPTY_LAYER = {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"  # 1024 zero bytes
