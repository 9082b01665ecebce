"""nydus_py.bootstrap (layout -> render -> read) and the dirent packing rule in format/erofs.py that the
layout (directory sizes) and the writer (dirent blocks) share."""

from __future__ import annotations

import stat

from nydus_py.bootstrap.layout import plan_layout
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.bootstrap.writer import dirent_blocks, render_bootstrap
from nydus_py.format import erofs
from nydus_py.format.rafs import DEFAULT_CHUNK_SIZE, CompressAlgo, DigestAlgo
from nydus_py.model import Entry, FileKind, Inode, Tree, new_directory


def test_dirent_blocks_never_split_an_entry() -> None:
    # 12-byte dirent + name: 4096 / (12 + 244) = 16 entries fill a block exactly; the 17th starts the next
    assert erofs.dirent_blocks([244] * 17) == [(16, 4096), (1, 256)]
    assert erofs.dirents_size([244] * 17) == 4096 + 256
    assert erofs.dirent_blocks([244] * 15 + [245]) == [(15, 3840), (1, 257)]  # 1 byte too many: a new block
    assert erofs.dirents_size([1, 2]) == 2 * 12 + 3


def tree_with_long_names(count: int) -> Tree:
    root = new_directory()
    root.entries = [Entry(name=b"%03d" % i + b"n" * 200,
                          inode=Inode(kind=FileKind.SYMLINK, mode=stat.S_IFLNK | 0o777, size=1, symlink_target=b"t"))
                    for i in range(count)]
    return Tree(root=root)


def test_a_directory_over_several_blocks_round_trips() -> None:
    tree = tree_with_long_names(40)  # 42 dirents of ~215 bytes: three blocks
    plan = plan_layout(tree, [], chunk_size=DEFAULT_CHUNK_SIZE, compressor=CompressAlgo.ZSTD,
                       digester=DigestAlgo.SHA256)
    blocks = dirent_blocks(plan.root)
    assert len(blocks) == 3 and all(len(b) == erofs.EROFS_BLKSIZ for b in blocks[:-1])
    assert plan.root.size == erofs.dirents_size(len(name) for name, _ in plan.root.dirents)
    data = render_bootstrap(plan)
    assert len(data) == plan.size
    back = read_bootstrap(data).tree
    assert [e.name for e in back.root.entries] == [e.name for e in tree.root.entries]
    assert all(e.inode.symlink_target == b"t" for e in back.root.entries)
