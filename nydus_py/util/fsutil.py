"""Output files: written under a temporary name and renamed into place when complete (a FIFO or character device
in place, in order); staging directories named by the process that made them, so a later run can remove those
of processes that are gone."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from nydus_py.errors import InternalError, UsageError


class Readable(Protocol):
    """Any binary stream read in order: a file, a decompressor, a pipe."""

    def read(self, size: int = -1, /) -> bytes: ...


TEMP_PREFIX = ".nydus-py-tmp-"  # our temporary files: `<TEMP_PREFIX><pid>-<name>.<random>`, locked while written
# a staging directory or temporary file is made under this name, locked, then renamed to its own: under its own
# name it is always locked while its run lives, so a sweep of another run never takes it for a killed run's
MAKING_PREFIX = ".nydus-py-making-"
MAKING_TIMEOUT = 3600.0  # seconds after which an unlocked MAKING_PREFIX leftover (a run killed right then) is removed
_OWN_DESCRIPTORS = re.compile(r"/dev/(stdout|stderr|fd/[0-9]+)|/proc/self/fd/[0-9]+")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file that becomes `path` only if the block completes; on any error nothing is left. The file is
    staged under a locked temporary name of ours beside `path` (a killed run's is removed by a later one) and
    renamed; a symlink at `path` is replaced, never written through; a directory, block device or socket there
    is refused. Every error names `path`, never the temporary name."""
    target = Path(path)
    _refuse_special(target)
    remove_stale_temporaries(target.parent)
    try:
        out, tmp = temporary_file(target.parent, target.name)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fspath(target)) from None
    try:
        with out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
            os.replace(tmp, target)  # while the lock is held: a sweeper never sees it unlocked before
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, os.fspath(target)) from None
        raise


def _refuse_special(target: Path) -> None:
    """A directory, block device or socket at an output is never replaced (a FIFO or character device is
    written in place by `output_file`)."""
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a block device" if stat.S_ISBLK(mode) else "a socket"
        raise UsageError(f"{target}: is {kind}; not replaced by an output")


def staged_error(exc: BaseException, staging: Path, output: str | os.PathLike[str]) -> BaseException:
    """An OSError naming a file of ours inside `staging` names `output` instead (the user never named the
    temporary file: "No space left on device" is about the output); anything else as it is."""
    if isinstance(exc, OSError) and exc.filename is not None:
        name = os.fsdecode(exc.filename)
        if name.startswith(os.fspath(staging)) or os.path.basename(name).startswith(TEMP_PREFIX):
            return OSError(exc.errno, exc.strerror, os.fspath(output))
    return exc


def named(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """`exc` naming `path` (a write error from a file object names no file: "No space left on device")."""
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, os.fspath(path))


def open_in_place(path: str | os.PathLike[str]) -> BinaryIO | None:
    """`path` opened for writing when it is written in place, or None: the process's own descriptors
    (`/dev/stdout`, `/dev/fd/N`), and a FIFO or character device, through a symlink too (`/dev/null`). The type
    is checked on the descriptor opened, so a swap between a check and the open cannot redirect the write, and
    nothing else is truncated or written here (no O_TRUNC, no O_CREAT)."""
    own = _OWN_DESCRIPTORS.fullmatch(os.path.abspath(path)) is not None
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY | (0 if own else os.O_NONBLOCK)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # missing, a directory, not writable...: the staged path decides
            if own:
                raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
            return None
        try:  # a FIFO without a reader yet: wait for one, as the converter's reader comes
            fd = os.open(path, flags & ~os.O_NONBLOCK)
        except OSError:
            return None
    st = os.fstat(fd)
    if own or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    os.close(fd)
    return None


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """`path` written whole: in place when it is a FIFO, a character device or one of the process's own
    descriptors (`open_in_place`), strictly in order (the caller reads it as it comes); anything else staged
    and renamed when complete (`atomic_output`), so a failure leaves what was there."""
    out = open_in_place(path)
    if out is None:
        with atomic_output(path) as staged:
            yield staged
        return
    with out:
        try:
            yield out
            out.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None


@contextlib.contextmanager
def reserved_output(path: str | os.PathLike[str] | None) -> Iterator[Callable[[bytes], None]]:
    """An output written at the end of a command (`--output-json`) but prepared before its work: a staged
    file's temporary is made now (its missing parent directories too, removed again if the command fails), so
    a path that cannot be written fails the command before anything else is published. Yields `write(data)`;
    without a call (or on an error) nothing is written."""
    if path is None:
        yield lambda data: None
        return
    if open_in_place_kind(path):  # a FIFO, device or own descriptor: opened when there is something to write
        def write_in_place(data: bytes) -> None:
            with output_file(path) as out:
                out.write(data)
        yield write_in_place
        return
    made = [p for p in reversed(Path(path).absolute().parents) if not os.path.lexists(p)]
    try:
        for directory in made:  # as an output directory's parents are made; removed again on failure
            os.mkdir(directory)
        with atomic_output(path) as staged:
            written = False

            def write(data: bytes) -> None:
                nonlocal written
                staged.write(data)
                written = True
            yield write
            if not written:
                raise InternalError(f"{path}: reserved but never written")
    except BaseException:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def open_in_place_kind(path: str | os.PathLike[str]) -> bool:
    """Whether `output_file` would write `path` in place (checked again, on the descriptor, when it does)."""
    if _OWN_DESCRIPTORS.fullmatch(os.path.abspath(path)) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def staging_dir(directory: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory `<prefix><pid>-XXXXXXXX` in `directory`, locked (flock) for as long as this process
    lives or until it is removed, after removing those of that prefix whose lock is free (left by a run that
    was killed, in any PID namespace): a live run's, ours included, are never touched."""
    remove_stale_staging(directory, prefix)
    making = Path(tempfile.mkdtemp(prefix=MAKING_PREFIX, dir=directory))
    fd = os.open(making, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = making.with_name(f"{prefix}{os.getpid()}-{making.name[len(MAKING_PREFIX):]}")
    os.rename(making, path)
    _HELD[path] = fd
    return path


_HELD: dict[Path, int] = {}  # staging directories of this process -> the descriptor holding their lock


def remove_staging(path: Path) -> None:
    """Remove a staging directory of this process (`staging_dir`) and let its lock go."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def remove_stale_staging(directory: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove the `<prefix>*` directories in `directory` that no live run holds (their lock is free); returns
    them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.startswith((prefix, MAKING_PREFIX)) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(MAKING_PREFIX) and not _older(entry, MAKING_TIMEOUT):
                continue  # being made, and not locked yet
            if _unlocked(entry.path, os.O_DIRECTORY):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> None:
    """Remove our temporary files in `directory` that no live run holds (`atomic_output` locks each while it
    writes): what a killed run left."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            ours = entry.name.startswith(TEMP_PREFIX) or (entry.name.startswith(MAKING_PREFIX)
                                                           and _older(entry, MAKING_TIMEOUT))
            if ours and entry.is_file(follow_symlinks=False) and _unlocked(entry.path):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def lock_or_refuse(fd: int, busy: str) -> None:
    """An exclusive flock on `fd` (held until it is closed); when another process holds it, `fd` is closed and
    UsageError(busy) raised."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(busy) from None


def _older(entry: os.DirEntry[str], seconds: float) -> bool:
    with contextlib.suppress(OSError):
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > seconds
    return False


def _unlocked(path: str, extra_flags: int = 0) -> bool:
    """Whether nobody holds the flock of `path` (then it is ours to remove; the probe's lock goes with its
    descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | extra_flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def temporary_file(directory: Path, name: str) -> tuple[BinaryIO, Path]:
    """An open temporary file in `directory` (`<TEMP_PREFIX><pid>-<name>.XXXXXXXX`), locked while it is open so
    that a later run removes it only once this one is gone; the caller renames or removes it."""
    fd, making = tempfile.mkstemp(prefix=MAKING_PREFIX, dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp = Path(making).with_name(f"{TEMP_PREFIX}{os.getpid()}-{name[:64]}.{Path(making).name[len(MAKING_PREFIX):]}")
    os.rename(making, tmp)
    return os.fdopen(fd, "w+b"), tmp


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


def open_regular_file(path: str | os.PathLike[str], what: str) -> BinaryIO:
    """`path` opened for reading when it is a regular file (a FIFO or device is never waited on or read);
    UsageError naming it and `what` it was to be otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: not a regular file, so not {what}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_head(path: str | os.PathLike[str], size: int, what: str) -> bytes:
    """The first `size` bytes of a regular file (`open_regular_file`)."""
    with open_regular_file(path, what) as f:
        return f.read(size)


def refuse_clashes(outputs: dict[str, str | os.PathLike[str] | None],
                   inputs: dict[str, str | os.PathLike[str] | None] | None = None) -> None:
    """An output naming an input, or another output, would destroy it when it is written: UsageError naming
    both (`outputs` and `inputs` map a label such as `--output-json` to a path; None is left out). The same
    file under another name (a hardlink, a symlink) counts."""
    given = [(label, path, True) for label, path in outputs.items() if path is not None]
    given += [(label, path, False) for label, path in (inputs or {}).items() if path is not None]
    for i, (label, path, is_output) in enumerate(given):
        for other_label, other_path, _ in given[i + 1 :]:
            if is_output and _same_file(path, other_path):
                raise UsageError(f"{os.fspath(path)}: {label} names the same file as {other_label}")


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
