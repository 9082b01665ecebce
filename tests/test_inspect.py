"""nydus_py/read/inspect.py: what `inspect` shows of an image: tables, flags, the listing of a path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.model import FileKind, Inode
from nydus_py.read.inspect import listing_line


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_inspect_shows_tables_and_path(corpus_image: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, image = corpus_image
    status, out, _ = run(capsys, "inspect", str(image), "/symlinks", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["prefetch_nids"] == [doc["root_nid"]]
    assert doc["blobs"][0]["feature_names"] == ["ALIGNED", "INLINED_CHUNK_DIGEST", "HAS_TAR_HEADER", "HAS_TOC",
                                                "CAP_TAR_TOC"]
    assert any(line.endswith("/symlinks/short -> target") for line in doc["listing"])
    assert all("/symlinks" in line for line in doc["listing"])


def test_a_listing_line_is_ls_l_shaped() -> None:
    device = Inode(kind=FileKind.CHR, mode=stat.S_IFCHR | 0o620, uid=0, gid=5, mtime=86400, mtime_nsec=7,
                   rdev=os.makedev(4, 1), xattrs={b"user.a": b"b"})
    assert listing_line(b"/dev/tty1", device, 1) == (
        "crw--w----@   1      0      5       4, 1 1970-01-02 00:00:00.000000007 /dev/tty1")
    link = Inode(kind=FileKind.SYMLINK, mode=stat.S_IFLNK | 0o777, size=6, symlink_target=b"target")
    assert listing_line(b"/l", link, 2).endswith("/l -> target")


def test_an_mtime_the_c_library_cannot_show_is_seconds() -> None:
    far = Inode(kind=FileKind.REG, mode=stat.S_IFREG | 0o644, mtime=(1 << 62))
    assert f"@{1 << 62}." in listing_line(b"/f", far, 1)
