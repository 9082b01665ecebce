"""Publishing into an output directory: one implementation for every command that writes one.

A command opens OUTDIR once (`OutputDir.open`), which
- creates OUTDIR when it is missing (and remembers that it did);
- takes an exclusive `flock` on OUTDIR's own descriptor without blocking, so a second writer fails at once
  with "busy" (exit 2) and never touches the first one's results; the lock creates no file;
- stages everything under a hidden name of its own: inside OUTDIR when the command created it, beside
  OUTDIR (same file system) when OUTDIR existed before, so nothing is ever created in an existing target
  until the final publish.
Files are published one by one by `rename` (atomic per file), each path component opened with
`O_NOFOLLOW` under the directory's descriptor: a symlinked `blobs/` or `index.json` is refused. A name that
existed is first hardlinked into the staging area, so that a failure can put it back. On failure every name
the command published is removed or restored, the directories it made are removed with `rmdir`, and OUTDIR
itself only when the command created it and it is empty again (never a recursive delete of anything but
the command's own staging directory).
References: docs/design.md "Outputs and results"; flock(2), openat(2), renameat(2).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from nydus_py.errors import FormatError, UsageError
from nydus_py.util.fsutil import (lock_or_refuse, remove_stale_staging, remove_staging, staged_error,
                                  staging_dir)

STAGING_PREFIX = ".nydus-py-"  # + pid + random: a command's staging directory in or beside OUTDIR
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class _Published:
    parent: str  # relative directory ("" for OUTDIR itself)
    name: str
    backup: Path | None  # the previous file, hardlinked into the staging area


@dataclass(slots=True)
class OutputDir:
    """One command's transaction on an output directory; use `OutputDir.open` as a context manager."""

    path: Path
    fd: int
    created: bool
    staging: Path  # a directory of our own for temporary files (same file system as `path`)
    _published: list[_Published] = field(default_factory=list)
    _made_dirs: list[str] = field(default_factory=list)
    _backups: int = 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str | os.PathLike[str]) -> Iterator[OutputDir]:
        """Open (or create) OUTDIR, lock it, stage; commit when the block completes, roll back otherwise."""
        out = cls._start(Path(path).absolute())
        try:
            yield out
        except BaseException as exc:
            out._rollback()
            renamed = staged_error(exc, out.staging, out.path)
            if renamed is exc:
                raise
            raise renamed from None
        out._commit()

    @classmethod
    def _start(cls, path: Path) -> OutputDir:
        created = False
        try:
            if not os.path.lexists(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # another command may create it at the same moment
                    os.mkdir(path)
                    created = True
            fd = os.open(path, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UsageError(f"{path}: not a directory (the output must be a directory, not a symlink or a "
                                 "file)") from None
            raise UsageError(f"{path}: cannot write the output directory: {exc.strerror}") from None
        lock_or_refuse(fd, f"{path} is busy: another nydus-py command is writing it")
        try:
            staging = cls._staging_dir(path, fd, inside=created)
        except OSError as exc:
            cls._release(fd, path, created)
            raise UsageError(f"{path}: cannot stage the output: {exc.strerror}") from None
        return cls(path=path, fd=fd, created=created, staging=staging)

    @staticmethod
    def _staging_dir(path: Path, fd: int, *, inside: bool) -> Path:
        """Inside a directory we created; beside an existing one when that is on the same file system. Either
        way, first remove what runs killed before us left there (named by their process, and gone: we hold the
        lock, so no live run of this directory has one)."""
        remove_stale_staging(path, STAGING_PREFIX)
        beside = f".{path.name}{STAGING_PREFIX}"
        with contextlib.suppress(OSError):
            remove_stale_staging(path.parent, beside)
        if not inside:
            with contextlib.suppress(OSError):
                parent = path.parent
                if os.stat(parent).st_dev == os.fstat(fd).st_dev and os.access(parent, os.W_OK):
                    return staging_dir(parent, beside)
        return staging_dir(path, STAGING_PREFIX)

    @staticmethod
    def _release(fd: int, path: Path, created: bool) -> None:
        if created:  # only while we still hold the lock: nobody else can be using it
            with contextlib.suppress(OSError):
                os.rmdir(path)
        os.close(fd)

    # --- reading what is there ----------------------------------------------------------------------------

    def _open_dir(self, parent: str, *, create: bool) -> int:
        """A descriptor of OUTDIR/`parent`, every component opened with O_NOFOLLOW (a symlink is refused)."""
        fd = os.dup(self.fd)
        rel = ""
        for part in [p for p in parent.split("/") if p]:
            if part in (".", ".."):
                raise UsageError(f"{self.path}: bad output path {parent!r}")
            try:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        self._made_dirs.append(rel + part)
                    except FileExistsError:
                        pass
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(f"{self.path}/{parent}: not a directory (a symlink is never written "
                                     "through)") from None
                raise
            os.close(fd)
            fd = child
            rel += part + "/"
        return fd

    def _open_existing(self, relpath: str) -> int | None:
        """A descriptor of the existing OUTDIR/`relpath` (None when missing); a symlink is refused."""
        parent, _, name = relpath.rpartition("/")
        try:
            dfd = self._open_dir(parent, create=False)
        except FileNotFoundError:
            return None
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"{self.path}/{relpath}: is a symlink; refusing to write through it") from None
            raise
        finally:
            os.close(dfd)

    def read_file(self, relpath: str, limit: int) -> bytes | None:
        """The bytes of OUTDIR/`relpath` if it is a regular file (not a symlink) of at most `limit` bytes."""
        fd = self._open_existing(relpath)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{self.path}/{relpath}: not a regular file")
            if st.st_size > limit:
                raise FormatError(f"{self.path}/{relpath}: {st.st_size} bytes is over the {limit} byte limit")
            return f.read(limit + 1)[:limit]

    def has_verified_blob(self, relpath: str, sha256_hex: str, size: int) -> bool:
        """Whether OUTDIR/`relpath` is a regular file of `size` bytes hashing to `sha256_hex`."""
        fd = self._open_existing(relpath)
        if fd is None:
            return False
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            digest = hashlib.sha256()
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest() == sha256_hex

    # --- writing ------------------------------------------------------------------------------------------

    def temporary(self, name: str) -> tuple[BinaryIO, Path]:
        """An open temporary file in the staging area; publish it or leave it (it goes with the staging area)."""
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".tmp", dir=self.staging)
        return os.fdopen(fd, "w+b"), Path(tmp)

    def publish(self, tmp: Path, relpath: str, mode: int = 0o644) -> Path:
        """Rename the staged file `tmp` to OUTDIR/`relpath` (atomic); what it replaces can be put back."""
        parent, _, name = relpath.rpartition("/")
        dfd = self._open_dir(parent, create=True)
        try:
            backup = None
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if not stat.S_ISREG(st.st_mode):
                    raise UsageError(f"{self.path}/{relpath}: exists and is not a regular file")
                self._backups += 1
                backup = self.staging / f"backup.{self._backups}"
                os.link(name, backup, src_dir_fd=dfd, follow_symlinks=False)
            os.chmod(tmp, mode)
            os.replace(tmp, name, dst_dir_fd=dfd)
            self._published.append(_Published(parent, name, backup))
        finally:
            os.close(dfd)
        return self.path / relpath

    def publish_bytes(self, data: bytes, relpath: str) -> Path:
        f, tmp = self.temporary(relpath.rpartition("/")[2] or "file")
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return self.publish(tmp, relpath)

    def publish_blob(self, tmp: Path, sha256_hex: str, size: int, store: str = "blobs/sha256") -> Path:
        """A content-addressed file: an existing one is kept only after it is verified, else replaced."""
        relpath = f"{store}/{sha256_hex}"
        if self.has_verified_blob(relpath, sha256_hex, size):
            os.unlink(tmp)
            return self.path / relpath
        return self.publish(tmp, relpath)

    # --- the end ------------------------------------------------------------------------------------------

    def _commit(self) -> None:
        try:
            for rel in {p.parent for p in self._published}:
                with contextlib.suppress(OSError):
                    dfd = self._open_dir(rel, create=False)
                    os.fsync(dfd)
                    os.close(dfd)
            os.fsync(self.fd)
        finally:
            remove_staging(self.staging)
            os.close(self.fd)

    def _rollback(self) -> None:
        try:
            for item in reversed(self._published):
                with contextlib.suppress(OSError):
                    dfd = self._open_dir(item.parent, create=False)
                    try:
                        if item.backup is not None:
                            os.replace(item.backup, item.name, dst_dir_fd=dfd)
                        else:
                            os.unlink(item.name, dir_fd=dfd)
                    finally:
                        os.close(dfd)
            for rel in reversed(self._made_dirs):
                with contextlib.suppress(OSError):
                    os.rmdir(rel, dir_fd=self.fd)
        finally:
            remove_staging(self.staging)
            self._release(self.fd, self.path, self.created)


__all__ = ["OutputDir"]
