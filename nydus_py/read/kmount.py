"""Kernel EROFS mounts through mount(2): file-backed, one `device=` per device-table slot, no loop device."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

from nydus_py.errors import NydusError, UsageError

MS_RDONLY = 1
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(NydusError):
    """The kernel refused a mount or unmount."""


def _comma_safe(path: Path) -> bytes:
    raw = os.fsencode(path.resolve())
    if b"," in raw:
        raise UsageError(f"{path}: a device path for mount options cannot contain ','")
    return raw


def mount_erofs(bootstrap: str | os.PathLike[str], devices: Sequence[str | os.PathLike[str]],
                mountpoint: str | os.PathLike[str]) -> None:
    """Mount a bootstrap read-only with the kernel's EROFS driver, file-backed (needs root, Linux >= 6.12)."""
    options = b",".join(b"device=" + _comma_safe(Path(d)) for d in devices)
    source = os.fsencode(Path(bootstrap).resolve())
    target = os.fsencode(Path(mountpoint))
    if _libc.mount(source, target, b"erofs", MS_RDONLY, options or None) != 0:
        err = ctypes.get_errno()
        hint = ""
        if err == 1:
            hint = " (mounting needs root)"
        elif err == 19:
            hint = " (the kernel has no EROFS support)"
        raise MountError(f"mount erofs {bootstrap} on {mountpoint}: {os.strerror(err)}{hint}")


def umount(mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> None:
    if _libc.umount2(os.fsencode(Path(mountpoint)), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise MountError(f"umount {mountpoint}: {os.strerror(err)}")
