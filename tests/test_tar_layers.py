"""OCI layer tars: what GNU tar and Python's tarfile write (PAX, GNU long names, sparse members, xattrs,
hardlinks, devices) builds to the source tree; broken tars are one-line errors with nothing left behind."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import pyzstd

from fixtures.trees import fix_times
from nydus_py.cli.main import main
from nydus_py.read.locate import open_image
from tests.compare import differences
from tests.conftest import mount_output, need_mount, need_tool


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    need_mount()
    src = tmp_path / "src"
    deep = src / ("long-directory-name-" * 8) / ("another-long-component-" * 8)
    deep.mkdir(parents=True)
    (deep / ("file-with-a-very-long-name-" * 5)).write_bytes(b"long path")
    (src / "bin.txt").write_bytes(b"text")
    os.setxattr(src / "bin.txt", "user.binary", bytes(range(256)))
    os.setxattr(src / "bin.txt", "security.capability", bytes.fromhex("0100000200200000000000000000000000000000"))
    os.symlink("bin.txt", src / "link")
    os.link(src / "bin.txt", src / "hard")
    os.mknod(src / "chr", 0o600 | 0o020000, os.makedev(5, 1))
    os.mknod(src / "blk", 0o600 | 0o060000, os.makedev(8, 0))
    os.mkfifo(src / "fifo")
    with open(src / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"middle")
        f.truncate(9 << 20)
    (src / "owned").write_bytes(b"owned")
    os.chown(src / "owned", 1234, 4321)
    fix_times(src)
    return src


def build(*args: str) -> int:
    return main(["build", *args])


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_with_sparse_members_and_xattrs(source: Path, tmp_path: Path, fmt: str) -> None:
    tar = need_tool("tar")
    layer = tmp_path / "layer.tar"
    subprocess.run([tar, f"--format={fmt}", "--sparse", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "-C", str(source), "-cf", str(layer), "."], check=True)
    assert build(str(layer), "-o", str(tmp_path / "out")) == 0
    with mount_output(tmp_path / "out" / "bootstrap", tmp_path / "out" / "blobs" / "sha256", tmp_path) as mnt:
        # GNU format keeps whole-second mtimes and no xattrs; PAX keeps both
        diffs = differences(source, mnt, mtime=fmt == "posix", xattrs=fmt == "posix")
        assert diffs == []
    sparse = open_image(tmp_path / "out").bootstrap.tree.lookup(b"/sparse")
    assert sparse.size == 9 << 20


def test_python_tarfile_pax_fractional_mtime(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("/abs/file")  # absolute: taken relative to the root
        info.size = 3
        info.mtime = 1700000000
        info.pax_headers = {"mtime": "1700000000.123456789", "SCHILY.xattr.user.v": "\udcff\x00bin\udc80"}
        tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("abs/sym")
        link.type, link.linkname = tarfile.SYMTYPE, "file"
        tar.addfile(link)
        hard = tarfile.TarInfo("abs/hard-to-symlink")
        hard.type, hard.linkname = tarfile.LNKTYPE, "abs/sym"
        tar.addfile(hard)
    (tmp_path / "l.tar").write_bytes(buffer.getvalue())
    assert build(str(tmp_path / "l.tar"), "-o", str(tmp_path / "out")) == 0
    tree = open_image(tmp_path / "out").bootstrap.tree
    f = tree.lookup(b"/abs/file")
    assert (f.mtime, f.mtime_nsec, f.xattrs) == (1700000000, 123456789, {b"user.v": b"\xff\x00bin\x80"})
    assert tree.lookup(b"/abs/hard-to-symlink") is tree.lookup(b"/abs/sym")  # one inode, as `tar x` links it
    assert tree.lookup(b"/abs").mode & 0o777 == 0o755  # an implicit parent


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if data is not None else 0
    return info, data


def pax(member: tuple, **records: str) -> tuple:
    info, data = member
    info.pax_headers = dict(records)
    return info, data


def device(major: int, minor: int) -> tuple:
    info, _ = entry("dev", None, tarfile.CHRTYPE)
    info.devmajor, info.devminor = major, minor
    return info, None


GOOD = tar_bytes(entry("a/b", b"x" * 100000))
BAD_TARS = {
    "truncated gzip": gzip.compress(GOOD)[:-40],
    "truncated zstd": pyzstd.compress(GOOD)[:-40],
    "corrupt header": GOOD[:148] + b"99999999" + GOOD[156:],
    "dotdot name": tar_bytes(entry("../escape")),
    "dotdot inside": tar_bytes(entry("a/../../escape")),
    "hardlink to missing": tar_bytes(entry("link", None, tarfile.LNKTYPE, "missing")),
    "hardlink to a later entry": tar_bytes(entry("link", None, tarfile.LNKTYPE, "later"), entry("later")),
    "hardlink to a directory": tar_bytes(entry("d", None, tarfile.DIRTYPE), entry("l", None, tarfile.LNKTYPE, "d")),
    "entry below a symlink": tar_bytes(entry("a", None, tarfile.SYMTYPE, "/etc"), entry("a/passwd")),
    "truncated data": GOOD[:1024],
    "not a tar": b"this is not a tar file at all" * 40,
    "mtime not a number": tar_bytes(pax(entry("f"), mtime="nan")),
    "mtime infinite": tar_bytes(pax(entry("f"), mtime="inf")),
    "mtime beyond 64 bits": tar_bytes(pax(entry("f"), mtime=str(1 << 64))),
    "mtime far before 1970": tar_bytes(pax(entry("f"), mtime="-1e30")),
    "device beyond 12:20 bits": tar_bytes(device(2097151, 5)),
    "hardlink into a directory the layer replaced": tar_bytes(entry("d", None, tarfile.DIRTYPE), entry("d/f"),
                                                              entry("d"), entry("l", None, tarfile.LNKTYPE, "d/f")),
}


@pytest.mark.parametrize("name", list(BAD_TARS))
def test_bad_tars(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    (tmp_path / "bad").write_bytes(BAD_TARS[name])
    status = build(str(tmp_path / "bad"), "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("nydus-py: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_name_thousands_of_components_deep(tmp_path: Path) -> None:
    """No parent entries, 3000 components (6 KB of path): the missing parents are made without recursion."""
    name = "/".join(["d"] * 3000) + "/f"
    (tmp_path / "deep.tar").write_bytes(tar_bytes(entry(name, b"deep")))
    assert build(str(tmp_path / "deep.tar"), "-o", str(tmp_path / "out")) == 0
    tree = open_image(tmp_path / "out").bootstrap.tree
    assert tree.lookup(("/" + name).encode()) is not None


def test_devices_and_times_at_the_edges_of_what_rafs_stores(tmp_path: Path) -> None:
    (tmp_path / "edge.tar").write_bytes(tar_bytes(device(4095, 1048575), pax(entry("old"), mtime="-4000000000.5"),
                                                  pax(entry("late"), mtime=str((1 << 63) - 1))))
    assert build(str(tmp_path / "edge.tar"), "-o", str(tmp_path / "out")) == 0
    tree = open_image(tmp_path / "out").bootstrap.tree
    dev, old, late = (tree.lookup(p) for p in (b"/dev", b"/old", b"/late"))
    assert dev is not None and (os.major(dev.rdev), os.minor(dev.rdev)) == (4095, 1048575)
    assert old is not None and (old.mtime, old.mtime_nsec) == (-4000000001, 500000000)
    assert late is not None and late.mtime == (1 << 63) - 1
    assert main(["inspect", str(tmp_path / "out")]) == 0  # a time the C library cannot show is still listed


def test_empty_tar_is_an_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "empty.tar").write_bytes(tar_bytes())
    assert build(str(tmp_path / "empty.tar"), "-o", str(tmp_path / "out")) == 0
    assert [p for p, _ in open_image(tmp_path / "out").bootstrap.tree.walk()] == [b"/"]


def test_a_file_then_a_directory_of_one_name_in_a_layer_hides_the_lower_directory(tmp_path: Path) -> None:
    """Extraction removes the lower `x/` for the file `x`, then makes a new, empty `x/` (containerd's applier
    does so): the layer's directory is opaque."""
    (tmp_path / "lower.tar").write_bytes(tar_bytes(entry("x", None, tarfile.DIRTYPE), entry("x/lower")))
    (tmp_path / "upper.tar").write_bytes(tar_bytes(entry("x", b"file first"), entry("x", None, tarfile.DIRTYPE),
                                                   entry("x/y")))
    assert build(str(tmp_path / "lower.tar"), str(tmp_path / "upper.tar"), "-o", str(tmp_path / "out")) == 0
    tree = open_image(tmp_path / "out").bootstrap.tree
    assert [p for p, _ in tree.walk()] == [b"/", b"/x", b"/x/y"]


@pytest.mark.parametrize(("key", "says"), [("SCHILY.xattr.os2.foo", "has a prefix RAFS cannot store"),
                                          ("SCHILY.xattr.user.", "has no name after its prefix")])
def test_xattr_errors_name_the_layer_and_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                                   says: str) -> None:
    (tmp_path / "x.tar").write_bytes(tar_bytes(pax(entry("f"), **{key: "v"})))
    assert build(str(tmp_path / "x.tar"), "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nydus-py: {tmp_path / 'x.tar'}: /f: xattr") and says in err and err.count("\n") == 1
