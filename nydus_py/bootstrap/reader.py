"""RAFS v6 bootstrap bytes -> `Bootstrap` (superblock facts, device and blob tables, chunk table, tree).

Every count and offset read from the image is bounded against the buffer before it is used, so corrupt
input ends in a FormatError naming the structure and offset, never an IndexError.
References: docs/format.md §13.2 (reader recipe), §3-§9.
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from itertools import compress, repeat
from pathlib import Path
from typing import TypeVar

from construct import Container

from nydus_py.errors import FormatError, UnsupportedError, UsageError
from nydus_py.format import erofs, parse, rafs
from nydus_py.format.rafs import DigestAlgo, digester_of
from nydus_py.image import BlobInfo, Bootstrap, DeviceInfo
from nydus_py.util.fsutil import open_regular_file
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


MAX_BOOTSTRAP_SIZE = 1 << 30  # what a bootstrap file may be before it is read whole (1.5M entries need ~200 MiB)


def read_bootstrap_file(path: Path) -> bytes:
    """A bootstrap file's bytes: a regular file (a FIFO or device is never read, nor waited on) of at most
    MAX_BOOTSTRAP_SIZE bytes; UsageError or FormatError naming it otherwise."""
    with open_regular_file(path, "a bootstrap") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BOOTSTRAP_SIZE:
            raise FormatError(f"{path}: {size} bytes is more than a bootstrap may be ({MAX_BOOTSTRAP_SIZE >> 20} MiB)")
        try:
            return f.read(MAX_BOOTSTRAP_SIZE + 1)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def is_bootstrap(head: bytes) -> bool:
    magic_at = erofs.EROFS_SUPER_OFFSET
    return len(head) >= magic_at + 4 and int.from_bytes(head[magic_at : magic_at + 4], "little") == (
        erofs.EROFS_SUPER_MAGIC_V1)


def read_bootstrap(data: bytes, relabel: Callable[[list[BlobInfo]], dict[int, int]] | None = None) -> Bootstrap:
    """Decode a whole bootstrap (RAFS v6, or a plain uncompressed EROFS image with chunked files).

    `relabel`, given the blob table, maps its indexes to other blob keys: every chunk of the tree then carries
    the mapped key (a merge needs one numbering across layers; doing it here costs one tuple per distinct chunk
    instead of one per chunk reference).
    """
    data = bytes(data)
    tables = read_tables(data, relabel)
    sb, ext, is_rafs, mapping = tables.superblock, tables.ext, tables.is_rafs, tables.mapping
    prefetch = _read_prefetch_table(data, ext) if ext is not None else []
    walker = BootstrapParser(data, sb.meta_blkaddr, tables.chunk_size, tables.chunk_table if is_rafs else None,
                             {v: k for k, v in mapping.items()} if mapping is not None else None)
    tree = walker.read(sb.root_nid)
    return Bootstrap(
        size=len(data),
        flags=tables.flags,
        chunk_size=tables.chunk_size,
        inode_count=sb.inos,
        meta_blkaddr=sb.meta_blkaddr,
        root_nid=sb.root_nid,
        blocks=sb.blocks,
        devices=tables.devices,
        blobs=tables.blobs,
        tree=tree,
        prefetch_nids=prefetch,
        chunk_table=tables.chunk_table,
        rafs=is_rafs,
    )


@dataclass(slots=True)
class Tables:
    """A bootstrap's superblocks and tables, without its tree (what a chunk dictionary needs)."""

    superblock: Container
    ext: Container | None
    is_rafs: bool
    flags: rafs.SuperFlags
    chunk_size: int
    devices: list[DeviceInfo]
    blobs: list[BlobInfo]
    chunk_table: list[ChunkRef]
    mapping: dict[int, int] | None

    @property
    def digester(self) -> DigestAlgo:
        return digester_of(self.flags)


def read_tables(data: bytes, relabel: Callable[[list[BlobInfo]], dict[int, int]] | None = None) -> Tables:
    """The superblocks, device table, blob table and chunk table of a bootstrap, checked as `read_bootstrap`
    checks them; the chunk table's blob indexes mapped through `relabel`."""
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
    chunk_rows = _chunk_table_bytes(data, ext) if ext is not None else b""
    mapping = relabel(blobs) if relabel is not None else None  # after the table checks, as its errors come first
    return Tables(superblock=sb, ext=ext, is_rafs=is_rafs, flags=ext.s_flags if ext is not None else rafs.SuperFlags(0),
                  chunk_size=chunk_size, devices=devices, blobs=blobs,
                  chunk_table=_decode_chunk_table(chunk_rows, mapping or {}), mapping=mapping)


def _signed64(value: int) -> int:
    """The kernel reads i_mtime as a signed 64-bit time."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _valid_chunk_size(size: int) -> bool:
    return rafs.MIN_CHUNK_SIZE <= size <= rafs.MAX_CHUNK_SIZE and size & (size - 1) == 0


def _check_range(data: bytes, offset: int, size: int, what: str) -> None:
    if offset < 0 or size < 0 or offset + size > len(data):
        raise FormatError(f"{what} at {offset:#x} (+{size:#x} bytes): past the end of the bootstrap ({len(data):#x})")


def _read_devices(data: bytes, sb: Container) -> list[DeviceInfo]:
    start = erofs.device_table_offset(sb.devt_slotoff)
    count = sb.extra_devices
    _check_range(data, start, count * erofs.EROFS_DEVT_SLOT_SIZE, "device table")
    slots = []
    for i in range(count):
        rec = erofs.FAST_DEVICE_SLOT.unpack_record(data, start + i * erofs.EROFS_DEVT_SLOT_SIZE)
        slots.append(DeviceInfo(tag=rafs.blob_id_text(rec.tag), blocks=rec.blocks, mapped_blkaddr=rec.mapped_blkaddr))
    return slots


def _read_blob_table(data: bytes, ext: Container) -> list[BlobInfo]:
    offset = ext.s_blob_table_offset
    size = ext.s_blob_table_size
    if size % rafs.Blob.sizeof():
        raise FormatError(f"extended superblock s_blob_table_size={size} at 0x490: not a multiple of 256")
    _check_range(data, offset, size, "blob table")
    blobs = []
    for i in range(size // rafs.Blob.sizeof()):
        at = offset + i * rafs.Blob.sizeof()
        rec = parse(rafs.Blob, data, what=f"blob table entry {i}", offset=at)
        blobs.append(blob_info_from_record(rec))
    return blobs


def blob_info_from_record(rec: Container) -> BlobInfo:
    """A BlobInfo from a parsed `rafs.Blob` container."""
    r = rec
    return BlobInfo(
        blob_id=rafs.blob_id_text(r.blob_id),
        blob_index=r.blob_index,
        chunk_size=r.chunk_size,
        chunk_count=r.chunk_count,
        compressor=r.compression_algo,
        digester=r.digest_algo,
        features=r.features,
        compressed_size=r.compressed_size,
        uncompressed_size=r.uncompressed_size,
        ci_compressor=r.ci_compressor,
        ci_offset=r.ci_offset,
        ci_compressed_size=r.ci_compressed_size,
        ci_uncompressed_size=r.ci_uncompressed_size,
        toc_size=r.blob_toc_size,
        toc_digest=r.blob_toc_digest,
        meta_digest=r.blob_meta_digest,
        meta_size=r.blob_meta_size,
        cipher=r.cipher_algo,
    )


def _chunk_table_bytes(data: bytes, ext: Container) -> bytes:
    """The chunk table's bytes, its size and range checked."""
    offset = ext.s_chunk_table_offset
    size = ext.s_chunk_table_size
    entry = rafs.FAST_CHUNK_INFO.size
    if size % entry:
        raise FormatError(f"extended superblock s_chunk_table_size={size} at 0x4a0: not a multiple of {entry}")
    _check_range(data, offset, size, "chunk table")
    return data[offset : offset + size]


def _decode_chunk_table(rows: bytes, blob_key: dict[int, int]) -> list[ChunkRef]:
    """ChunkRefs of the chunk table, each blob index mapped through `blob_key` (unmapped ones kept). Built a
    field at a time (C loops, not bytecode per entry): a merge decodes every chunk of every layer."""
    records = list(rafs.FAST_CHUNK_INFO.iter_unpack(rows))
    if not records:
        return []
    block_id, blob_index, flags, csize, usize, coff, uoff, foff, index, crc = zip(*records, strict=True)
    crc_bit = int(rafs.ChunkFlags.HAS_CRC32)
    compressed = map(bool, map(operator.and_, flags, repeat(int(rafs.ChunkFlags.COMPRESSED))))
    crc32 = [value if flag & crc_bit else None for value, flag in zip(crc, flags, strict=True)]
    fields = zip(map(blob_key.get, blob_index, blob_index), index, uoff, usize, coff, csize, compressed, block_id,
                 crc32, foff, strict=True)
    return list(map(tuple.__new__, repeat(ChunkRef), fields))  # ChunkRef(*f), without its Python-level __new__


def _read_prefetch_table(data: bytes, ext: Container) -> list[int]:
    offset = ext.s_prefetch_table_offset
    size = ext.s_prefetch_table_size
    if size == 0:
        return []
    _check_range(data, offset, size - size % rafs.PREFETCH_ENTRY_SIZE, "prefetch table")
    count = size // rafs.PREFETCH_ENTRY_SIZE
    return list(memoryview(data)[offset : offset + count * rafs.PREFETCH_ENTRY_SIZE].cast("I"))


class _ChunkIndex:
    """The chunk table by on-disk (blob index, ci_index), as chunk indexes name entries (the last of equal keys
    wins). Per blob, a list indexed by ci_index where the blob's indexes are dense, as builders number chunks
    from 0 (a lookup then touches no key object: a merge looks up every chunk of every layer); else a dict,
    so memory stays bounded by the table."""

    def __init__(self, table: list[ChunkRef], original_index: dict[int, int]) -> None:
        keys = [c.blob_index for c in table]
        blob_indexes = list(map(original_index.get, keys, keys))
        ci_indexes = [c.ci_index for c in table]
        distinct = set(blob_indexes)
        groups: dict[int, tuple[list[int], list[ChunkRef]]] = {}
        if len(distinct) == 1:  # a layer's table: all of one blob
            groups[blob_indexes[0]] = (ci_indexes, table)
        elif distinct:
            groups = {blob_index: ([], []) for blob_index in distinct}
            for blob_index, ci_index, chunk in zip(blob_indexes, ci_indexes, table, strict=True):
                group = groups[blob_index]
                group[0].append(ci_index)
                group[1].append(chunk)
        self.by_blob: dict[int, list[ChunkRef | None] | dict[int, ChunkRef]] = {}
        for blob_index, (cis, chunks) in groups.items():
            size = max(cis) + 1
            if size <= 2 * len(cis) + 64:
                dense: list[ChunkRef | None] = [None] * size
                for ci_index, chunk in zip(cis, chunks, strict=True):
                    dense[ci_index] = chunk
                self.by_blob[blob_index] = dense
            else:
                self.by_blob[blob_index] = dict(zip(cis, chunks, strict=True))

    def find(self, blob_index: int, ci_index: int) -> ChunkRef | None:
        """The entry of blob `blob_index` (on-disk numbering) with `ci_index`, or None."""
        chunks = self.by_blob.get(blob_index)
        if isinstance(chunks, list):
            return chunks[ci_index] if 0 <= ci_index < len(chunks) else None
        return None if chunks is None else chunks.get(ci_index)

    def find_all(self, blob_indexes: list[int], ci_indexes: list[int]) -> list[ChunkRef | None]:
        """`find` of each pair; one C loop when all name one dense blob, as a layer's files do."""
        if blob_indexes and blob_indexes.count(blob_indexes[0]) == len(blob_indexes):
            chunks = self.by_blob.get(blob_indexes[0])
            if isinstance(chunks, list) and min(ci_indexes) >= 0 and max(ci_indexes) < len(chunks):
                return list(map(chunks.__getitem__, ci_indexes))
        return list(map(self.find, blob_indexes, ci_indexes))


@dataclass(slots=True)
class RawInode:
    """An inode record as found at a nid, before it becomes a model Inode."""

    nid: int
    offset: int
    extended: bool
    datalayout: int
    record: erofs.InodeCompactRecord | erofs.InodeExtendedRecord
    xattr_size: int

    @property
    def body_end(self) -> int:
        """Offset right after the inode and its inline xattrs."""
        return self.offset + erofs.inode_size(self.extended) + self.xattr_size


class BootstrapParser:
    """Reads inodes and directories starting at the root nid, iteratively (no recursion limit).

    A merge reads every inode of every layer, so `read` decodes the regular files of a directory in the shape
    builders write together, a field at a time (`_common_files`: C loops over columns rather than bytecode per
    file). Every other inode, and any that fails a check there, takes the general path (`raw_inode`,
    `make_inode`), which raises the precise error; the fast path never raises, so errors come in the same order.
    """

    def __init__(self, data: bytes, meta_blkaddr: int, chunk_size: int, chunk_table: list[ChunkRef] | None,
                 original_index: dict[int, int] | None = None) -> None:
        """`chunk_table` None: a plain EROFS image, whose chunks are known only by their index.
        `original_index` maps relabelled blob keys of the chunk table back to the on-disk blob indexes."""
        self.data = data
        self.meta_blkaddr = meta_blkaddr
        self.chunk_size = chunk_size
        self.chunks = None if chunk_table is None else _ChunkIndex(chunk_table, original_index or {})
        self.files: dict[int, Inode] = {}  # nid -> inode, so hardlinks share one Inode
        self.inode_base = erofs.nid_to_offset(meta_blkaddr, 0)

    def read(self, root_nid: int) -> Tree:
        root_raw = self.raw_inode(root_nid)
        root = self.make_inode(root_raw)
        if not root.is_dir:
            raise FormatError(f"root inode nid {root_nid}: not a directory")
        visited: set[int] = set()
        stack: list[tuple[RawInode, Inode]] = [(root_raw, root)]
        files = self.files
        while stack:
            raw, inode = stack.pop()
            nid = raw.nid
            if nid in visited:
                raise FormatError(f"directory nid {nid} is reachable twice (a loop in the directory graph)")
            visited.add(nid)
            names, nids, file_types = self._dirent_columns(raw)
            for dot in _DOTS:  # skipped, wherever they sort
                while dot in names:
                    i = names.index(dot)
                    del names[i], nids[i], file_types[i]
            if file_types.count(_REG_FILE) == len(file_types) and files.keys().isdisjoint(nids):
                candidates = nids
            else:
                candidates = [n for n, t in zip(nids, file_types, strict=True) if t == _REG_FILE and n not in files]
            common = self._common_files(candidates)
            if len(common) == len(nids):  # then each dirent is a distinct nid of `common`, in order
                joined = b"".join(names)
                if b"/" not in joined and b"\0" not in joined:  # what the loop below checks
                    inode.entries.extend(map(Entry, names, common.values()))
                    files.update(common)
                    continue
            for name, child_nid, file_type in zip(names, nids, file_types, strict=True):
                if b"/" in name or b"\0" in name:  # a name, not a path: every consumer joins it to its parent
                    raise FormatError(f"dirent {name!r} in directory nid {nid}: a name cannot hold '/' or NUL")
                child = files.get(child_nid) or common.get(child_nid)
                child_raw = None
                if child is None:
                    child_raw = self.raw_inode(child_nid)
                    child = self.make_inode(child_raw)
                if child.kind is not _KIND_OF_FILE_TYPE.get(file_type):
                    raise FormatError(f"dirent {name!r} in directory nid {nid}: file type {file_type} "
                                      f"does not match inode mode {child.mode:#o}")
                inode.entries.append(Entry(name, child))
                if child_raw is not None and child.is_dir:
                    stack.append((child_raw, child))
                else:
                    files[child_nid] = child
        return Tree(root=root)

    def _common_files(self, nids: list[int]) -> dict[int, Inode]:
        """The inodes of `nids` (dirents typed regular) that are regular files in the common shape: extended,
        chunk based, no xattrs, at most one chunk, whose index agrees with the chunk table. The rest are left
        out, for the general path to decode or refuse."""
        chunks, chunk_size, data = self.chunks, self.chunk_size, self.data
        if not nids or chunks is None or not chunk_size:
            return {}
        offsets = [self.inode_base + nid * erofs.EROFS_SLOTSIZE for nid in nids]
        if max(offsets) + _COMMON_FILE_SIZE > len(data):
            return {}  # a nid near or past the end: the general path checks each
        i_format, i_xattr_icount, i_mode, i_size, i_uid, i_gid, i_mtime, i_mtime_nsec = zip(
            *map(_unpack_file_inode, repeat(data), offsets), strict=True)
        addrs = list(map(_unpack_chunk_addr, repeat(data), [at + _CHUNK_INDEXES_AFTER_EXTENDED for at in offsets]))
        found = chunks.find_all(*erofs.split_blob_addrs(addrs))
        # what the one chunk of each (non-empty) file must be: the index's block, the file's size
        wanted = zip([blkaddr * erofs.EROFS_BLKSIZ for _, _, _, blkaddr in addrs], i_size, strict=True)
        ok = [fmt == _EXTENDED_CHUNK_BASED and not icount and mode & _S_IFMT == stat.S_IFREG
              and (not size or (size <= chunk_size and chunk is not None
                                and (chunk.uncompressed_offset, chunk.uncompressed_size) == want))
              for fmt, icount, mode, size, chunk, want
              in zip(i_format, i_xattr_icount, i_mode, i_size, found, wanted, strict=True)]
        chunk_lists = [[chunk] if size else [] for chunk, size in zip(found, i_size, strict=True)]
        if max(i_mtime) >= 1 << 63:
            i_mtime = tuple(map(_signed64, i_mtime))

        def picked(column: Iterable[_T]) -> Iterator[_T]:
            return compress(column, ok)

        # positional (the field order is asserted below): keywords cost twice as much, once per file
        inodes = map(Inode, repeat(FileKind.REG), picked(i_mode), picked(i_uid), picked(i_gid), picked(i_mtime),
                     picked(i_mtime_nsec), picked(i_size), repeat(0), map(dict, repeat(())), repeat(b""),
                     picked(chunk_lists))
        return dict(zip(picked(nids), inodes, strict=True))

    def raw_inode(self, nid: int) -> RawInode:
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
            kind = FileKind.from_mode(rec.i_mode)
        except ValueError:
            raise FormatError(f"inode nid {raw.nid} at {raw.offset:#x}: i_mode={rec.i_mode:#o} has no valid "
                              "file type") from None
        inode = Inode(
            kind=kind,
            mode=rec.i_mode,
            uid=rec.i_uid,
            gid=rec.i_gid,
            mtime=_signed64(rec.i_mtime) if isinstance(rec, erofs.InodeExtendedRecord) else 0,
            mtime_nsec=rec.i_mtime_nsec if isinstance(rec, erofs.InodeExtendedRecord) else 0,
            size=rec.i_size,
            xattrs=self.xattrs(raw),
        )
        if kind in (FileKind.CHR, FileKind.BLK):
            major, minor = erofs.decode_rdev(rec.i_u)
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
        size = raw.record.i_size
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
                at = (raw.record.i_u + k) * bs
            _check_range(self.data, at, length, f"data block {k} of inode nid {raw.nid}")
            blocks.append((at, length))
        return blocks

    def flat_data(self, raw: RawInode) -> bytes:
        return b"".join(self.data[at : at + length] for at, length in self.data_blocks(raw))

    def dirents(self, raw: RawInode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of every dirent of a directory, in on-disk order."""
        return list(zip(*self._dirent_columns(raw), strict=True))

    def _dirent_columns(self, raw: RawInode) -> tuple[list[bytes], list[int], list[int]]:
        """`dirents` as three lists: names, nids, file types."""
        names: list[bytes] = []
        nids: list[int] = []
        file_types: list[int] = []
        for at, length in self.data_blocks(raw):
            block_names, block_nids, block_types = self._dirent_block(raw.nid, at, length)
            names += block_names
            nids += block_nids
            file_types += block_types
        return names, nids, file_types

    def _dirent_block(self, nid: int, at: int, length: int) -> tuple[list[bytes], tuple[int, ...], tuple[int, ...]]:
        size = erofs.DIRENT_SIZE
        data = self.data
        if length < size:
            raise FormatError(f"dirent block of directory nid {nid} at {at:#x}: {length} bytes is too short")
        first = erofs.FAST_DIRENT.unpack_record(data, at)
        count = erofs.dirent_count(first.nameoff)
        if first.nameoff % size or count == 0 or first.nameoff > length:
            raise FormatError(f"dirent block of directory nid {nid} at {at:#x}: nameoff[0]={first.nameoff} is invalid")
        nids, nameoffs, file_types, _ = zip(*erofs.FAST_DIRENT.iter_unpack(data[at : at + count * size]), strict=True)
        ends = (*nameoffs[1:], length)
        # strictly increasing name offsets within the block pass every check of the loop below but the last
        # name's: check them all at once
        if nameoffs[-1] <= length and all(map(operator.lt, nameoffs, nameoffs[1:])):
            names = [data[at + start : at + end] for start, end in zip(nameoffs, ends, strict=True)]
            names[-1] = names[-1].split(b"\0", 1)[0]  # the last name of a block ends at the zero slack (strnlen)
            if names[-1]:
                return names, nids, file_types
        names = []
        for i, (nameoff, end) in enumerate(zip(nameoffs, ends, strict=True)):
            if not nameoff <= end <= length or (i + 1 < count and nameoff >= end):
                raise FormatError(f"dirent {i} of directory nid {nid} at {at + i * size:#x}: "
                                  f"name offsets {nameoff}..{end} are out of order or past the block")
            name = data[at + nameoff : at + end]
            if i + 1 == count:
                name = name.split(b"\0", 1)[0]
            if not name:
                raise FormatError(f"dirent {i} of directory nid {nid} at {at + i * size:#x}: empty name")
            names.append(name)
        return names, nids, file_types

    def chunk_addrs(self, raw: RawInode) -> list[tuple[int, int, int, int]]:
        """(index offset, blob_index, ci_index, blkaddr) of each chunk index of a regular file."""
        rec = raw.record
        size = rec.i_size
        if raw.datalayout != erofs.DataLayout.CHUNK_BASED:
            raise UnsupportedError(f"regular file nid {raw.nid}: data layout {raw.datalayout} is not chunk based")
        chunk_size = self.chunk_size or (1 << erofs.chunkbits_of(rec.i_u))
        count = (size + chunk_size - 1) // chunk_size
        start = erofs.chunk_indexes_offset(raw.offset, erofs.inode_size(raw.extended), raw.xattr_size)
        end = start + count * erofs.EROFS_CHUNK_INDEX_SIZE
        if end > len(self.data):
            _check_range(self.data, start, end - start, f"chunk indexes of inode nid {raw.nid}")
        split = erofs.split_blob_addr
        return [(start + 8 * k, *split(lo, device_id, hi), blkaddr) for k, (lo, device_id, hi, blkaddr)
                in enumerate(erofs.FAST_CHUNK_ADDR.iter_unpack(self.data[start:end]))]

    def chunk_refs(self, raw: RawInode) -> list[ChunkRef]:
        rec = raw.record
        if self.chunks is None:
            return self._plain_chunk_refs(raw)
        if raw.datalayout != erofs.DataLayout.CHUNK_BASED:
            raise UnsupportedError(f"regular file nid {raw.nid}: data layout {raw.datalayout} is not chunk based")
        start = erofs.chunk_indexes_offset(raw.offset, erofs.inode_size(raw.extended), raw.xattr_size)
        return self._chunk_list(raw.nid, start, rec.i_size, rec.i_u)

    def _chunk_list(self, nid: int, start: int, size: int, i_u: int) -> list[ChunkRef]:
        """The chunk table entries a regular file's chunk indexes (from `start`) name, each checked against
        the index's block and the size the file's size gives that chunk."""
        chunk_size = self.chunk_size or (1 << erofs.chunkbits_of(i_u))
        count = (size + chunk_size - 1) // chunk_size
        step = erofs.EROFS_CHUNK_INDEX_SIZE
        end = start + count * step
        data = self.data
        if end > len(data):
            _check_range(data, start, end - start, f"chunk indexes of inode nid {nid}")
        chunks = self.chunks
        assert chunks is not None
        split, unpack = erofs.split_blob_addr, _unpack_chunk_addr
        refs = []
        for k, at in enumerate(range(start, end, step)):
            lo, device_id, hi, blkaddr = unpack(data, at)
            known = chunks.find(*split(lo, device_id, hi))
            if known is None:
                blob_index, ci_index = split(lo, device_id, hi)
                raise FormatError(f"chunk index {k} of inode nid {nid} at {at:#x}: blob {blob_index} "
                                  f"chunk {ci_index} has no chunk table entry")
            expected = chunk_size if k + 1 < count else size - k * chunk_size
            if known.uncompressed_offset != blkaddr * erofs.EROFS_BLKSIZ or known.uncompressed_size != expected:
                raise FormatError(f"chunk index {k} of inode nid {nid} at {at:#x}: block {blkaddr} "
                                  f"size {expected} disagree with the chunk table entry")
            refs.append(known)
        return refs

    def _plain_chunk_refs(self, raw: RawInode) -> list[ChunkRef]:
        """A plain EROFS image's chunks: known only by their index and block."""
        size = raw.record.i_size
        chunk_size = self.chunk_size or (1 << erofs.chunkbits_of(raw.record.i_u))
        return [ChunkRef(blob_index=blob_index, ci_index=ci_index, uncompressed_offset=blkaddr << 12,
                         uncompressed_size=min(chunk_size, size - k * chunk_size), compressed_offset=0,
                         compressed_size=0, compressed=False, digest=b"")
                for k, (_, blob_index, ci_index, blkaddr) in enumerate(self.chunk_addrs(raw))]


_T = TypeVar("_T")
_DOTS = (b".", b"..")
_REG_FILE = int(erofs.FileType.REG_FILE)
_KIND_OF_FILE_TYPE = {int(file_type): kind for kind, file_type in _FILE_TYPE_OF_KIND.items()}  # int keys: fast
_S_IFMT = 0o170000  # stat.S_IFMT as a mask
_EXTENDED_CHUNK_BASED = erofs.i_format(erofs.DataLayout.CHUNK_BASED, extended=True)
# inodes sit on 32-byte slots, so the 8-byte aligned chunk indexes of an extended inode without xattrs follow
# at this fixed distance
_CHUNK_INDEXES_AFTER_EXTENDED = erofs.chunk_indexes_offset(0, erofs.INODE_EXTENDED_SIZE, 0)
_COMMON_FILE_SIZE = _CHUNK_INDEXES_AFTER_EXTENDED + erofs.EROFS_CHUNK_INDEX_SIZE  # inode and one chunk index
_unpack_file_inode = erofs.FAST_INODE_EXTENDED_FILE.unpack_from
_unpack_chunk_addr = erofs.FAST_CHUNK_ADDR.unpack_from
assert rafs.FAST_CHUNK_INFO.fields == (  # the field order `_decode_chunk_table` unpacks
    "block_id", "blob_index", "flags", "compressed_size", "uncompressed_size", "compressed_offset",
    "uncompressed_offset", "file_offset", "index", "crc32")
assert ChunkRef._fields == (  # and builds
    "blob_index", "ci_index", "uncompressed_offset", "uncompressed_size", "compressed_offset", "compressed_size",
    "compressed", "digest", "crc32", "file_offset")
assert erofs.FAST_INODE_EXTENDED_FILE.fields == (  # the field order `_common_files` unpacks
    "i_format", "i_xattr_icount", "i_mode", "i_size", "i_uid", "i_gid", "i_mtime", "i_mtime_nsec")
assert [f.name for f in fields(Inode)][:11] == [  # the argument order `_common_files` passes
    "kind", "mode", "uid", "gid", "mtime", "mtime_nsec", "size", "rdev", "xattrs", "symlink_target", "chunks"]


__all__ = ["MAX_BOOTSTRAP_SIZE", "BootstrapParser", "Tables", "blob_info_from_record", "file_type_of", "is_bootstrap",
           "read_bootstrap", "read_bootstrap_file", "read_tables", "xattr_name"]
