"""LayoutPlan -> bootstrap bytes, every record encoded by its format Struct and written in offset order.

The plan fixes every offset; this module only renders records and lays them down in ascending order,
so a layout bug (two records claiming the same bytes) is an InternalError naming the region.
"""

from __future__ import annotations

import os
from array import array

from nydus_py.errors import InternalError
from nydus_py.format import build, erofs, rafs
from nydus_py.bootstrap.layout import BLOCK, DIRENT_SIZE, InodePlan, LayoutPlan
from nydus_py.bootstrap.reader import file_type_of
from nydus_py.image import BlobInfo
from nydus_py.model import ChunkRef, FileKind

# A region of the file: (offset, bytes, what it is). What an inode's region is, (nid, data block number or -1
# for the inode itself), becomes words only in a message: formatting one per inode cost ~5% of rendering.
Region = tuple[int, bytes, "str | tuple[int, int]"]
MASK64 = (1 << 64) - 1  # i_mtime is read as a signed 64-bit time by the kernel: negative mtimes wrap
_EXT_INCOMPAT = erofs.FeatureIncompat.CHUNKED_FILE | erofs.FeatureIncompat.DEVICE_TABLE  # nydusd requires both


def render_bootstrap(plan: LayoutPlan, meta_area: bytes | None = None) -> bytes:
    """Render the whole bootstrap, as bytes (the caller writes them). `meta_area` is what `render_meta_area`
    gave for a plan this one was retargeted from (layout.retarget: same inodes and chunk table), reused
    rather than rendered again."""
    return render_head(plan) + (render_meta_area(plan) if meta_area is None else meta_area)


def render_head(plan: LayoutPlan) -> bytes:
    """Everything before the root inode (the first record of the meta area): superblocks, device slots,
    blob table, prefetch table. The only records a new blob table changes."""
    regions: list[Region] = [
        (erofs.EROFS_SUPER_OFFSET, encode_superblock(plan), "superblock"),
        (rafs.EXT_SUPER_OFFSET, encode_ext_superblock(plan), "extended superblock"),
    ]
    slot_at = erofs.device_table_offset(rafs.DEVT_SLOTOFF)
    for i, (blob, mapped) in enumerate(zip(plan.blobs, plan.mapped_blkaddrs, strict=True)):
        regions.append((slot_at + i * erofs.EROFS_DEVT_SLOT_SIZE, encode_device_slot(blob, mapped), f"device slot {i}"))
        regions.append((plan.blob_table_offset + i * rafs.Blob.sizeof(), encode_blob(blob, i), f"blob table entry {i}"))
    if plan.prefetch_nids:
        table = b"".join(nid.to_bytes(rafs.PREFETCH_ENTRY_SIZE, "little") for nid in plan.prefetch_nids)
        regions.append((plan.prefetch_table_offset, table, "prefetch table"))
    return assemble(regions, plan.root.offset)


def render_meta_area(plan: LayoutPlan) -> bytes:
    """From the root inode to the end: inodes, their inline and data blocks, the chunk table.

    Each region is copied into place as soon as it is rendered (a list of every region first held ~300 bytes
    per inode at the peak); where each went is kept in two integer arrays and checked for overlaps at the end.
    """
    start = plan.root.offset
    out = bytearray(plan.size - start)
    offsets, ends, nids, blocks = array("q"), array("q"), array("q"), array("q")  # per region
    names: dict[int, str] = {}  # region number -> what it is, for regions that are not an inode's

    def what_is(region: int) -> str:
        return names[region] if region in names else describe((nids[region], blocks[region]))

    size = plan.size

    def place(offset: int, data: bytes, what: str | tuple[int, int]) -> None:
        end = offset + len(data)
        if offset < start or end > size:
            raise InternalError(f"bootstrap layout: {describe(what)} at {offset:#x} lies outside the meta area "
                                f"[{start:#x}, {size:#x})")
        out[offset - start : end - start] = data
        if isinstance(what, str):
            names[len(offsets)] = what
            what = (-1, -1)
        nids.append(what[0])
        blocks.append(what[1])
        offsets.append(offset)
        ends.append(end)

    chunk_size, positions = plan.chunk_size, plan.blob_positions
    plain: list[InodePlan] = []  # regular files without xattrs and with one chunk at most: most inodes
    others: list[InodePlan] = []
    for inode_plan in plan.inodes:
        is_plain = inode_plan.inode.kind is FileKind.REG and not inode_plan.xattrs and len(inode_plan.inode.chunks) < 2
        (plain if is_plain else others).append(inode_plan)
    file_offsets, file_ends = _render_plain_files(plain, out, start, size, chunk_size, positions)
    offsets.extend(file_offsets)
    ends.extend(file_ends)
    nids.extend(p.nid for p in plain)
    blocks.extend(-1 for _ in plain)
    for inode_plan in others:
        for offset, data, what in inode_regions(inode_plan, chunk_size, positions):
            place(offset, data, what)
    place(plan.chunk_table_offset, encode_chunk_table(plan.chunk_table, plan.blob_positions), "chunk table")
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    for before, after in zip(order, order[1:], strict=False):
        if offsets[after] < ends[before]:
            raise InternalError(f"bootstrap layout: {what_is(after)} at {offsets[after]:#x} overlaps "
                                f"{what_is(before)} (ends {ends[before]:#x})")
    return bytes(out)


def _render_plain_files(plans: list[InodePlan], out: bytearray, start: int, size: int, chunk_size: int,
                        positions: dict[int, int]) -> tuple[list[int], list[int]]:
    """Write the records of regular files without xattrs and with one chunk at most into `out` (which holds
    the file from `start`), as `inode_regions` would render them; (offsets, ends) of each.

    One loop over them all: rendering them one region list at a time cost about a third of the meta area."""
    pack_inode = erofs.FAST_INODE_EXTENDED.pack_into
    pack_addr = erofs.FAST_CHUNK_ADDR.pack_into
    i_u = erofs.chunk_format(chunk_size.bit_length() - 1)  # chunk_format_word of a file of one chunk
    indexes_at = erofs.chunk_indexes_offset(0, erofs.INODE_EXTENDED_SIZE, 0)  # inode offsets are slot aligned
    offsets, ends = [], []
    for plan in plans:
        inode = plan.inode
        offset = plan.offset
        end = offset + indexes_at + erofs.EROFS_CHUNK_INDEX_SIZE * len(inode.chunks)
        if offset < start or end > size or plan.datalayout is not erofs.DataLayout.CHUNK_BASED:
            raise InternalError(f"bootstrap layout: inode nid {plan.nid} at {offset:#x} lies outside the meta area "
                                f"[{start:#x}, {size:#x}) or is not chunk based")
        pack_inode(out, offset - start, *inode_record_fields(plan, i_u))
        if inode.chunks:
            c = inode.chunks[0]
            pack_addr(out, offset - start + indexes_at, *erofs.blob_addr(positions[c.blob_index], c.ci_index),
                      c.uncompressed_offset // BLOCK)
        offsets.append(offset)
        ends.append(end)
    return offsets, ends


def describe(what: str | tuple[int, int]) -> str:
    if isinstance(what, str):
        return what
    nid, block = what
    return f"inode nid {nid}" + (f" data block {block}" if block >= 0 else "")


def assemble(regions: list[Region], size: int, start: int = 0) -> bytes:
    """The bytes from file offset `start` to `size`: each region at its offset, zeros between."""
    regions.sort(key=lambda r: r[0])
    out = bytearray()
    previous: str | tuple[int, int] = "start"
    for offset, data, what in regions:
        if offset < start + len(out):
            raise InternalError(f"bootstrap layout: {describe(what)} at {offset:#x} overlaps {describe(previous)} "
                                f"(ends {start + len(out):#x})")
        out += bytes(offset - start - len(out))
        out += data
        previous = what
    if start + len(out) > size:
        raise InternalError(f"bootstrap layout: {describe(previous)} ends at {start + len(out):#x}, past the planned "
                            f"size {size:#x}")
    out += bytes(size - start - len(out))
    return bytes(out)


def encode_superblock(plan: LayoutPlan) -> bytes:
    return build(erofs.SuperBlock, {
        "checksum": 0,
        "feature_compat": erofs.FeatureCompat.RAFS_V6,
        "blkszbits": erofs.EROFS_BLKSIZ_BITS,
        "sb_extslots": 0,
        "root_nid": plan.root.nid,
        "inos": plan.inos,
        "build_time": 0,
        "build_time_nsec": 0,
        "blocks": sum(rafs.device_blocks(b.uncompressed_size) for b in plan.blobs),
        "meta_blkaddr": plan.meta_blkaddr,
        "xattr_blkaddr": 0,
        "uuid": bytes(16),
        "volume_name": bytes(16),
        "feature_incompat": _EXT_INCOMPAT,
        "u1": 0,
        "extra_devices": len(plan.blobs),
        "devt_slotoff": rafs.DEVT_SLOTOFF,
        "reserved2": bytes(38),
    }, what="superblock")


def encode_ext_superblock(plan: LayoutPlan) -> bytes:
    return build(rafs.SuperBlockExt, {
        "s_flags": plan.flags,
        "s_blob_table_offset": plan.blob_table_offset,
        "s_blob_table_size": rafs.Blob.sizeof() * len(plan.blobs),
        "s_chunk_size": plan.chunk_size,
        "s_chunk_table_offset": plan.chunk_table_offset,
        "s_chunk_table_size": rafs.ChunkInfo.sizeof() * len(plan.chunk_table),
        "s_prefetch_table_offset": plan.prefetch_table_offset,
        "s_prefetch_table_size": rafs.PREFETCH_ENTRY_SIZE * len(plan.prefetch_nids),
        "s_padding": 0,
        "s_reserved": bytes(200),
    }, what="extended superblock")


def encode_device_slot(blob: BlobInfo, mapped_blkaddr: int) -> bytes:
    return erofs.FAST_DEVICE_SLOT.pack(rafs.blob_id_bytes(blob.blob_id), rafs.device_blocks(blob.uncompressed_size),
                                       mapped_blkaddr, b"")


def encode_blob(blob: BlobInfo, index: int) -> bytes:
    return build(rafs.Blob, {
        "blob_id": rafs.blob_id_bytes(blob.blob_id),
        "blob_index": index,
        "chunk_size": blob.chunk_size,
        "chunk_count": blob.chunk_count,
        "compression_algo": blob.compressor,
        "digest_algo": blob.digester,
        "features": blob.features,
        "compressed_size": blob.compressed_size,
        "uncompressed_size": blob.uncompressed_size,
        "blob_toc_size": blob.toc_size,
        "ci_compressor": blob.ci_compressor,
        "ci_offset": blob.ci_offset,
        "ci_compressed_size": blob.ci_compressed_size,
        "ci_uncompressed_size": blob.ci_uncompressed_size,
        "blob_toc_digest": blob.toc_digest,
        "blob_meta_digest": blob.meta_digest,
        "blob_meta_size": blob.meta_size,
        "cipher_iv": bytes(8),
        "cipher_algo": blob.cipher,
        "reserved2": bytes(36),
    }, what=f"blob table entry {index}")


# Chunk flags as plain ints: IntFlag arithmetic per chunk cost a third of the chunk table's time.
_COMPRESSED = int(rafs.ChunkFlags.COMPRESSED)
_HAS_CRC32 = int(rafs.ChunkFlags.HAS_CRC32)


def encode_chunk_table(chunks: list[ChunkRef], positions: dict[int, int]) -> bytes:
    pack = rafs.FAST_CHUNK_INFO.pack
    out = []
    for c in chunks:
        flags = (_COMPRESSED if c.compressed else 0) | (_HAS_CRC32 if c.crc32 is not None else 0)
        out.append(pack(c.digest, positions[c.blob_index], flags, c.compressed_size, c.uncompressed_size,
                        c.compressed_offset, c.uncompressed_offset, c.file_offset, c.ci_index, c.crc32 or 0))
    return b"".join(out)


def encode_xattrs(plan: InodePlan) -> bytes:
    if not plan.xattrs:
        return b""
    parts = [erofs.FAST_XATTR_IBODY_HEADER.pack(0, 0, b"")]
    for x in plan.xattrs:
        entry = erofs.FAST_XATTR_ENTRY_HEADER.pack(len(x.e_name), x.e_name_index, len(x.e_value)) + x.e_name + x.e_value
        parts.append(entry + bytes(-len(entry) % erofs.EROFS_XATTR_ALIGN))
    return b"".join(parts)


def chunk_format_word(plan: InodePlan, chunk_size: int) -> int:
    """i_u of a file: 8-byte indexes; one big chunk when the data is contiguous in one blob (page cache
    sharing: nydus's continuity trick; nydusd itself always uses the superblock chunk size)."""
    chunks = plan.inode.chunks
    if len(chunks) < 2:  # most files: nothing to be contiguous with
        return erofs.chunk_format(chunk_size.bit_length() - 1)
    contiguous = all(b.blob_index == a.blob_index and a.uncompressed_offset + chunk_size == b.uncompressed_offset
                     for a, b in zip(chunks, chunks[1:], strict=False))
    size = chunk_size
    if contiguous and plan.size > chunk_size:
        size = 1 << (plan.size - 1).bit_length()
    return erofs.chunk_format(size.bit_length() - 1)


def encode_chunk_indexes(chunks: list[ChunkRef], positions: dict[int, int]) -> bytes:
    pack = erofs.FAST_CHUNK_ADDR.pack
    return b"".join(pack(*erofs.blob_addr(positions[c.blob_index], c.ci_index), c.uncompressed_offset // BLOCK)
                    for c in chunks)


def dirent_blocks(plan: InodePlan) -> list[bytes]:
    """Dirent blocks of a directory: full blocks padded to 4 KiB, the last one exact."""
    blocks: list[list[tuple[bytes, InodePlan | None]]] = []
    start = 0
    for count, _used in erofs.dirent_blocks([len(name) for name, _child in plan.dirents], BLOCK):
        blocks.append(plan.dirents[start : start + count])
        start += count
    pack = erofs.FAST_DIRENT.pack
    dir_type = file_type_of(FileKind.DIR)
    out = []
    for entries in blocks:
        nameoff = DIRENT_SIZE * len(entries)
        heads = []
        for name, child in entries:
            if child is None:  # "." or ".."
                heads.append(pack(plan.nid if name == b"." else plan.parent_nid, nameoff, dir_type, 0))
            else:
                heads.append(pack(child.nid, nameoff, file_type_of(child.inode.kind), 0))
            nameoff += len(name)
        out.append(b"".join(heads) + b"".join(name for name, _ in entries))
    for i in range(len(out) - 1):
        out[i] += bytes(BLOCK - len(out[i]))
    return out


_I_FORMAT = {layout: erofs.i_format(layout) for layout in erofs.DataLayout}


def inode_record_fields(plan: InodePlan, i_u: int) -> tuple[int | bytes, ...]:
    """The extended inode record's fields, in FAST_INODE_EXTENDED's order; `i_u` as the inode's type uses it."""
    inode = plan.inode
    return (_I_FORMAT[plan.datalayout], erofs.xattr_icount(plan.xattr_size), inode.mode, 0, plan.size, i_u,
            plan.ino, inode.uid, inode.gid, inode.mtime & MASK64, inode.mtime_nsec, plan.nlink, b"")


def inode_regions(plan: InodePlan, chunk_size: int, positions: dict[int, int]) -> list[Region]:
    inode = plan.inode
    kind = inode.kind
    data_blocks: list[bytes] = []
    if kind is FileKind.DIR:
        data_blocks = dirent_blocks(plan)
        i_u = plan.data_offset // BLOCK
    elif kind is FileKind.SYMLINK:
        target = inode.symlink_target
        data_blocks = [target[i : i + BLOCK] for i in range(0, len(target), BLOCK)]
        i_u = plan.data_offset // BLOCK
    elif kind is FileKind.REG:
        i_u = chunk_format_word(plan, chunk_size)
    elif kind in (FileKind.CHR, FileKind.BLK):
        i_u = erofs.encode_rdev(os.major(inode.rdev), os.minor(inode.rdev))
    else:
        i_u = 0
    record = erofs.FAST_INODE_EXTENDED.pack(*inode_record_fields(plan, i_u))
    body = record + encode_xattrs(plan) if plan.xattrs else record
    what = (plan.nid, -1)
    regions: list[Region] = []
    if kind is FileKind.REG:
        indexes_at = erofs.chunk_indexes_offset(plan.offset, erofs.INODE_EXTENDED_SIZE, plan.xattr_size)
        body += bytes(indexes_at - plan.offset - len(body)) + encode_chunk_indexes(inode.chunks, positions)
    elif data_blocks and plan.datalayout == erofs.DataLayout.FLAT_INLINE:
        body += data_blocks.pop()  # the tail block lives right after the inode
    regions.append((plan.offset, body, what))
    for k, block in enumerate(data_blocks):
        regions.append((plan.data_offset + k * BLOCK, block, (plan.nid, k)))
    return regions
