"""nydus_py.build.overlay: the whiteout rules, on small in-memory layer trees (no files, no builds).

The end-to-end layer tests (test_layers.py, test_tar_layers.py) check the same rules through real
sources and a kernel mount; these pin each rule alone.
"""

from __future__ import annotations

import io
import stat
import tarfile

import pytest

from nydus_py.sources import WhiteoutSpec
from nydus_py.model import OPAQUE_MARKER, Entry, FileKind, Inode, Tree, new_directory, new_marker
from nydus_py.build.overlay import apply_layer, merge_layers
from nydus_py.sources.tarball import TarSource


def file(data: bytes = b"", mode: int = 0o644) -> Inode:
    return Inode(kind=FileKind.REG, mode=stat.S_IFREG | mode, size=len(data))


def directory(mode: int = 0o750, mtime: int = 1, **children: Inode) -> Inode:
    """A directory with non-default attributes (mode 0750, mtime 1) unless told otherwise."""
    inode = new_directory(mode, mtime=mtime)
    inode.entries = [Entry(name=name.encode(), inode=child) for name, child in sorted(children.items())]
    return inode


def tree(**children: Inode) -> Tree:
    return Tree(root=directory(**children))


def marker_dir(names: list[bytes], **children: Inode) -> Inode:
    """A directory holding the given marker names (`.wh.x`, OPAQUE_MARKER) and children."""
    inode = directory(**children)
    inode.entries = sorted([*inode.entries, *(Entry(name=n, inode=new_marker()) for n in names)], key=lambda e: e.name)
    return inode


def names(t: Tree, path: bytes = b"/") -> list[bytes]:
    inode = t.lookup(path)
    assert inode is not None
    return [e.name for e in inode.entries]


def test_oci_whiteout_removes_the_lower_entry() -> None:
    lower = tree(a=file(), b=file())
    upper = Tree(root=marker_dir([b".wh.a"]))
    assert names(apply_layer(lower, upper)) == [b"b"]


def test_opaque_marker_hides_every_lower_entry_of_its_directory() -> None:
    lower = tree(d=directory(x=file(), y=file()))
    upper = tree(d=marker_dir([OPAQUE_MARKER], z=file()))
    assert names(apply_layer(lower, upper), b"/d") == [b"z"]


def test_whiteout_and_new_entry_in_one_layer_replace() -> None:
    lower = tree(a=directory(old=file()))
    replacement = file(b"new")
    upper = Tree(root=marker_dir([b".wh.a"], a=replacement))
    merged = apply_layer(lower, upper)
    assert merged.lookup(b"/a") is replacement


def test_file_replaced_by_directory_and_back() -> None:
    lower = tree(p=file())
    as_dir = apply_layer(lower, tree(p=directory(c=file())))
    assert names(as_dir, b"/p") == [b"c"]
    back = apply_layer(as_dir, tree(p=file(b"f")))
    node = back.lookup(b"/p")
    assert node is not None and node.kind is FileKind.REG


def test_directories_merge_and_the_upper_attributes_win() -> None:
    lower = tree(d=directory(mode=0o700, mtime=5, x=file()))
    upper = tree(d=directory(mode=0o711, mtime=9, y=file()))
    merged = apply_layer(lower, upper)
    d = merged.lookup(b"/d")
    assert d is not None and names(merged, b"/d") == [b"x", b"y"]
    assert (stat.S_IMODE(d.mode), d.mtime) == (0o711, 9)


def test_a_default_attribute_parent_keeps_the_lower_attributes() -> None:
    """A tar that lists /d/y but not /d gives /d default attributes: extraction leaves the lower /d as it was."""
    lower = tree(d=directory(mode=0o700, mtime=5, x=file()))
    upper = tree(d=directory(mode=0o755, mtime=0, y=file()))
    d = apply_layer(lower, upper).lookup(b"/d")
    assert d is not None and (stat.S_IMODE(d.mode), d.mtime) == (0o700, 5)


def test_markers_of_the_lowest_layer_never_reach_the_result() -> None:
    lowest = Tree(root=marker_dir([b".wh.gone", OPAQUE_MARKER], kept=file()))
    assert names(apply_layer(None, lowest)) == [b"kept"]
    assert names(merge_layers([lowest])) == [b"kept"]


def test_without_whiteouts_a_marker_is_an_ordinary_file() -> None:
    lower = tree(a=file())
    upper = Tree(root=marker_dir([b".wh.a"]))
    assert names(apply_layer(lower, upper, whiteouts=False)) == [b".wh.a", b"a"]


def test_layers_are_not_modified_and_hardlinks_stay_one_inode() -> None:
    shared = file(b"x")
    lower = tree(d=directory(one=shared, two=shared))
    upper = tree(d=directory(three=file()))
    before = names(lower, b"/d")
    merged = apply_layer(lower, upper)
    assert names(lower, b"/d") == before
    assert merged.lookup(b"/d/one") is merged.lookup(b"/d/two") is shared


def test_merge_layers_needs_a_layer() -> None:
    with pytest.raises(AssertionError):
        merge_layers([])


def overlayfs_layer(*members: tarfile.TarInfo) -> Tree:
    """A layer tar read under the overlayfs whiteout spec."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for member in members:
            out.addfile(member, io.BytesIO(bytes(member.size)) if member.isfile() else None)
    source = TarSource(io.BytesIO(buf.getvalue()), "layer", whiteout_spec=WhiteoutSpec.OVERLAYFS)
    for content in source.files():
        content.close()
    return source.tree


def member(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_overlayfs_char_device_0_0_is_a_whiteout() -> None:
    lower = tree(a=file(), b=file())
    upper = overlayfs_layer(member("a", tarfile.CHRTYPE, devmajor=0, devminor=0))
    assert names(apply_layer(lower, upper)) == [b"b"]


def test_overlayfs_opaque_xattr_makes_a_directory_opaque() -> None:
    lower = tree(d=directory(x=file()))
    upper = overlayfs_layer(member("d", tarfile.DIRTYPE, pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"}),
                            member("d/y", tarfile.REGTYPE))
    merged = apply_layer(lower, upper)
    assert names(merged, b"/d") == [b"y"]
    d = merged.lookup(b"/d")
    assert d is not None and d.xattrs == {}  # the overlay's own xattrs never reach the image
