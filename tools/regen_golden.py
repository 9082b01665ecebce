#!/usr/bin/env python3
"""Rebuild fixtures/golden/ with the real tools that made it (Debian erofs-utils 1.5 `mkfs.erofs`).

The golden images give real bytes for EROFS structures the nydus fixtures lack: compact inodes, inline
xattrs, EROFS chunk indexes and a device slot written by mkfs.erofs itself. Run as root (it sets owners).
Usage: python3 tools/regen_golden.py [OUTDIR]   (default: fixtures/golden)
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

UUID = "6e796475-732d-7079-2d67-6f6c64656e21"  # fixed so the bytes are reproducible


def make_tree(root: Path) -> None:
    """The source tree; tests assert these facts against what they parse from the images."""
    (root / "dir").mkdir()
    (root / "small").write_bytes(b"hello golden\n")
    os.setxattr(root / "small", "user.comment", b"golden")
    os.setxattr(root / "small", "trusted.bin", bytes([0, 1, 2, 255]))
    (root / "bigowner").write_bytes(b"x" * 100)
    os.chown(root / "bigowner", 70000, 70001)  # beyond 16 bits: forces an extended inode
    (root / "chunked").write_bytes(bytes(range(256)) * 48)  # 12288 bytes = 3 chunks of 4 KiB
    os.symlink("small", root / "link")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "fixtures" / "golden")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        make_tree(src)
        plain = Path(tmp) / "plain.img"
        run(["mkfs.erofs", "-T0", f"-U{UUID}", "-x1", str(plain), str(src)])
        chunked = Path(tmp) / "chunked.img"
        blob = Path(tmp) / "blob.img"
        run(["mkfs.erofs", "-T0", f"-U{UUID}", "-x1", "--chunksize=4096", f"--blobdev={blob}", str(chunked),
             str(src)])
        for name, path in (("mkfs-erofs-plain.img.gz", plain), ("mkfs-erofs-blobdev.img.gz", chunked),
                           ("mkfs-erofs-blobdev.blob.gz", blob)):
            (out / name).write_bytes(gzip.compress(path.read_bytes(), mtime=0))
            print(f"{out / name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
