"""nydus_py.model: the walk order bootstraps and merged device tables follow, and the overlayfs xattr rules
both layer sources apply."""

from __future__ import annotations

import stat

from nydus_py.model import ChunkRef, Entry, FileKind, Inode, Tree, new_directory, overlay_xattrs, walk_bfs


def _dir(**children: Inode) -> Inode:
    inode = new_directory()
    inode.entries = [Entry(name=n.encode(), inode=c) for n, c in sorted(children.items())]
    return inode


def test_walk_bfs_lists_a_directory_then_its_subdirectories() -> None:
    f = Inode(kind=FileKind.REG, mode=stat.S_IFREG | 0o644)
    a, b, a1 = _dir(), _dir(), _dir()
    a.entries = [Entry(b"a1", a1), Entry(b"fa", f)]
    root = _dir(a=a, b=b, z=f)  # `z` and `fa` are one inode (a hardlink): listed once per entry
    order = list(walk_bfs(Tree(root=root)))
    assert order == [root, a, b, f, a1, f]


def test_walk_bfs_gives_merge_its_blob_order() -> None:
    from nydus_py.build.plan import referenced_blobs

    def chunked(blob: int) -> Inode:
        ref = ChunkRef(blob_index=blob, ci_index=0, uncompressed_offset=0, uncompressed_size=1, compressed_offset=0,
                       compressed_size=1, compressed=False, digest=bytes(32))
        return Inode(kind=FileKind.REG, mode=stat.S_IFREG | 0o644, size=1, chunks=[ref])

    root = _dir(d=_dir(x=chunked(7)), y=chunked(3))
    assert referenced_blobs(Tree(root=root)) == [3, 7]  # /y is listed before /d's entries


def test_overlay_xattrs_interpret_and_drop_the_overlay_namespace() -> None:
    prefix = b"trusted.overlay."
    got = overlay_xattrs({b"trusted.overlay.opaque": b"y", b"trusted.overlay.origin": b"x", b"user.k": b"v"}, prefix)
    assert (got.kept, got.opaque, got.whiteout, got.refused) == ({b"user.k": b"v"}, True, False, None)
    assert not overlay_xattrs({prefix + b"opaque": b"x"}, prefix).opaque  # "x": only announces xattr whiteouts
    assert overlay_xattrs({prefix + b"whiteout": b""}, prefix).whiteout
    assert overlay_xattrs({prefix + b"metacopy": b""}, prefix).refused == b"metacopy"
    assert overlay_xattrs({b"user.overlay.opaque": b"y"}, prefix).kept == {b"user.overlay.opaque": b"y"}
