"""Helpers for layer tests: genuine overlayfs stacks (upper directories made by the kernel) and OCI layer
tars made from them."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyzstd

OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off,index=off"  # what a container snapshotter typically uses


def mount_overlay(lowers: list[Path], target: Path, upper: Path | None = None, work: Path | None = None) -> None:
    """`lowers` top first; without `upper` the mount is the read-only merged view."""
    options = f"lowerdir={':'.join(str(p) for p in lowers)}"
    if upper is not None:
        options += f",upperdir={upper},workdir={work}"
    options += "," + OVERLAY_OPTIONS
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], check=True)


class OverlayStack:
    """Layer k is the upper directory of an overlay mounted on layers 1..k-1: changes made through the
    merged mount land in it exactly as a container snapshotter would record them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uppers: list[Path] = []
        (root / "empty").mkdir()

    def add_layer(self, change: Callable[[Path], None]) -> Path:
        k = len(self.uppers) + 1
        upper, work, mnt = self.root / f"upper{k}", self.root / f"work{k}", self.root / f"mnt{k}"
        for d in (upper, work, mnt):
            d.mkdir()
        mount_overlay(list(reversed(self.uppers)) or [self.root / "empty"], mnt, upper, work)
        try:
            change(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        shutil.rmtree(work)
        self.uppers.append(upper)
        return upper

    @contextlib.contextmanager
    def view(self) -> Iterator[Path]:
        """The read-only overlay of every layer: what a container sees."""
        mnt = self.root / "view"
        mnt.mkdir(exist_ok=True)
        mount_overlay(list(reversed(self.uppers)), mnt)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def _ns(value: int) -> str:
    return f"{value // 10**9}.{value % 10**9:09d}"


def upper_to_oci_tar(upper: Path, out: Path, compression: str = "") -> Path:
    """An OCI layer tar of an overlayfs upper directory, written by Python's tarfile in PAX format:
    char 0:0 -> `.wh.NAME`, opaque directory -> `.wh..wh..opq`, overlay xattrs dropped, other xattrs as
    SCHILY.xattr.*, exact nanosecond mtimes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [upper, *sorted(upper.rglob("*"))]:
            rel = path.relative_to(upper).as_posix()
            name = "." if rel == "." else "./" + rel
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                info = tarfile.TarInfo(name.rsplit("/", 1)[0] + "/.wh." + path.name)  # keeps the "./" prefix
                tar.addfile(info)
                continue
            info = tar.gettarinfo(str(path), arcname=name)
            info.uname = info.gname = ""
            xattrs = {x: os.getxattr(path, x, follow_symlinks=False) for x in os.listxattr(path, follow_symlinks=False)}
            opaque = xattrs.get("trusted.overlay.opaque") == b"y"
            for key, value in xattrs.items():
                if not key.startswith("trusted.overlay."):
                    info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
            info.mtime = st.st_mtime_ns // 10**9
            info.pax_headers["mtime"] = _ns(st.st_mtime_ns)
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if opaque:
                tar.addfile(tarfile.TarInfo(name + "/.wh..wh..opq"))
    data = buffer.getvalue()
    if compression == "gzip":
        import gzip

        data = gzip.compress(data, mtime=0)
    elif compression == "zstd":
        data = pyzstd.compress(data)
    out.write_bytes(data)
    return out


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def make_umoci_image(root: Path, umoci: str, tag: str) -> Path:
    """A three-layer image made by umoci at root/image: files, a hardlink, a symlink; then deletions and a
    change; then an opaque directory (a layer tar added with `umoci raw add-layer`). root/truth/rootfs is
    what `umoci unpack` makes of it."""
    image = root / "image"
    _run(umoci, "init", "--layout", str(image))
    _run(umoci, "new", "--image", f"{image}:{tag}")
    changes = [_layer_one, _layer_two]
    for change in changes:
        bundle = root / f"bundle-{change.__name__}"
        _run(umoci, "unpack", "--image", f"{image}:{tag}", str(bundle))
        change(bundle / "rootfs")
        _run(umoci, "repack", "--image", f"{image}:{tag}", str(bundle))
    opaque = root / "opaque"
    (opaque / "data").mkdir(parents=True)
    (opaque / "data" / ".wh..wh..opq").write_bytes(b"")
    (opaque / "data" / "only").write_bytes(b"only this survives\n")
    with tarfile.open(root / "opaque.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(opaque / "data", arcname="data")
    _run(umoci, "raw", "add-layer", "--image", f"{image}:{tag}", str(root / "opaque.tar"))
    config_edit = ["--config.env=GREETING=hello", "--config.label=org.example=nydus", "--config.workingdir=/app"]
    _run(umoci, "config", "--image", f"{image}:{tag}", *config_edit)
    _run(umoci, "unpack", "--image", f"{image}:{tag}", str(root / "truth"))
    return root


def _layer_one(rootfs: Path) -> None:
    (rootfs / "app").mkdir()
    (rootfs / "app" / "run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    os.chmod(rootfs / "app" / "run.sh", 0o755)
    (rootfs / "app" / "big").write_bytes(os.urandom(3 << 20))
    os.link(rootfs / "app" / "run.sh", rootfs / "app" / "run-link")
    os.symlink("run.sh", rootfs / "app" / "sym")
    (rootfs / "data" / "old").mkdir(parents=True)
    (rootfs / "data" / "old" / "x").write_bytes(b"old")
    (rootfs / "data" / "keep").write_bytes(b"keep")
    (rootfs / "gone").mkdir()
    (rootfs / "gone" / "y").write_bytes(b"y")


def _layer_two(rootfs: Path) -> None:
    shutil.rmtree(rootfs / "gone")
    (rootfs / "app" / "big").unlink()
    (rootfs / "app" / "new").write_bytes(b"added in layer two")
    with open(rootfs / "data" / "keep", "ab") as f:
        f.write(b" and changed")
