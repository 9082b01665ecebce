"""An OCI layer tar (plain, gzip or zstd, detected by content; a file or stdin) -> Tree, file data streamed
in entry order (nothing is spooled to disk).

Names: a leading "/" or "./" is dropped (absolute names are relative to the root, as containerd takes
them); a name that escapes the root with "..", contains NUL or has a component over 255 bytes is an
error; a later entry replaces an earlier one of the same name (directories keep their children, as
extraction would); an entry below a symlink or a file is an error (we never write through a symlink),
except a whiteout or opaque marker, which is redundant there and dropped; a whiteout of '', '.' or '..'
is an error. Hardlinks must name an earlier entry of the same layer that is not a directory; they share
its inode, whatever its type. PAX records (long names, `SCHILY.xattr.*` with binary values, fractional
mtimes), GNU long names and GNU sparse members are understood; parents that have no entry of their own
are created as 0755 root directories. ACL xattrs must be what the kernel accepts.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import posixpath
import stat
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pyzstd

from nydus_py.errors import FormatError
from nydus_py.format import erofs
from nydus_py.format.posix_acl import acl_xattrs_problem
from nydus_py.format.tar import TypeFlag
from nydus_py.model import OPAQUE_MARKER, WHITEOUT_PREFIX, Entry, FileKind, Inode, Tree, is_marker, \
    is_void_whiteout, new_directory, new_marker, overlay_xattrs
from nydus_py.sources import MAX_LAYER_ENTRIES, MAX_LAYER_XATTR_BYTES, WhiteoutSpec, XattrNamespace
from nydus_py.sources.gunzip import threaded_gunzip
from nydus_py.sources.tarstream import STREAM_ERRORS, TarMember, TarReader
from nydus_py.util.fsutil import Readable, file_identity, is_file

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_KIND_OF_TYPE = {
    TypeFlag.REG.value: FileKind.REG, TypeFlag.AREG.value: FileKind.REG, TypeFlag.CONT.value: FileKind.REG,
    TypeFlag.GNU_SPARSE.value: FileKind.REG, TypeFlag.DIR.value: FileKind.DIR, TypeFlag.SYM.value: FileKind.SYMLINK,
    TypeFlag.CHR.value: FileKind.CHR, TypeFlag.BLK.value: FileKind.BLK, TypeFlag.FIFO.value: FileKind.FIFO,
}
_SCHILY_XATTR = b"SCHILY.xattr."
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."


def _is_regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def decompressed(raw: BinaryIO) -> BinaryIO:
    """The tar stream inside `raw`: gzip and zstd are recognised by their magic, anything else is plain."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(io.RawIOBase, raw))
    head = buffered.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        if _is_regular_file(buffered):
            return threaded_gunzip(buffered)
        # a pipe (stdin) can stall: a thread blocked reading it would still hold it at interpreter exit
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]  # a binary stream, typed apart
    if head.startswith(ZSTD_MAGIC):
        return pyzstd.ZstdFile(buffered, mode="rb")  # type: ignore[return-value]  # a binary stream, typed apart
    return buffered


@dataclass(slots=True)
class TarFile:
    """A regular file's content inside the tar stream: read in order, holes (a sparse member's) as zeros."""

    inode: Inode
    path: bytes
    reader: TarReader
    extents: list[tuple[int, int]] | None  # (offset, length) of stored data; None: all of it

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        size = self.inode.size
        if self.extents is None:
            for offset in range(0, size, chunk_size):
                length = min(chunk_size, size - offset)
                yield offset, length, self._read(length)
            return
        extents = iter(self.extents)
        extent = next(extents, None)
        for offset in range(0, size, chunk_size):
            end = min(offset + chunk_size, size)
            parts: list[bytes] = []
            at = offset
            while extent is not None and extent[0] < end:
                start, length = extent
                if start > at:
                    parts.append(bytes(start - at))
                    at = start
                take = min(start + length, end) - at
                parts.append(self._read(take))
                at += take
                if at == start + length:
                    extent = next(extents, None)
                else:
                    break
            if not parts:  # wholly in a hole: never read, never stored
                yield offset, end - offset, None
                continue
            parts.append(bytes(end - at))
            yield offset, end - offset, b"".join(parts)

    def _read(self, length: int) -> bytes:
        data = self.reader.read(length)
        if len(data) != length:
            raise FormatError(f"{self.path.decode(errors='backslashreplace')}: tar entry data is truncated")
        return data

    def close(self) -> None:
        pass  # the reader skips what is left when the next member is asked for


class TarSource:
    """Read one layer tar; `files()` builds `tree` as it goes and yields regular files in entry order."""

    def __init__(self, raw: BinaryIO | Readable, name: str, *, whiteout_spec: WhiteoutSpec = WhiteoutSpec.AUTO,
                 overlay_ns: XattrNamespace = XattrNamespace.TRUSTED, decompress: bool = True) -> None:
        """`raw` is the layer as stored (plain, gzip or zstd), or, without `decompress`, the tar stream itself,
        read as it is (no buffering: a caller that watches the reads, as the zran indexer does, sees each
        header and each chunk read on its own); `name` names it in messages."""
        self.name = name
        self._identity = file_identity(raw)
        if not decompress:
            self.stream: Readable = raw
        else:
            try:
                self.stream = decompressed(cast(BinaryIO, raw))
            except STREAM_ERRORS as exc:
                raise FormatError(f"{name}: cannot read the layer ({exc})") from None
        self.spec = WhiteoutSpec.OCI if whiteout_spec is WhiteoutSpec.AUTO else whiteout_spec
        self.overlay_prefix = overlay_ns.value.encode() + b".overlay."
        self.tree = Tree(root=new_directory())
        self._dirs: dict[bytes, Inode] = {b"": self.tree.root}
        self._children: dict[int, dict[bytes, Entry]] = {id(self.tree.root): {}}
        self._files: dict[bytes, Inode] = {}  # path -> inode of non-directories, for hardlinks
        self._opaque = False  # the entry being read carries an overlayfs opaque xattr
        self._entries = 0  # members read (MAX_LAYER_ENTRIES)
        self._xattr_bytes = 0  # xattr names and values kept (MAX_LAYER_XATTR_BYTES)

    def holds(self, path: Path) -> bool:
        """Whether writing `path` would write the layer being read (the same file, or a hardlink to it)."""
        return is_file(self._identity, path)

    def _fail(self, what: str, member: bytes | None = None) -> FormatError:
        where = f"{self.name}: {_text(member)!r}: " if member is not None else f"{self.name}: "
        return FormatError(where + what)

    def files(self) -> Iterator[TarFile]:
        reader = TarReader(self.stream, self.name)
        try:
            for member in reader.members():
                content = self._add(member, reader)
                if content is not None:
                    yield content
        finally:
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
        self._finish()

    def _finish(self) -> None:
        for inode in self._dirs.values():
            inode.entries = sorted(self._children[id(inode)].values(), key=lambda e: e.name)

    # --- one member ----------------------------------------------------------------------------------

    def _path(self, member: TarMember) -> bytes:
        raw = member.name
        if b"\0" in raw:
            raise self._fail("name contains NUL", raw)
        if _escapes(raw):
            raise self._fail("name escapes the root with '..'", raw)
        norm = posixpath.normpath(b"/" + raw).lstrip(b"/")
        if norm == b".":
            return b""
        if any(len(part) > 255 for part in norm.split(b"/")):
            raise self._fail("a name component is longer than 255 bytes", raw)
        return norm

    def _parent(self, path: bytes, member: bytes) -> Inode:
        """The directory that holds `path`, creating missing parents as 0755 root directories (iteratively: a
        name may be thousands of components deep)."""
        missing = []
        parent_path = posixpath.dirname(path)
        while parent_path not in self._dirs:
            missing.append(parent_path)
            parent_path = posixpath.dirname(parent_path)
        directory = self._dirs[parent_path]
        for dir_path in reversed(missing):
            name = posixpath.basename(dir_path)
            existing = self._children[id(directory)].get(name)
            if existing is not None:
                what = "a symlink" if existing.inode.kind is FileKind.SYMLINK else "not a directory"
                raise self._fail(f"an entry below {_text(dir_path)!r}, which is {what}", member)
            directory = self._put_dir(directory, dir_path, name, new_directory())
        return directory

    def _put_dir(self, parent: Inode, path: bytes, name: bytes, inode: Inode) -> Inode:
        self._children[id(parent)][name] = Entry(name=name, inode=inode)
        self._dirs[path] = inode
        self._children[id(inode)] = {}
        return inode

    def _remove(self, parent: Inode, path: bytes, name: bytes) -> None:
        old = self._children[id(parent)].pop(name, None)
        if old is None:
            return
        if old.inode.is_dir:
            prefix = path + b"/"
            for key in [k for k in self._dirs if k == path or k.startswith(prefix)]:
                self._children.pop(id(self._dirs.pop(key)), None)
            for key in [k for k in self._files if k.startswith(prefix)]:  # no hardlink may reach them now
                del self._files[key]
        self._files.pop(path, None)

    def _add(self, member: TarMember, reader: TarReader) -> TarFile | None:
        self._entries += 1
        if self._entries > MAX_LAYER_ENTRIES:
            raise self._fail(f"more than {MAX_LAYER_ENTRIES} entries in one layer")
        path = self._path(member)
        inode = self._inode(member)
        opaque, self._opaque = self._opaque, False
        if path == b"":
            if inode.is_dir:
                inode.entries = []
                self._copy_attrs(self.tree.root, inode)
            return None
        name = posixpath.basename(path)
        whiteout = self._is_whiteout(name, inode, member.name)
        if whiteout and self._below_non_directory(path):
            return None  # redundant: the same layer's non-directory already hides the lower tree (DESIGN.md)
        parent = self._parent(path, member.name)
        if whiteout and self.spec is WhiteoutSpec.OCI:
            self._remove(parent, path, name)
            self._children[id(parent)][name] = Entry(name=name, inode=new_marker())
            return None
        if member.typeflag == TypeFlag.LNK:
            self._link(member, parent, path, name)
            return None
        kind = inode.kind
        if whiteout:  # overlayfs: a char device 0:0
            marker = WHITEOUT_PREFIX + name
            self._children[id(parent)][marker] = Entry(name=marker, inode=new_marker())
            return None
        existing = self._children[id(parent)].get(name)
        if kind is FileKind.DIR:
            if existing is not None and existing.inode.is_dir:
                self._copy_attrs(existing.inode, inode)  # a repeated directory entry updates, keeps children
                target = existing.inode
            else:
                self._remove(parent, path, name)
                target = self._put_dir(parent, path, name, inode)
                # this layer's own non-directory of that name already hid the lower directory: the new one
                # starts empty, as extraction (remove, then mkdir) leaves it
                opaque = opaque or existing is not None
            if opaque:
                self._children[id(target)][OPAQUE_MARKER] = Entry(name=OPAQUE_MARKER, inode=new_marker())
            return None
        self._remove(parent, path, name)
        self._children[id(parent)][name] = Entry(name=name, inode=inode)
        self._files[path] = inode
        if kind is FileKind.REG and inode.size > 0:
            return TarFile(inode=inode, path=self.name.encode() + b": " + member.name, reader=reader,
                           extents=member.sparse)
        return None

    def _is_whiteout(self, name: bytes, inode: Inode, member: bytes) -> bool:
        """Whether the entry is a whiteout or opaque marker under the layer's spec: `.wh.*` (OCI; one of an
        empty name, '.' or '..' is an error) or a char device 0:0 (overlayfs)."""
        if self.spec is WhiteoutSpec.OCI:
            if is_void_whiteout(name):
                raise self._fail("a whiteout must name an entry, not '', '.' or '..' (OCI image spec)", member)
            return is_marker(name)
        return self.spec is WhiteoutSpec.OVERLAYFS and inode.kind is FileKind.CHR and inode.rdev == 0

    def _below_non_directory(self, path: bytes) -> bool:
        """Whether an ancestor of `path` is a non-directory entry of this layer (umoci writes the old
        children's whiteouts below a directory it turned into a file)."""
        child, parent = path, posixpath.dirname(path)
        while parent not in self._dirs:
            child, parent = parent, posixpath.dirname(parent)
        return child != path and posixpath.basename(child) in self._children[id(self._dirs[parent])]

    def _link(self, member: TarMember, parent: Inode, path: bytes, name: bytes) -> None:
        if _escapes(member.linkname):
            raise self._fail("hardlink target escapes the root with '..'", member.name)
        target_path = posixpath.normpath(b"/" + member.linkname).lstrip(b"/")
        if target_path == path:
            raise self._fail("hardlink to itself", member.name)
        if target_path in self._dirs:  # '' and '.' name the root
            raise self._fail("hardlink to a directory", member.name)
        target = self._files.get(target_path)
        if target is None:
            raise self._fail(f"hardlink to {_text(member.linkname)!r}, which is not an earlier entry of this layer",
                             member.name)
        self._remove(parent, path, name)  # every type shares its inode, as `tar x` links it (DESIGN.md)
        self._children[id(parent)][name] = Entry(name=name, inode=target)
        self._files[path] = target

    @staticmethod
    def _copy_attrs(dst: Inode, src: Inode) -> None:
        dst.mode, dst.uid, dst.gid = src.mode, src.uid, src.gid
        dst.mtime, dst.mtime_nsec, dst.xattrs = src.mtime, src.mtime_nsec, src.xattrs

    def _inode(self, member: TarMember) -> Inode:
        kind = _KIND_OF_TYPE.get(member.typeflag)
        if kind is None:
            if member.typeflag != TypeFlag.LNK:
                raise self._fail(f"unsupported tar entry type {member.typeflag!r}", member.name)
            kind = FileKind.REG  # a hardlink takes its target's inode; this one is never used
        if not -(1 << 63) <= member.mtime < 1 << 63:
            raise self._fail(f"mtime {member.mtime} does not fit in 64 bits (RAFS stores a signed 64-bit time)",
                             member.name)
        for what, value in (("uid", member.uid), ("gid", member.gid)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise self._fail(f"{what} {value} does not fit in 32 bits (RAFS stores 32-bit owners)", member.name)
        # Linux symlinks are always 0777 (tar x, containerd and overlayfs show them so), whatever the tar says
        perms = 0o777 if kind is FileKind.SYMLINK else member.mode & 0o7777
        inode = Inode(kind=kind, mode=kind.ifmt | perms, uid=member.uid, gid=member.gid,
                      mtime=member.mtime, mtime_nsec=member.mtime_nsec, xattrs=self._xattrs(member))
        if kind is FileKind.REG:
            inode.size = member.size
        elif kind is FileKind.SYMLINK:
            inode.symlink_target = member.linkname
            inode.size = len(inode.symlink_target)
            if not 0 < inode.size < 4096 or b"\0" in inode.symlink_target:  # what Linux can hold (PATH_MAX)
                raise self._fail(f"symlink target of {inode.size} bytes: must be 1 to 4095 bytes without NUL",
                                 member.name)
        elif kind in (FileKind.CHR, FileKind.BLK):
            if not erofs.rdev_fits(member.devmajor, member.devminor):
                raise self._fail(f"device {member.devmajor}:{member.devminor} does not fit RAFS (major up to "
                                 f"{erofs.MAX_DEV_MAJOR}, minor up to {erofs.MAX_DEV_MINOR})", member.name)
            inode.rdev = os.makedev(member.devmajor, member.devminor)
        return inode

    def _xattrs(self, member: TarMember) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for key, value in member.pax.items():
            if key.startswith(_SCHILY_XATTR):
                out[key[len(_SCHILY_XATTR) :]] = value
            elif key.startswith(_LIBARCHIVE_XATTR):
                name = urllib.parse.unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])
                out[name] = base64.b64decode(value + b"=" * (-len(value) % 4))
        if self.spec is WhiteoutSpec.OVERLAYFS:
            overlay = overlay_xattrs(out, self.overlay_prefix)
            if overlay.refused is not None:
                raise self._fail(f"overlayfs '{overlay.refused.decode()}' is not supported (its content or name "
                                 "lives in a lower layer)", member.name)
            self._opaque = self._opaque or overlay.opaque
            out = overlay.kept
        problem = acl_xattrs_problem(out)
        if problem is not None:
            raise self._fail(problem, member.name)
        self._xattr_bytes += sum(len(k) + len(v) for k, v in out.items())
        if self._xattr_bytes > MAX_LAYER_XATTR_BYTES:
            raise self._fail(f"xattrs of more than {MAX_LAYER_XATTR_BYTES >> 20} MiB in one layer", member.name)
        return dict(sorted(out.items()))


def _text(name: bytes) -> str:
    """A name for a message (its bytes as text, undecodable ones escaped)."""
    return name.decode("utf-8", "surrogateescape")


def _escapes(raw: bytes) -> bool:
    depth = 0
    for part in raw.split(b"/"):
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (b"", b"."):
            depth += 1
    return False


__all__ = ["TarFile", "TarSource", "decompressed"]
