"""A directory on disk -> Tree, plus its regular files as open descriptors in RAFS data order.

The walk is iterative and works on directory file descriptors (openat with O_NOFOLLOW): no recursion
limit, no path-length limit, a symlink is recorded and never followed, fifos, sockets and devices are
recorded and never opened. Names are sorted bytewise; files are handed out in nydus build order
(directories depth first, each directory's files in name order), so data order never depends on
`readdir` order. Hardlinks (same st_dev, st_ino) of regular files share one Inode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.errors import FormatError, UsageError
from nydus_py.model import Entry, FileKind, Inode, Tree

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(slots=True)
class FileData:
    """A regular file's content, ready to be read: the consumer closes `fd`."""

    inode: Inode
    path: bytes  # source root + path inside it, for messages
    fd: int
    sparse: bool  # has holes: look for them with SEEK_DATA/SEEK_HOLE


@dataclass(slots=True)
class _Frame:
    fd: int
    inode: Inode
    path: bytes
    subdirs: list[tuple[bytes, Inode, tuple[int, int]]] = field(default_factory=list)


def _raise_fd_limit() -> None:
    """Deep trees keep one descriptor per level open: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class DirectorySource:
    """Scan a directory; `files()` builds `tree` as it goes and yields regular files in data order."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root_path = Path(root)
        try:
            st = os.stat(self.root_path)
        except OSError as exc:
            raise UsageError(f"{root}: cannot read source: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{root}: source is not a directory")
        self.tree = Tree(root=self._inode(st, b"/", None, b""))
        self._hardlinks: dict[tuple[int, int], Inode] = {}

    def _error(self, path: bytes, exc: OSError) -> FormatError:
        return FormatError(f"{self.root_path}{path.decode(errors='backslashreplace')}: {exc.strerror or exc}")

    def files(self) -> Iterator[FileData]:
        _raise_fd_limit()
        try:
            root_fd = os.open(self.root_path, _OPEN_DIR & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise UsageError(f"{self.root_path}: cannot open source: {exc.strerror}") from exc
        self.tree.root.xattrs = self._xattrs(root_fd, None, b"/")
        stack = [_Frame(fd=root_fd, inode=self.tree.root, path=b"")]
        try:
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
            raise FormatError(f"{self.root_path}{path.decode(errors='backslashreplace')}: changed during the build")
        return fd

    def _scan(self, frame: _Frame) -> Iterator[FileData]:
        """Record every entry of one directory; yield its regular files; queue its subdirectories."""
        try:
            with os.scandir(frame.fd) as it:
                names = sorted(os.fsencode(e.name) for e in it)
        except OSError as exc:
            raise self._error(frame.path or b"/", exc) from exc
        subdirs = []
        for name in names:
            path = frame.path + b"/" + name
            try:
                st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            except OSError as exc:
                raise self._error(path, exc) from exc
            kind = FileKind.from_mode(st.st_mode)
            inode = self._hardlinks.get((st.st_dev, st.st_ino)) if kind is FileKind.REG else None
            is_new = inode is None
            if inode is None:
                inode = self._inode(st, path, frame.fd, name)
                if kind is FileKind.REG and st.st_nlink > 1:
                    self._hardlinks[(st.st_dev, st.st_ino)] = inode
            frame.inode.entries.append(Entry(name=name, inode=inode))
            if kind is FileKind.DIR:
                subdirs.append((name, inode, (st.st_dev, st.st_ino)))
            elif kind is FileKind.REG and is_new and st.st_size > 0:
                yield FileData(inode=inode, path=os.fsencode(self.root_path) + path,
                               fd=self._open_file(frame.fd, name, path, st),
                               sparse=st.st_blocks * 512 < st.st_size)
        frame.subdirs = subdirs[::-1]  # popped from the end: name order

    def _open_file(self, dir_fd: int, name: bytes, path: bytes, st: os.stat_result) -> int:
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(path, exc) from exc
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise FormatError(f"{self.root_path}{path.decode(errors='backslashreplace')}: changed during the build")
        return fd

    def _inode(self, st: os.stat_result, path: bytes, dir_fd: int | None, name: bytes) -> Inode:
        kind = FileKind.from_mode(st.st_mode)
        inode = Inode(
            kind=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime=st.st_mtime_ns // 1_000_000_000,
            mtime_nsec=st.st_mtime_ns % 1_000_000_000,
            size=st.st_size if kind is FileKind.REG else 0,
            rdev=st.st_rdev if kind in (FileKind.CHR, FileKind.BLK) else 0,
        )
        if dir_fd is None:
            return inode
        if kind is FileKind.SYMLINK:
            try:
                inode.symlink_target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                raise self._error(path, exc) from exc
            inode.size = len(inode.symlink_target)
        inode.xattrs = self._xattrs(dir_fd, name, path)
        return inode

    def _xattrs(self, dir_fd: int, name: bytes | None, path: bytes) -> dict[bytes, bytes]:
        # /proc/self/fd/N/NAME with follow_symlinks=False reads the entry's own xattrs without opening it
        # (never a fifo or device) and without following a symlink.
        target: int | bytes = dir_fd if name is None else b"/proc/self/fd/%d/%s" % (dir_fd, name)
        try:
            names = os.listxattr(target, follow_symlinks=False) if name else os.listxattr(dir_fd)
            return {os.fsencode(x): os.getxattr(target, x, follow_symlinks=False) if name else os.getxattr(dir_fd, x)
                    for x in sorted(names)}
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise self._error(path, exc) from exc
