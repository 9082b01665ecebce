"""RAFS-only bootstrap structures: the extended superblock, blob table, chunk info table and flags.

The kernel never reads these; nydusd does. Field names follow nydus rafs/src/metadata/layout/v6.rs
(RafsV6SuperBlockExt, RafsV6Blob) and layout/v5.rs (RafsV5ChunkInfo).
References: docs/format.md §2, §4, §6, §7, §9, §12.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from construct import Bytes, Int32ul, Int64ul, Struct

from nydus_py.format import erofs
from nydus_py.format._fields import FastStruct, IntEnumField
from nydus_py.format.blobmeta import BlobFeatures, TocFlags

EXT_SUPER_OFFSET = erofs.EROFS_SUPER_OFFSET + erofs.SuperBlock.sizeof()  # 0x480
DEVT_SLOTOFF = 11  # device table at 11 * 128 = 0x580, right after the ext superblock; nydusd requires 11
BLOB_ID_LEN = 64
# what RafsV6Blob::validate allows (nydus rafs/src/metadata/layout/v6.rs BLOB_MAX_SIZE_COMPRESSED/_UNCOMPRESSED)
MAX_BLOB_COMPRESSED_SIZE = 1 << 40  # a blob file's size
MAX_BLOB_UNCOMPRESSED_SIZE = 1 << 44  # its device image's size
MAX_BLOBS = 254  # the device id is 8 bits and 0 is the bootstrap itself
MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x100_0000
MAX_CHUNKS_PER_BLOB = 1 << 24
DEFAULT_CHUNK_SIZE = 0x10_0000
MAPPED_BLKADDR_ALIGNMENT = 0x8_0000  # 512 KiB since nydus v2.3.0 (2 MiB before)


class SuperFlags(enum.IntFlag, boundary=enum.STRICT):  # RafsSuperFlags; nydusd rejects unknown bits
    COMPRESSION_NONE = 0x0000_0001  # chunk data stored raw
    COMPRESSION_LZ4 = 0x0000_0002  # lz4 block
    HASH_BLAKE3 = 0x0000_0004  # chunk digests are blake3
    HASH_SHA256 = 0x0000_0008  # chunk digests are sha256
    EXPLICIT_UID_GID = 0x0000_0010  # inodes carry real uid/gid (else nydusd shows its own)
    HAS_XATTR = 0x0000_0020  # some inode has extended attributes
    COMPRESSION_GZIP = 0x0000_0040  # ref conversions only
    COMPRESSION_ZSTD = 0x0000_0080
    INLINED_CHUNK_DIGEST = 0x0000_0100  # every blob has a chunk digest array
    TARFS_MODE = 0x0000_0200
    ENCRYPTION_NONE = 0x0100_0000  # written by nydus-image >= 2.3
    ENCRYPTION_ASE_128_XTS = 0x0200_0000
    RESERVED_COMPAT_4 = 0x0400_0000
    RESERVED_COMPAT_5 = 0x0800_0000
    RESERVED_COMPAT_6 = 0x1000_0000
    RESERVED_COMPAT_7 = 0x2000_0000
    RESERVED_COMPAT_8 = 0x4000_0000
    RESERVED_COMPAT_9 = 0x8000_0000


class CompressAlgo(enum.IntEnum):  # blob table compression_algo and CI compressor
    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3


class DigestAlgo(enum.IntEnum):  # blob table digest_algo
    BLAKE3 = 0
    SHA256 = 1


class CipherAlgo(enum.IntEnum):  # nydus utils/src/crypt.rs `Algorithm`
    NONE = 0
    AES128XTS = 1
    AES256XTS = 2
    AES256GCM = 3


class ChunkFlags(enum.IntFlag, boundary=enum.KEEP):  # RafsV5ChunkInfo.flags (BlobChunkFlags)
    COMPRESSED = 0x01
    HOLECHUNK = 0x02  # never written
    ENCRYPTED = 0x04
    BATCH = 0x08
    HAS_CRC32 = 0x10  # crc32 holds the CRC-32C of the uncompressed data (nydus >= 2.3.2)


# Every compressor/digester <-> flag mapping of the format, one table each (readers and writers share them).
COMPRESSION_FLAGS = {  # CompressAlgo -> its SuperFlags bit; in this order a reader picks the first bit set
    CompressAlgo.ZSTD: SuperFlags.COMPRESSION_ZSTD,
    CompressAlgo.LZ4_BLOCK: SuperFlags.COMPRESSION_LZ4,
    CompressAlgo.GZIP: SuperFlags.COMPRESSION_GZIP,
    CompressAlgo.NONE: SuperFlags.COMPRESSION_NONE,
}
DIGEST_FLAGS = {DigestAlgo.BLAKE3: SuperFlags.HASH_BLAKE3, DigestAlgo.SHA256: SuperFlags.HASH_SHA256}
TOC_FLAGS = {  # CompressAlgo -> blobmeta.TocEntry.flags (a TOC entry names exactly one compressor)
    CompressAlgo.NONE: TocFlags.COMPRESSION_NONE,
    CompressAlgo.ZSTD: TocFlags.COMPRESSION_ZSTD,
    CompressAlgo.LZ4_BLOCK: TocFlags.COMPRESSION_LZ4_BLOCK,
}
TOC_COMPRESSORS = {flag: algo for algo, flag in TOC_FLAGS.items()}  # the reverse: TocEntry.flags -> CompressAlgo


def compressor_of(flags: SuperFlags) -> CompressAlgo:
    """The chunk compressor a superblock's flags name (none set: NONE)."""
    return next((algo for algo, flag in COMPRESSION_FLAGS.items() if flags & flag), CompressAlgo.NONE)


def digester_of(flags: SuperFlags) -> DigestAlgo:
    """The chunk digester a superblock's flags name (HASH_SHA256, else blake3)."""
    return DigestAlgo.SHA256 if flags & SuperFlags.HASH_SHA256 else DigestAlgo.BLAKE3

SuperBlockExt = Struct(  # RafsV6SuperBlockExt at 0x480, 256 B
    "s_flags" / IntEnumField(Int64ul, SuperFlags),
    "s_blob_table_offset" / Int64ul,  # 4 KiB aligned
    "s_blob_table_size" / Int32ul,  # 256 * blobs
    "s_chunk_size" / Int32ul,  # power of two, 4 KiB .. 16 MiB
    "s_chunk_table_offset" / Int64ul,
    "s_chunk_table_size" / Int64ul,  # 80 * entries
    "s_prefetch_table_offset" / Int64ul,  # 0: no prefetch table
    "s_prefetch_table_size" / Int32ul,  # 4 * nids
    "s_padding" / Int32ul,
    "s_reserved" / Bytes(200),
)
assert SuperBlockExt.sizeof() == 256

Blob = Struct(  # RafsV6Blob, one blob table entry, 256 B
    "blob_id" / Bytes(BLOB_ID_LEN),  # ASCII hex sha256, NUL padded
    "blob_index" / Int32ul,  # must equal its position
    "chunk_size" / Int32ul,  # must equal s_chunk_size
    "chunk_count" / Int32ul,  # CI entries; < 2^24
    "compression_algo" / IntEnumField(Int32ul, CompressAlgo),
    "digest_algo" / IntEnumField(Int32ul, DigestAlgo),
    "features" / IntEnumField(Int32ul, BlobFeatures),
    "compressed_size" / Int64ul,  # size of the whole blob file
    "uncompressed_size" / Int64ul,  # size of the device image; 4 KiB multiple
    "blob_toc_size" / Int32ul,  # TOC entries + their 512-byte tar header
    "ci_compressor" / IntEnumField(Int32ul, CompressAlgo),
    "ci_offset" / Int64ul,
    "ci_compressed_size" / Int64ul,
    "ci_uncompressed_size" / Int64ul,  # 16 * chunk_count (v1) or 24 * (v2)
    "blob_toc_digest" / Bytes(32),  # sha256 of TOC entries + TOC tar header
    "blob_meta_digest" / Bytes(32),  # ref/zran: sha256 of the separate meta blob
    "blob_meta_size" / Int64ul,
    "cipher_iv" / Bytes(8),
    "cipher_algo" / IntEnumField(Int32ul, CipherAlgo),
    "reserved2" / Bytes(36),
)
assert Blob.sizeof() == 256

ChunkInfo = Struct(  # RafsV5ChunkInfo: one chunk table entry, 80 B; the table is sorted by digest
    "block_id" / Bytes(32),  # digest of the uncompressed chunk
    "blob_index" / Int32ul,
    "flags" / IntEnumField(Int32ul, ChunkFlags),
    "compressed_size" / Int32ul,
    "uncompressed_size" / Int32ul,
    "compressed_offset" / Int64ul,  # in the blob file
    "uncompressed_offset" / Int64ul,  # in the device image, 4 KiB aligned
    "file_offset" / Int64ul,  # offset in the file that first produced the chunk
    "index" / Int32ul,  # ci_index
    "crc32" / Int32ul,  # CRC-32C with HAS_CRC32, else 0 ("reserved" before nydus 2.3.2)
)
assert ChunkInfo.sizeof() == 80

class SuperBlockExtRecord(NamedTuple):
    """FAST_SUPER_BLOCK_EXT's record: SuperBlockExt's value fields, in order (plain ints, no enums)."""

    s_flags: int
    s_blob_table_offset: int
    s_blob_table_size: int
    s_chunk_size: int
    s_chunk_table_offset: int
    s_chunk_table_size: int
    s_prefetch_table_offset: int
    s_prefetch_table_size: int
    s_padding: int
    s_reserved: bytes


FAST_SUPER_BLOCK_EXT = FastStruct(SuperBlockExt, SuperBlockExtRecord)


class BlobRecord(NamedTuple):
    """FAST_BLOB's record: Blob's value fields, in order (plain ints, no enums)."""

    blob_id: bytes
    blob_index: int
    chunk_size: int
    chunk_count: int
    compression_algo: int
    digest_algo: int
    features: int
    compressed_size: int
    uncompressed_size: int
    blob_toc_size: int
    ci_compressor: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    blob_toc_digest: bytes
    blob_meta_digest: bytes
    blob_meta_size: int
    cipher_iv: bytes
    cipher_algo: int
    reserved2: bytes


FAST_BLOB = FastStruct(Blob, BlobRecord)


class ChunkInfoRecord(NamedTuple):
    """FAST_CHUNK_INFO's record: ChunkInfo's value fields, in order (plain ints, no enums)."""

    block_id: bytes
    blob_index: int
    flags: int
    compressed_size: int
    uncompressed_size: int
    compressed_offset: int
    uncompressed_offset: int
    file_offset: int
    index: int  # type: ignore[assignment]  # nydus's field name; it shadows tuple.index, unused here
    crc32: int


FAST_CHUNK_INFO = FastStruct(ChunkInfo, ChunkInfoRecord)
PREFETCH_ENTRY_SIZE = 4  # the prefetch table is a plain array of u32 nids


def blob_table_offset(extra_devices: int) -> int:
    """Blob table start: the 4 KiB boundary after the device table."""
    return erofs.round_up(erofs.device_table_offset(DEVT_SLOTOFF) + erofs.EROFS_DEVT_SLOT_SIZE * extra_devices,
                          erofs.EROFS_BLKSIZ)


def device_blocks(uncompressed_size: int) -> int:
    return uncompressed_size // erofs.EROFS_BLKSIZ


def mapped_blkaddrs(bootstrap_size: int, device_blocks_list: list[int]) -> list[int]:
    """mapped_blkaddr of each device slot: blobs laid out after the bootstrap, 512 KiB aligned."""
    out = []
    pos = bootstrap_size
    for blocks in device_blocks_list:
        mapped = erofs.round_up(pos, MAPPED_BLKADDR_ALIGNMENT) // erofs.EROFS_BLKSIZ
        out.append(mapped)
        pos = (mapped + blocks) * erofs.EROFS_BLKSIZ
    return out


def blob_id_bytes(blob_id: str) -> bytes:
    return blob_id.encode("ascii").ljust(BLOB_ID_LEN, b"\0")


def blob_id_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")
