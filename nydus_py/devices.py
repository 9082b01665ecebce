"""`nydus-py mount`: an image used without nydusd. Each blob is expanded into the device image the kernel
reads (cached per blob id, verified once, reused), and the bootstrap is mounted file-backed with one
`device=` per slot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nydus_py.blob.device import expand_blob
from nydus_py.errors import UsageError
from nydus_py.fsutil import atomic_output
from nydus_py.kmount import mount_erofs
from nydus_py.locate import OpenedImage

VERIFIED_SUFFIX = ".verified"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nydus-py"


def prepare_devices(opened: OpenedImage, cache_dir: Path) -> tuple[Path, list[Path]]:
    """(bootstrap file, one device image per device slot) in `cache_dir`, expanding blobs not cached yet.

    A device image is trusted again only if its `.verified` stamp (written after every chunk was checked
    against its digest) names the same size.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{cache_dir}: cannot create the cache directory: {exc.strerror}") from exc
    devices = []
    for info in opened.bootstrap.blobs:
        device = cache_dir / f"{info.blob_id}.device"
        stamp = device.with_name(device.name + VERIFIED_SUFFIX)
        fresh = device.is_file() and stamp.is_file() and stamp.read_text().strip() == str(info.uncompressed_size)
        if not fresh:
            blob = opened.blob_path(info)
            if blob is None:
                raise UsageError(f"blob {info.blob_id} not found (give --blob-dir)")
            by_ci = {c.ci_index: c.digest for c in opened.bootstrap.chunk_table if c.blob_index == info.blob_index}
            expand_blob(blob, info, device, by_ci)
            with atomic_output(stamp) as f:
                f.write(str(info.uncompressed_size).encode())
        devices.append(device)
    bootstrap = opened.bootstrap_file
    if bootstrap is None:  # the kernel needs the bootstrap as a file of its own
        bootstrap = cache_dir / f"{hashlib.sha256(opened.bootstrap_bytes).hexdigest()}.boot"
        if not bootstrap.is_file():
            with atomic_output(bootstrap) as f:
                f.write(opened.bootstrap_bytes)
    return bootstrap, devices


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("mounting needs root (the kernel's mount(2))")


def mount_image(opened: OpenedImage, mountpoint: Path, cache_dir: Path) -> list[Path]:
    """Mount IMAGE read-only at `mountpoint` through the kernel's EROFS driver; returns the device images."""
    require_root()
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mount point is not a directory")
    bootstrap, devices = prepare_devices(opened, cache_dir)
    mount_erofs(bootstrap, devices, mountpoint)
    return devices
