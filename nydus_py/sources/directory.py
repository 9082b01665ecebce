"""A directory on disk (plain, or an overlayfs upper directory) -> Tree, plus its regular files in RAFS
data order.

The walk is iterative and works on directory file descriptors (openat with O_NOFOLLOW): no recursion
limit, no path-length limit, a symlink is recorded and never followed, fifos, sockets and devices are
recorded and never opened. Names are sorted bytewise; files are handed out in nydus build order
(directories depth first, each directory's files in name order), so data order never depends on
`readdir` order. Hardlinks (same st_dev, st_ino) of every non-directory type share one Inode.

Overlayfs upper directories (whiteout spec `overlayfs`): a char device 0:0, or a file with
`<ns>.overlay.whiteout`, is a removal; `<ns>.overlay.opaque` = "y" makes a directory opaque ("x" only
says the directory holds xattr whiteouts). Both become OCI markers in the tree (`.wh.NAME`,
`.wh..wh..opq`). Every other `<ns>.overlay.*` xattr is bookkeeping and is dropped; `redirect` and
`metacopy` (whose data or names live in lower layers) are refused.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.sources import MAX_LAYER_ENTRIES, WhiteoutSpec, XattrNamespace
from nydus_py.errors import FormatError, UnsupportedError, UsageError
from nydus_py.format.posix_acl import acl_xattrs_problem
from nydus_py.util.fsutil import raise_fd_limit
from nydus_py.model import OPAQUE_MARKER, WHITEOUT_PREFIX, Entry, FileKind, Inode, Tree, is_marker, \
    is_void_whiteout, new_marker, overlay_xattrs

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's
_REG = FileKind.REG
_DEVICES = (FileKind.CHR, FileKind.BLK)
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(slots=True)
class DirFile:
    """A regular file's content, read with pread; holes found with SEEK_DATA. `close()` closes `fd`."""

    inode: Inode
    path: bytes  # source root + path inside it, for messages
    fd: int
    sparse: bool  # has holes: look for them with SEEK_DATA

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        size = self.inode.size
        if size <= chunk_size and not self.sparse:  # most files: one read, and no generator to make
            return ((0, size, self._read(0, size)),)
        return self._pieces(chunk_size)

    def _read(self, offset: int, length: int) -> bytes:
        # the last read asks for one byte more: a file that grew shows it without a read of its own
        data = os.pread(self.fd, length + (offset + length == self.inode.size), offset)
        if len(data) != length:
            self._changed("grew" if len(data) > length else "shrank")
        return data

    def _pieces(self, chunk_size: int) -> Iterator[tuple[int, int, bytes | None]]:
        size = self.inode.size
        next_data = 0
        end_checked = False
        for offset in range(0, size, chunk_size):
            length = min(chunk_size, size - offset)
            if self.sparse and next_data < offset + length:
                next_data = self._next_data(offset, size)
            if self.sparse and next_data >= offset + length:
                yield offset, length, None
                continue
            end_checked = offset + length == size
            yield offset, length, self._read(offset, length)
        if not end_checked and os.pread(self.fd, 1, size):
            self._changed("grew")

    def _changed(self, how: str) -> None:
        raise FormatError(f"{self.path.decode(errors='backslashreplace')}: file {how} during the build")

    def _next_data(self, offset: int, size: int) -> int:
        """Offset of the next data byte at or after `offset` (size when only a hole remains)."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return size
            raise

    def close(self) -> None:
        os.close(self.fd)


@dataclass(slots=True)
class _Frame:
    fd: int
    inode: Inode
    path: bytes
    subdirs: list[tuple[bytes, Inode, tuple[int, int]]] = field(default_factory=list)


class DirectorySource:
    """Scan a directory; `files()` builds `tree` as it goes and yields regular files in data order."""

    def __init__(self, root: str | os.PathLike[str], *, whiteout_spec: WhiteoutSpec = WhiteoutSpec.NONE,
                 overlay_ns: XattrNamespace = XattrNamespace.TRUSTED) -> None:
        self.root_path = Path(root)
        self.spec = WhiteoutSpec.OVERLAYFS if whiteout_spec is WhiteoutSpec.AUTO else whiteout_spec
        self.overlay_prefix = overlay_ns.value.encode() + b".overlay."
        try:
            st = os.stat(self.root_path)
        except OSError as exc:
            raise UsageError(f"{root}: cannot read source: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{root}: source is not a directory")
        self.tree = Tree(root=self._inode(st, b"/", None, b""))
        self._root_bytes = os.fsencode(self.root_path)  # file paths for messages: root + path inside it
        self._hardlinks: dict[tuple[int, int], Inode] = {}
        self._entries = 0  # entries read (MAX_LAYER_ENTRIES)
        self._opaque: set[int] = set()  # id() of directories that get an opaque marker
        self._xattr_whiteouts: set[int] = set()  # id() of files that are whiteouts

    def holds(self, path: Path) -> bool:
        """Whether writing `path` would write into the directory being read."""
        root = Path(os.path.realpath(self.root_path))
        target = Path(os.path.realpath(path))
        return target == root or root in target.parents

    def _where(self, path: bytes) -> str:
        return f"{self.root_path}{path.decode(errors='backslashreplace')}"

    def _error(self, path: bytes, exc: OSError) -> FormatError:
        return FormatError(f"{self._where(path)}: {exc.strerror or exc}")

    def files(self) -> Iterator[DirFile]:
        raise_fd_limit()
        try:
            root_fd = os.open(self.root_path, _OPEN_DIR & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise UsageError(f"{self.root_path}: cannot open source: {exc.strerror}") from exc
        stack = [_Frame(fd=root_fd, inode=self.tree.root, path=b"")]
        try:
            self.tree.root.xattrs = self._overlay_xattrs(self._xattrs(root_fd, None, b"/"), self.tree.root, b"/")
            yield from self._scan(stack[0])
            while stack:
                frame = stack[-1]
                if not frame.subdirs:
                    os.close(frame.fd)
                    stack.pop()
                    continue
                name, inode, identity = frame.subdirs.pop()
                child = _Frame(fd=self._open_dir(frame, name, identity), inode=inode, path=frame.path + b"/" + name)
                stack.append(child)
                yield from self._scan(child)
        finally:
            for frame in stack:
                os.close(frame.fd)

    def _open_dir(self, parent: _Frame, name: bytes, identity: tuple[int, int]) -> int:
        path = parent.path + b"/" + name
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent.fd)
        except OSError as exc:
            raise self._error(path, exc) from exc
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            os.close(fd)
            raise FormatError(f"{self._where(path)}: changed during the build")
        return fd

    def _scan(self, frame: _Frame) -> Iterator[DirFile]:
        """Record every entry of one directory; yield its regular files; queue its subdirectories."""
        try:
            with os.scandir(frame.fd) as it:  # (name, readdir's d_type says regular file)
                names = sorted((e.name.encode(_FS_ENCODING, _FS_ERRORS), e.is_file(follow_symlinks=False))
                               for e in it)
        except OSError as exc:
            raise self._error(frame.path or b"/", exc) from exc
        self._entries += len(names)
        if self._entries > MAX_LAYER_ENTRIES:
            raise FormatError(f"{self.root_path}: more than {MAX_LAYER_ENTRIES} entries in one layer")
        entries = frame.inode.entries
        if id(frame.inode) in self._opaque:
            self._opaque.discard(id(frame.inode))
            entries.append(Entry(name=OPAQUE_MARKER, inode=new_marker()))
        subdirs: list[tuple[bytes, Inode, tuple[int, int]]] = []
        dir_fd, prefix, stat_entry, record = frame.fd, frame.path + b"/", self._stat, self._record
        for name, regular in names:
            path = prefix + name
            fd, st = stat_entry(dir_fd, name, path, regular)
            try:
                inode = record(frame, entries, subdirs, name, path, st, fd)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            if inode is not None and inode.kind is _REG and st.st_size > 0:
                yield DirFile(inode, self._root_bytes + path,
                              fd if fd is not None else self._open_file(dir_fd, name, path, st),
                              st.st_blocks * 512 < st.st_size)
            elif fd is not None:
                os.close(fd)
        entries.sort(key=lambda e: e.name)
        frame.subdirs = subdirs[::-1]  # popped from the end: name order

    def _stat(self, dir_fd: int, name: bytes, path: bytes, regular: bool) -> tuple[int | None, os.stat_result]:
        """The entry's lstat, and for what readdir calls a regular file a descriptor open on it: then fstat
        answers, its xattrs come from flistxattr and its data from pread, and open is the only path lookup
        (instead of fstatat, listxattr through /proc, open and an fstat to check the file is still the one
        stat saw). An entry that cannot be opened is lstat'ed like any other (it fails later if it has data)."""
        if regular:
            try:
                fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
            except OSError:
                pass
            else:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    return fd, st
                os.close(fd)  # replaced since readdir: lstat it
        try:
            return None, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise self._error(path, exc) from exc

    def _record(self, frame: _Frame, entries: list[Entry], subdirs: list[tuple[bytes, Inode, tuple[int, int]]],
                name: bytes, path: bytes, st: os.stat_result, fd: int | None) -> Inode | None:
        """Add one entry to its directory (a subdirectory also to `subdirs`); its inode when it is new, None
        for a hardlink already seen or a whiteout."""
        kind = FileKind.from_mode(st.st_mode)
        if is_marker(name) and self.spec is WhiteoutSpec.OVERLAYFS:
            raise UnsupportedError(f"{self._where(path)}: a file named '.wh.*' cannot be told apart from a "
                                   "whiteout in a layered image (build it alone with --whiteout-spec none)")
        if kind is FileKind.CHR and st.st_rdev == 0 and self.spec is WhiteoutSpec.OVERLAYFS:
            entries.append(Entry(name=WHITEOUT_PREFIX + name, inode=new_marker()))
            return None
        if self.spec is WhiteoutSpec.OCI and is_void_whiteout(name):
            raise FormatError(f"{self._where(path)}: a whiteout must name an entry, not '', '.' or '..' "
                              "(OCI image spec)")
        inode = self._hardlinks.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 and kind is not FileKind.DIR else None
        if inode is not None:
            entries.append(Entry(name, inode))
            return None
        inode = self._inode(st, path, frame.fd, name, fd, kind)
        if id(inode) in self._xattr_whiteouts:  # `<ns>.overlay.whiteout` (overlayfs >= 6.7)
            self._xattr_whiteouts.discard(id(inode))  # the inode is dropped: its id may be reused
            entries.append(Entry(name=WHITEOUT_PREFIX + name, inode=new_marker()))
            return None
        if st.st_nlink > 1 and kind is not FileKind.DIR:  # every type: one inode, as in the source
            self._hardlinks[(st.st_dev, st.st_ino)] = inode
        entries.append(Entry(name, inode))
        if kind is FileKind.DIR:
            subdirs.append((name, inode, (st.st_dev, st.st_ino)))
        return inode

    def _open_file(self, dir_fd: int, name: bytes, path: bytes, st: os.stat_result) -> int:
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(path, exc) from exc
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise FormatError(f"{self._where(path)}: changed during the build")
        return fd

    def _inode(self, st: os.stat_result, path: bytes, dir_fd: int | None, name: bytes, fd: int | None = None,
               kind: FileKind | None = None) -> Inode:
        """`fd`: a descriptor open on the entry (a regular file), to read its xattrs through; `kind`: its
        type when the caller knows it already."""
        kind = kind or FileKind.from_mode(st.st_mode)
        mtime, mtime_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        inode = Inode(kind, st.st_mode, st.st_uid, st.st_gid, mtime, mtime_nsec,  # positional: per entry, faster
                      st.st_size if kind is _REG else 0, st.st_rdev if kind in _DEVICES else 0)
        if dir_fd is None:
            return inode
        if kind is FileKind.SYMLINK:
            try:
                inode.symlink_target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                raise self._error(path, exc) from exc
            inode.size = len(inode.symlink_target)
        xattrs = self._xattrs(fd, None, path) if fd is not None else self._xattrs(dir_fd, name, path)
        inode.xattrs = self._overlay_xattrs(xattrs, inode, path)
        return inode

    def _overlay_xattrs(self, xattrs: dict[bytes, bytes], inode: Inode, path: bytes) -> dict[bytes, bytes]:
        """Interpret and drop the overlay's own xattrs (upper directories only)."""
        if self.spec is not WhiteoutSpec.OVERLAYFS or not xattrs:  # most entries have none
            return xattrs
        overlay = overlay_xattrs(xattrs, self.overlay_prefix)
        if (refused := overlay.refused) is not None:
            raise UnsupportedError(f"{self._where(path)}: overlayfs '{refused.decode()}' is not supported "
                                   "(its content or name lives in a lower layer); mount with "
                                   f"{refused.decode()}{'_dir' if refused == b'redirect' else ''}=off")
        # overlayfs reads `opaque` only on directories it looks up below a layer's root, never on the root itself
        # (fs/overlayfs/namei.c: ovl_lookup_single), so an upper root marked opaque still shows every lower entry
        if inode.is_dir and overlay.opaque and path != b"/":
            self._opaque.add(id(inode))
        if overlay.whiteout and inode.kind is FileKind.REG:
            self._xattr_whiteouts.add(id(inode))
        return overlay.kept

    def _xattrs(self, dir_fd: int, name: bytes | None, path: bytes) -> dict[bytes, bytes]:
        # /proc/self/fd/N/NAME with follow_symlinks=False reads the entry's own xattrs without opening it
        # (never a fifo or device) and without following a symlink.
        target: int | bytes = dir_fd if name is None else b"/proc/self/fd/%d/%s" % (dir_fd, name)
        try:
            names = os.listxattr(target, follow_symlinks=False) if name else os.listxattr(dir_fd)
            if not names:
                return {}
            xattrs = {os.fsencode(x): os.getxattr(target, x, follow_symlinks=False) if name else os.getxattr(dir_fd, x)
                      for x in sorted(names)}
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise self._error(path, exc) from exc
        problem = acl_xattrs_problem(xattrs)
        if problem is not None:  # local filesystems check ACLs when they are set; FUSE ones need not
            raise FormatError(f"{self._where(path)}: {problem}")
        return xattrs
