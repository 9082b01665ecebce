"""Output files: written under a temporary name and renamed into place when complete (a FIFO or character device
in place, in order); staging directories named by the process that made them, so a later run can remove those
of processes that are gone."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class Readable(Protocol):
    """Any binary stream read in order: a file, a decompressor, a pipe."""

    def read(self, size: int = -1, /) -> bytes: ...


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file that becomes `path` only if the block completes; on any error nothing is left. A symlink
    at `path` is replaced, never written through. An error without a file name names `path`."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise named(exc, target.parent) from None
    try:
        with os.fdopen(fd, "w+b") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise named(exc, target) from None
        raise


def named(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """`exc` naming `path` (a write error from a file object names no file: "No space left on device")."""
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, os.fspath(path))


def writes_in_place(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a FIFO or a character device (itself, not a symlink's target): an output a caller
    reads as it is written, so it is written in place, in order."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """`path` written whole: a FIFO or character device in place, strictly in order (the caller reads it as it
    comes); anything else staged and renamed when complete (`atomic_output`), so a failure leaves what was
    there, and a symlink there is replaced, not written through."""
    if not writes_in_place(path):
        with atomic_output(path) as out:
            yield out
        return
    try:
        out = open(path, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise named(exc, path) from None
    with out:
        try:
            yield out
            out.flush()
        except OSError as exc:
            raise named(exc, path) from None


def staging_dir(directory: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory `<prefix><pid>-XXXXXXXX` in `directory`, after removing those of that prefix whose process
    is gone (left by a run that was killed): a live run's, ours included, are never touched."""
    remove_stale_staging(directory, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=directory))


def remove_stale_staging(directory: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove the `<prefix><pid>-*` directories in `directory` whose process no longer exists; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            pid_text, dash, _ = rest.partition("-")
            if not dash or not pid_text.isdigit() or _alive(int(pid_text)):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (another user's counts: it may be a live run)."""
    if pid <= 0:
        return True  # never a process of ours: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_file(directory: Path, name: str) -> tuple[BinaryIO, Path]:
    """An open temporary file in `directory` (hidden name); the caller renames or removes it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    return os.fdopen(fd, "w+b"), Path(tmp)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames into a directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raise_fd_limit() -> None:
    """Deep trees keep one descriptor per level open: allow as many as the hard limit does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def file_identity(stream: object) -> tuple[int, int] | None:
    """(device, inode) of the file under `stream`, when it is one."""
    fileno = getattr(stream, "fileno", None)
    try:
        st = os.fstat(fileno()) if fileno is not None else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def is_file(identity: tuple[int, int] | None, path: Path) -> bool:
    """Whether `path` is the file of `identity` (`file_identity`), the same inode under any name."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return identity == (st.st_dev, st.st_ino)
