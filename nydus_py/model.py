"""The in-memory filesystem tree every stage hands over: format-agnostic, typed.

A directory `Inode` holds sorted `Entry`s; an entry is a name bound to an inode. Hardlinks are entries
that share one `Inode` object (identity, not equality). Chunks are `ChunkRef`s into blobs.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class FileKind(enum.Enum):
    REG = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHR = "char"
    BLK = "block"
    FIFO = "fifo"
    SOCK = "socket"

    @classmethod
    def from_mode(cls, mode: int) -> FileKind:
        kind = _KIND_OF_IFMT.get(stat.S_IFMT(mode))
        if kind is None:
            raise ValueError(f"unknown file type in mode {mode:#o}")
        return kind

    @property
    def ifmt(self) -> int:
        return _IFMT_OF_KIND[self]


_IFMT_OF_KIND = {
    FileKind.REG: stat.S_IFREG,
    FileKind.DIR: stat.S_IFDIR,
    FileKind.SYMLINK: stat.S_IFLNK,
    FileKind.CHR: stat.S_IFCHR,
    FileKind.BLK: stat.S_IFBLK,
    FileKind.FIFO: stat.S_IFIFO,
    FileKind.SOCK: stat.S_IFSOCK,
}
_KIND_OF_IFMT = {v: k for k, v in _IFMT_OF_KIND.items()}


class ChunkRef(NamedTuple):
    """One chunk of a file: where its bytes live in a blob and in that blob's device image.

    A NamedTuple rather than a frozen dataclass: images hold millions of them, and a tuple is made (and
    `_replace`d) several times faster.
    """

    blob_index: int  # index in the image's blob table
    ci_index: int  # index in the blob's chunk info array
    uncompressed_offset: int  # in the device image, 4 KiB aligned
    uncompressed_size: int
    compressed_offset: int  # in the blob file
    compressed_size: int
    compressed: bool
    digest: bytes  # of the uncompressed data
    crc32: int | None = None  # CRC-32C of the uncompressed data, when recorded
    file_offset: int = 0  # offset in the file that first produced the chunk


@dataclass(eq=False, slots=True)
class Inode:
    """File attributes and content; shared by every entry that hardlinks it."""

    kind: FileKind
    mode: int  # full st_mode: type and permission bits
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds since the epoch
    mtime_nsec: int = 0
    size: int = 0  # regular: data bytes; symlink: target length; others: 0
    rdev: int = 0  # os.makedev(major, minor) for devices
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    symlink_target: bytes = b""
    chunks: list[ChunkRef] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # directories only, sorted by name

    @property
    def is_dir(self) -> bool:
        return self.kind is FileKind.DIR

    def child(self, name: bytes) -> Entry | None:
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


@dataclass(slots=True)
class Entry:
    """A name in a directory, bound to an inode."""

    name: bytes
    inode: Inode


@dataclass(slots=True)
class Tree:
    """A filesystem tree: the root directory inode."""

    root: Inode

    def walk(self) -> Iterator[tuple[bytes, Inode]]:
        """(path, inode) for every entry in depth-first preorder, root first as b"/"; names sorted."""
        yield b"/", self.root
        stack: list[tuple[bytes, Iterator[Entry]]] = [(b"", iter(self.root.entries))]
        while stack:
            prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            path = prefix + b"/" + entry.name
            yield path, entry.inode
            if entry.inode.is_dir:
                stack.append((path, iter(entry.inode.entries)))

    def lookup(self, path: bytes) -> Inode | None:
        inode = self.root
        for name in path.strip(b"/").split(b"/"):
            if not name:
                continue
            entry = inode.child(name) if inode.is_dir else None
            if entry is None:
                return None
            inode = entry.inode
        return inode


def new_directory(mode: int = 0o755, *, mtime: int = 0) -> Inode:
    """A directory; by default with the attributes a layer gives a parent it has no entry for: 0755, root, epoch."""
    return Inode(kind=FileKind.DIR, mode=stat.S_IFDIR | (mode & 0o7777), mtime=mtime)


def has_default_attributes(inode: Inode) -> bool:
    """A directory with the attributes a layer gives a parent it has no entry for (0755, root, epoch):
    in an upper layer it does not override the lower directory's attributes, as extraction leaves an
    existing directory alone."""
    return (inode.is_dir and inode.mode == stat.S_IFDIR | 0o755 and inode.uid == 0 and inode.gid == 0
            and inode.mtime == 0 and inode.mtime_nsec == 0 and not inode.xattrs)


# OCI whiteout markers: how every layer tree (and every layer blob's inline bootstrap) records removals.
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"  # in a directory: hide everything below it in lower layers


def is_marker(name: bytes) -> bool:
    return name.startswith(WHITEOUT_PREFIX)


def is_void_whiteout(name: bytes) -> bool:
    """A whiteout of an empty name, '.' or '..' (`.wh.`, `.wh..`, `.wh...`): the OCI image spec forbids these
    names and containerd refuses them; read as markers they would hide nothing, or a parent."""
    return is_marker(name) and name[len(WHITEOUT_PREFIX) :] in (b"", b".", b"..")


@dataclass(frozen=True, slots=True)
class OverlayXattrs:
    """What an overlayfs upper entry's own `<ns>.overlay.*` xattrs say, and the xattrs left without them."""

    kept: dict[bytes, bytes]  # every xattr but the overlay's own (its bookkeeping never reaches an image)
    opaque: bool  # `opaque` = "y": the directory hides the lower layers' entries ("x" only announces xattr whiteouts)
    whiteout: bool  # `whiteout` present: the (regular file) entry is a removal (overlayfs >= 6.7)
    refused: bytes | None  # `redirect` or `metacopy`: content or name lives in a lower layer; unsupported


def overlay_xattrs(xattrs: dict[bytes, bytes], prefix: bytes) -> OverlayXattrs:
    """The overlayfs xattr rules both sources apply (`prefix`: `trusted.overlay.` or `user.overlay.`)."""
    if not any(name.startswith(prefix) for name in xattrs):
        return OverlayXattrs(kept=xattrs, opaque=False, whiteout=False, refused=None)
    ours = {name[len(prefix) :]: value for name, value in xattrs.items() if name.startswith(prefix)}
    return OverlayXattrs(
        kept={name: value for name, value in xattrs.items() if not name.startswith(prefix)},
        opaque=ours.get(b"opaque") == b"y",
        whiteout=b"whiteout" in ours,
        refused=next((name for name in (b"redirect", b"metacopy") if name in ours), None),
    )


def new_marker() -> Inode:
    """The inode of a whiteout marker: an empty regular file, as OCI layer tars carry them."""
    return Inode(kind=FileKind.REG, mode=stat.S_IFREG | 0o644)


def walk_bfs(tree: Tree) -> Iterator[Inode]:
    """nydus `walk_bfs`, the order a bootstrap's records and a merged device table follow: the root, then
    each directory's entries in name order, then its subdirectories (a hardlinked inode once per entry)."""
    yield tree.root
    stack = [tree.root]
    directory_kind = FileKind.DIR
    while stack:
        directory = stack.pop()
        subdirs = []
        for entry in directory.entries:
            inode = entry.inode
            yield inode
            if inode.kind is directory_kind:
                subdirs.append(inode)
        stack.extend(reversed(subdirs))


class FileContent(Protocol):
    """A regular file's data as a source hands it to the chunker: read once, in order."""

    inode: Inode
    path: bytes  # for messages

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        """(file offset, length, data) per chunk; data None for a chunk wholly inside a hole."""
        ...

    def close(self) -> None: ...
