"""Chunks -> one native Nydus blob in the tail-tar layout nydus-snapshotter's `Pack` produces.

    chunk data | hdr image.blob | CI array + 4 KiB CI header | hdr blob.meta | digest array | hdr blob.digest
    | bootstrap (zstd) | hdr image.boot | TOC entries | hdr rafs.blob.toc   (= EOF)

Each 512-byte GNU header follows its data. A layer without file data has only the bootstrap and TOC.
Data is streamed to a temporary file as chunks arrive; the blob id is the sha256 of the whole file.
References: docs/oci.md §2.1; docs/format.md §11; nydus builder/src/core/blob.rs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nydus_py.blob import compress
from nydus_py.blob.zran import ZranChunk, ZranContext, encode_contexts
from nydus_py.errors import InternalError, UnsupportedError
from nydus_py.format import blobmeta, build, rafs, tar
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER, BlobFeatures
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.util.fsutil import temporary_file
from nydus_py.image import BlobInfo
from nydus_py.model import ChunkRef

BLOCK = 4096
WRITE_BATCH = 1 << 20  # bytes gathered before they go to the writer thread
# What a blob built like `nydus-image create --blob-inline-meta --features blob-toc` declares.
BASE_FEATURES = (BlobFeatures.ALIGNED | BlobFeatures.INLINED_FS_META | BlobFeatures.HAS_TAR_HEADER
                 | BlobFeatures.HAS_TOC | BlobFeatures.CAP_TAR_TOC)
# ... and `nydus-image create --type targz-ref --blob-inline-meta --features blob-toc` (0x7000003f)
ZRAN_FEATURES = (BASE_FEATURES | BlobFeatures.INLINED_CHUNK_DIGEST | BlobFeatures.SEPARATE | BlobFeatures.ZRAN
                 | BlobFeatures.CHUNK_INFO_V2)
_ZRAN_CHUNK_FLAGS = blobmeta.ChunkFlagsV2.ZRAN | blobmeta.ChunkFlagsV2.COMPRESSED
_NO_CHUNK_INFO: dict[str, Any] = {"ci_compressor": CompressAlgo.NONE, "ci_offset": 0, "ci_compressed_size": 0,
                                  "ci_uncompressed_size": 0}


@dataclass(frozen=True, slots=True)
class _TocRecord:
    name: str
    compressor: CompressAlgo
    digest: bytes
    offset: int
    compressed_size: int
    uncompressed_size: int


def meta_compressor(compressor: CompressAlgo) -> CompressAlgo:
    """TOC-referenced metadata is raw or zstd: nydus-snapshotter cannot read lz4_block TOC entries."""
    return CompressAlgo.NONE if compressor is CompressAlgo.NONE else CompressAlgo.ZSTD


class BlobWriter:
    """Appends chunks to a temporary blob file in `directory`, then finishes the metadata tail.

    With `output`, the blob goes to that open file instead, strictly sequentially (no seek, no rename): it may
    be a FIFO that a caller reads (the `nydus-py-image` drop-in builder); it is not removed on failure."""

    def __init__(self, directory: Path, *, blob_index: int, chunk_size: int, compressor: CompressAlgo,
                 digester: DigestAlgo, output: BinaryIO | None = None) -> None:
        self.path: Path | None = None
        if output is not None:
            self.file = output
        else:
            self.file, self.path = temporary_file(directory, "blob")
        self.hash = hashlib.sha256()
        self.pos = 0
        # Writing and hashing run on a thread of their own (both release the GIL), overlapping the reads and
        # the compression; the order of the bytes is the order of the queue.
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain_loop, name="nydus-blob-writer", daemon=True)
        self._thread.start()
        self.blob_index = blob_index
        self.chunk_size = chunk_size
        self.compressor = compressor
        self.digester = digester
        self.ci = bytearray()  # chunk info array, CHUNK_INFO_SIZE bytes per chunk (a bytes object each cost 3x)
        self.digests: list[bytes] = []
        self.uncompressed_size = 0
        self.toc: list[_TocRecord] = []
        self._data_info: BlobInfo | None = None

    def _drain_loop(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:
                    return
                if self._error is None:
                    self.file.write(data)
                    self.hash.update(data)
            except OSError as exc:  # handed to the producer at the next sync, naming the file
                self._error = self._named(exc)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer at the next sync
                self._error = exc
            finally:
                self._queue.task_done()

    def _write(self, data: bytes) -> int:
        """Queue `data` at the end of the blob; small pieces are gathered first (a queue hand-off per tiny
        chunk would cost more than writing it)."""
        if self._error is not None:
            raise self._error
        offset = self.pos
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.pos += len(data)
        if self._pending_bytes >= WRITE_BATCH:
            self._flush_pending()
        return offset

    def _flush_pending(self) -> None:
        if self._pending:
            self._queue.put(b"".join(self._pending) if len(self._pending) > 1 else self._pending[0])
            self._pending, self._pending_bytes = [], 0

    def _sync(self) -> None:
        """Wait until every queued byte is written and hashed."""
        self._flush_pending()
        self._queue.join()
        if self._error is not None:
            raise self._error

    def _tail_header(self, name: str, size: int) -> bytes:
        header = tar.encode_tar_header(name, size, tar.TarDialect.NYDUS_TAIL)
        self._write(header)
        return header

    @property
    def chunk_count(self) -> int:
        return len(self.digests)  # one digest per chunk info entry, whatever its version

    def append_chunk(self, stored: bytes, compressed: bool, size: int, digest: bytes, crc32: int,
                     file_offset: int) -> ChunkRef:
        """Store one chunk (`stored` is its compressed or raw bytes) and describe where it went."""
        if self._data_info is not None:
            raise InternalError("chunk appended after the blob data was finished")
        ci_index = len(self.digests)
        if ci_index >= rafs.MAX_CHUNKS_PER_BLOB:
            raise UnsupportedError(f"more than {rafs.MAX_CHUNKS_PER_BLOB} distinct chunks in one blob")
        uncompressed_offset = self.uncompressed_size
        compressed_offset = self._write(stored)
        # positional: one per distinct chunk, and keywords cost twice as much
        ref = ChunkRef(self.blob_index, ci_index, uncompressed_offset, size, compressed_offset, len(stored), compressed,
                       digest, crc32, file_offset)
        self.ci += blobmeta.encode_chunk_info_v1(uncompressed_offset, size, compressed_offset, len(stored))
        self.digests.append(digest)
        self.uncompressed_size = uncompressed_offset + -(-size // BLOCK) * BLOCK  # v6 blobs are ALIGNED: 4 KiB
        return ref

    def finish_data(self) -> BlobInfo:
        """Write everything up to the inline bootstrap; returns the blob table entry that bootstrap carries."""
        features = BASE_FEATURES
        ci = _NO_CHUNK_INFO
        if self.ci:
            features |= BlobFeatures.INLINED_CHUNK_DIGEST
            data_size = self.pos
            self._tail_header(blobmeta.TOC_ENTRY_BLOB_RAW, data_size)
            # its digest covers the chunk data and this header (everything hashed so far)
            self._sync()
            self.toc.append(_TocRecord(blobmeta.TOC_ENTRY_BLOB_RAW, CompressAlgo.NONE, self.hash.copy().digest(), 0,
                                       data_size, self.uncompressed_size))
            ci = self._write_chunk_info(bytes(self.ci), features)
        self._data_info = BlobInfo(
            blob_id=BLOB_ID_PLACEHOLDER, blob_index=self.blob_index, chunk_size=self.chunk_size,
            chunk_count=self.chunk_count, compressor=self.compressor, digester=self.digester, features=features,
            compressed_size=self.pos, uncompressed_size=self.uncompressed_size, **ci)
        return self._data_info

    # --- zran (OCI-reference) blobs: chunk info and contexts only, the data stays in the gzip layer ---------

    def append_zran_chunk(self, size: int, digest: bytes, crc32: int, file_offset: int, chunk: ZranChunk) -> ChunkRef:
        """Record one chunk that lies in the original gzip layer (a chunk info v2 entry: gzip range, context,
        offset in the context's output); nothing is written."""
        ci_index = len(self.digests)
        if ci_index >= rafs.MAX_CHUNKS_PER_BLOB:
            raise UnsupportedError(f"more than {rafs.MAX_CHUNKS_PER_BLOB} distinct chunks in one blob")
        uncompressed_offset = self.uncompressed_size
        ref = ChunkRef(self.blob_index, ci_index, uncompressed_offset, size, chunk.in_pos, chunk.in_len, True,
                       digest, crc32, file_offset)
        self.ci += blobmeta.encode_chunk_info_v2(uncompressed_offset, size, chunk.in_pos, chunk.in_len,
                                                 _ZRAN_CHUNK_FLAGS, chunk.context << 32 | chunk.offset)
        self.digests.append(digest)
        self.uncompressed_size = uncompressed_offset + -(-size // BLOCK) * BLOCK
        return ref

    def finish_zran_data(self, contexts: list[ZranContext], layer_id: str, layer_size: int) -> BlobInfo:
        """Write the chunk info (v2 entries, then the context table), the digests and the header; returns the
        blob table entry the inline bootstrap carries: the original layer's id and size (the data is there),
        gzip and sha256 (nydus-image 2.2's `targz-ref`: docs/format.md §11.10)."""
        count = self.chunk_count
        ci = _NO_CHUNK_INFO
        if count:
            table = encode_contexts(contexts)
            ci = self._write_chunk_info(bytes(self.ci) + table, ZRAN_FEATURES, zran_offset=len(self.ci),
                                        zran_size=len(table), zran_count=len(contexts))
        self._data_info = BlobInfo(
            blob_id=layer_id, blob_index=self.blob_index, chunk_size=self.chunk_size, chunk_count=count,
            compressor=CompressAlgo.GZIP, digester=DigestAlgo.SHA256, features=ZRAN_FEATURES,
            compressed_size=layer_size, uncompressed_size=self.uncompressed_size, **ci)
        return self._data_info

    def _write_chunk_info(self, ci_raw: bytes, features: BlobFeatures, *, zran_offset: int = 0, zran_size: int = 0,
                          zran_count: int = 0) -> dict[str, Any]:
        """The chunk info (compressed as TOC metadata is), its 4 KiB header, the digest array, each section with
        its tail tar header and TOC record; returns the blob table's ci_* fields."""
        ci_stored, ci_compressed = compress.compress(ci_raw, meta_compressor(self.compressor))
        ci_compressor = meta_compressor(self.compressor) if ci_compressed else CompressAlgo.NONE
        ci_offset = self._write(ci_stored)
        header = build(blobmeta.CompressionContextHeader, {
            "s_features": features, "s_ci_compressor": ci_compressor,
            "s_ci_entries": self.chunk_count, "s_ci_offset": ci_offset,
            "s_ci_compressed_size": len(ci_stored), "s_ci_uncompressed_size": len(ci_raw),
            "s_ci_zran_offset": zran_offset, "s_ci_zran_size": zran_size, "s_ci_zran_count": zran_count,
            "s_reserved": bytes(4032),
        }, what="chunk info header")
        self._write(header)
        self._tail_header(blobmeta.TOC_ENTRY_BLOB_META, len(ci_stored) + len(header))
        self.toc.append(_TocRecord(blobmeta.TOC_ENTRY_BLOB_META, ci_compressor, hashlib.sha256(ci_raw).digest(),
                                   ci_offset, len(ci_stored), len(ci_raw)))
        self.toc.append(_TocRecord(blobmeta.TOC_ENTRY_BLOB_META_HEADER, CompressAlgo.NONE,
                                   hashlib.sha256(header).digest(), ci_offset + len(ci_stored), len(header),
                                   len(header)))
        digests = b"".join(self.digests)
        digests_offset = self._write(digests)
        self._tail_header(blobmeta.TOC_ENTRY_BLOB_DIGEST, len(digests))
        self.toc.append(_TocRecord(blobmeta.TOC_ENTRY_BLOB_DIGEST, CompressAlgo.NONE,
                                   hashlib.sha256(digests).digest(), digests_offset, len(digests), len(digests)))
        return {"ci_compressor": ci_compressor, "ci_offset": ci_offset, "ci_compressed_size": len(ci_stored),
                "ci_uncompressed_size": len(ci_raw)}

    def finish(self, inline_bootstrap: bytes) -> BlobInfo:
        """Append the inline bootstrap and the TOC, close the file; returns the final blob table entry
        (real id = sha256 of the file, final size, TOC size and digest, no INLINED_FS_META: the form a
        merged bootstrap records, as nydus-image merge does)."""
        if self._data_info is None:
            raise InternalError("finish() before finish_data()")
        stored, compressed = compress.compress(inline_bootstrap, CompressAlgo.ZSTD)
        boot_offset = self._write(stored)
        self._tail_header(blobmeta.TOC_ENTRY_BOOTSTRAP, len(stored))
        self.toc.append(_TocRecord(blobmeta.TOC_ENTRY_BOOTSTRAP, CompressAlgo.ZSTD if compressed else CompressAlgo.NONE,
                                   hashlib.sha256(inline_bootstrap).digest(), boot_offset, len(stored),
                                   len(inline_bootstrap)))
        entries = b"".join(
            blobmeta.FAST_TOC_ENTRY.pack(rafs.TOC_FLAGS[t.compressor], 0, t.name.encode(), t.digest, t.offset,
                                         t.compressed_size, t.uncompressed_size, b"")
            for t in self.toc
        )
        self._write(entries)
        header = self._tail_header(blobmeta.TOC_ENTRY_BLOB_TOC, len(entries))
        toc_digest = hashlib.sha256(entries + header).digest()
        self._stop()
        try:
            self.file.flush()
            if self.path is not None:  # our own file; a caller's output may be a FIFO, which cannot be synced
                os.fsync(self.file.fileno())
                self.file.close()
        except OSError as exc:
            raise self._named(exc) from None
        return self._data_info.merged_entry(file_id=self.hash.hexdigest(), file_size=self.pos, toc_digest=toc_digest,
                                            toc_size=len(entries) + len(header))

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._flush_pending()
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        """Stop writing; our own temporary file is closed and removed (a caller's output is the caller's)."""
        with contextlib.suppress(BaseException):
            self._stop()
        if self.path is not None:
            self.file.close()
            self.path.unlink(missing_ok=True)

    def _named(self, exc: OSError) -> OSError:
        """`exc` naming our temporary blob file (a write error from a file object names nothing); a caller's
        output is named by the caller, who knows its path."""
        if exc.filename is not None or self.path is None:
            return exc
        return OSError(exc.errno, exc.strerror, os.fspath(self.path))
