"""Typed descriptions of a RAFS v6 image as a whole: its blobs, device slots and decoded bootstrap."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from nydus_py.format.blobmeta import BlobFeatures
from nydus_py.format.rafs import CipherAlgo, CompressAlgo, DigestAlgo, SuperFlags, compressor_of, digester_of
from nydus_py.model import ChunkRef, Tree


_BLOB_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_blob_digest(blob_id: str) -> bool:
    """May this blob id name a file, a cache entry or a URL? Only 64 lowercase hex digits (a sha256): nydusd
    accepts any 64-byte id, but an id from an image becomes a path only when it cannot leave its directory."""
    return _BLOB_DIGEST.fullmatch(blob_id) is not None


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One blob table entry (RafsV6Blob), decoded."""

    blob_id: str
    blob_index: int
    chunk_size: int
    chunk_count: int
    compressor: CompressAlgo
    digester: DigestAlgo
    features: BlobFeatures
    compressed_size: int  # the blob file's size
    uncompressed_size: int  # the device image's size
    ci_compressor: CompressAlgo
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    toc_size: int = 0
    toc_digest: bytes = bytes(32)
    meta_digest: bytes = bytes(32)
    meta_size: int = 0
    cipher: CipherAlgo = CipherAlgo.NONE

    def merged_entry(self, *, file_id: str, file_size: int, toc_digest: bytes, toc_size: int,
                     blob_index: int | None = None) -> BlobInfo:
        """The entry a plain or merged bootstrap records for this blob, given the blob file's id (sha256), size
        and TOC: no INLINED_FS_META (the bootstrap is not inside that file), and, when given, its index in
        the new table. A native blob takes the file's id and size; a separate (zran) blob keeps the original
        layer's id and size, and the file (its meta blob) becomes `blob_meta_digest`/`blob_meta_size`. The one
        rule for every builder, merge and reuse (docs/format.md §6, §11.9, §11.10; nydus
        `src/bin/nydus-image/merge.rs`)."""
        entry = replace(self, toc_digest=toc_digest, toc_size=toc_size,
                        features=self.features & ~BlobFeatures.INLINED_FS_META,
                        blob_index=self.blob_index if blob_index is None else blob_index)
        if self.is_separate:
            return replace(entry, meta_digest=bytes.fromhex(file_id), meta_size=file_size)
        return replace(entry, blob_id=file_id, compressed_size=file_size)

    @property
    def is_separate(self) -> bool:
        """Whether the blob's data lives in another file (a zran blob: the original gzip layer)."""
        return bool(self.features & BlobFeatures.SEPARATE)

    @property
    def file_id(self) -> str:
        """The id of the file this entry's blob is kept in: the blob itself, or a zran blob's meta blob."""
        return (self.meta_id or self.blob_id) if self.is_separate else self.blob_id

    @property
    def file_size(self) -> int:
        return self.meta_size if self.is_separate else self.compressed_size

    @property
    def meta_id(self) -> str | None:
        """A separate blob's meta blob (its file): the sha256 the blob table records, or None (inline)."""
        return self.meta_digest.hex() if any(self.meta_digest) else None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device table entry (erofs.DeviceSlot), decoded: the kernel's view of a blob."""

    tag: str
    blocks: int
    mapped_blkaddr: int


@dataclass(slots=True)
class Bootstrap:
    """A decoded bootstrap: superblock facts, tables and the tree."""

    size: int  # bytes of the bootstrap file
    flags: SuperFlags
    chunk_size: int
    inode_count: int  # s_inos
    meta_blkaddr: int
    root_nid: int
    blocks: int  # s_blocks
    devices: list[DeviceInfo]
    blobs: list[BlobInfo]
    tree: Tree
    prefetch_nids: list[int] = field(default_factory=list)
    chunk_table: list[ChunkRef] = field(default_factory=list)
    rafs: bool = True  # False for a plain EROFS image without the RAFS extended superblock

    @property
    def compressor(self) -> CompressAlgo:
        return compressor_of(self.flags)

    @property
    def digester(self) -> DigestAlgo:
        return digester_of(self.flags)
