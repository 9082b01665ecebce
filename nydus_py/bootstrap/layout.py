"""Tree + blob table -> LayoutPlan: every inode number, nid, offset and table position of a bootstrap,
computed completely before a byte is written. Pure: no I/O.

Bootstrap layout (nydus `v6_dump`, with the offsets this module computes):

    0x0000  1024 zero bytes (boot sector area)
    0x0400  EROFS superblock (128 B)
    0x0480  RAFS extended superblock (256 B)
    0x0580  device table: one 128 B slot per blob
    BT      blob table: 256 B per blob, BT = rup(0x580 + 128 n, 4 KiB)
    BT+256n prefetch table (u32 nids)
    META    meta_blkaddr * 4096 = rup(BT + 256 n + prefetch, 4 KiB); this block holds no inode, so the
            root (laid out first) gets nid 128, never 0 (glibc's readdir hides ino 0)
    META+4K inodes, inline xattrs, inline tails, chunk indexes, dirent and symlink blocks
    CT      chunk info table, 80 B per (digest, blob), sorted by digest then blob; padded to 4 KiB

Inode numbering and placement follow nydus-image's builder (`build_rafs`, `v6_set_offset*`,
`allocate_available_block`): directories depth first, the children of each directory numbered in name
order, non-directories placed at once, leftover block tails recycled for small records.
References: docs/format.md §2, §8; nydus builder/src/core/{bootstrap,v6,context}.rs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from nydus_py.errors import FormatError, InternalError, UnsupportedError
from nydus_py.format import erofs, rafs
from nydus_py.format.blobmeta import BlobFeatures
from nydus_py.format.posix_acl import acl_xattrs_problem
from nydus_py.image import BlobInfo
from nydus_py.model import ChunkRef, FileKind, Inode, Tree, walk_bfs

BLOCK = erofs.EROFS_BLKSIZ
SLOT = erofs.EROFS_SLOTSIZE
DIRENT_SIZE = erofs.DIRENT_SIZE
INODE_SIZE = erofs.INODE_EXTENDED_SIZE  # nydus always writes extended inodes
_PREFIX_OF_NAME = [(index, prefix) for index, prefix in erofs.XATTR_PREFIXES if index != erofs.XattrIndex.LUSTRE]
_EXACT_PREFIXES = {erofs.XattrIndex.POSIX_ACL_ACCESS, erofs.XattrIndex.POSIX_ACL_DEFAULT}
_FLAT_PLAIN = erofs.DataLayout.FLAT_PLAIN
_CHUNK_BASED = erofs.DataLayout.CHUNK_BASED


@dataclass(frozen=True, slots=True)
class XattrPlan:
    e_name_index: int
    e_name: bytes  # suffix after the index's prefix
    e_value: bytes


@dataclass(slots=True)
class InodePlan:
    """Where and how one inode is written. Hardlinked entries share one plan."""

    inode: Inode
    ino: int  # i_ino: build-order number of the first link
    offset: int  # file offset of the inode record
    datalayout: erofs.DataLayout
    size: int  # i_size
    xattrs: list[XattrPlan]
    xattr_size: int  # inline xattr ibody bytes
    nlink: int = 1
    data_offset: int = 0  # dir/symlink: file offset of the first full data block (i_u = data_offset / 4096)
    # dirs: sorted, "." and ".." included with no plan (their nids are `nid` and `parent_nid`): a plan never
    # refers to itself or its parent, so dropped plans are freed without the cyclic garbage collector
    dirents: list[tuple[bytes, InodePlan | None]] = field(default_factory=list)
    nid: int = 0
    parent_nid: int = 0  # dirs

    @property
    def body_size(self) -> int:
        """Inode record plus inline xattrs."""
        return INODE_SIZE + self.xattr_size


@dataclass(slots=True)
class LayoutPlan:
    """Everything the bootstrap writer needs, in final file offsets."""

    inodes: list[InodePlan]  # distinct inodes, in build order
    root: InodePlan
    inos: int  # s_inos: entries numbered, hardlinks included
    meta_blkaddr: int
    blob_table_offset: int
    prefetch_table_offset: int
    prefetch_nids: list[int]
    meta_end: int  # end of the inode area (before padding)
    chunk_table_offset: int
    chunk_table: list[ChunkRef]
    size: int  # bootstrap file size
    blobs: list[BlobInfo]
    blob_positions: dict[int, int]  # ChunkRef.blob_index -> position in `blobs` (the device table)
    mapped_blkaddrs: list[int]
    flags: rafs.SuperFlags
    chunk_size: int
    by_inode: dict[int, InodePlan] = field(default_factory=dict)  # id(inode) -> plan, for prefetch paths


class _Allocator:
    """nydus's BootstrapContext offset cursor and recycle pool of partly used blocks."""

    def __init__(self) -> None:
        self.cursor = BLOCK  # pre-shift coordinates: the root lands at 4096
        self.pool: list[deque[int]] = [deque() for _ in range(BLOCK // SLOT)]
        self.nonempty = 0  # bit b set: pool[b] has an entry (finds the smallest fitting bucket at once)
        self.end = 0  # high-water mark of written bytes

    def align(self, alignment: int) -> None:
        self.cursor = erofs.round_up(self.cursor, alignment)

    def recycle(self, offset: int) -> None:
        """Remember the tail of `offset`'s block as free (append_available_block)."""
        if offset % BLOCK:
            bucket = (BLOCK - offset % BLOCK) // SLOT
            self.pool[bucket].append(offset - offset % BLOCK)
            self.nonempty |= 1 << bucket

    def take_recycled(self, size: int) -> int:
        """Offset of `size` bytes inside a recycled block, or 0 (allocate_available_block): the smallest
        bucket that fits, oldest block first."""
        if size >= BLOCK:
            return 0
        need = -(-size // SLOT)
        fitting = self.nonempty >> need
        if not fitting:
            return 0
        bucket = need + (fitting & -fitting).bit_length() - 1
        queue = self.pool[bucket]
        offset = queue.popleft() + BLOCK - bucket * SLOT
        if not queue:
            self.nonempty &= ~(1 << bucket)
        self.recycle(offset + need * SLOT)
        return offset

    def take(self, size: int) -> int:
        offset = self.cursor
        self.cursor += size
        return offset

    def used(self, offset: int, size: int) -> None:
        self.end = max(self.end, offset + size)


def xattr_plans(inode: Inode, where: bytes) -> list[XattrPlan]:
    """Inline xattr entries, sorted by name (nydus writes HashMap order; we want reproducible bytes)."""
    if not inode.xattrs:
        return []
    problem = acl_xattrs_problem(inode.xattrs)  # sources check too; this holds it for merged foreign layers
    if problem is not None:
        raise FormatError(f"{where.decode(errors='replace')}: {problem}")
    out = []
    for name in sorted(inode.xattrs):
        value = inode.xattrs[name]
        for index, prefix in _PREFIX_OF_NAME:
            if index in _EXACT_PREFIXES:
                if name == prefix:
                    out.append(XattrPlan(index, b"", value))
                    break
            elif name.startswith(prefix) and len(name) > len(prefix):
                out.append(XattrPlan(index, name[len(prefix) :], value))
                break
        else:
            shown = f"{where.decode(errors='replace')}: xattr {name.decode(errors='replace')!r}"
            if any(name == prefix for _, prefix in _PREFIX_OF_NAME):
                raise UnsupportedError(f"{shown} has no name after its prefix")
            raise UnsupportedError(f"{shown} has a prefix RAFS cannot store (user., trusted., security., "
                                   "system.posix_acl_*)")
        if len(out[-1].e_name) > erofs.EROFS_NAME_LEN or len(value) > 0xFFFF:
            raise UnsupportedError(f"{where.decode(errors='replace')}: xattr {name.decode(errors='replace')!r} is "
                                   "too long (name 255 bytes, value 65535 bytes at most)")
    return out


def inline_xattrs_size(xattrs: list[XattrPlan]) -> int:
    """Bytes of an inode's inline xattr ibody (header and entries) for these plans."""
    if not xattrs:
        return 0
    return erofs.EROFS_XATTR_IBODY_HEADER_SIZE + sum(erofs.xattr_entry_size(len(x.e_name), len(x.e_value))
                                                     for x in xattrs)


def dirent_names(inode: Inode) -> list[bytes]:
    return sorted([b".", b"..", *(entry.name for entry in inode.entries)])


def dirents_size(names: list[bytes]) -> int:
    """d_size: dirents + names packed into 4 KiB blocks (erofs.dirent_blocks)."""
    return erofs.dirents_size(map(len, names), BLOCK)


class _Planner:
    def __init__(self, chunk_size: int) -> None:
        self.alloc = _Allocator()
        self.chunk_size = chunk_size
        self.next_ino = 1
        self.plans: dict[int, InodePlan] = {}  # id(inode) -> plan, hardlinks share
        self.parents: list[tuple[InodePlan, InodePlan]] = []  # (directory, its parent)

    def new_plan(self, inode: Inode, path: bytes) -> InodePlan:
        if inode.xattrs:
            xattrs = xattr_plans(inode, path)
            plan = InodePlan(inode, self.next_ino, 0, _FLAT_PLAIN, 0, xattrs, inline_xattrs_size(xattrs))
        else:  # most inodes; positional arguments: one plan per inode
            plan = InodePlan(inode, self.next_ino, 0, _FLAT_PLAIN, 0, [], 0)
        self.next_ino += 1
        return plan

    def place_with_tail(self, plan: InodePlan, data_size: int) -> None:
        """v6_set_offset_with_tail: a dir or symlink, its tail inline when it fits in one block."""
        alloc = self.alloc
        isz = plan.body_size
        tail = data_size % BLOCK
        if tail != 0 and isz + tail <= BLOCK:
            plan.offset = alloc.take_recycled(isz + tail)
            if plan.offset == 0:
                if BLOCK - alloc.cursor % BLOCK < isz + tail:
                    alloc.recycle(alloc.cursor)
                    alloc.align(BLOCK)
                plan.offset = alloc.take(isz + tail)
            alloc.used(plan.offset, isz + tail)
            if data_size != tail:
                alloc.recycle(alloc.cursor)
                alloc.align(BLOCK)
            plan.data_offset = alloc.cursor
            full = data_size - tail
            alloc.used(alloc.cursor, full)
            alloc.cursor += full
            plan.datalayout = erofs.DataLayout.FLAT_INLINE
        else:
            plan.offset = alloc.take_recycled(isz)
            if plan.offset == 0:
                plan.offset = alloc.take(isz)
            alloc.used(plan.offset, isz)
            alloc.recycle(alloc.cursor)
            alloc.align(BLOCK)
            plan.data_offset = alloc.cursor
            alloc.used(alloc.cursor, data_size)
            alloc.cursor += data_size
            alloc.align(BLOCK)
            plan.datalayout = erofs.DataLayout.FLAT_PLAIN

    def place_dir(self, plan: InodePlan) -> None:
        plan.size = dirents_size(dirent_names(plan.inode))
        self.place_with_tail(plan, plan.size)
        self.alloc.align(SLOT)

    def place_child(self, plan: InodePlan) -> None:
        """v6_set_offset for a non-directory."""
        inode = plan.inode
        alloc = self.alloc
        if inode.kind is FileKind.REG:
            plan.size = size = inode.size
            nchunks = -(-size // self.chunk_size)
            if nchunks != len(inode.chunks):
                raise InternalError(f"file of {size} bytes has {len(inode.chunks)} chunks, expected {nchunks}")
            total = erofs.chunk_indexes_offset(0, INODE_SIZE, plan.xattr_size) + erofs.EROFS_CHUNK_INDEX_SIZE * nchunks
            plan.offset = offset = alloc.take_recycled(total) or alloc.take(total)
            alloc.used(offset, total)
            plan.datalayout = _CHUNK_BASED
        elif inode.kind is FileKind.SYMLINK:
            plan.size = len(inode.symlink_target)
            self.place_with_tail(plan, plan.size)
        else:
            plan.offset = alloc.take(plan.body_size)
            alloc.used(plan.offset, plan.body_size)
            plan.datalayout = erofs.DataLayout.FLAT_PLAIN
        alloc.align(SLOT)

    def plan_tree(self, tree: Tree) -> tuple[InodePlan, int]:
        root = self.new_plan(tree.root, b"/")
        self.plans[id(tree.root)] = root
        stack: list[tuple[InodePlan, InodePlan, bytes]] = [(root, root, b"")]  # (dir, parent, path)
        while stack:
            plan, parent, path = stack.pop()
            self.place_dir(plan)
            self.parents.append((plan, parent))
            children: dict[bytes, InodePlan | None] = {b".": None, b"..": None}
            subdirs = []
            for entry in plan.inode.entries:
                inode = entry.inode
                child_path = path + b"/" + entry.name
                is_dir = inode.kind is FileKind.DIR
                # hardlinks of every non-directory type share one nid (nydus-image today: regular files only)
                shared = None if is_dir else self.plans.get(id(inode))
                if shared is not None:
                    self.next_ino += 1  # the link still takes a number; its inode is the first link's
                    shared.nlink += 1
                    child = shared
                else:
                    child = self.new_plan(inode, child_path)
                    self.plans[id(inode)] = child
                    if is_dir:
                        subdirs.append((child, child_path))
                    else:
                        self.place_child(child)
                children[entry.name] = child
            plan.nlink = 2 + len(subdirs)
            plan.dirents = [(name, children[name]) for name in sorted(children)]
            stack.extend((child, plan, child_path) for child, child_path in reversed(subdirs))
        return root, self.next_ino - 1


def chunk_table(order: list[InodePlan], positions: dict[int, int]) -> list[ChunkRef]:
    """One entry per (digest, blob), sorted by digest then blob position (nydus keeps a BTreeMap)."""
    table: dict[tuple[bytes, int], ChunkRef] = {}
    for plan in order:
        for chunk in plan.inode.chunks:
            position = positions.get(chunk.blob_index)
            if position is None:
                raise InternalError(f"a chunk refers to blob key {chunk.blob_index}, which is not in the blob table")
            table[(chunk.digest, position)] = chunk
    return [table[key] for key in sorted(table)]


def super_flags(blobs: list[BlobInfo], compressor: rafs.CompressAlgo, digester: rafs.DigestAlgo,
                has_xattr: bool) -> rafs.SuperFlags:
    flags = rafs.COMPRESSION_FLAGS[compressor] | rafs.DIGEST_FLAGS[digester]
    flags |= rafs.SuperFlags.EXPLICIT_UID_GID | rafs.SuperFlags.ENCRYPTION_NONE
    if has_xattr:
        flags |= rafs.SuperFlags.HAS_XATTR
    if all(b.features & BlobFeatures.INLINED_CHUNK_DIGEST for b in blobs):  # vacuously true without blobs
        flags |= rafs.SuperFlags.INLINED_CHUNK_DIGEST
    return flags


def plan_layout(tree: Tree, blobs: list[BlobInfo], *, chunk_size: int, compressor: rafs.CompressAlgo,
                digester: rafs.DigestAlgo, blob_keys: list[int] | None = None,
                prefetch_paths: list[bytes] | None = None) -> LayoutPlan:
    """Plan the whole bootstrap of `tree` whose chunks live in `blobs` (the device table, in order).

    `blob_keys[i]` is the `ChunkRef.blob_index` that means `blobs[i]` (default: i), so one set of chunk
    references can be written into bootstraps with different blob tables.
    """
    positions = {key: i for i, key in enumerate(blob_keys if blob_keys is not None else range(len(blobs)))}
    if len(blobs) > rafs.MAX_BLOBS:
        raise UnsupportedError(f"{len(blobs)} blobs: a RAFS v6 image references at most {rafs.MAX_BLOBS}")
    planner = _Planner(chunk_size)
    root, inos = planner.plan_tree(tree)
    order = [planner.plans[id(inode)] for inode in walk_bfs(tree)]  # nydus's dump order

    blob_table_offset = rafs.blob_table_offset(len(blobs))
    blob_table_size = rafs.Blob.sizeof() * len(blobs)
    prefetch_nids_plans = _prefetch_plans(tree, planner.plans, prefetch_paths) if blobs else []
    prefetch_size = rafs.PREFETCH_ENTRY_SIZE * len(prefetch_nids_plans)
    orig_meta_addr = root.offset - BLOCK
    meta_addr = _meta_addr(len(blobs), len(prefetch_nids_plans)) if blobs else orig_meta_addr
    shift = meta_addr - orig_meta_addr
    meta_blkaddr = meta_addr // BLOCK
    inodes = list(planner.plans.values())
    with_data = (FileKind.DIR, FileKind.SYMLINK)
    offset_to_nid = erofs.offset_to_nid
    for plan in inodes:
        plan.offset += shift
        if plan.inode.kind in with_data:
            plan.data_offset += shift
        plan.nid = offset_to_nid(meta_blkaddr, plan.offset)
    for plan, parent in planner.parents:
        plan.parent_nid = parent.nid
    meta_end = planner.alloc.end + shift
    chunk_table_offset = erofs.round_up(meta_end, BLOCK)
    table = chunk_table(order, positions)
    size = erofs.round_up(chunk_table_offset + rafs.ChunkInfo.sizeof() * len(table), BLOCK)
    has_xattr = any(plan.xattrs for plan in inodes)
    return LayoutPlan(
        inodes=inodes,
        root=root,
        inos=inos,
        meta_blkaddr=meta_blkaddr,
        blob_table_offset=blob_table_offset,
        prefetch_table_offset=blob_table_offset + blob_table_size if prefetch_size else 0,
        prefetch_nids=[plan.nid for plan in prefetch_nids_plans],
        meta_end=meta_end,
        chunk_table_offset=chunk_table_offset,
        chunk_table=table,
        size=size,
        blobs=blobs,
        blob_positions=positions,
        mapped_blkaddrs=rafs.mapped_blkaddrs(size, [rafs.device_blocks(b.uncompressed_size) for b in blobs]),
        flags=super_flags(blobs, compressor, digester, has_xattr),
        chunk_size=chunk_size,
        by_inode=planner.plans,
    )


def _meta_addr(blob_count: int, prefetch_count: int) -> int:
    """Where the meta area starts when there are blobs: after the blob and prefetch tables, block aligned."""
    tables_end = rafs.blob_table_offset(blob_count) + rafs.Blob.sizeof() * blob_count
    return erofs.round_up(tables_end + rafs.PREFETCH_ENTRY_SIZE * prefetch_count, BLOCK)


def retarget(plan: LayoutPlan, tree: Tree, blobs: list[BlobInfo], *, compressor: rafs.CompressAlgo,
             digester: rafs.DigestAlgo, prefetch_paths: list[bytes] | None = None) -> LayoutPlan | None:
    """`plan` (of `tree`) with another blob table of as many blobs and another prefetch table: a layer's
    inline bootstrap and the merged bootstrap of that one layer differ only there (placeholder vs final blob
    entry, no prefetch vs `/`), so every inode, nid and the chunk table are kept instead of planned again.
    None when the new tables would move the meta area: plan afresh then."""
    if len(blobs) != len(plan.blobs) or not blobs:
        return None
    prefetch = _prefetch_plans(tree, plan.by_inode, prefetch_paths)
    if _meta_addr(len(blobs), len(prefetch)) != plan.meta_blkaddr * BLOCK:
        return None
    blob_table_end = plan.blob_table_offset + rafs.Blob.sizeof() * len(blobs)
    return replace(
        plan,
        blobs=blobs,
        prefetch_table_offset=blob_table_end if prefetch else 0,
        prefetch_nids=[p.nid for p in prefetch],
        mapped_blkaddrs=rafs.mapped_blkaddrs(plan.size, [rafs.device_blocks(b.uncompressed_size) for b in blobs]),
        flags=super_flags(blobs, compressor, digester, bool(plan.flags & rafs.SuperFlags.HAS_XATTR)),
    )


def _prefetch_plans(tree: Tree, plans: dict[int, InodePlan], paths: list[bytes] | None) -> list[InodePlan]:
    out = []
    for path in paths or []:
        inode = tree.lookup(path)
        if inode is not None:
            out.append(plans[id(inode)])
    return out
