"""Layer sources: each turns its input into a `Tree` and hands out file contents in data order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from nydus_py.model import Inode


class FileContent(Protocol):
    """A regular file's data, read once, in order, by the chunker."""

    inode: Inode
    path: bytes  # for messages

    def pieces(self, chunk_size: int) -> Iterable[tuple[int, int, bytes | None]]:
        """(file offset, length, data) per chunk; data None for a chunk wholly inside a hole."""
        ...

    def close(self) -> None: ...
