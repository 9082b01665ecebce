"""Native Nydus data blob structures: chunk info (v1, v2), the 4 KiB compression-context header, the TOC
and the tail tar header's names (the header itself: format/tar.py).

References: nydus storage/src/meta/mod.rs (BlobCompressionContextHeader, BlobFeatures),
storage/src/meta/chunk_info_v1.rs and chunk_info_v2.rs, storage/src/meta/toc.rs;
docs/format.md §11; docs/oci.md §2.1.
"""

from __future__ import annotations

import enum
from typing import NamedTuple
import struct

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    ByteSwapped,
    Const,
    Int8ul,
    Int32ul,
    Int64ul,
    Struct,
)

from nydus_py.format._fields import FastStruct, IntEnumField

BLOB_CCT_MAGIC = 0xB10BB10B
BLOB_CCT_HEADER_SIZE = 4096
BLOB_ID_PLACEHOLDER = "x" * 64  # the id an inline bootstrap carries before the blob hash is known

TOC_ENTRY_BLOB_RAW = "image.blob"
TOC_ENTRY_BOOTSTRAP = "image.boot"
TOC_ENTRY_BLOB_META = "blob.meta"
TOC_ENTRY_BLOB_META_HEADER = "blob.meta.header"
TOC_ENTRY_BLOB_DIGEST = "blob.digest"
TOC_ENTRY_BLOB_TOC = "rafs.blob.toc"


class BlobFeatures(enum.IntFlag, boundary=enum.STRICT):  # blob table `features` and header `s_features`
    ALIGNED = 0x0000_0001  # uncompressed offsets 4 KiB aligned; required for v6
    INLINED_FS_META = 0x0000_0002  # the bootstrap is inlined in the blob
    CHUNK_INFO_V2 = 0x0000_0004  # 24-byte chunk info entries
    ZRAN = 0x0000_0008  # chunks index an OCI tar.gz through zran contexts
    SEPARATE = 0x0000_0010  # data stays in another blob (ref conversions)
    INLINED_CHUNK_DIGEST = 0x0000_0020  # a chunk digest array is in the blob (blob-toc)
    TARFS = 0x0000_0040
    BATCH = 0x0000_0080
    ENCRYPTED = 0x0000_0100
    IS_CHUNKDICT_GENERATED = 0x0000_0200
    IS_SEPARATED_WITH_PREFETCH_FILES = 0x0000_0400
    EXTERNAL = 0x0000_0800
    HAS_TAR_HEADER = 0x1000_0000  # every section is followed by a tail tar header
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000  # built by nydus-image >= 2.2
    V5_NO_EXT_BLOB_TABLE = 0x8000_0000  # internal to v5; rejected in v6


class ChunkFlagsV2(enum.IntFlag, boundary=enum.KEEP):  # chunk info v2, uncomp_info bits 56-63
    COMPRESSED = 0x01
    ZRAN = 0x02
    BATCH = 0x04
    ENCRYPTED = 0x08
    HAS_CRC32 = 0x10


class TocFlags(enum.IntFlag, boundary=enum.STRICT):  # TocEntry.flags: how the entry data is compressed
    COMPRESSION_NONE = 0x0001
    COMPRESSION_ZSTD = 0x0002
    COMPRESSION_LZ4_BLOCK = 0x0004


CompressionContextHeader = Struct(  # BlobCompressionContextHeader: after the CI array, 4096 B
    "s_magic" / Const(BLOB_CCT_MAGIC, Int32ul),
    "s_features" / IntEnumField(Int32ul, BlobFeatures),
    "s_ci_compressor" / Int32ul,  # compress algorithm of the CI array (0 when stored raw)
    "s_ci_entries" / Int32ul,  # chunk count
    "s_ci_offset" / Int64ul,  # file offset of the CI array
    "s_ci_compressed_size" / Int64ul,
    "s_ci_uncompressed_size" / Int64ul,
    "s_ci_zran_offset" / Int64ul,  # zran/batch: offset of the context table inside the uncompressed CI
    "s_ci_zran_size" / Int64ul,
    "s_ci_zran_count" / Int32ul,
    "s_reserved" / Bytes(4032),
    "s_magic2" / Const(BLOB_CCT_MAGIC, Int32ul),
)
assert CompressionContextHeader.sizeof() == BLOB_CCT_HEADER_SIZE

# Chunk info v1, 16 B = two u64. Sizes are stored minus one, split 20 low / 4 high bits; the 4 KiB
# aligned uncompressed offset is kept in place (bits 12-43). "Compressed" means csize != usize.
ChunkInfoV1 = Struct(
    "uncomp_info"
    / ByteSwapped(
        BitStruct(
            "usize_minus_one_lo" / BitsInteger(20),  # bits 44-63
            "uncompressed_offset_4k" / BitsInteger(32),  # bits 12-43
            "usize_minus_one_hi" / BitsInteger(4),  # bits 8-11
            "reserved" / BitsInteger(8),  # bits 0-7
        )
    ),
    "comp_info"
    / ByteSwapped(
        BitStruct(
            "csize_minus_one_lo" / BitsInteger(20),  # bits 44-63
            "csize_minus_one_hi" / BitsInteger(4),  # bits 40-43
            "compressed_offset" / BitsInteger(40),  # bits 0-39
        )
    ),
)
CHUNK_INFO_V1_SIZE = 16
assert ChunkInfoV1.sizeof() == CHUNK_INFO_V1_SIZE

ChunkInfoV2 = Struct(  # 24 B: batch, encrypted, zran and ref blobs
    "uncomp_info"
    / ByteSwapped(
        BitStruct(
            "flags" / BitsInteger(8),  # ChunkFlagsV2, bits 56-63
            "usize_minus_one" / BitsInteger(24),  # bits 32-55
            "uncompressed_offset_4k" / BitsInteger(32),  # bits 0-31
        )
    ),
    "comp_info"
    / ByteSwapped(
        BitStruct(
            "compressed_size" / BitsInteger(24),  # bits 40-63, not minus one
            "compressed_offset" / BitsInteger(40),  # bits 0-39
        )
    ),
    "data" / Int64ul,  # zran/batch: index << 32 | offset; else crc32c with HAS_CRC32
)
CHUNK_INFO_V2_SIZE = 24
assert ChunkInfoV2.sizeof() == CHUNK_INFO_V2_SIZE

ZRAN_DICT_WINDOW = 32768  # zlib_random.rs ZRAN_DICT_WIN_SIZE: the largest window a context keeps

ZranInflateContext = Struct(  # 40 B, repr(C, packed): nydus storage/src/meta/zran.rs ZranInflateContext
    "in_offset" / Int64ul,  # the restart point in the gzip stream (the byte after the partly used one)
    "out_offset" / Int64ul,  # the restart point in the tar stream
    "dict_offset" / Int64ul,  # its window, from the start of the windows (which follow every context)
    "in_len" / Int32ul,  # gzip bytes from in_offset to the end of the context's last chunk
    "out_len" / Int32ul,  # tar bytes they decode to
    "dict_size" / Int32ul,  # 0 at a member's start, else min(32 KiB, bytes the member has made)
    "ctx_byte" / Int8ul,  # the partly used byte (when ctx_bits)
    "ctx_bits" / Int8ul,  # how many of its high bits belong to the block at the restart point
    "reserved" / Bytes(2),
)
ZRAN_CONTEXT_SIZE = 40
assert ZranInflateContext.sizeof() == ZRAN_CONTEXT_SIZE


class ZranInflateContextRecord(NamedTuple):
    """FAST_ZRAN_CONTEXT's record: ZranInflateContext's value fields, in order."""

    in_offset: int
    out_offset: int
    dict_offset: int
    in_len: int
    out_len: int
    dict_size: int
    ctx_byte: int
    ctx_bits: int
    reserved: bytes


FAST_ZRAN_CONTEXT = FastStruct(ZranInflateContext, ZranInflateContextRecord)

TocEntry = Struct(  # 128 B, an array of them ends the blob, before the `rafs.blob.toc` tar header
    "flags" / IntEnumField(Int32ul, TocFlags),
    "reserved1" / Int32ul,
    "name" / Bytes(16),  # NUL padded
    "uncompressed_digest" / Bytes(32),  # sha256 of the uncompressed entry data
    "compressed_offset" / Int64ul,
    "compressed_size" / Int64ul,
    "uncompressed_size" / Int64ul,
    "reserved2" / Bytes(48),  # nydus-image of early 2023 left junk in bytes 124-127: ignored
)
assert TocEntry.sizeof() == 128


class TocEntryRecord(NamedTuple):
    """FAST_TOC_ENTRY's record: TocEntry's value fields, in order (plain ints, no enums)."""

    flags: int
    reserved1: int
    name: bytes
    uncompressed_digest: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    reserved2: bytes


FAST_TOC_ENTRY = FastStruct(TocEntry, TocEntryRecord)
_U64_PAIR = struct.Struct("<QQ")
_U64_TRIPLE = struct.Struct("<QQQ")
_MASK20 = (1 << 20) - 1
_MASK40 = (1 << 40) - 1


# --- chunk info arrays: whole-array codecs for the hot path (tests prove they match the declarations) ---


def encode_chunk_info_v1(uncompressed_offset: int, uncompressed_size: int, compressed_offset: int,
                         compressed_size: int) -> bytes:
    usize = uncompressed_size - 1
    csize = compressed_size - 1
    uncomp = ((usize & _MASK20) << 44) | (uncompressed_offset & 0xFFF_FFFF_F000) | ((usize >> 20) << 8)
    comp = ((csize & _MASK20) << 44) | ((csize >> 20) << 40) | (compressed_offset & _MASK40)
    return _U64_PAIR.pack(uncomp, comp)


def decode_chunk_info_v1_array(data: bytes | memoryview) -> list[tuple[int, int, int, int]]:
    """(uncompressed_offset, uncompressed_size, compressed_offset, compressed_size) for each entry."""
    out = []
    for uncomp, comp in _U64_PAIR.iter_unpack(data):
        usize = ((uncomp >> 44) | (((uncomp >> 8) & 0xF) << 20)) + 1
        csize = ((comp >> 44) | (((comp >> 40) & 0xF) << 20)) + 1
        out.append((uncomp & 0xFFF_FFFF_F000, usize, comp & _MASK40, csize))
    return out


def encode_chunk_info_v2(uncompressed_offset: int, uncompressed_size: int, compressed_offset: int,
                         compressed_size: int, flags: int, data: int) -> bytes:
    uncomp = (flags << 56) | ((uncompressed_size - 1) << 32) | (uncompressed_offset >> 12)
    comp = (compressed_size << 40) | (compressed_offset & _MASK40)
    return _U64_TRIPLE.pack(uncomp, comp, data)


def decode_chunk_info_v2_array(data: bytes | memoryview) -> list[tuple[int, int, int, int, int, int]]:
    """(uncompressed_offset, uncompressed_size, compressed_offset, compressed_size, flags, data)."""
    out = []
    for uncomp, comp, extra in _U64_TRIPLE.iter_unpack(data):
        out.append(((uncomp & 0xFFFF_FFFF) << 12, ((uncomp >> 32) & 0xFF_FFFF) + 1, comp & _MASK40,
                    comp >> 40, uncomp >> 56, extra))
    return out


def chunk_info_size(v2: bool) -> int:
    return CHUNK_INFO_V2_SIZE if v2 else CHUNK_INFO_V1_SIZE


def toc_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def cache_file_ci_size(ci_uncompressed_size: int) -> int:
    """In a `<blob id>.blob.meta` cache file, the CI array is padded to 4 KiB before the header."""
    return (ci_uncompressed_size + 4095) // 4096 * 4096
