"""RAFS v6 bootstrap bytes -> `Bootstrap` (superblock facts, device and blob tables, chunk table, tree).

Every count and offset read from the image is bounded against the buffer before it is used, so corrupt
input ends in a FormatError naming the structure and offset, never an IndexError.
References: ../shared/reference/rafs-v6-format.md §13.2 (reader recipe), §3-§9.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format import erofs, parse, rafs
from nydus_py.image import BlobInfo, Bootstrap, DeviceInfo
from nydus_py.model import ChunkRef, Entry, FileKind, Inode, Tree

_SUPPORTED_INCOMPAT = erofs.FeatureIncompat.CHUNKED_FILE | erofs.FeatureIncompat.DEVICE_TABLE
_FILE_TYPE_OF_KIND = {
    FileKind.REG: erofs.FileType.REG_FILE,
    FileKind.DIR: erofs.FileType.DIR,
    FileKind.CHR: erofs.FileType.CHRDEV,
    FileKind.BLK: erofs.FileType.BLKDEV,
    FileKind.FIFO: erofs.FileType.FIFO,
    FileKind.SOCK: erofs.FileType.SOCK,
    FileKind.SYMLINK: erofs.FileType.SYMLINK,
}
_XATTR_PREFIX = {int(index): prefix for index, prefix in erofs.XATTR_PREFIXES}


def file_type_of(kind: FileKind) -> erofs.FileType:
    return _FILE_TYPE_OF_KIND[kind]


def xattr_name(index: int, suffix: bytes) -> bytes:
    prefix = _XATTR_PREFIX.get(index)
    if prefix is None:
        raise FormatError(f"xattr name index {index} is unknown")
    return prefix + suffix


def read_bootstrap(data: bytes, relabel: Callable[[list[BlobInfo]], dict[int, int]] | None = None) -> Bootstrap:
    """Decode a whole bootstrap (RAFS v6, or a plain uncompressed EROFS image with chunked files).

    `relabel`, given the blob table, maps its indexes to other blob keys: every chunk of the tree then carries
    the mapped key (a merge needs one numbering across layers; doing it here costs one tuple per distinct chunk
    instead of one per chunk reference).
    """
    data = bytes(data)
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    if sb.blkszbits != erofs.EROFS_BLKSIZ_BITS:
        raise UnsupportedError(f"superblock blkszbits={sb.blkszbits} at 0x400: only 12 (4 KiB blocks) is supported")
    unsupported = sb.feature_incompat & ~_SUPPORTED_INCOMPAT
    if unsupported:
        raise UnsupportedError(f"superblock feature_incompat {int(unsupported):#x}: not a RAFS v6 feature")
    is_rafs = bool(sb.feature_compat & erofs.FeatureCompat.RAFS_V6)
    ext = parse(rafs.SuperBlockExt, data, what="extended superblock", offset=rafs.EXT_SUPER_OFFSET) if is_rafs else None
    devices = _read_devices(data, sb)
    blobs = _read_blob_table(data, ext) if ext is not None else []
    chunk_size = ext.s_chunk_size if ext is not None else 0
    if ext is not None and not _valid_chunk_size(chunk_size):
        raise FormatError(f"extended superblock s_chunk_size={chunk_size:#x} at 0x494: "
                          "must be a power of two from 4 KiB to 16 MiB")
    chunk_table = _read_chunk_table(data, ext) if ext is not None else []
    if relabel is not None:
        mapping = relabel(blobs)
        chunk_table = [c._replace(blob_index=mapping[c.blob_index]) if c.blob_index in mapping else c
                       for c in chunk_table]
    prefetch = _read_prefetch_table(data, ext) if ext is not None else []
    walker = BootstrapParser(data, sb.meta_blkaddr, chunk_size, chunk_table if is_rafs else None,
                             {v: k for k, v in mapping.items()} if relabel is not None else None)
    tree = walker.read(sb.root_nid)
    return Bootstrap(
        size=len(data),
        flags=ext.s_flags if ext is not None else rafs.SuperFlags(0),
        chunk_size=chunk_size,
        inode_count=sb.inos,
        meta_blkaddr=sb.meta_blkaddr,
        root_nid=sb.root_nid,
        blocks=sb.blocks,
        devices=devices,
        blobs=blobs,
        tree=tree,
        prefetch_nids=prefetch,
        chunk_table=chunk_table,
        rafs=is_rafs,
    )


def _signed64(value: int) -> int:
    """The kernel reads i_mtime as a signed 64-bit time."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _valid_chunk_size(size: int) -> bool:
    return rafs.MIN_CHUNK_SIZE <= size <= rafs.MAX_CHUNK_SIZE and size & (size - 1) == 0


def _check_range(data: bytes, offset: int, size: int, what: str) -> None:
    if offset < 0 or size < 0 or offset + size > len(data):
        raise FormatError(f"{what} at {offset:#x} (+{size:#x} bytes): past the end of the bootstrap ({len(data):#x})")


def _read_devices(data: bytes, sb: object) -> list[DeviceInfo]:
    start = erofs.device_table_offset(sb.devt_slotoff)  # type: ignore[attr-defined]
    count = sb.extra_devices  # type: ignore[attr-defined]
    _check_range(data, start, count * erofs.EROFS_DEVT_SLOT_SIZE, "device table")
    slots = []
    for i in range(count):
        rec = erofs.FAST_DEVICE_SLOT.unpack_record(data, start + i * erofs.EROFS_DEVT_SLOT_SIZE)
        slots.append(DeviceInfo(tag=rafs.blob_id_text(rec.tag), blocks=rec.blocks, mapped_blkaddr=rec.mapped_blkaddr))
    return slots


def _read_blob_table(data: bytes, ext: object) -> list[BlobInfo]:
    offset = ext.s_blob_table_offset  # type: ignore[attr-defined]
    size = ext.s_blob_table_size  # type: ignore[attr-defined]
    if size % rafs.Blob.sizeof():
        raise FormatError(f"extended superblock s_blob_table_size={size} at 0x490: not a multiple of 256")
    _check_range(data, offset, size, "blob table")
    blobs = []
    for i in range(size // rafs.Blob.sizeof()):
        at = offset + i * rafs.Blob.sizeof()
        rec = parse(rafs.Blob, data, what=f"blob table entry {i}", offset=at)
        blobs.append(blob_info_from_record(rec))
    return blobs


def blob_info_from_record(rec: object) -> BlobInfo:
    """A BlobInfo from a parsed `rafs.Blob` container."""
    r = rec
    return BlobInfo(
        blob_id=rafs.blob_id_text(r.blob_id),  # type: ignore[attr-defined]
        blob_index=r.blob_index,  # type: ignore[attr-defined]
        chunk_size=r.chunk_size,  # type: ignore[attr-defined]
        chunk_count=r.chunk_count,  # type: ignore[attr-defined]
        compressor=r.compression_algo,  # type: ignore[attr-defined]
        digester=r.digest_algo,  # type: ignore[attr-defined]
        features=r.features,  # type: ignore[attr-defined]
        compressed_size=r.compressed_size,  # type: ignore[attr-defined]
        uncompressed_size=r.uncompressed_size,  # type: ignore[attr-defined]
        ci_compressor=r.ci_compressor,  # type: ignore[attr-defined]
        ci_offset=r.ci_offset,  # type: ignore[attr-defined]
        ci_compressed_size=r.ci_compressed_size,  # type: ignore[attr-defined]
        ci_uncompressed_size=r.ci_uncompressed_size,  # type: ignore[attr-defined]
        toc_size=r.blob_toc_size,  # type: ignore[attr-defined]
        toc_digest=r.blob_toc_digest,  # type: ignore[attr-defined]
        meta_digest=r.blob_meta_digest,  # type: ignore[attr-defined]
        meta_size=r.blob_meta_size,  # type: ignore[attr-defined]
        cipher=r.cipher_algo,  # type: ignore[attr-defined]
    )


def _read_chunk_table(data: bytes, ext: object) -> list[ChunkRef]:
    offset = ext.s_chunk_table_offset  # type: ignore[attr-defined]
    size = ext.s_chunk_table_size  # type: ignore[attr-defined]
    entry = rafs.FAST_CHUNK_INFO.size
    if size % entry:
        raise FormatError(f"extended superblock s_chunk_table_size={size} at 0x4a0: not a multiple of {entry}")
    _check_range(data, offset, size, "chunk table")
    compressed_bit, crc_bit = int(rafs.ChunkFlags.COMPRESSED), int(rafs.ChunkFlags.HAS_CRC32)  # ints: fast
    return [ChunkRef(blob_index, index, uoff, usize, coff, csize, bool(flags & compressed_bit), block_id,
                     crc if flags & crc_bit else None, foff)
            for (block_id, blob_index, flags, csize, usize, coff, uoff, foff, index, crc)
            in rafs.FAST_CHUNK_INFO.iter_unpack(data[offset : offset + size])]


def _read_prefetch_table(data: bytes, ext: object) -> list[int]:
    offset = ext.s_prefetch_table_offset  # type: ignore[attr-defined]
    size = ext.s_prefetch_table_size  # type: ignore[attr-defined]
    if size == 0:
        return []
    _check_range(data, offset, size - size % rafs.PREFETCH_ENTRY_SIZE, "prefetch table")
    count = size // rafs.PREFETCH_ENTRY_SIZE
    return list(memoryview(data)[offset : offset + count * rafs.PREFETCH_ENTRY_SIZE].cast("I"))


@dataclass(slots=True)
class RawInode:
    """An inode record as found at a nid, before it becomes a model Inode."""

    nid: int
    offset: int
    extended: bool
    datalayout: int
    record: object  # FAST_INODE_* named tuple
    xattr_size: int

    @property
    def body_end(self) -> int:
        """Offset right after the inode and its inline xattrs."""
        return self.offset + erofs.inode_size(self.extended) + self.xattr_size


class BootstrapParser:
    """Reads inodes and directories starting at the root nid, iteratively (no recursion limit)."""

    def __init__(self, data: bytes, meta_blkaddr: int, chunk_size: int, chunk_table: list[ChunkRef] | None,
                 original_index: dict[int, int] | None = None) -> None:
        """`chunk_table` None: a plain EROFS image, whose chunks are known only by their index.
        `original_index` maps relabelled blob keys of the chunk table back to the on-disk blob indexes."""
        self.data = data
        self.meta_blkaddr = meta_blkaddr
        self.chunk_size = chunk_size
        back = original_index or {}
        self.chunks = None if chunk_table is None else {
            (back.get(c.blob_index, c.blob_index), c.ci_index): c for c in chunk_table}
        self.files: dict[int, Inode] = {}  # nid -> inode, so hardlinks share one Inode

    def read(self, root_nid: int) -> Tree:
        root_raw = self.raw_inode(root_nid)
        root = self.make_inode(root_raw)
        if not root.is_dir:
            raise FormatError(f"root inode nid {root_nid}: not a directory")
        visited: set[int] = set()
        stack: list[tuple[int, Inode]] = [(root_nid, root)]
        while stack:
            nid, inode = stack.pop()
            if nid in visited:
                raise FormatError(f"directory nid {nid} is reachable twice (a loop in the directory graph)")
            visited.add(nid)
            raw = self.raw_inode(nid) if nid != root_nid else root_raw
            for name, child_nid, file_type in self.dirents(raw):
                if name in (b".", b".."):
                    continue
                if b"/" in name or b"\0" in name:  # a name, not a path: every consumer joins it to its parent
                    raise FormatError(f"dirent {name!r} in directory nid {nid}: a name cannot hold '/' or NUL")
                child_raw = self.raw_inode(child_nid)
                child = self.files.get(child_nid) or self.make_inode(child_raw)
                if _FILE_TYPE_OF_KIND[child.kind] != file_type:
                    raise FormatError(f"dirent {name!r} in directory nid {nid}: file type {file_type} "
                                      f"does not match inode mode {child.mode:#o}")
                inode.entries.append(Entry(name=name, inode=child))
                if child.is_dir:
                    stack.append((child_nid, child))
                else:
                    self.files[child_nid] = child
        return Tree(root=root)

    def raw_inode(self, nid: int) -> RawInode:
        # the range checks are written out: this runs once per inode of every layer being merged
        data = self.data
        offset = erofs.nid_to_offset(self.meta_blkaddr, nid)
        if offset < 0 or offset + erofs.INODE_COMPACT_SIZE > len(data):
            _check_range(data, offset, erofs.INODE_COMPACT_SIZE, f"inode nid {nid}")
        i_format = data[offset] | data[offset + 1] << 8
        extended, layout, unknown = erofs.split_i_format(i_format)
        if unknown:
            raise FormatError(f"inode nid {nid} at {offset:#x}: i_format={i_format:#x} has unknown bits")
        codec = erofs.FAST_INODE_EXTENDED if extended else erofs.FAST_INODE_COMPACT
        if offset + codec.size > len(data):
            _check_range(data, offset, codec.size, f"inode nid {nid}")
        record = codec.unpack_record(data, offset)
        xattr_size = erofs.xattr_ibody_size(record.i_xattr_icount)
        if offset + codec.size + xattr_size > len(data):
            _check_range(data, offset + codec.size, xattr_size, f"inode nid {nid} xattrs")
        return RawInode(nid=nid, offset=offset, extended=extended, datalayout=layout, record=record,
                        xattr_size=xattr_size)

    def make_inode(self, raw: RawInode) -> Inode:
        rec = raw.record
        try:
            kind = FileKind.from_mode(rec.i_mode)  # type: ignore[attr-defined]
        except ValueError:
            raise FormatError(f"inode nid {raw.nid} at {raw.offset:#x}: i_mode={rec.i_mode:#o} has no valid "  # type: ignore[attr-defined]
                              "file type") from None
        inode = Inode(
            kind=kind,
            mode=rec.i_mode,  # type: ignore[attr-defined]
            uid=rec.i_uid,  # type: ignore[attr-defined]
            gid=rec.i_gid,  # type: ignore[attr-defined]
            mtime=_signed64(rec.i_mtime) if raw.extended else 0,  # type: ignore[attr-defined]
            mtime_nsec=rec.i_mtime_nsec if raw.extended else 0,  # type: ignore[attr-defined]
            size=rec.i_size,  # type: ignore[attr-defined]
            xattrs=self.xattrs(raw),
        )
        if kind in (FileKind.CHR, FileKind.BLK):
            major, minor = erofs.decode_rdev(rec.i_u)  # type: ignore[attr-defined]
            inode.rdev = os.makedev(major, minor)
            inode.size = 0
        elif kind is FileKind.SYMLINK:
            inode.symlink_target = self.flat_data(raw)
        elif kind is FileKind.REG:
            inode.chunks = self.chunk_refs(raw)
        elif kind in (FileKind.FIFO, FileKind.SOCK):
            inode.size = 0
        return inode

    def xattrs(self, raw: RawInode) -> dict[bytes, bytes]:
        if raw.xattr_size == 0:
            return {}
        start = raw.offset + erofs.inode_size(raw.extended)
        end = start + raw.xattr_size
        header = erofs.FAST_XATTR_IBODY_HEADER.unpack_record(self.data, start)
        pos = start + erofs.EROFS_XATTR_IBODY_HEADER_SIZE + 4 * header.h_shared_count
        if header.h_shared_count:
            raise UnsupportedError(f"inode nid {raw.nid}: shared xattrs are not supported")
        out: dict[bytes, bytes] = {}
        while pos < end:
            if pos + erofs.EROFS_XATTR_ENTRY_HEADER_SIZE > end:
                raise FormatError(f"xattr entry of inode nid {raw.nid} at {pos:#x}: crosses the ibody end {end:#x}")
            name_len, index, value_size = erofs.FAST_XATTR_ENTRY_HEADER.unpack_from(self.data, pos)
            entry_end = pos + erofs.xattr_entry_size(name_len, value_size)
            if entry_end > end:
                raise FormatError(f"xattr entry of inode nid {raw.nid} at {pos:#x}: crosses the ibody end {end:#x}")
            name_at = pos + erofs.EROFS_XATTR_ENTRY_HEADER_SIZE
            suffix = self.data[name_at : name_at + name_len]
            value = self.data[name_at + name_len : name_at + name_len + value_size]
            try:
                out[xattr_name(index, suffix)] = value
            except FormatError as exc:
                raise FormatError(f"xattr entry of inode nid {raw.nid} at {pos:#x}: {exc}") from None
            pos = entry_end
        return out

    def data_blocks(self, raw: RawInode) -> list[tuple[int, int]]:
        """(offset, length) of each data block of a flat (plain or inline) dir or symlink."""
        size = raw.record.i_size  # type: ignore[attr-defined]
        bs = erofs.EROFS_BLKSIZ
        nblocks = (size + bs - 1) // bs
        if raw.datalayout not in (erofs.DataLayout.FLAT_PLAIN, erofs.DataLayout.FLAT_INLINE):
            raise FormatError(f"inode nid {raw.nid} at {raw.offset:#x}: data layout {raw.datalayout} "
                              "is not flat (plain or inline)")
        blocks = []
        for k in range(nblocks):
            length = min(bs, size - k * bs)
            last = k == nblocks - 1
            if last and raw.datalayout == erofs.DataLayout.FLAT_INLINE:
                at = raw.body_end
                if at % bs + length > bs:
                    raise FormatError(f"inode nid {raw.nid} at {raw.offset:#x}: inline data crosses a block boundary")
            else:
                at = (raw.record.i_u + k) * bs  # type: ignore[attr-defined]
            _check_range(self.data, at, length, f"data block {k} of inode nid {raw.nid}")
            blocks.append((at, length))
        return blocks

    def flat_data(self, raw: RawInode) -> bytes:
        return b"".join(self.data[at : at + length] for at, length in self.data_blocks(raw))

    def dirents(self, raw: RawInode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of every dirent of a directory, in on-disk order."""
        out = []
        for at, length in self.data_blocks(raw):
            out.extend(self._dirent_block(raw.nid, at, length))
        return out

    def _dirent_block(self, nid: int, at: int, length: int) -> list[tuple[bytes, int, int]]:
        size = erofs.DIRENT_SIZE
        if length < size:
            raise FormatError(f"dirent block of directory nid {nid} at {at:#x}: {length} bytes is too short")
        first = erofs.FAST_DIRENT.unpack_record(self.data, at)
        count = erofs.dirent_count(first.nameoff)
        if first.nameoff % size or count == 0 or first.nameoff > length:
            raise FormatError(f"dirent block of directory nid {nid} at {at:#x}: nameoff[0]={first.nameoff} is invalid")
        records = [erofs.FAST_DIRENT.unpack_record(self.data, at + i * size) for i in range(count)]
        out = []
        for i, rec in enumerate(records):
            end = records[i + 1].nameoff if i + 1 < count else length
            if not rec.nameoff <= end <= length or (i + 1 < count and rec.nameoff >= end):
                raise FormatError(f"dirent {i} of directory nid {nid} at {at + i * size:#x}: "
                                  f"name offsets {rec.nameoff}..{end} are out of order or past the block")
            name = self.data[at + rec.nameoff : at + end]
            if i + 1 == count:
                name = name.split(b"\0", 1)[0]  # the last name of a block ends at the zero slack (strnlen)
            if not name:
                raise FormatError(f"dirent {i} of directory nid {nid} at {at + i * size:#x}: empty name")
            out.append((name, rec.nid, rec.file_type))
        return out

    def chunk_addrs(self, raw: RawInode) -> list[tuple[int, int, int, int]]:
        """(index offset, blob_index, ci_index, blkaddr) of each chunk index of a regular file."""
        rec = raw.record
        size = rec.i_size  # type: ignore[attr-defined]
        if raw.datalayout != erofs.DataLayout.CHUNK_BASED:
            raise UnsupportedError(f"regular file nid {raw.nid}: data layout {raw.datalayout} is not chunk based")
        chunk_size = self.chunk_size or (1 << erofs.chunkbits_of(rec.i_u))  # type: ignore[attr-defined]
        count = (size + chunk_size - 1) // chunk_size
        start = erofs.chunk_indexes_offset(raw.offset, erofs.inode_size(raw.extended), raw.xattr_size)
        end = start + count * erofs.EROFS_CHUNK_INDEX_SIZE
        if end > len(self.data):
            _check_range(self.data, start, end - start, f"chunk indexes of inode nid {raw.nid}")
        split = erofs.split_blob_addr
        return [(start + 8 * k, *split(lo, device_id, hi), blkaddr) for k, (lo, device_id, hi, blkaddr)
                in enumerate(erofs.FAST_CHUNK_ADDR.iter_unpack(self.data[start:end]))]

    def chunk_refs(self, raw: RawInode) -> list[ChunkRef]:
        size = raw.record.i_size  # type: ignore[attr-defined]
        chunk_size = self.chunk_size or (1 << erofs.chunkbits_of(raw.record.i_u))  # type: ignore[attr-defined]
        refs = []
        for k, (at, blob_index, ci_index, blkaddr) in enumerate(self.chunk_addrs(raw)):
            expected = min(chunk_size, size - k * chunk_size)
            if self.chunks is None:
                refs.append(ChunkRef(blob_index=blob_index, ci_index=ci_index, uncompressed_offset=blkaddr << 12,
                                     uncompressed_size=expected, compressed_offset=0, compressed_size=0,
                                     compressed=False, digest=b""))
                continue
            known = self.chunks.get((blob_index, ci_index))
            if known is None:
                raise FormatError(f"chunk index {k} of inode nid {raw.nid} at {at:#x}: blob {blob_index} "
                                  f"chunk {ci_index} has no chunk table entry")
            if known.uncompressed_offset != blkaddr * erofs.EROFS_BLKSIZ or known.uncompressed_size != expected:
                raise FormatError(f"chunk index {k} of inode nid {raw.nid} at {at:#x}: block {blkaddr} "
                                  f"size {expected} disagree with the chunk table entry")
            refs.append(known)
        return refs


__all__ = ["BootstrapParser", "blob_info_from_record", "file_type_of", "read_bootstrap", "xattr_name"]
