"""nydus_py.blob.reader: BlobReader.read_chunk, the one rule every reader of chunk data uses (unpack,
device images, check): read, bound the size, decompress, check the digest."""

from __future__ import annotations

import pytest

from nydus_py.blob.reader import BlobChunk, BlobReader
from nydus_py.blob.compress import compress
from nydus_py.blob.digests import chunk_digest
from nydus_py.errors import FormatError
from nydus_py.format.rafs import MAX_CHUNK_SIZE, CompressAlgo, DigestAlgo

DATA = b"chunk data " * 400


class MemoryBlob:
    def __init__(self, data: bytes) -> None:
        self.name, self.size, self._data = "blob", len(data), data

    def pread(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass


def one_chunk_blob() -> tuple[BlobReader, BlobChunk]:
    stored, compressed = compress(DATA, CompressAlgo.ZSTD)
    chunk = BlobChunk(ci_index=0, uncompressed_offset=0, uncompressed_size=len(DATA), compressed_offset=0,
                      compressed_size=len(stored), compressed=compressed)
    return BlobReader(MemoryBlob(stored)), chunk


@pytest.mark.parametrize("digester", list(DigestAlgo))
def test_a_chunk_is_decompressed_and_checked(digester: DigestAlgo) -> None:
    blob, chunk = one_chunk_blob()
    assert blob.read_chunk(chunk, CompressAlgo.ZSTD, digester, chunk_digest(DATA, digester)) == DATA
    with pytest.raises(FormatError, match=f"chunk 0 at 0x0: {digester.name.lower()} digest does not match"):
        blob.read_chunk(chunk, CompressAlgo.ZSTD, digester, bytes(32))


def test_without_a_digest_only_decompression_is_checked() -> None:
    blob, chunk = one_chunk_blob()
    assert blob.read_chunk(chunk, CompressAlgo.ZSTD, DigestAlgo.SHA256, None) == DATA
    with pytest.raises(FormatError, match="blob: chunk 0 at 0x0: zstd"):
        blob.read_chunk(BlobChunk(0, 0, 10, 0, chunk.compressed_size, True), CompressAlgo.ZSTD, DigestAlgo.SHA256,
                        None)


def test_an_oversized_or_out_of_bounds_chunk_is_refused_before_reading() -> None:
    blob, chunk = one_chunk_blob()
    with pytest.raises(FormatError, match="more than the largest chunk size"):
        blob.read_chunk(BlobChunk(0, 0, MAX_CHUNK_SIZE + 1, 0, 1, True), CompressAlgo.ZSTD, DigestAlgo.SHA256, None)
    with pytest.raises(FormatError, match="past the end of the blob"):
        blob.read_chunk(BlobChunk(0, 0, 1, 0, chunk.compressed_size + 1, True), CompressAlgo.ZSTD,
                        DigestAlgo.SHA256, None)
