"""The rules nydusd's `validate()` functions apply to a bootstrap's fixed tables (spec §3-§6).

Each rule that fails becomes a `Defect` naming the structure, its offset and the rule; an empty list
means nydusd would accept these tables.
References: nydus rafs/src/metadata/layout/v6.rs (RafsV6SuperBlock/SuperBlockExt/Device/Blob::validate).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

from construct import ConstructError

from nydus_py.format import blobmeta, erofs, rafs
from nydus_py.format.blobmeta import BlobFeatures

_COMPRESSION_BITS = functools.reduce(operator.or_, rafs.COMPRESSION_FLAGS.values())
_HASH_BITS = functools.reduce(operator.or_, rafs.DIGEST_FLAGS.values())


@dataclass(frozen=True, slots=True)
class Defect:
    structure: str
    offset: int
    rule: str

    def __str__(self) -> str:
        return f"{self.structure} at {self.offset:#x}: {self.rule}"


def validate_superblock(data: bytes) -> list[Defect]:
    """RafsV6SuperBlock::validate."""
    at = erofs.EROFS_SUPER_OFFSET
    if len(data) < at + erofs.SuperBlock.sizeof():
        return [Defect("superblock", at, f"bootstrap of {len(data)} bytes is too short")]
    sb = erofs.FAST_SUPER_BLOCK.unpack_record(data, at)
    out = []

    def bad(rule: str) -> None:
        out.append(Defect("superblock", at, rule))

    if len(data) < erofs.EROFS_BLKSIZ:
        bad(f"bootstrap size {len(data)} is below 4096")
    block = 512 if sb.blkszbits == 9 else erofs.EROFS_BLKSIZ
    if len(data) % block:
        bad(f"bootstrap size {len(data)} is not a multiple of the block size {block}")
    if sb.meta_blkaddr * block > len(data):
        bad(f"meta_blkaddr={sb.meta_blkaddr} points past the end")
    if sb.magic != erofs.EROFS_SUPER_MAGIC_V1:
        bad(f"magic={sb.magic:#x}: must be {erofs.EROFS_SUPER_MAGIC_V1:#x}")
    if sb.checksum != 0:
        bad(f"checksum={sb.checksum:#x}: must be 0")
    if sb.blkszbits not in (9, 12):
        bad(f"blkszbits={sb.blkszbits}: must be 9 or 12")
    if sb.sb_extslots != 0:
        bad(f"sb_extslots={sb.sb_extslots}: must be 0")
    if sb.inos == 0:
        bad("inos=0: must not be 0")
    if sb.u1 != 0:
        bad(f"u1={sb.u1}: must be 0")
    if sb.xattr_blkaddr != 0:
        bad(f"xattr_blkaddr={sb.xattr_blkaddr}: shared xattrs are not supported")
    if sb.extra_devices == 0 and sb.blocks not in (0, 4096):
        bad(f"blocks={sb.blocks} with no extra devices: must be 0")
    if erofs.device_table_offset(sb.devt_slotoff) != erofs.device_table_offset(rafs.DEVT_SLOTOFF):
        bad(f"devt_slotoff={sb.devt_slotoff}: must be {rafs.DEVT_SLOTOFF}")
    if erofs.device_table_offset(sb.devt_slotoff) + sb.extra_devices > len(data):
        bad(f"extra_devices={sb.extra_devices}: the device table runs past the end")
    if sb.feature_incompat != erofs.FeatureIncompat.CHUNKED_FILE | erofs.FeatureIncompat.DEVICE_TABLE:
        bad(f"feature_incompat={sb.feature_incompat:#x}: must be exactly CHUNKED_FILE|DEVICE_TABLE (0xc)")
    if not sb.feature_compat & erofs.FeatureCompat.RAFS_V6:
        bad(f"feature_compat={sb.feature_compat:#x}: RAFS_V6 (0x40000000) must be set")
    return out


def validate_ext_superblock(data: bytes) -> list[Defect]:
    """RafsV6SuperBlockExt::validate."""
    at = rafs.EXT_SUPER_OFFSET
    if len(data) < at + rafs.SuperBlockExt.sizeof():
        return [Defect("extended superblock", at, "truncated")]
    ext = rafs.FAST_SUPER_BLOCK_EXT.unpack_record(data, at)
    sb = erofs.FAST_SUPER_BLOCK.unpack_record(data, erofs.EROFS_SUPER_OFFSET)
    out = []

    def bad(rule: str) -> None:
        out.append(Defect("extended superblock", at, rule))

    known = sum(int(f) for f in rafs.SuperFlags)
    if ext.s_flags & ~known:
        bad(f"s_flags={ext.s_flags:#x}: unknown bits {ext.s_flags & ~known:#x}")
    if (ext.s_flags & _COMPRESSION_BITS).bit_count() != 1:
        bad(f"s_flags={ext.s_flags:#x}: exactly one compression bit must be set")
    if (ext.s_flags & _HASH_BITS).bit_count() != 1:
        bad(f"s_flags={ext.s_flags:#x}: exactly one digest bit must be set")
    size = ext.s_chunk_size
    if size & (size - 1) or not rafs.MIN_CHUNK_SIZE <= size <= rafs.MAX_CHUNK_SIZE:
        bad(f"s_chunk_size={size:#x}: must be a power of two from 4 KiB to 16 MiB")
    devslot_end = erofs.device_table_offset(rafs.DEVT_SLOTOFF) + ext.s_blob_table_size
    bt, bt_size = ext.s_blob_table_offset, ext.s_blob_table_size
    if (bt % erofs.EROFS_BLKSIZ or bt < erofs.EROFS_BLKSIZ or bt < devslot_end or bt_size % rafs.Blob.sizeof()
            or bt + bt_size > len(data)):
        bad(f"blob table {bt:#x}+{bt_size:#x}: must be 4 KiB aligned, after the device table, inside the file")
    ct, ct_size = ext.s_chunk_table_offset, ext.s_chunk_table_size
    if ct_size:
        if (ct % erofs.EROFS_BLKSIZ or ct < erofs.EROFS_BLKSIZ or ct < devslot_end
                or ct_size % rafs.ChunkInfo.sizeof() or ct + ct_size > len(data)):
            bad(f"chunk table {ct:#x}+{ct_size:#x}: must be 4 KiB aligned, a multiple of 80, inside the file")
        elif _overlap(bt, bt_size, ct, ct_size):
            bad("blob table intersects the chunk table")
    pt, pt_size = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
    if pt_size and pt:
        if pt < erofs.EROFS_BLKSIZ or pt_size % 4 or pt < devslot_end or pt + pt_size > len(data):
            bad(f"prefetch table {pt:#x}+{pt_size:#x}: must be after the device table, inside the file")
        elif _overlap(bt, bt_size, pt, pt_size) or (ct_size and _overlap(ct, ct_size, pt, pt_size)):
            bad("prefetch table intersects the blob or chunk table")
    if ext.s_blob_table_size // rafs.Blob.sizeof() != sb.extra_devices:
        bad(f"{ext.s_blob_table_size // rafs.Blob.sizeof()} blob table entries for {sb.extra_devices} device slots")
    return out


def _overlap(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size


def validate_devices(data: bytes) -> list[Defect]:
    """RafsV6Device::validate, plus unique ids."""
    sb = erofs.FAST_SUPER_BLOCK.unpack_record(data, erofs.EROFS_SUPER_OFFSET)
    out = []
    seen = set()
    start = erofs.device_table_offset(sb.devt_slotoff)
    for i in range(sb.extra_devices):
        at = start + i * erofs.EROFS_DEVT_SLOT_SIZE
        if at + erofs.EROFS_DEVT_SLOT_SIZE > len(data):
            out.append(Defect(f"device slot {i}", at, "past the end of the bootstrap"))
            break
        slot = erofs.FAST_DEVICE_SLOT.unpack_record(data, at)
        if not _valid_id(slot.tag):
            out.append(Defect(f"device slot {i}", at, "tag must be 64 bytes of UTF-8 (the blob id)"))
        if slot.blocks == 0:
            out.append(Defect(f"device slot {i}", at, "blocks=0: must not be 0"))
        if slot.tag in seen:
            out.append(Defect(f"device slot {i}", at, "duplicate blob id"))
        seen.add(slot.tag)
    return out


def _valid_id(raw: bytes) -> bool:
    try:
        return len(raw.decode("utf-8")) == rafs.BLOB_ID_LEN and b"\0" not in raw
    except UnicodeDecodeError:
        return False


def validate_blob_table(data: bytes) -> list[Defect]:
    """RafsV6Blob::validate for every entry."""
    ext = rafs.FAST_SUPER_BLOCK_EXT.unpack_record(data, rafs.EXT_SUPER_OFFSET)
    out = []
    entries = ext.s_blob_table_size // rafs.Blob.sizeof()
    for i in range(entries):
        at = ext.s_blob_table_offset + i * rafs.Blob.sizeof()
        if at + rafs.Blob.sizeof() > len(data):
            out.append(Defect(f"blob table entry {i}", at, "past the end of the bootstrap"))
            break
        out += [Defect(f"blob table entry {i}", at, rule) for rule in _blob_rules(data, at, i, ext)]
    return out


def _blob_rules(data: bytes, at: int, index: int, ext: rafs.SuperBlockExtRecord) -> list[str]:
    b = rafs.FAST_BLOB.unpack_record(data, at)
    rules = []
    if not _valid_id(b.blob_id):
        rules.append("blob_id must be 64 bytes of UTF-8")
    if b.blob_index != index:
        rules.append(f"blob_index={b.blob_index}: must equal its position {index}")
    c = b.chunk_size
    if c & (c - 1) or not rafs.MIN_CHUNK_SIZE <= c <= rafs.MAX_CHUNK_SIZE or c != ext.s_chunk_size:
        rules.append(f"chunk_size={c:#x}: must be a valid chunk size equal to the superblock's")
    if b.chunk_count > rafs.MAX_CHUNKS_PER_BLOB:
        rules.append(f"chunk_count={b.chunk_count}: at most 2^24")
    for name, value, enum_type in (("compression_algo", b.compression_algo, rafs.CompressAlgo),
                                   ("ci_compressor", b.ci_compressor, rafs.CompressAlgo),
                                   ("digest_algo", b.digest_algo, rafs.DigestAlgo),
                                   ("cipher_algo", b.cipher_algo, rafs.CipherAlgo)):
        if value not in set(enum_type):
            rules.append(f"{name}={value}: unknown algorithm")
    if b.uncompressed_size > rafs.MAX_BLOB_UNCOMPRESSED_SIZE:
        rules.append(f"uncompressed_size={b.uncompressed_size:#x}: at most 2^44")
    if b.compressed_size > rafs.MAX_BLOB_COMPRESSED_SIZE:
        rules.append(f"compressed_size={b.compressed_size:#x}: at most 2^40")
    try:
        features = BlobFeatures(b.features)
    except ValueError:
        return [*rules, f"features={b.features:#x}: unknown bits"]
    tarfs = bool(ext.s_flags & rafs.SuperFlags.TARFS_MODE)
    if bool(features & BlobFeatures.ALIGNED) == tarfs:
        rules.append("ALIGNED must be set (and must not be in tarfs mode)")
    if b.ci_compressed_size > b.ci_uncompressed_size:
        rules.append(f"ci_compressed_size={b.ci_compressed_size} exceeds ci_uncompressed_size={b.ci_uncompressed_size}")
    special = features & (BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.ENCRYPTED)
    v2 = blobmeta.chunk_info_size(True) * b.chunk_count
    if features & BlobFeatures.CHUNK_INFO_V2:
        if (b.ci_uncompressed_size < v2) if special else (b.ci_uncompressed_size != v2):
            rules.append(f"ci_uncompressed_size={b.ci_uncompressed_size} does not fit {b.chunk_count} v2 entries")
    elif special:
        rules.append(f"features={b.features:#x}: batch/zran/encrypted need CHUNK_INFO_V2")
    elif (not features & BlobFeatures.IS_CHUNKDICT_GENERATED and not tarfs
          and b.ci_uncompressed_size != blobmeta.chunk_info_size(False) * b.chunk_count):
        rules.append(f"ci_uncompressed_size={b.ci_uncompressed_size}: must be 16 * chunk_count ({b.chunk_count})")
    return rules


def validate_tables(data: bytes) -> list[Defect]:
    """All of the above, in file order; later tables are checked only when the superblocks are sound."""
    try:
        out = validate_superblock(data)
        if out:
            return out
        out = validate_ext_superblock(data)
        if out:
            return out
        return validate_devices(data) + validate_blob_table(data)
    except (ConstructError, ValueError) as exc:
        return [Defect("bootstrap", 0, f"cannot decode: {exc}")]
