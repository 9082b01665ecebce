"""`nydus-py mount`: an image used without nydusd. The bootstrap first passes the structural checks of `check`
(the kernel is a hard place to find a parser bug); each blob's file must hash to its id; it is then expanded
into the device image the kernel reads (every chunk checked against its digest), cached under a name derived
from what was verified, and reused; the bootstrap is mounted file-backed with one `device=` per slot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nydus_py.blob.device import expand_blob
from nydus_py.blob.reader import BlobReader, blob_id_digests
from nydus_py.read.check import check_bootstrap_bytes
from nydus_py.errors import FormatError, UsageError
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.util.fsutil import atomic_output
from nydus_py.image import BlobInfo, is_blob_digest
from nydus_py.read.kmount import mount_erofs
from nydus_py.read.locate import OpenedImage

DEVICE_SUFFIX = ".device"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nydus-py"


def require_sound_bootstrap(opened: OpenedImage) -> None:
    """Refuse a bootstrap in which `check` finds any structural defect (FormatError: exit 2)."""
    defects = check_bootstrap_bytes(opened.bootstrap_bytes).defects
    if defects:
        more = f" and {len(defects) - 1} more ('nydus-py check' lists them)" if len(defects) > 1 else ""
        raise FormatError(f"{opened.source}: not mounted, the bootstrap is malformed: {defects[0]}{more}")


def verified_blob(opened: OpenedImage, info: BlobInfo) -> tuple[BlobReader, str]:
    """A reader of `info`'s chunks and the sha256 of what it reads, after checking that each file is the one
    its id names (a zran blob: the original layer and its meta blob)."""
    if info.blob_id != BLOB_ID_PLACEHOLDER and not is_blob_digest(info.blob_id):
        raise FormatError(f"{opened.source}: blob id {info.blob_id!r} is not 64 lowercase hex digits: it cannot "
                          "name a file")
    missing = opened.missing(info)
    reader = opened.blob_reader(info)
    if missing is not None or reader is None:
        raise UsageError(f"{opened.source}: {missing or info.blob_id} not found (give --blob-dir)")
    made_of = []
    for path, blob_id in [(opened.blob_path(info), info.blob_id), (opened.meta_path(info), info.meta_id)]:
        if path is None:
            continue
        whole, nydus_rule = blob_id_digests(path)
        if blob_id is not None and blob_id != BLOB_ID_PLACEHOLDER and blob_id not in (whole, nydus_rule):
            reader.close()
            raise FormatError(f"{path}: the file does not hash to blob id {blob_id}")
        made_of.append(whole)
    return reader, "".join(made_of)


def cache_key(file_sha256: str, info: BlobInfo, digests: dict[int, bytes]) -> str:
    """A device image is named by everything that made it: the blob file's content, the blob table entry that
    located its chunks, and the digests that verified them. No entry made from one blob serves another."""
    made_of = hashlib.sha256(file_sha256.encode())
    for value in (info.compressor, info.digester, info.ci_compressor, info.ci_offset, info.ci_compressed_size,
                  info.ci_uncompressed_size, info.chunk_count, info.uncompressed_size, int(info.features)):
        made_of.update(b"%d\0" % int(value))
    for ci_index in sorted(digests):
        made_of.update(b"%d:" % ci_index + digests[ci_index])
    return made_of.hexdigest()


def prepare_devices(opened: OpenedImage, cache_dir: Path) -> tuple[Path, list[Path]]:
    """(bootstrap file, one device image per device slot) in `cache_dir`, expanding blobs not cached yet."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{cache_dir}: cannot create the cache directory: {exc.strerror}") from exc
    devices = []
    for info in opened.bootstrap.blobs:
        reader, file_sha256 = verified_blob(opened, info)
        by_ci = {c.ci_index: c.digest for c in opened.bootstrap.chunk_table if c.blob_index == info.blob_index}
        device = cache_dir / (cache_key(file_sha256, info, by_ci) + DEVICE_SUFFIX)
        if not device.is_file():  # written only by a complete, verified expansion (atomic rename)
            expand_blob(reader, info, device, by_ci)
        else:
            reader.close()
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


def mount_image(opened: OpenedImage, mountpoint: Path, cache_dir: Path, *, check: bool = True) -> list[Path]:
    """Mount IMAGE read-only at `mountpoint` through the kernel's EROFS driver; returns the device images.
    `check=False` hands the bootstrap to the kernel without the structural checks."""
    require_root()
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mount point is not a directory")
    if check:
        require_sound_bootstrap(opened)
    bootstrap, devices = prepare_devices(opened, cache_dir)
    mount_erofs(bootstrap, devices, mountpoint)
    return devices
