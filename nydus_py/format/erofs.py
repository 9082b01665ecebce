"""EROFS on-disk structures as RAFS v6 writes them, and the layout formulas that go with them.

Field names follow erofs-utils 1.5 `include/erofs_fs.h` (the version Debian ships, which made our golden
images); newer EROFS names and nydus `rafs/src/metadata/layout/v6.rs` names are given in comments.
References: erofs-utils include/erofs_fs.h; nydus rafs/src/metadata/layout/v6.rs;
docs/format.md §3, §5, §8.
"""

from __future__ import annotations

import enum
from typing import NamedTuple
from collections.abc import Iterable

from construct import (
    Aligned,
    BitsInteger,
    BitStruct,
    Bytes,
    ByteSwapped,
    Const,
    Flag,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

from nydus_py.format._fields import FastStruct, IntEnumField

EROFS_SUPER_OFFSET = 1024  # to allow for x86 boot sectors
EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
EROFS_BLKSIZ_BITS = 12  # RAFS v6 native mode always uses 4 KiB blocks
EROFS_BLKSIZ = 1 << EROFS_BLKSIZ_BITS
EROFS_ISLOTBITS = 5  # inodes sit on 32-byte slots: nid = offset / 32
EROFS_SLOTSIZE = 1 << EROFS_ISLOTBITS
EROFS_DEVT_SLOT_SIZE = 128
EROFS_NAME_LEN = 255
EROFS_NULL_ADDR = 0xFFFFFFFF
EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x001F
EROFS_CHUNK_FORMAT_INDEXES = 0x0020
EROFS_CHUNK_INDEX_SIZE = 8
EROFS_XATTR_IBODY_HEADER_SIZE = 12
EROFS_XATTR_ENTRY_HEADER_SIZE = 4
EROFS_XATTR_ALIGN = 4


class FeatureCompat(enum.IntFlag, boundary=enum.KEEP):  # unknown compat bits are allowed
    SB_CHKSUM = 0x0000_0001
    MTIME = 0x0000_0002
    XATTR_FILTER = 0x0000_0004
    RAFS_V6 = 0x4000_0000  # nydus: EROFS_FEATURE_COMPAT_RAFS_V6; nydusd requires it


class FeatureIncompat(enum.IntFlag, boundary=enum.STRICT):  # an unknown incompat bit = refuse to read
    ZERO_PADDING = 0x0000_0001  # LZ4_0PADDING
    COMPR_CFGS = 0x0000_0002  # also BIG_PCLUSTER
    CHUNKED_FILE = 0x0000_0004
    DEVICE_TABLE = 0x0000_0008
    ZTAILPACKING = 0x0000_0010
    FRAGMENTS = 0x0000_0020  # also DEDUPE
    XATTR_PREFIXES = 0x0000_0040


class FileType(enum.IntEnum):  # erofs_dirent.file_type
    UNKNOWN = 0
    REG_FILE = 1
    DIR = 2
    CHRDEV = 3
    BLKDEV = 4
    FIFO = 5
    SOCK = 6
    SYMLINK = 7


class DataLayout(enum.IntEnum):  # i_format bits 1-3
    FLAT_PLAIN = 0
    COMPRESSED_FULL = 1
    FLAT_INLINE = 2
    COMPRESSED_COMPACT = 3
    CHUNK_BASED = 4


class XattrIndex(enum.IntEnum):  # erofs_xattr_entry.e_name_index
    USER = 1
    POSIX_ACL_ACCESS = 2
    POSIX_ACL_DEFAULT = 3
    TRUSTED = 4
    LUSTRE = 5
    SECURITY = 6


# Name prefix of each xattr index; ACL entries have an empty suffix. nydus checks them in this order and
# refuses any other prefix ("invalid xattr key"); LUSTRE is never written.
XATTR_PREFIXES: tuple[tuple[XattrIndex, bytes], ...] = (
    (XattrIndex.USER, b"user."),
    (XattrIndex.POSIX_ACL_ACCESS, b"system.posix_acl_access"),
    (XattrIndex.POSIX_ACL_DEFAULT, b"system.posix_acl_default"),
    (XattrIndex.TRUSTED, b"trusted."),
    (XattrIndex.LUSTRE, b"lustre."),
    (XattrIndex.SECURITY, b"security."),
)

SuperBlock = Struct(  # erofs_super_block up to reserved2: RAFS v6 writes this 128-byte prefix (sb_extslots = 0)
    "magic" / Const(EROFS_SUPER_MAGIC_V1, Int32ul),
    "checksum" / Int32ul,  # crc32c of the block when COMPAT_SB_CHKSUM; nydus writes 0
    "feature_compat" / IntEnumField(Int32ul, FeatureCompat),
    "blkszbits" / Int8ul,  # 12 (9 only in tarfs mode)
    "sb_extslots" / Int8ul,  # superblock size = 128 + 16 * sb_extslots
    "root_nid" / Int16ul,  # newer EROFS: rb.rootnid_2b
    "inos" / Int64ul,  # total valid ino count
    "build_time" / Int64ul,  # newer EROFS: epoch; nydus: s_build_time
    "build_time_nsec" / Int32ul,  # newer EROFS: fixed_nsec
    "blocks" / Int32ul,  # statfs blocks; nydus: sum of blob device blocks
    "meta_blkaddr" / Int32ul,  # start block of the metadata area (nid 0)
    "xattr_blkaddr" / Int32ul,  # shared xattr area; nydus writes 0
    "uuid" / Bytes(16),
    "volume_name" / Bytes(16),
    "feature_incompat" / IntEnumField(Int32ul, FeatureIncompat),
    "u1" / Int16ul,  # available_compr_algs / lz4_max_distance; nydus: s_u = 0
    "extra_devices" / Int16ul,  # device table slots (one per blob)
    "devt_slotoff" / Int16ul,  # device table start = devt_slotoff * 128; nydus writes 11
    "reserved2" / Bytes(38),  # newer EROFS gives these bytes meaning: must stay zero
)
assert SuperBlock.sizeof() == 128

# i_format: bit 0 version (1 = extended), bits 1-3 data layout, bit 4 NLINK_1/DOT_OMITTED (EROFS >= 1.8),
# other bits must be zero (the kernel refuses them with EOPNOTSUPP).
InodeFormat = ByteSwapped(
    BitStruct(
        "reserved" / BitsInteger(11),
        "nlink_1" / Flag,
        "datalayout" / BitsInteger(3),
        "extended" / Flag,
    )
)
assert InodeFormat.sizeof() == 2
I_FORMAT_KNOWN_BITS = 0x1F

InodeCompact = Struct(  # erofs_inode_compact (32 B); nydus never writes it
    "i_format" / Int16ul,  # see InodeFormat
    "i_xattr_icount" / Int16ul,
    "i_mode" / Int16ul,
    "i_nlink" / Int16ul,
    "i_size" / Int32ul,
    "i_reserved" / Int32ul,  # newer EROFS: i_mtime relative to build_time
    "i_u" / Int32ul,  # raw_blkaddr | rdev | chunk format word
    "i_ino" / Int32ul,
    "i_uid" / Int16ul,
    "i_gid" / Int16ul,
    "i_reserved2" / Bytes(4),
)
INODE_COMPACT_SIZE = 32
assert InodeCompact.sizeof() == INODE_COMPACT_SIZE

InodeExtended = Struct(  # erofs_inode_extended (64 B): what nydus always writes
    "i_format" / Int16ul,  # see InodeFormat
    "i_xattr_icount" / Int16ul,  # 0, or (ibody size - 12) / 4 + 1
    "i_mode" / Int16ul,  # full st_mode
    "i_reserved" / Int16ul,  # newer EROFS: i_nb (startblk_hi); 0
    "i_size" / Int64ul,
    "i_u" / Int32ul,  # dir/symlink: block of the first full data block; dev: rdev; file: chunk format
    "i_ino" / Int32ul,  # legacy 32-bit inode number (the kernel uses the nid)
    "i_uid" / Int32ul,
    "i_gid" / Int32ul,
    "i_mtime" / Int64ul,
    "i_mtime_nsec" / Int32ul,
    "i_nlink" / Int32ul,
    "i_reserved2" / Bytes(16),
)
INODE_EXTENDED_SIZE = 64
assert InodeExtended.sizeof() == INODE_EXTENDED_SIZE

Dirent = Struct(  # erofs_dirent; nydus RafsV6Dirent (e_nid, e_nameoff, e_file_type)
    "nid" / Int64ul,  # inode offset = meta_blkaddr * block size + nid * 32
    "nameoff" / Int16ul,  # start of the name, from the start of this dirent block
    "file_type" / IntEnumField(Int8ul, FileType),
    "reserved" / Int8ul,
)
DIRENT_SIZE = 12
assert Dirent.sizeof() == DIRENT_SIZE

ChunkIndex = Struct(  # erofs_inode_chunk_index (1.5 names; newer: startblk_hi, device_id, startblk_lo)
    "advise" / Int16ul,  # nydus: c_blob_addr_lo = ci_index & 0xffff
    "device_id" / Int16ul,  # the kernel masks it to the device table size
    "blkaddr" / Int32ul,  # block in the device image
)
assert ChunkIndex.sizeof() == EROFS_CHUNK_INDEX_SIZE

ChunkAddr = Struct(  # the same 8 bytes as nydus reads them (RafsV6InodeChunkAddr)
    "c_blob_addr_lo" / Int16ul,  # ci_index bits 0-15
    "device_id" / Int8ul,  # c_blob_addr_hi low byte: blob_index + 1 (= EROFS device id, never 0)
    "ci_index_hi" / Int8ul,  # c_blob_addr_hi high byte: ci_index bits 16-23
    "c_blk_addr" / Int32ul,  # uncompressed_offset / 4096
)
assert ChunkAddr.sizeof() == EROFS_CHUNK_INDEX_SIZE

DeviceSlot = Struct(  # erofs_deviceslot; nydus RafsV6Device
    "tag" / Bytes(64),  # nydus: blob_id as 64 ASCII hex characters
    "blocks" / Int32ul,  # device image size in blocks
    "mapped_blkaddr" / Int32ul,  # start block in the flat address space; newer EROFS: uniaddr_lo
    "reserved" / Bytes(56),
)
assert DeviceSlot.sizeof() == EROFS_DEVT_SLOT_SIZE

XattrIbodyHeader = Struct(  # erofs_xattr_ibody_header (shared xattr ids would follow; nydus has none)
    "h_reserved" / Int32ul,  # newer EROFS: h_name_filter (ignored without COMPAT_XATTR_FILTER)
    "h_shared_count" / Int8ul,
    "h_reserved2" / Bytes(7),
)
assert XattrIbodyHeader.sizeof() == EROFS_XATTR_IBODY_HEADER_SIZE

XattrEntryHeader = Struct(  # erofs_xattr_entry without its name and value
    "e_name_len" / Int8ul,  # length of the name suffix (after the index's prefix)
    "e_name_index" / Int8ul,  # XattrIndex
    "e_value_size" / Int16ul,
)
assert XattrEntryHeader.sizeof() == EROFS_XATTR_ENTRY_HEADER_SIZE

XattrEntry = Aligned(  # one inline xattr: header, name suffix, value, zero padded to 4 bytes
    EROFS_XATTR_ALIGN,
    Struct(
        "e_name_len" / Int8ul,
        "e_name_index" / Int8ul,
        "e_value_size" / Int16ul,
        "e_name" / Bytes(this.e_name_len),
        "e_value" / Bytes(this.e_value_size),
    ),
)


# Fast codecs for the records a builder or reader handles a million times.
class SuperBlockRecord(NamedTuple):
    """FAST_SUPER_BLOCK's record: SuperBlock's value fields, in order (plain ints, no enums)."""

    magic: int
    checksum: int
    feature_compat: int
    blkszbits: int
    sb_extslots: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_incompat: int
    u1: int
    extra_devices: int
    devt_slotoff: int
    reserved2: bytes


FAST_SUPER_BLOCK = FastStruct(SuperBlock, SuperBlockRecord)


class InodeExtendedRecord(NamedTuple):
    """FAST_INODE_EXTENDED's record: InodeExtended's value fields, in order (plain ints, no enums)."""

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_reserved: int
    i_size: int
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_mtime: int
    i_mtime_nsec: int
    i_nlink: int
    i_reserved2: bytes


FAST_INODE_EXTENDED = FastStruct(InodeExtended, InodeExtendedRecord)


class InodeCompactRecord(NamedTuple):
    """FAST_INODE_COMPACT's record: InodeCompact's value fields, in order (plain ints, no enums)."""

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_nlink: int
    i_size: int
    i_reserved: int
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_reserved2: bytes


FAST_INODE_COMPACT = FastStruct(InodeCompact, InodeCompactRecord)


# what a reader needs of a regular file's extended inode (a merge reads every file of every layer)
class InodeExtendedFileRecord(NamedTuple):
    """FAST_INODE_EXTENDED_FILE's record: InodeExtended's value fields, in order (plain ints, no enums)."""

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_size: int
    i_uid: int
    i_gid: int
    i_mtime: int
    i_mtime_nsec: int


FAST_INODE_EXTENDED_FILE = FastStruct(InodeExtended, InodeExtendedFileRecord, only=(
    "i_format", "i_xattr_icount", "i_mode", "i_size", "i_uid", "i_gid", "i_mtime", "i_mtime_nsec"))


class DirentRecord(NamedTuple):
    """FAST_DIRENT's record: Dirent's value fields, in order (plain ints, no enums)."""

    nid: int
    nameoff: int
    file_type: int
    reserved: int


FAST_DIRENT = FastStruct(Dirent, DirentRecord)


class ChunkAddrRecord(NamedTuple):
    """FAST_CHUNK_ADDR's record: ChunkAddr's value fields, in order (plain ints, no enums)."""

    c_blob_addr_lo: int
    device_id: int
    ci_index_hi: int
    c_blk_addr: int


FAST_CHUNK_ADDR = FastStruct(ChunkAddr, ChunkAddrRecord)


class XattrEntryHeaderRecord(NamedTuple):
    """FAST_XATTR_ENTRY_HEADER's record: XattrEntryHeader's value fields, in order (plain ints, no enums)."""

    e_name_len: int
    e_name_index: int
    e_value_size: int


FAST_XATTR_ENTRY_HEADER = FastStruct(XattrEntryHeader, XattrEntryHeaderRecord)


class XattrIbodyHeaderRecord(NamedTuple):
    """FAST_XATTR_IBODY_HEADER's record: XattrIbodyHeader's value fields, in order (plain ints, no enums)."""

    h_reserved: int
    h_shared_count: int
    h_reserved2: bytes


FAST_XATTR_IBODY_HEADER = FastStruct(XattrIbodyHeader, XattrIbodyHeaderRecord)


class DeviceSlotRecord(NamedTuple):
    """FAST_DEVICE_SLOT's record: DeviceSlot's value fields, in order (plain ints, no enums)."""

    tag: bytes
    blocks: int
    mapped_blkaddr: int
    reserved: bytes


FAST_DEVICE_SLOT = FastStruct(DeviceSlot, DeviceSlotRecord)


# --- layout formulas -------------------------------------------------------------------------------


def round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def nid_to_offset(meta_blkaddr: int, nid: int, blkszbits: int = EROFS_BLKSIZ_BITS) -> int:
    """File offset of the inode with node number `nid`."""
    return (meta_blkaddr << blkszbits) + (nid << EROFS_ISLOTBITS)


def offset_to_nid(meta_blkaddr: int, offset: int, blkszbits: int = EROFS_BLKSIZ_BITS) -> int:
    """Node number of an inode at `offset` (which must be on a 32-byte slot)."""
    return (offset - (meta_blkaddr << blkszbits)) >> EROFS_ISLOTBITS


def device_table_offset(devt_slotoff: int) -> int:
    return devt_slotoff * EROFS_DEVT_SLOT_SIZE


def i_format(datalayout: DataLayout, *, extended: bool = True) -> int:
    """The i_format word (see InodeFormat)."""
    return (int(datalayout) << 1) | int(extended)


def split_i_format(value: int) -> tuple[bool, int, int]:
    """(extended, datalayout, unknown bits) of an i_format word."""
    return bool(value & 1), (value >> 1) & 0x7, value & ~I_FORMAT_KNOWN_BITS


def inode_size(extended: bool) -> int:
    return INODE_EXTENDED_SIZE if extended else INODE_COMPACT_SIZE


def xattr_ibody_size(i_xattr_icount: int) -> int:
    """Bytes of inline xattrs that follow the inode (erofs_xattr_ibody_size)."""
    if i_xattr_icount == 0:
        return 0
    return EROFS_XATTR_IBODY_HEADER_SIZE + (i_xattr_icount - 1) * 4


def xattr_icount(ibody_size: int) -> int:
    """i_xattr_icount for an ibody of `ibody_size` bytes (header included)."""
    if ibody_size == 0:
        return 0
    return (ibody_size - EROFS_XATTR_IBODY_HEADER_SIZE) // 4 + 1


def xattr_entry_size(name_suffix_len: int, value_len: int) -> int:
    return round_up(EROFS_XATTR_ENTRY_HEADER_SIZE + name_suffix_len + value_len, EROFS_XATTR_ALIGN)


def chunk_indexes_offset(inode_offset: int, inode_bytes: int, xattr_bytes: int) -> int:
    """Offset of the first chunk index of an inode: 8-byte aligned after inode and xattrs."""
    return round_up(inode_offset + inode_bytes + xattr_bytes, EROFS_CHUNK_INDEX_SIZE)


def chunk_format(chunkbits: int) -> int:
    """The chunk format word kept in i_u of a chunk-based inode (8-byte indexes)."""
    return EROFS_CHUNK_FORMAT_INDEXES | (chunkbits - EROFS_BLKSIZ_BITS)


def chunkbits_of(chunk_format_word: int, blkszbits: int = EROFS_BLKSIZ_BITS) -> int:
    return blkszbits + (chunk_format_word & EROFS_CHUNK_FORMAT_BLKBITS_MASK)


MAX_DEV_MAJOR = 0xFFF  # the 32-bit 'new' encoding (Linux MINORBITS = 20) holds 12 bits of major,
MAX_DEV_MINOR = 0xFFFFF  # and 20 of minor


def rdev_fits(major: int, minor: int) -> bool:
    """Can i_u hold this device number? (Linux itself never makes a larger one; a tar header can claim one.)"""
    return 0 <= major <= MAX_DEV_MAJOR and 0 <= minor <= MAX_DEV_MINOR


def encode_rdev(major: int, minor: int) -> int:
    """Linux 'new' device encoding truncated to 32 bits, as EROFS stores it in i_u."""
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_rdev(value: int) -> tuple[int, int]:
    """(major, minor) from the 32-bit 'new' encoding."""
    return (value & 0xFFF00) >> 8, (value & 0xFF) | ((value >> 12) & 0xFFF00)


def dirent_blocks(name_lengths: Iterable[int], block_size: int = EROFS_BLKSIZ) -> list[tuple[int, int]]:
    """How a directory's dirents pack into blocks: (entries, bytes used) per block. Each block holds its
    dirents, then their names; a new block starts whenever the next dirent and its name would not fit, so
    no entry straddles two blocks (the kernel reads one block at a time; nydus `v6_dirent_size`)."""
    blocks = [(0, 0)]
    for length in name_lengths:
        count, used = blocks[-1]
        need = DIRENT_SIZE + length
        if used + need > block_size:
            blocks.append((1, need))
        else:
            blocks[-1] = (count + 1, used + need)
    return blocks


def dirents_size(name_lengths: Iterable[int], block_size: int = EROFS_BLKSIZ) -> int:
    """i_size of a directory: its full dirent blocks and the used bytes of the last one."""
    blocks = dirent_blocks(name_lengths, block_size)
    return (len(blocks) - 1) * block_size + blocks[-1][1]


def dirent_count(first_nameoff: int) -> int:
    """Number of dirents in a dirent block, from the nameoff of its first entry."""
    return first_nameoff // DIRENT_SIZE


def blob_addr(blob_index: int, ci_index: int) -> tuple[int, int, int]:
    """ChunkAddr (c_blob_addr_lo, device_id, ci_index_hi) for a chunk of blob `blob_index`."""
    return ci_index & 0xFFFF, blob_index + 1, (ci_index >> 16) & 0xFF


def split_blob_addr(c_blob_addr_lo: int, device_id: int, ci_index_hi: int) -> tuple[int, int]:
    """(blob_index, ci_index) of a ChunkAddr."""
    return device_id - 1, (ci_index_hi << 16) | c_blob_addr_lo


def split_blob_addrs(records: Iterable[tuple[int, int, int, int]]) -> tuple[list[int], list[int]]:
    """`split_blob_addr` of many FAST_CHUNK_ADDR records, as (blob indexes, ci_indexes): no call per record."""
    records = list(records)
    return ([device_id - 1 for _, device_id, _, _ in records],
            [(ci_index_hi << 16) | c_blob_addr_lo for c_blob_addr_lo, _, ci_index_hi, _ in records])
