"""File data -> chunks: cut, hash, deduplicate, compress on every core, store in data order.

Files arrive in data order. Their pieces (fixed `chunk_size`, the last one shorter) are hashed and
compressed by a thread pool in batches (the codecs and hashes release the GIL), and retired strictly in
order, so the blob's bytes never depend on thread scheduling or `--jobs`. A piece whose digest is already
stored is a dedup hit: it skips compression (workers claim digests as they go; the rare piece whose digest
another in-flight piece claimed first is compressed when it retires). Chunks that lie wholly in a hole
(SEEK_DATA) are never read: the zero chunk of each size is hashed once.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from nydus_py.blob.writer import BlobWriter
from nydus_py.blob.compress import compress
from nydus_py.blob.digests import chunk_digest, crc32c
from nydus_py.errors import FormatError
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.model import ChunkRef, FileContent, Inode

BATCH_BYTES = 1 << 20
BATCH_PIECES = 256
# While workers run: a worker takes the GIL back after every hash or compression, and the walk on the main
# thread holds it between its own system calls for up to the switch interval (5 ms by default). At 0.5 ms
# the workers stay fed: a node_modules tree built 12% faster (1.5% more CPU).
WORKER_SWITCH_INTERVAL = 0.0005
# A batch of tiny pieces (BATCH_PIECES of them, fewer bytes than this) is hashed and compressed at once on
# the calling thread: a worker would take the GIL back several times per piece for a few microseconds of
# work each, stalling the walk (100k 6-byte files: 14% slower through the pool).
POOL_BATCH_BYTES = 64 << 10


# Plain tuples on the per-chunk path (a small-file image has one chunk per file: a dataclass per piece and per
# result, with a lock per piece, cost ~20% of the chunker's time on 100k small files). Both stay in this module.
# A piece: (inode, file offset, size, data); data None when it lies wholly inside a hole (zeros).
_Piece = tuple[Inode, int, int, "bytes | None"]
# A piece's result: (digest, crc, stored, compressed); crc and stored are set when this piece claimed its
# digest (it is the first with it), None otherwise.
_Done = tuple[bytes, "int | None", "bytes | None", bool]


_switch_lock = threading.Lock()
_switch_users = 0  # pipelines with workers running, in every thread
_switch_saved = 0.0  # the interval before the first of them started


def _shorter_switch_interval(change: int) -> None:
    """Count a pipeline whose workers start (+1) or stop (-1); the interval is WORKER_SWITCH_INTERVAL while
    any run, and what it was before once the last one stops (it is one setting for the whole process)."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if change > 0 and _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, WORKER_SWITCH_INTERVAL))
        _switch_users += change
        if change < 0 and _switch_users == 0:
            sys.setswitchinterval(_switch_saved)


# Chunks wholly inside holes that one layer may hold: each is a reference in memory and in the bootstrap (8 bytes),
# while a sparse file sends nothing for them (4 Mi of them: 4 TiB of holes at 1 MiB chunks)
MAX_HOLE_CHUNKS = 1 << 22


@dataclass(slots=True)
class ChunkStats:
    files: int = 0
    chunks: int = 0  # chunk references in files
    stored: int = 0  # distinct chunks written to the blob
    dedup_hits: int = 0
    hole_chunks: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    elsewhere_hits: int = 0  # distinct chunks found in other blobs (a chunk dictionary's, lower layers')
    bytes_elsewhere: int = 0  # their compressed bytes: what this blob did not store again


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
        self._elsewhere: set[tuple[bytes, int]] = set()  # keys of other blobs' chunks already counted
        self._lock = threading.Lock()
        self._zero_digests: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nydus-chunk") if workers > 1 else None
        if self._pool is not None:
            _shorter_switch_interval(+1)
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
            inode = file.inode
            batch = self._batch
            for offset, length, data in file.pieces(self.chunk_size):
                if data is None:
                    self.stats.hole_chunks += 1
                    if self.stats.hole_chunks > MAX_HOLE_CHUNKS:  # holes cost nothing to send, but memory here
                        raise FormatError(f"{file.path.decode(errors='replace')}: more than {MAX_HOLE_CHUNKS} "
                                          f"chunks of holes in one layer ({MAX_HOLE_CHUNKS * self.chunk_size >> 30} "
                                          "GiB at this chunk size)")
                else:
                    self._batch_bytes += length
                batch.append((inode, offset, length, data))
                if self._batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_PIECES:
                    self._submit()
                    batch = self._batch
            self.stats.bytes_in += file.inode.size
            if self.progress is not None:
                self.progress(file.inode.size)
        finally:
            file.close()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, size, self._batch, self._batch_bytes = self._batch, self._batch_bytes, [], 0
        result: Future[list[_Done]] | list[_Done]
        if self._pool is not None and size >= POOL_BATCH_BYTES:
            result = self._pool.submit(self._work, batch)
        else:
            result = self._work(batch)
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
        digester = self.digester
        keys = [(self._zero_digest(size) if data is None else chunk_digest(data, digester), size)
                for _, _, size, data in batch]
        with self._lock:  # once per batch: claim every digest no earlier piece claimed
            claimed = self._claimed
            first = []
            for key in keys:
                first.append(key not in claimed)
                claimed.add(key)
        out: list[_Done] = []
        for (_, _, size, data), key, mine in zip(batch, keys, first, strict=True):
            if mine:
                raw = data if data is not None else bytes(size)
                stored, compressed = compress(raw, self.compressor)
                out.append((key[0], crc32c(raw), stored, compressed))
            else:
                out.append((key[0], None, None, False))
        return out

    # --- consumer side: strictly in order ------------------------------------------------------------

    def _retire(self) -> None:
        batch, result = self._pending.popleft()
        done = result.result() if isinstance(result, Future) else result
        known = self.stored
        stats = self.stats
        for (inode, file_offset, size, data), (digest, crc, stored, compressed) in zip(batch, done, strict=True):
            key = (digest, size)
            ref = known.get(key)
            if ref is None:
                if stored is None:  # a later piece claimed this digest first: compress it here
                    raw = data if data is not None else bytes(size)
                    stored, compressed = compress(raw, self.compressor)
                    crc = crc32c(raw)
                assert crc is not None
                ref = self.blob.append_chunk(stored, compressed, size, digest, crc, file_offset)
                known[key] = ref
                stats.stored += 1
                stats.bytes_stored += len(stored)
            else:  # the chunk table keeps the offset in the file that first produced the chunk
                stats.dedup_hits += 1
                if ref.blob_index != self.blob.blob_index and key not in self._elsewhere:
                    self._elsewhere.add(key)  # counted once, as a stored chunk is
                    stats.elsewhere_hits += 1
                    stats.bytes_elsewhere += ref.compressed_size
            inode.chunks.append(ref)
        stats.chunks += len(batch)

    def finish(self) -> None:
        """Store everything still queued and stop the workers."""
        try:
            self._submit()
            while self._pending:
                self._retire()
        finally:
            self.close()

    def close(self) -> None:
        self._claimed = set()  # a key per chunk: not needed once every piece is retired
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            _shorter_switch_interval(-1)

