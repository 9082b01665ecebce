"""A chunk dictionary's layer (`nydus-py chunkdict`): one regular file per chunk, `/chunkdict/<8 hex digits>`,
0444, root, epoch, each exactly one chunk long, so that building it stores every chunk once and the image is an
ordinary one (nydusd, the kernel, `unpack` and `check` read it). A file's bytes come from a callback (the
chunk read out of the image it was found in, checked against its digest there)."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nydus_py.model import Entry, FileKind, Inode, Tree, new_directory

DIRECTORY = b"chunkdict"


@dataclass(slots=True)
class ChunkFile:
    """One chunk as a file's content."""

    inode: Inode
    path: bytes
    read: Callable[[], bytes]

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        return ((0, self.inode.size, self.read()),)

    def close(self) -> None:
        pass


class ChunkListSource:
    """Chunks as files: (uncompressed size, reader) each, named by their position from `first` on."""

    def __init__(self, chunks: list[tuple[int, Callable[[], bytes]]], name: str, first: int = 0) -> None:
        self.name = name
        root = new_directory()
        directory = new_directory()
        root.entries = [Entry(DIRECTORY, directory)]
        self._files = []
        for number, (size, read) in enumerate(chunks, start=first):
            inode = Inode(kind=FileKind.REG, mode=stat.S_IFREG | 0o444, size=size)
            file_name = b"%08x" % number
            directory.entries.append(Entry(file_name, inode))
            self._files.append(ChunkFile(inode, b"/%s/%s" % (DIRECTORY, file_name), read))
        self.tree = Tree(root=root)

    def __str__(self) -> str:
        return self.name

    def files(self) -> Iterator[ChunkFile]:
        yield from self._files

    def holds(self, path: Path) -> bool:
        return False


__all__ = ["ChunkFile", "ChunkListSource"]
