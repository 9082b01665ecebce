"""File data -> chunks: cut, hash, deduplicate, compress on every core, store in data order.

Files arrive in data order. Their pieces (fixed `chunk_size`, the last one shorter) are hashed and
compressed by a thread pool in batches (the codecs and hashes release the GIL), and retired strictly in
order, so the blob's bytes never depend on thread scheduling or `--jobs`. A piece whose digest is already
stored is a dedup hit: it skips compression (workers claim digests as they go; the rare piece whose digest
another in-flight piece claimed first is compressed when it retires). Chunks that lie wholly in a hole
(SEEK_DATA) are never read: the zero chunk of each size is hashed once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from nydus_py.blob.writer import BlobWriter
from nydus_py.compress import compress
from nydus_py.digests import chunk_digest, crc32c
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.model import ChunkRef, Inode
from nydus_py.sources import FileContent

BATCH_BYTES = 1 << 20
BATCH_PIECES = 256


@dataclass(slots=True)
class _Piece:
    inode: Inode
    file_offset: int
    size: int
    data: bytes | None  # None: wholly inside a hole (zeros)


@dataclass(frozen=True, slots=True)
class _Done:
    digest: bytes
    crc: int | None  # set, with `stored`, when this piece claimed its digest
    stored: bytes | None
    compressed: bool


@dataclass(slots=True)
class ChunkStats:
    files: int = 0
    chunks: int = 0  # chunk references in files
    stored: int = 0  # distinct chunks written to the blob
    dedup_hits: int = 0
    hole_chunks: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0


class ChunkPipeline:
    """Feed files with `add()`, then call `finish()`; chunks go to `blob` and into each inode's list."""

    def __init__(self, blob: BlobWriter, *, chunk_size: int, compressor: CompressAlgo, digester: DigestAlgo,
                 workers: int, known: dict[tuple[bytes, int], ChunkRef] | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.blob = blob
        self.chunk_size = chunk_size
        self.compressor = compressor
        self.digester = digester
        self.stored: dict[tuple[bytes, int], ChunkRef] = dict(known or {})
        self._claimed = set(self.stored)
        self._lock = threading.Lock()
        self._zero_digests: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nydus-chunk") if workers > 1 else None
        self._max_pending = max(2 * workers, 4)
        self._batch: list[_Piece] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[list[_Piece], Future[list[_Done]] | list[_Done]]] = deque()
        self.stats = ChunkStats()
        self.progress = progress

    # --- producer side -----------------------------------------------------------------------------

    def add(self, file: FileContent) -> None:
        """Read one file's pieces (then close it) and queue them."""
        try:
            self.stats.files += 1
            for offset, length, data in file.pieces(self.chunk_size):
                if data is None:
                    self.stats.hole_chunks += 1
                self._batch.append(_Piece(file.inode, offset, length, data))
                self._batch_bytes += length if data is not None else 0
                if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_PIECES:
                    self._submit()
            self.stats.bytes_in += file.inode.size
            if self.progress is not None:
                self.progress(file.inode.size)
        finally:
            file.close()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        result: Future[list[_Done]] | list[_Done]
        result = self._pool.submit(self._work, batch) if self._pool else self._work(batch)
        self._pending.append((batch, result))
        while len(self._pending) > self._max_pending:
            self._retire()

    # --- workers -------------------------------------------------------------------------------------

    def _zero_digest(self, size: int) -> bytes:
        digest = self._zero_digests.get(size)
        if digest is None:
            digest = self._zero_digests[size] = chunk_digest(bytes(size), self.digester)
        return digest

    def _work(self, batch: list[_Piece]) -> list[_Done]:
        out = []
        for piece in batch:
            digest = self._zero_digest(piece.size) if piece.data is None else chunk_digest(piece.data, self.digester)
            key = (digest, piece.size)
            with self._lock:
                first = key not in self._claimed
                self._claimed.add(key)
            if first:
                data = piece.data if piece.data is not None else bytes(piece.size)
                stored, compressed = compress(data, self.compressor)
                out.append(_Done(digest, crc32c(data), stored, compressed))
            else:
                out.append(_Done(digest, None, None, False))
        return out

    # --- consumer side: strictly in order ------------------------------------------------------------

    def _retire(self) -> None:
        batch, result = self._pending.popleft()
        done = result.result() if isinstance(result, Future) else result
        for piece, d in zip(batch, done, strict=True):
            key = (d.digest, piece.size)
            ref = self.stored.get(key)
            if ref is None:
                stored, compressed, crc = d.stored, d.compressed, d.crc
                if stored is None:  # a later piece claimed this digest first: compress it here
                    data = piece.data if piece.data is not None else bytes(piece.size)
                    stored, compressed = compress(data, self.compressor)
                    crc = crc32c(data)
                assert crc is not None
                ref = self.blob.append_chunk(stored, compressed, piece.size, d.digest, crc, piece.file_offset)
                self.stored[key] = ref
                self.stats.stored += 1
                self.stats.bytes_stored += len(stored)
            else:  # the chunk table keeps the offset in the file that first produced the chunk
                self.stats.dedup_hits += 1
            piece.inode.chunks.append(ref)
            self.stats.chunks += 1

    def finish(self) -> None:
        """Store everything still queued and stop the workers."""
        try:
            self._submit()
            while self._pending:
                self._retire()
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

