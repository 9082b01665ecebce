"""The Linux kernel and erofs-utils read the real V1 nydus image through the device image we expand."""

from __future__ import annotations

import subprocess
from pathlib import Path

import blake3

from nydus_py import expand_blob, open_image
from tests.conftest import V1_BOOT, kernel_mount, need_tool


def test_kernel_mounts_v1_with_our_device_image(tmp_path: Path) -> None:
    opened = open_image(V1_BOOT)
    info = opened.bootstrap.blobs[0]
    device = expand_blob(opened.blob_path(info), info, tmp_path / "blob-cache-1").path
    digests = {p: inode.chunks[0].digest for p, inode in opened.bootstrap.tree.walk() if inode.chunks}
    with kernel_mount(V1_BOOT, [device]) as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["lib.rs", "sync_io.rs"]
        for name in ("lib.rs", "sync_io.rs"):
            data = (mnt / name).read_bytes()
            assert blake3.blake3(data).digest() == digests[b"/" + name.encode()]
        assert (mnt / "lib.rs").stat().st_mtime_ns == 1676819553_628661334
    fsck = need_tool("fsck.erofs")
    out = tmp_path / "extract"
    subprocess.run([fsck, f"--device={device}", f"--extract={out}", str(V1_BOOT)], check=True,
                   capture_output=True)
    for name in ("lib.rs", "sync_io.rs"):
        assert blake3.blake3((out / name).read_bytes()).digest() == digests[b"/" + name.encode()]
