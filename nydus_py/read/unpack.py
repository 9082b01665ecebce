"""`nydus-py unpack`: an image's files back, as a directory (holes kept sparse) or an OCI-compatible tar
(PAX xattrs and mtimes, hardlinks, devices, long names, PAX 1.0 sparse members for files with holes).

Chunks are read from the blobs, decompressed and checked against their digests. A directory target is
built only through descriptors of directories we created ourselves (openat, O_EXCL, O_NOFOLLOW), with
every name checked, so nothing is ever written outside the target.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TYPE_CHECKING

from nydus_py.blob.reader import BlobReader
from nydus_py.blob.digests import chunk_digest
from nydus_py.errors import FormatError, UsageError
from nydus_py.util.fsutil import atomic_output, output_file, raise_fd_limit, remove_staging, staging_dir
from nydus_py.read.locate import OpenedImage
from nydus_py.model import ChunkRef, Entry, FileKind, Inode

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_CACHE_CHUNKS = 8
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ChunkReader:
    """Chunk data of an image, from its blobs: decompressed, digest-checked, a few recent chunks cached."""

    def __init__(self, opened: OpenedImage) -> None:
        self.opened = opened
        self.boot = opened.bootstrap
        self.readers: dict[int, BlobReader] = {}
        for info in self.boot.blobs:
            reader = opened.blob_reader(info)
            if reader is not None:
                self.readers[info.blob_index] = reader
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._zero_digests: dict[int, bytes] = {}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def is_hole(self, chunk: ChunkRef) -> bool:
        """A chunk of zeros: written as a hole."""
        digest = self._zero_digests.get(chunk.uncompressed_size)
        if digest is None:
            digest = chunk_digest(bytes(chunk.uncompressed_size), self.boot.blobs[chunk.blob_index].digester)
            self._zero_digests[chunk.uncompressed_size] = digest
        return chunk.digest == digest

    def read(self, chunk: ChunkRef) -> bytes:
        key = (chunk.blob_index, chunk.ci_index)
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        info = self.boot.blobs[chunk.blob_index]
        reader = self.readers.get(chunk.blob_index)
        if reader is None:
            missing = self.opened.missing(info) or f"blob {info.blob_id}"
            advice = "the image does not hold it" if self.opened.packaged else "give --blob-dir"
            raise UsageError(f"{self.opened.source}: {missing} is not available ({advice})")
        data = reader.read_chunk(chunk, info.compressor, info.digester, chunk.digest)
        self._cache[key] = data
        if len(self._cache) > _CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    def extents(self, inode: Inode) -> Iterator[tuple[int, ChunkRef]]:
        """(file offset, chunk) of every chunk that holds data (not a hole)."""
        offset = 0
        for chunk in inode.chunks:
            if not self.is_hole(chunk):
                yield offset, chunk
            offset += chunk.uncompressed_size


def _valid_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


# --- directory ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unpacker:
    chunks: ChunkReader
    root_fd: int
    links: dict[int, bytes] = field(default_factory=dict)  # id(inode) -> path (relative to root) of its first link
    count: int = 0
    skipped_xattrs: int = 0  # user.* xattrs of special files and symlinks, which Linux cannot hold

    def write_file(self, dir_fd: int, name: bytes, inode: Inode) -> None:
        fd = os.open(name, _OPEN_NEW, 0o600, dir_fd=dir_fd)
        try:
            for offset, chunk in self.chunks.extents(inode):
                os.pwrite(fd, self.chunks.read(chunk), offset)
            os.ftruncate(fd, inode.size)  # the tail hole, if any, stays sparse
        finally:
            os.close(fd)

    def make(self, dir_fd: int, name: bytes, path: bytes, inode: Inode) -> None:
        first = self.links.get(id(inode))  # hardlinks of every type: one inode, as in the image
        if first is not None:
            os.link(first, name, src_dir_fd=self.root_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return
        self.links[id(inode)] = path
        kind = inode.kind
        if kind is FileKind.REG:
            self.write_file(dir_fd, name, inode)
        elif kind is FileKind.SYMLINK:
            os.symlink(inode.symlink_target, name, dir_fd=dir_fd)
        elif kind is FileKind.FIFO:
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:  # char, block, socket
            os.mknod(name, kind.ifmt | 0o600, inode.rdev, dir_fd=dir_fd)
        self.set_attrs(dir_fd, name, inode)

    def set_attrs(self, dir_fd: int, name: bytes | None, inode: Inode) -> None:
        """Owner, then mode (chown clears suid/sgid), xattrs, mtime; never following a symlink."""
        # the directory itself by its descriptor, or the entry `name` in it without following a symlink
        target: int | bytes = dir_fd if name is None else name
        at: int | None = None if name is None else dir_fd
        follow = name is None
        os.chown(target, inode.uid, inode.gid, dir_fd=at, follow_symlinks=follow)
        if inode.kind is not FileKind.SYMLINK:
            os.chmod(target, stat.S_IMODE(inode.mode), dir_fd=at, follow_symlinks=follow)
        for key, value in inode.xattrs.items():
            try:
                if name is None:
                    os.setxattr(dir_fd, key, value)
                else:  # the entry itself, not what a symlink points to
                    os.setxattr(b"/proc/self/fd/%d/%s" % (dir_fd, name), key, value, follow_symlinks=False)
            except OSError as exc:
                # Linux keeps user.* xattrs only on files and directories: an image may hold them elsewhere
                if not (exc.errno == errno.EPERM and key.startswith(b"user.") and inode.kind not in (
                        FileKind.REG, FileKind.DIR)):
                    raise
                self.skipped_xattrs += 1
        mtime = inode.mtime * 1_000_000_000 + inode.mtime_nsec
        os.utime(target, ns=(mtime, mtime), dir_fd=at, follow_symlinks=follow)
        self.count += 1


def unpack_to_directory(opened: OpenedImage, target: Path) -> int:
    """Recreate the image's tree as `target` (which must not exist, or be empty); returns entries written.

    The tree is built in a new hidden directory beside `target` and renamed to it when complete, so `target`
    never holds a partial tree; after a failure nothing we made is left (missing parents we made included)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target}: unpack target exists and is not an empty directory")
    raise_fd_limit()  # one descriptor per directory level is open while unpacking
    made_parents = [p for p in reversed(target.absolute().parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(target.parent, f".{target.name}.nydus-py-")
    except OSError as exc:
        raise UsageError(f"{target}: cannot create unpack target: {exc.strerror}") from exc
    try:
        count = _unpack_into(opened, staging, target)
        os.replace(staging, target)  # rename(2) also replaces an empty directory
    except OSError as exc:
        _remove_made(staging, made_parents)
        raise UsageError(f"{target}: cannot write: {exc.strerror}") from exc
    except BaseException:
        _remove_made(staging, made_parents)
        raise
    return count


def _remove_made(staging: Path, made_parents: list[Path]) -> None:
    remove_staging(staging)  # ours alone; rmtree never follows a symlink out of it
    for parent in reversed(made_parents):
        with contextlib.suppress(OSError):
            parent.rmdir()


def _unpack_into(opened: OpenedImage, staging: Path, target: Path) -> int:
    root_fd = os.open(staging, _OPEN_DIR)
    chunks = ChunkReader(opened)
    unpacker = _Unpacker(chunks=chunks, root_fd=root_fd)
    # (directory inode, its fd, its path, iterator over its entries); attributes set when it is finished
    stack: list[tuple[Inode, int, bytes, Iterator[Entry]]] = [(opened.bootstrap.tree.root, root_fd, b"",
                                                         iter(opened.bootstrap.tree.root.entries))]
    current = b""  # the entry being written, for a message
    try:
        while stack:
            inode, fd, path, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                unpacker.set_attrs(fd, None, inode)
                if fd != root_fd:
                    os.close(fd)
                continue
            if not _valid_name(entry.name):
                raise FormatError(f"{opened.source}: entry {entry.name!r} in {path or b'/'!r} is not a valid name")
            child_path = current = path + b"/" + entry.name if path else entry.name
            if entry.inode.is_dir:
                os.mkdir(entry.name, 0o700, dir_fd=fd)
                child_fd = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                stack.append((entry.inode, child_fd, child_path, iter(entry.inode.entries)))
            else:
                unpacker.make(fd, entry.name, child_path, entry.inode)
    except OSError as exc:  # name the entry being written (a write error carries no file name)
        raise UsageError(f"{target}: cannot write /{current.decode(errors='replace')}: {exc.strerror}") from exc
    finally:
        for _, fd, _, _ in stack:
            if fd != root_fd:
                os.close(fd)
        os.close(root_fd)
        chunks.close()
    return unpacker.count


# --- tar -------------------------------------------------------------------------------------------


class _ChunkStream(io.RawIOBase):
    """A file's data (or a sparse member's map and data extents) as a readable stream."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        while not self._buffer:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._buffer = part
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _pax_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _tar_info(path: bytes, inode: Inode) -> tarfile.TarInfo:
    info = tarfile.TarInfo(_pax_text(path))
    info.mode = stat.S_IMODE(inode.mode)
    info.uid, info.gid = inode.uid, inode.gid
    info.uname = info.gname = ""
    info.mtime = inode.mtime
    pax = {f"SCHILY.xattr.{_pax_text(key)}": _pax_text(value) for key, value in inode.xattrs.items()}
    if inode.mtime_nsec:
        pax = {"mtime": f"{inode.mtime}.{inode.mtime_nsec:09d}", **pax}
    info.pax_headers = pax
    return info


def _sparse_member(info: tarfile.TarInfo, chunks: ChunkReader, inode: Inode) -> _ChunkStream:
    """Turn `info` into a PAX 1.0 sparse member: the map (decimal lines, padded to 512) then the data."""
    ranges: list[list[int]] = []
    for offset, chunk in chunks.extents(inode):
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            ranges[-1][1] += chunk.uncompressed_size
        else:
            ranges.append([offset, chunk.uncompressed_size])
    if not ranges or ranges[-1][0] + ranges[-1][1] < inode.size:
        ranges.append([inode.size, 0])  # the file ends in a hole
    text = f"{len(ranges)}\n" + "".join(f"{o}\n{n}\n" for o, n in ranges)
    block = text.encode() + bytes(-len(text) % tarfile.BLOCKSIZE)
    real = info.name
    head, _, base = real.rpartition("/")
    info.name = f"{head + '/' if head else ''}GNUSparseFile.0/{base}"
    info.pax_headers = {**info.pax_headers, "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": real, "GNU.sparse.realsize": str(inode.size)}
    info.size = len(block) + sum(n for _, n in ranges)
    return _ChunkStream(iter([block, *(chunks.read(c) for _, c in chunks.extents(inode))]))


def _first_link(info: tarfile.TarInfo, inode: Inode, chunks: ChunkReader) -> _ChunkStream | None:
    """Make `info` the member of a non-directory's first link: its type and what it holds (a regular
    file's data stream, returned)."""
    if inode.kind is FileKind.REG:
        info.size = inode.size
        holes = any(chunks.is_hole(c) for c in inode.chunks)
        return _sparse_member(info, chunks, inode) if holes else _ChunkStream(chunks.read(c) for c in inode.chunks)
    if inode.kind is FileKind.SYMLINK:
        info.type, info.linkname = tarfile.SYMTYPE, _pax_text(inode.symlink_target)
    elif inode.kind in (FileKind.CHR, FileKind.BLK):
        info.type = tarfile.CHRTYPE if inode.kind is FileKind.CHR else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
    else:
        info.type = tarfile.FIFOTYPE
    return None


def unpack_to_tar(opened: OpenedImage, target: Path) -> int:
    """Write the image's tree as a PAX tar (written atomically); returns entries written."""
    try:
        with atomic_output(target) as out:
            return write_tar(opened, out)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write tar: {exc.strerror}") from exc


def write_tar(opened: OpenedImage, out: BinaryIO) -> int:
    """Write the image's tree as a PAX tar to `out`, strictly sequentially (it may be a pipe); returns entries
    written."""
    chunks = ChunkReader(opened)
    links: dict[int, str] = {}
    count = 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
            for path, inode in opened.bootstrap.tree.walk():
                name = b"." if path == b"/" else path.lstrip(b"/")
                if any(not _valid_name(part) for part in name.split(b"/")) and name != b".":
                    raise FormatError(f"{opened.source}: entry {path!r} is not a valid name")
                info = _tar_info(name, inode)
                data = None
                if inode.kind is FileKind.DIR:
                    info.type = tarfile.DIRTYPE
                elif inode.kind is FileKind.SOCK:
                    continue  # sockets have no tar representation (OCI layers drop them too)
                elif id(inode) in links:  # a hardlink of any type: `tar x` links it to the first
                    info.type, info.linkname = tarfile.LNKTYPE, links[id(inode)]
                else:
                    links[id(inode)] = info.name
                    data = _first_link(info, inode, chunks)
                tar.addfile(info, io.BufferedReader(data) if data is not None else None)
                count += 1
    finally:
        chunks.close()
    return count


def write_tar_file(opened: OpenedImage, output: Path) -> int:
    """`write_tar` into `output` (the drop-in builder's `unpack --output`): a FIFO or character device in place,
    strictly in order, as the converter reads it; anything else staged and renamed when complete, so a chunk
    that fails its digest leaves no partial tar."""
    with output_file(output) as out:
        return write_tar(opened, out)


def unpack(opened: OpenedImage, target: Path) -> int:
    """Unpack to `target`: a tar when it ends in `.tar`, else a directory."""
    if target.suffix == ".tar":
        return unpack_to_tar(opened, target)
    return unpack_to_directory(opened, target)


__all__ = ["ChunkReader", "unpack", "unpack_to_directory", "unpack_to_tar", "write_tar", "write_tar_file"]
