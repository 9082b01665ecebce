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
import tarfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, IO, TYPE_CHECKING, cast

import pyzstd

from nydus_py.sources import WhiteoutSpec, XattrNamespace
from nydus_py.errors import FormatError
from nydus_py.format import erofs
from nydus_py.format.posix_acl import acl_xattrs_problem
from nydus_py.sources.gunzip import threaded_gunzip
from nydus_py.model import OPAQUE_MARKER, WHITEOUT_PREFIX, Entry, FileKind, Inode, Tree, is_marker, \
    is_void_whiteout, new_directory, new_marker, overlay_xattrs

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_KIND_OF_TYPE = {
    tarfile.REGTYPE: FileKind.REG, tarfile.AREGTYPE: FileKind.REG, tarfile.CONTTYPE: FileKind.REG,
    tarfile.GNUTYPE_SPARSE: FileKind.REG, tarfile.DIRTYPE: FileKind.DIR, tarfile.SYMTYPE: FileKind.SYMLINK,
    tarfile.CHRTYPE: FileKind.CHR, tarfile.BLKTYPE: FileKind.BLK, tarfile.FIFOTYPE: FileKind.FIFO,
}
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, pyzstd.ZstdError, gzip.BadGzipFile, OSError)


# Header records are refused above these sizes rather than allocated (Go's archive/tar caps PAX records and
# GNU long names at 1 MiB too: maxSpecialFileSize); a sparse map holds at most MAX_SPARSE_EXTENTS extents.
MAX_HEADER_RECORD = 1 << 20
MAX_SPARSE_EXTENTS = 1 << 16


class HeaderLimitError(tarfile.TarError):
    """A tar header record over its cap (a TarError that tarfile's reader does not swallow)."""


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo with caps on what a header makes it read into memory: a PAX record set, a GNU long
    name or link, and the extents of a sparse map (old GNU, PAX 0.x and 1.0)."""

    _sparse_structs: tuple[list[tuple[int, int]], bool, int]  # set by tarfile's old GNU sparse header reader

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        _cap(self.size, MAX_HEADER_RECORD, f"PAX header of {self.size} bytes")
        return super()._proc_pax(tarfile_)  # type: ignore[misc, no-any-return]  # tarfile's private reader, untyped

    def _proc_gnulong(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        _cap(self.size, MAX_HEADER_RECORD, f"GNU long name of {self.size} bytes")
        return super()._proc_gnulong(tarfile_)  # type: ignore[misc, no-any-return]  # tarfile's private reader, untyped

    def _proc_sparse(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        structs, isextended, origsize = self._sparse_structs
        blocks = 0
        while isextended:  # tarfile's loop, counted: each extension block holds 21 extents
            buf = _fileobj(tarfile_).read(tarfile.BLOCKSIZE)
            blocks += 1
            _cap(len(structs) + 21, MAX_SPARSE_EXTENTS, "GNU sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, numbytes = _nti(buf[pos : pos + 12]), _nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = len(buf) == tarfile.BLOCKSIZE and bool(buf[504])
        self._sparse_structs = (structs, False, origsize)
        return super()._proc_sparse(tarfile_)  # type: ignore[misc, no-any-return]  # tarfile's private reader, untyped

    def _proc_gnusparse_00(self, next_: tarfile.TarInfo, pax_headers: dict[str, str], buf: bytes) -> None:
        super()._proc_gnusparse_00(next_, pax_headers, buf)  # type: ignore[misc]  # tarfile's private reader
        _cap(len(next_.sparse or []), MAX_SPARSE_EXTENTS, "PAX 0.0 sparse map")

    def _proc_gnusparse_01(self, next_: tarfile.TarInfo, pax_headers: dict[str, str]) -> None:
        _cap(pax_headers.get("GNU.sparse.map", "").count(","), 2 * MAX_SPARSE_EXTENTS, "PAX 0.1 sparse map")
        super()._proc_gnusparse_01(next_, pax_headers)  # type: ignore[misc]  # tarfile's private reader

    def _proc_gnusparse_10(self, next_: tarfile.TarInfo, pax_headers: dict[str, str],
                           tarfile_: tarfile.TarFile) -> None:
        """tarfile's reader of the map in front of the data, with its extent count capped (and an end of
        stream inside the map an error, where tarfile's own loop never ends)."""
        read = _fileobj(tarfile_).read
        buf = read(tarfile.BLOCKSIZE)
        count, _, buf = buf.partition(b"\n")
        if not count.isdigit():
            raise HeaderLimitError("PAX 1.0 sparse map: bad extent count")
        _cap(int(count), MAX_SPARSE_EXTENTS, "PAX 1.0 sparse map")
        numbers: list[int] = []
        while len(numbers) < int(count) * 2:
            if b"\n" not in buf:
                more = read(tarfile.BLOCKSIZE)
                if not more or len(buf) > 64:
                    raise HeaderLimitError("PAX 1.0 sparse map: truncated or malformed")
                buf += more
            number, _, buf = buf.partition(b"\n")
            if not number.isdigit():
                raise HeaderLimitError("PAX 1.0 sparse map: not a number")
            numbers.append(int(number))
        next_.offset_data = _fileobj(tarfile_).tell()
        # typeshed says bytes; tarfile keeps the map of a sparse member here as (offset, size) pairs
        next_.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]


def _fileobj(archive: tarfile.TarFile) -> IO[bytes]:
    """The stream an open archive reads (typeshed allows None, which an archive being read never has)."""
    assert archive.fileobj is not None
    return cast(IO[bytes], archive.fileobj)


def _nti(field: bytes) -> int:
    """A numeric tar header field: tarfile's own decoder (octal or base-256), which typeshed does not list."""
    decoder: Callable[[bytes], int] = vars(tarfile)["nti"]
    return decoder(field)


def _cap(value: int, limit: int, what: str) -> None:
    if value > limit:
        raise HeaderLimitError(f"{what}: over the limit of {limit}")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


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
    """A regular file's content inside the tar stream: read sequentially, holes from the sparse map."""

    inode: Inode
    path: bytes
    stream: IO[bytes]
    extents: list[tuple[int, int]]  # (offset, length) of data; everything else reads as zeros

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        size = self.inode.size
        for offset in range(0, size, chunk_size):
            length = min(chunk_size, size - offset)
            try:
                data = self.stream.read(length)  # a stream cannot seek: holes are read past (as zeros)
            except _STREAM_ERRORS as exc:
                raise FormatError(f"{self.path.decode(errors='backslashreplace')}: corrupt tar data ({exc})") from None
            if len(data) != length:
                raise FormatError(f"{self.path.decode(errors='backslashreplace')}: tar entry data is truncated")
            hole = not any(start < offset + length and offset < start + n for start, n in self.extents)
            yield offset, length, None if hole else data

    def close(self) -> None:
        self.stream.close()


class _Counting(io.RawIOBase):
    """Counts the bytes read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.total += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.total += len(data)
        return data


class TarSource:
    """Read one layer tar; `files()` builds `tree` as it goes and yields regular files in entry order."""

    def __init__(self, raw: BinaryIO, name: str, *, whiteout_spec: WhiteoutSpec = WhiteoutSpec.AUTO,
                 overlay_ns: XattrNamespace = XattrNamespace.TRUSTED) -> None:
        """`raw` is the layer as stored (plain, gzip or zstd); `name` names it in messages."""
        self.name = name
        try:
            self.stream = decompressed(raw)
        except _STREAM_ERRORS as exc:
            raise FormatError(f"{name}: cannot read the layer ({exc})") from None
        self.spec = WhiteoutSpec.OCI if whiteout_spec is WhiteoutSpec.AUTO else whiteout_spec
        self.overlay_prefix = overlay_ns.value.encode() + b".overlay."
        self.tree = Tree(root=new_directory())
        self._dirs: dict[bytes, Inode] = {b"": self.tree.root}
        self._children: dict[int, dict[bytes, Entry]] = {id(self.tree.root): {}}
        self._files: dict[bytes, Inode] = {}  # path -> inode of non-directories, for hardlinks
        self._opaque = False  # the entry being read carries an overlayfs opaque xattr

    def _fail(self, what: str, member: str | None = None) -> FormatError:
        where = f"{self.name}: {member!r}: " if member else f"{self.name}: "
        return FormatError(where + what)

    def files(self) -> Iterator[TarFile]:
        counted = _Counting(self.stream)
        try:
            archive = tarfile.open(fileobj=counted, mode="r|", errors="surrogateescape",  # noqa: SIM115 - closed below
                                   tarinfo=BoundedTarInfo)
        except _STREAM_ERRORS as exc:
            if isinstance(exc, tarfile.ReadError) and "empty file" in str(exc):
                self._finish()
                return
            raise self._fail(f"not a readable tar stream ({exc})") from None
        try:
            while True:
                try:
                    member = archive.next()
                except _STREAM_ERRORS as exc:
                    raise self._fail(f"corrupt tar stream ({exc})") from None
                if member is None:
                    break
                content = self._add(member, archive)
                if content is not None:
                    yield content
            self._check_end(archive, counted)
        finally:
            archive.close()
            self.stream.close()
        self._finish()

    def _check_end(self, archive: tarfile.TarFile, counted: _Counting) -> None:
        """Read the stream to its end (a compressed stream checks its CRC or checksum only there) and refuse
        an archive that stopped without its end-of-archive block: Python's tarfile takes a truncated header
        for the end."""
        try:
            while counted.read(1 << 20):
                pass
        except _STREAM_ERRORS as exc:
            raise self._fail(f"corrupt layer stream after the last entry ({exc})") from None
        if counted.total % tarfile.BLOCKSIZE or archive.offset >= counted.total:
            raise self._fail(f"truncated tar stream ({counted.total} bytes, no end-of-archive block)")

    def _finish(self) -> None:
        for inode in self._dirs.values():
            inode.entries = sorted(self._children[id(inode)].values(), key=lambda e: e.name)

    # --- one member ----------------------------------------------------------------------------------

    def _path(self, member: tarfile.TarInfo) -> bytes:
        raw = _bytes(member.name)
        if b"\0" in raw:
            raise self._fail("name contains NUL", member.name)
        if _escapes(raw):
            raise self._fail("name escapes the root with '..'", member.name)
        norm = posixpath.normpath(b"/" + raw).lstrip(b"/")
        if norm == b".":
            return b""
        if any(len(part) > 255 for part in norm.split(b"/")):
            raise self._fail("a name component is longer than 255 bytes", member.name)
        return norm

    def _parent(self, path: bytes, member: str) -> Inode:
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
                raise self._fail(f"an entry below {dir_path.decode(errors='replace')!r}, which is {what}", member)
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

    def _add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> TarFile | None:
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
        if member.islnk():
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
            stream = archive.extractfile(member)
            if stream is None:
                raise self._fail("regular file without data", member.name)
            sparse: list[tuple[int, int]] | None = member.sparse  # type: ignore[assignment]  # see _proc_gnusparse_10
            extents = list(sparse) if sparse else [(0, inode.size)]
            return TarFile(inode=inode, path=_bytes(f"{self.name}: {member.name}"), stream=stream, extents=extents)
        return None

    def _is_whiteout(self, name: bytes, inode: Inode, member: str) -> bool:
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

    def _link(self, member: tarfile.TarInfo, parent: Inode, path: bytes, name: bytes) -> None:
        if _escapes(_bytes(member.linkname)):
            raise self._fail("hardlink target escapes the root with '..'", member.name)
        target_path = posixpath.normpath(b"/" + _bytes(member.linkname)).lstrip(b"/")
        if target_path == path:
            raise self._fail("hardlink to itself", member.name)
        if target_path in self._dirs:
            raise self._fail("hardlink to a directory", member.name)
        target = self._files.get(target_path)
        if target is None:
            raise self._fail(f"hardlink to {member.linkname!r}, which is not an earlier entry of this layer",
                             member.name)
        self._remove(parent, path, name)  # every type shares its inode, as `tar x` links it (DESIGN.md)
        self._children[id(parent)][name] = Entry(name=name, inode=target)
        self._files[path] = target
        return

    @staticmethod
    def _copy_attrs(dst: Inode, src: Inode) -> None:
        dst.mode, dst.uid, dst.gid = src.mode, src.uid, src.gid
        dst.mtime, dst.mtime_nsec, dst.xattrs = src.mtime, src.mtime_nsec, src.xattrs

    def _inode(self, member: tarfile.TarInfo) -> Inode:
        kind = _KIND_OF_TYPE.get(member.type)
        if kind is None and not member.islnk():
            if member.isreg():
                kind = FileKind.REG
            else:
                raise self._fail(f"unsupported tar entry type {member.type!r}", member.name)
        kind = kind or FileKind.REG
        try:
            seconds, nsec = _mtime(member)
        except ValueError as exc:
            raise self._fail(str(exc), member.name) from None
        for what, value in (("uid", member.uid), ("gid", member.gid)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise self._fail(f"{what} {value} does not fit in 32 bits (RAFS stores 32-bit owners)", member.name)
        # Linux symlinks are always 0777 (tar x, containerd and overlayfs show them so), whatever the tar says
        perms = 0o777 if kind is FileKind.SYMLINK else member.mode & 0o7777
        inode = Inode(kind=kind, mode=kind.ifmt | perms, uid=member.uid, gid=member.gid,
                      mtime=seconds, mtime_nsec=nsec, xattrs=self._xattrs(member))
        if kind is FileKind.REG:
            inode.size = member.size
        elif kind is FileKind.SYMLINK:
            inode.symlink_target = _bytes(member.linkname)
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

    def _xattrs(self, member: tarfile.TarInfo) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                out[_bytes(key[len("SCHILY.xattr.") :])] = _bytes(value)
            elif key.startswith("LIBARCHIVE.xattr."):
                name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :])
                out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
        if self.spec is WhiteoutSpec.OVERLAYFS:
            overlay = overlay_xattrs(out, self.overlay_prefix)
            self._opaque = self._opaque or overlay.opaque
            out = overlay.kept
        problem = acl_xattrs_problem(out)
        if problem is not None:
            raise self._fail(problem, member.name)
        return dict(sorted(out.items()))


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


def _mtime(member: tarfile.TarInfo) -> tuple[int, int]:
    """(seconds, nanoseconds), exact: PAX mtimes are decimal strings that a float would round. ValueError for a
    time RAFS cannot store (not a number, or outside the signed 64 bits the kernel reads i_mtime as)."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"PAX mtime {text[:40]!r} is not a number") from None
        if not value.is_finite():
            raise ValueError(f"PAX mtime {text[:40]!r} is not a number")
        seconds = int(value.to_integral_value(rounding="ROUND_FLOOR"))
        nsec = int((value - seconds) * 1_000_000_000)
    else:
        seconds, nsec = int(member.mtime), 0
    if not -(1 << 63) <= seconds < 1 << 63:
        raise ValueError(f"mtime {seconds} does not fit in 64 bits (RAFS stores a signed 64-bit time)")
    return seconds, nsec
