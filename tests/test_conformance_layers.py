"""Issue 12, items 1, 3, 4 and the ACL paragraph: layer inputs real tools write (umoci, GNU tar, overlayfs, setfacl)
build into images whose kernel mount equals what `umoci unpack`, `tar x`, overlayfs or mkfs.erofs show, and
malformed ones end in exit 2 with one line naming the input.

1. Whiteout and opaque markers below a path the same layer makes a non-directory are redundant: ignored.
3. Hardlinks of every type (fifo, char and block devices, sockets, symlinks) are one inode with nlink = the
   group's size, from directory, overlay and tar sources, through merge and through unpack.
4. A whiteout of an empty name, '.' or '..' is an error naming the layer and the entry.
ACL: a POSIX ACL xattr value the kernel would refuse is an error naming the file, from every source kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.bad_inputs import entry, tar_bytes
from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import kernel_mount, mount_output, need_mount, need_tool
from tests.format.test_golden import ACL_ACCESS_GOLDEN, ACL_DEFAULT_GOLDEN
from tests.layers import OverlayStack

Member = tuple[tarfile.TarInfo, bytes | None]


def build(*args: str) -> int:
    return main(["build", *args, "--jobs", "1"])


def assert_one_line_error(status: int, capsys: pytest.CaptureFixture[str], *named: str) -> str:
    """Exit 2, one line on stderr, no traceback, naming every string in `named`."""
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("nydus-py: ") and "Traceback" not in err, err
    for name in named:
        assert name in err, (name, err)
    return err


def link_groups(root: Path) -> list[list[str]]:
    """Hardlink groups of every non-directory type (tests/compare.py compares regular files only)."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(path.relative_to(root).as_posix())
    return sorted(group for group in by_inode.values() if len(group) > 1)


def assert_group(root: Path, names: list[str]) -> None:
    """`names` are one inode whose link count is exactly the group's size."""
    stats = [os.lstat(root / name) for name in names]
    assert len({(st.st_dev, st.st_ino) for st in stats}) == 1, names
    assert [st.st_nlink for st in stats] == [len(names)] * len(names)


def tar_file(path: Path, *members: Member) -> Path:
    path.write_bytes(tar_bytes(*members))
    return path


@contextlib.contextmanager
def built_and_mounted(layers: list[Path], out: Path, *options: str) -> Iterator[Path]:
    """Build `layers` into `out` and mount the result (the blobs expanded inside `out`)."""
    assert build(*map(str, layers), "-o", str(out), *options) == 0
    with mount_output(out / "bootstrap", out / "blobs" / "sha256", out) as mnt:
        yield mnt


# --- 1. markers below a non-directory of the same layer -------------------------------------------------------

LOWER = (entry("d", None, tarfile.DIRTYPE, mode=0o755), entry("d/a", b"a"),
         entry("d/sub", None, tarfile.DIRTYPE, mode=0o755), entry("d/sub/s", b"s"), entry("keep", b"keep"))


def _node(name: str, kind: str) -> Member:
    """A non-directory member of `kind` named `name`."""
    return {
        "file": lambda: entry(name, b"x"),
        "symlink": lambda: entry(name, None, tarfile.SYMTYPE, "elsewhere", mode=0o777),
        "char device": lambda: entry(name, None, tarfile.CHRTYPE, devmajor=1, devminor=3),
        "block device": lambda: entry(name, None, tarfile.BLKTYPE, devmajor=7, devminor=0),
        "fifo": lambda: entry(name, None, tarfile.FIFOTYPE),
    }[kind]()


def _expect_node(path: Path, kind: str) -> None:
    """What `tar x` makes of `_node(..., kind)`."""
    if kind == "file":
        path.write_bytes(b"x")
    elif kind == "symlink":
        os.symlink("elsewhere", path)
    elif kind == "char device":
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    elif kind == "block device":
        os.mknod(path, stat.S_IFBLK | 0o644, os.makedev(7, 0))
    else:
        os.mkfifo(path, 0o644)
    if kind != "symlink":
        os.chmod(path, 0o644)


def expected_view(root: Path, d_kind: str) -> Path:
    """The merged view of LOWER and an upper layer that made `d` a `d_kind`: `keep` and `d` only."""
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "keep").write_bytes(b"keep")
    os.chmod(root / "keep", 0o644)
    _expect_node(root / "d", d_kind)
    return root


UPPERS: dict[str, tuple[str, list[Member]]] = {  # case -> (what d becomes, the upper layer's members)
    "whiteouts below a file": ("file", [_node("d", "file"), entry("d/.wh.a"), entry("d/.wh.sub")]),
    "opaque marker below a file": ("file", [_node("d", "file"), entry("d/.wh..wh..opq")]),
    "whiteout below a symlink": ("symlink", [_node("d", "symlink"), entry("d/.wh.a")]),
    "whiteout below a char device": ("char device", [_node("d", "char device"), entry("d/.wh.a")]),
    "whiteout below a block device": ("block device", [_node("d", "block device"), entry("d/.wh.a")]),
    "whiteout below a fifo": ("fifo", [_node("d", "fifo"), entry("d/.wh.a"), entry("d/.wh..wh..opq")]),
    "markers nested deeper": ("file", [_node("d", "file"), entry("d/sub/.wh.s"), entry("d/sub/x/.wh..wh..opq"),
                                       entry("d/sub/x/y/.wh.z")]),
    "markers before the file": ("file", [entry("d/.wh.a"), entry("d/sub/.wh.s"), _node("d", "file")]),
}


@pytest.mark.parametrize("case", list(UPPERS))
def test_markers_below_a_non_directory_of_the_same_layer(tmp_path: Path, case: str) -> None:
    need_mount()
    d_kind, upper = UPPERS[case]
    lower = tar_file(tmp_path / "lower.tar", *LOWER)
    expected = expected_view(tmp_path / "expected", d_kind)
    with built_and_mounted([lower, tar_file(tmp_path / "upper.tar", *upper)], tmp_path / "out") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["d", "keep"]
        assert differences(expected, mnt, mtime=False) == []


def test_marker_below_a_hardlink_of_the_same_layer(tmp_path: Path) -> None:
    need_mount()
    lower = tar_file(tmp_path / "lower.tar", *LOWER)
    upper = tar_file(tmp_path / "upper.tar", entry("f", b"linked"), entry("d", None, tarfile.LNKTYPE, "f"),
                     entry("d/.wh.a"))
    with built_and_mounted([lower, upper], tmp_path / "out") as mnt:
        assert (mnt / "d").read_bytes() == b"linked" and not (mnt / "d").is_dir()
        assert_group(mnt, ["d", "f"])


def test_overlayfs_whiteout_below_a_file_in_a_tar(tmp_path: Path) -> None:
    """With `--whiteout-spec overlayfs` a tar's whiteout is a char device 0:0: below a file, a no-op as well."""
    need_mount()
    lower = tar_file(tmp_path / "lower.tar", *LOWER)
    upper = tar_file(tmp_path / "upper.tar", _node("d", "file"),
                     entry("d/a", None, tarfile.CHRTYPE, devmajor=0, devminor=0))
    with built_and_mounted([lower, upper], tmp_path / "out", "--whiteout-spec", "overlayfs") as mnt:
        assert differences(expected_view(tmp_path / "expected", "file"), mnt, mtime=False) == []


@pytest.mark.parametrize(("above", "below"), [("file", "d/b"), ("file", "d/sub/b"), ("fifo", "d/b"),
                                              ("symlink", "d/b"), ("char device", "d/sub/.wh.x/b")])
def test_ordinary_entries_below_a_non_directory_stay_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            above: str, below: str) -> None:
    layer = tar_file(tmp_path / "upper.tar", _node("d", above), entry("d/.wh.a"), entry(below, b"b"))
    assert_one_line_error(build(str(layer), "-o", str(tmp_path / "out")), capsys, str(layer), repr(below))
    assert not (tmp_path / "out").exists()


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def test_umoci_directory_turned_into_a_file(tmp_path: Path) -> None:
    """The reported case, made by real umoci: its repack writes `d` (a file) and then `d/.wh.a`, `d/.wh.sub`.
    The mount equals `umoci unpack` of the same image."""
    need_mount()
    umoci = need_tool("umoci")
    image = tmp_path / "image"
    _run(umoci, "init", "--layout", str(image))
    _run(umoci, "new", "--image", f"{image}:t")
    _run(umoci, "unpack", "--image", f"{image}:t", str(tmp_path / "b1"))
    (tmp_path / "b1" / "rootfs" / "d" / "sub").mkdir(parents=True)
    (tmp_path / "b1" / "rootfs" / "d" / "a").write_bytes(b"a")
    (tmp_path / "b1" / "rootfs" / "d" / "sub" / "s").write_bytes(b"s")
    _run(umoci, "repack", "--image", f"{image}:t", str(tmp_path / "b1"))
    _run(umoci, "unpack", "--image", f"{image}:t", str(tmp_path / "b2"))
    shutil.rmtree(tmp_path / "b2" / "rootfs" / "d")
    (tmp_path / "b2" / "rootfs" / "d").write_bytes(b"x")
    _run(umoci, "repack", "--image", f"{image}:t", str(tmp_path / "b2"))
    _run(umoci, "unpack", "--image", f"{image}:t", str(tmp_path / "truth"))

    blobs = image / "blobs" / "sha256"
    index = json.loads((image / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    layers = [blobs / layer["digest"].split(":")[1] for layer in manifest["layers"]]
    top = subprocess.run(["tar", "-tzf", str(layers[-1])], check=True, capture_output=True, text=True).stdout.split()
    assert "d" in top and "d/.wh.a" in top  # what umoci wrote: markers below the new file
    with built_and_mounted(layers, tmp_path / "out") as mnt:
        assert (mnt / "d").read_bytes() == b"x"
        assert differences(tmp_path / "truth" / "rootfs", mnt) == []


def test_overlay_upper_dir_cannot_hold_markers_below_a_file(tmp_path: Path) -> None:
    """Overlay sources cannot express item 1: turning a directory into a file leaves only the file in the upper
    directory (a file has no entries). The build equals overlayfs's own view."""
    need_mount()
    (tmp_path / "stack").mkdir()
    stack = OverlayStack(tmp_path / "stack")

    def lower(m: Path) -> None:
        (m / "d" / "sub").mkdir(parents=True)
        (m / "d" / "a").write_bytes(b"a")
        (m / "d" / "sub" / "s").write_bytes(b"s")

    def upper(m: Path) -> None:
        shutil.rmtree(m / "d")
        (m / "d").write_bytes(b"x")

    stack.add_layer(lower)
    top = stack.add_layer(upper)
    assert (top / "d").is_file() and [p.name for p in top.iterdir()] == ["d"]
    with built_and_mounted(stack.uppers, tmp_path / "out") as mnt, stack.view() as view:
        assert (mnt / "d").read_bytes() == b"x"
        assert differences(view, mnt) == []


# --- 3. hardlinks of every type -----------------------------------------------------------------------------

KINDS = ["fifo", "char device", "block device", "socket", "symlink"]
GROUP = ["a/n", "b/n2", "b/n3"]


def make_node(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path, 0o640)
    elif kind == "char device":
        os.mknod(path, stat.S_IFCHR | 0o640, os.makedev(1, 3))
    elif kind == "block device":
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o755)
    else:
        os.symlink("../target", path)


def make_group(root: Path, kind: str) -> Path:
    """a/n linked as b/n2 and b/n3, beside a/solo of the same kind that is linked to nothing."""
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "b").mkdir(exist_ok=True)
    make_node(root / "a" / "n", kind)
    make_node(root / "a" / "solo", kind)
    for name in GROUP[1:]:
        os.link(root / GROUP[0], root / name, follow_symlinks=False)
    return root


def assert_same_links(source: Path, mnt: Path) -> None:
    assert differences(source, mnt) == []
    assert link_groups(mnt) == link_groups(source) == [GROUP]
    assert_group(mnt, GROUP)
    assert os.lstat(mnt / "a" / "solo").st_nlink == 1


@pytest.mark.parametrize("kind", KINDS)
def test_hardlinks_of_every_type_from_a_directory(tmp_path: Path, kind: str) -> None:
    """One nid, nlink 3, as the source shows it and as mkfs.erofs builds the same tree."""
    need_mount()
    src = make_group(tmp_path / "src", kind)
    with built_and_mounted([src], tmp_path / "out") as mnt:
        assert_same_links(src, mnt)
    assert main(["check", str(tmp_path / "out")]) == 0  # its link-count rule agrees
    mkfs = need_tool("mkfs.erofs")
    _run(mkfs, str(tmp_path / "mkfs.img"), str(src))
    with kernel_mount(tmp_path / "mkfs.img", []) as peer:
        assert link_groups(peer) == [GROUP]


@pytest.mark.parametrize("kind", KINDS)
def test_hardlinks_of_every_type_from_an_overlay_upper_dir(tmp_path: Path, kind: str) -> None:
    """The group is made through an overlayfs mount, so it lands in the upper directory as a snapshotter
    records it; the build equals overlayfs's view."""
    need_mount()
    (tmp_path / "stack").mkdir()
    stack = OverlayStack(tmp_path / "stack")

    def links(m: Path) -> None:
        make_group(m, kind)

    stack.add_layer(lambda m: (m / "base").write_bytes(b"base") and None)
    upper = stack.add_layer(links)
    assert link_groups(upper) == [GROUP]
    with built_and_mounted(stack.uppers, tmp_path / "out") as mnt, stack.view() as view:
        assert_same_links(view, mnt)


def _tar_group(kind: str) -> list[Member]:
    """A tar whose hardlink entries point at a `kind` (what `tar x` links into one inode)."""
    when = {"mtime": 1_700_000_000}
    first = {"fifo": entry(GROUP[0], None, tarfile.FIFOTYPE, mode=0o640, **when),
             "char device": entry(GROUP[0], None, tarfile.CHRTYPE, mode=0o640, devmajor=1, devminor=3, **when),
             "block device": entry(GROUP[0], None, tarfile.BLKTYPE, mode=0o600, devmajor=7, devminor=0, **when),
             "symlink": entry(GROUP[0], None, tarfile.SYMTYPE, "../target", mode=0o777, **when)}[kind]
    return [entry("a", None, tarfile.DIRTYPE, mode=0o755, **when), entry("b", None, tarfile.DIRTYPE, mode=0o755, **when),
            first, *(entry(name, None, tarfile.LNKTYPE, GROUP[0], **when) for name in GROUP[1:])]


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "socket"])  # a tar cannot hold a socket
def test_tar_hardlink_entries_to_every_type(tmp_path: Path, kind: str) -> None:
    """The mount equals `tar x` of the same layer, link groups included."""
    need_mount()
    layer = tar_file(tmp_path / "layer.tar", *_tar_group(kind))
    (tmp_path / "x").mkdir()
    os.chmod(tmp_path / "x", 0o755)
    _run(need_tool("tar"), "-C", str(tmp_path / "x"), "-xpf", str(layer))
    os.utime(tmp_path / "x", ns=(0, 0))  # the layer has no root entry: the image root gets the epoch
    for name in ("a", "b"):  # GNU tar leaves the directories it linked into with the time of extraction
        os.utime(tmp_path / "x" / name, (1_700_000_000, 1_700_000_000))
    with built_and_mounted([layer], tmp_path / "out") as mnt:
        assert differences(tmp_path / "x", mnt) == []
        assert link_groups(mnt) == link_groups(tmp_path / "x") == [GROUP]
        assert_group(mnt, GROUP)


def test_gnu_tar_hardlinked_symlinks(tmp_path: Path) -> None:
    """GNU tar writes a hardlink entry for a hardlinked symlink (fifos and devices it stores apart)."""
    need_mount()
    src = make_group(tmp_path / "src", "symlink")
    layer = tmp_path / "gnu.tar"
    _run(need_tool("tar"), "--format=posix", "--numeric-owner", "-C", str(src), "-cf", str(layer), ".")
    (tmp_path / "x").mkdir()
    _run("tar", "-C", str(tmp_path / "x"), "-xpf", str(layer))
    with built_and_mounted([layer], tmp_path / "out") as mnt:
        assert link_groups(mnt) == link_groups(tmp_path / "x") == [GROUP]
        assert_same_links(src, mnt)


@pytest.mark.parametrize("kind", KINDS)
def test_unpack_keeps_hardlinks_of_every_type(tmp_path: Path, kind: str) -> None:
    """`nydus-py unpack` to a directory keeps the group; to a tar, as hardlink entries `tar x` links again
    (a socket cannot be stored in a tar and is left out)."""
    src = make_group(tmp_path / "src", kind)
    assert build(str(src), "-o", str(tmp_path / "out")) == 0
    assert main(["unpack", str(tmp_path / "out"), "-o", str(tmp_path / "dir")]) == 0
    assert differences(src, tmp_path / "dir") == []
    assert link_groups(tmp_path / "dir") == [GROUP]
    assert_group(tmp_path / "dir", GROUP)
    assert main(["unpack", str(tmp_path / "out"), "-o", str(tmp_path / "out.tar")]) == 0
    with tarfile.open(tmp_path / "out.tar") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.islnk()}
    (tmp_path / "x").mkdir()
    _run(need_tool("tar"), "-C", str(tmp_path / "x"), "-xpf", str(tmp_path / "out.tar"))
    if kind == "socket":
        assert links == {} and not (tmp_path / "x" / "a" / "n").exists()
        return
    assert links == {"b/n2": "a/n", "b/n3": "a/n"}
    assert link_groups(tmp_path / "x") == [GROUP]
    assert_group(tmp_path / "x", GROUP)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_keeps_hardlinks_of_every_type(tmp_path: Path, kind: str) -> None:
    """Layer blobs read back (bootstrap reader) and merged by `nydus-py merge`: the group stays one nid, and a
    whiteout of one link in the upper layer leaves the others linked with nlink 2."""
    need_mount()
    src = make_group(tmp_path / "src", kind)
    upper = tar_file(tmp_path / "upper.tar", entry("b/.wh.n3"), entry("b/data", b"some data"))
    store = tmp_path / "blobs"
    store.mkdir()
    blobs = []
    for name, layer in (("lower", src), ("upper", upper)):
        report = tmp_path / f"{name}.json"
        assert build(str(layer), "-o", str(tmp_path / name), "--output-json", str(report)) == 0
        blob = Path(json.loads(report.read_text())["layers"][0]["path"])
        blobs.append(str(shutil.copy(blob, store / blob.name)))
    assert main(["merge", blobs[0], "-o", str(tmp_path / "one")]) == 0
    with mount_output(tmp_path / "one" / "bootstrap", store, tmp_path / "one") as mnt:
        assert_same_links(src, mnt)
    assert main(["merge", *blobs, "-o", str(tmp_path / "two")]) == 0
    with mount_output(tmp_path / "two" / "bootstrap", store, tmp_path / "two") as mnt:
        assert link_groups(mnt) == [GROUP[:2]]
        assert_group(mnt, GROUP[:2])


# --- 4. whiteouts of '', '.' and '..' ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["etc/.wh.", ".wh.", "etc/.wh..", "etc/.wh..."])
def test_void_whiteouts_in_a_tar(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    lower = tar_file(tmp_path / "lower.tar", entry("etc", None, tarfile.DIRTYPE), entry("etc/passwd", b"root"))
    upper = tar_file(tmp_path / "upper.tar", entry("etc", None, tarfile.DIRTYPE), entry(name), entry("new", b"n"))
    status = build(str(lower), str(upper), "-o", str(tmp_path / "out"))
    assert_one_line_error(status, capsys, str(upper), repr(name), "whiteout must name an entry")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh..."])
@pytest.mark.parametrize("spec", ["oci", "auto"])
def test_void_whiteouts_in_a_directory_source(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                              spec: str) -> None:
    """The directory equivalent: with `--whiteout-spec oci` such a file would be the same whiteout; as an overlay
    upper directory (auto) no `.wh.*` file is accepted at all."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / name).write_bytes(b"")
    status = build(str(src), "-o", str(tmp_path / "out"), "--whiteout-spec", spec)
    assert_one_line_error(status, capsys, str(src / "etc" / name))


# --- ACL xattrs --------------------------------------------------------------------------------------------

def _acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return version.to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + i.to_bytes(4, "little") for tag, perm, i in entries)


NO_ID = 0xFFFFFFFF
BAD_ACLS = {  # kind of malformation -> (value, words of the message)
    "empty value": (b"", "0 bytes"),
    "header only": (_acl(), "lacks"),
    "partial entry": (ACL_ACCESS_GOLDEN[:-3], "entries"),
    "version 1": (_acl((1, 6, NO_ID), (4, 4, NO_ID), (0x20, 4, NO_ID), version=1), "version"),
    "unknown tag": (_acl((1, 6, NO_ID), (0x40, 4, NO_ID), (4, 4, NO_ID), (0x20, 4, NO_ID)), "tag 0x40"),
    "permission beyond rwx": (_acl((1, 0o17, NO_ID), (4, 4, NO_ID), (0x20, 4, NO_ID)), "permission"),
    "named user with no id": (_acl((1, 6, NO_ID), (2, 4, NO_ID), (4, 4, NO_ID), (0x10, 4, NO_ID), (0x20, 4, NO_ID)),
                              "invalid id"),
    "out of order": (_acl((4, 4, NO_ID), (1, 6, NO_ID), (0x20, 4, NO_ID)), "out of order"),
    "two owners": (_acl((1, 6, NO_ID), (1, 6, NO_ID), (4, 4, NO_ID), (0x20, 4, NO_ID)), "out of order"),
    "no OTHER": (_acl((1, 6, NO_ID), (4, 4, NO_ID)), "lacks"),
    "named group without MASK": (_acl((1, 6, NO_ID), (4, 4, NO_ID), (8, 4, 100), (0x20, 4, NO_ID)), "MASK"),
}


def _pax_acl(name: str, key: str, value: bytes) -> Member:
    info, data = entry(name, b"f")
    info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")}
    return info, data


@pytest.mark.parametrize("case", list(BAD_ACLS))
def test_malformed_acl_in_a_tar(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    value, words = BAD_ACLS[case]
    key = "system.posix_acl_default" if case == "no OTHER" else "system.posix_acl_access"
    layer = tar_file(tmp_path / "layer.tar", entry("dir", None, tarfile.DIRTYPE), _pax_acl("dir/f", key, value))
    status = build(str(layer), "-o", str(tmp_path / "out"))
    assert_one_line_error(status, capsys, str(layer), "'dir/f'", key, words)
    assert not (tmp_path / "out").exists()


def test_valid_acls_reach_the_mount(tmp_path: Path) -> None:
    """ACLs setfacl made, from a directory and from a tar (as SCHILY.xattr records): the kernel reads them back."""
    need_mount()
    setfacl = need_tool("setfacl")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    os.chmod(src / "f", 0o644)
    _run(setfacl, "-m", "u:1000:rx,g:100:r,m:rwx", str(src / "f"))
    _run(setfacl, "-d", "-m", "u::rwx,g::r-x,o::-,u:4242:rw", str(src / "d"))
    layer = tar_file(tmp_path / "layer.tar", _pax_acl("f", "system.posix_acl_access", ACL_ACCESS_GOLDEN))
    for name, source in (("dir", src), ("tar", layer)):
        with built_and_mounted([source], tmp_path / name) as mnt:
            assert os.getxattr(mnt / "f", "system.posix_acl_access") == ACL_ACCESS_GOLDEN
            if name == "dir":
                assert os.getxattr(mnt / "d", "system.posix_acl_default") == ACL_DEFAULT_GOLDEN


@pytest.mark.parametrize("spec", ["none", "auto"])  # a plain directory; an overlay upper directory
def test_malformed_acl_in_a_directory_source(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    """Local filesystems refuse a bad ACL when it is set, so the source here is a real file with a real ACL whose
    value reads back damaged, as a FUSE or network filesystem could hand it over."""
    setfacl = need_tool("setfacl")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"f")
    _run(setfacl, "-m", "u:1000:rx", str(src / "sub" / "f"))
    real_getxattr = os.getxattr

    def damaged(path: object, attribute: str, *args: object, **kwargs: object) -> bytes:
        value = real_getxattr(path, attribute, *args, **kwargs)  # type: ignore[arg-type]
        return value[:-1] if attribute == "system.posix_acl_access" else value

    monkeypatch.setattr(os, "getxattr", damaged)
    status = build(str(src), "-o", str(tmp_path / "out"), "--whiteout-spec", spec)
    assert_one_line_error(status, capsys, str(src / "sub" / "f"), "system.posix_acl_access")
    assert not (tmp_path / "out").exists()


def test_malformed_acl_in_a_merged_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer blob from a tool that does not check ACLs (made here with the checks turned off) cannot be
    merged into a bootstrap the kernel would refuse."""
    import nydus_py.bootstrap.layout
    import nydus_py.sources.tarball

    value, _ = BAD_ACLS["out of order"]
    layer = tar_file(tmp_path / "layer.tar", _pax_acl("f", "system.posix_acl_access", value))
    with monkeypatch.context() as patched:
        for module in (nydus_py.bootstrap.layout, nydus_py.sources.tarball):
            patched.setattr(module, "acl_xattrs_problem", lambda xattrs: None)
        assert main(["build", str(layer), "-o", str(tmp_path / "foreign"), "--output-json",
                     str(tmp_path / "foreign.json")]) == 0
    blob = json.loads((tmp_path / "foreign.json").read_text())["layers"][0]["path"]
    capsys.readouterr()
    status = main(["merge", blob, "-o", str(tmp_path / "merged")])
    assert_one_line_error(status, capsys, "/f", "system.posix_acl_access", "out of order")
    assert not (tmp_path / "merged").exists()
