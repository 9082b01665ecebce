"""Chunk codecs: none, lz4 block and zstd, as nydus frames them (one block or frame per chunk).

References: nydus utils/src/compress/mod.rs; docs/format.md §12.
"""

from __future__ import annotations

import threading
import zlib

import lz4.block
import pyzstd

from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format.rafs import CompressAlgo

ZSTD_LEVEL = 3  # nydus-image's zstd level
_ZSTD_OPTIONS: dict[int, int] = {pyzstd.CParameter.compressionLevel: ZSTD_LEVEL, pyzstd.CParameter.checksumFlag: 0}
# One compression context per thread: making one costs ~12 us, more than compressing a small file's chunk.
# Each call ends its frame (FLUSH_FRAME), so the bytes are those of a one-shot pyzstd.compress.
_zstd_contexts = threading.local()


def _zstd_compress(data: bytes | memoryview) -> bytes:
    context = getattr(_zstd_contexts, "compressor", None)
    if context is None:
        context = _zstd_contexts.compressor = pyzstd.ZstdCompressor(_ZSTD_OPTIONS)
    return context.compress(data, pyzstd.ZstdCompressor.FLUSH_FRAME)


def compress(data: bytes | memoryview, algo: CompressAlgo) -> tuple[bytes, bool]:
    """(stored bytes, compressed?). Output that is not strictly smaller is stored raw, as nydus does."""
    if algo is CompressAlgo.NONE or len(data) == 0:
        return bytes(data), False
    if algo is CompressAlgo.ZSTD:
        out = _zstd_compress(data)
    elif algo is CompressAlgo.LZ4_BLOCK:
        out = lz4.block.compress(data, store_size=False)
    else:
        raise UnsupportedError(f"compressor {algo.name.lower()} is not supported for writing")
    if len(out) >= len(data):
        return bytes(data), False
    return out, True


MAX_DECOMPRESSED = 1 << 30  # no one buffer a stranger's sizes ask for is larger (a chunk: 16 MiB; metadata: 1 GiB)


def decompress(data: bytes | memoryview, algo: CompressAlgo, size: int) -> bytes:
    """Decompress data that must expand to exactly `size` bytes (at most MAX_DECOMPRESSED): FormatError
    otherwise, whatever the codec says."""
    if not 0 <= size <= MAX_DECOMPRESSED:
        raise FormatError(f"{algo.name.lower()} data claims {size} bytes, over the {MAX_DECOMPRESSED >> 20} MiB limit")
    try:
        if algo is CompressAlgo.ZSTD:
            out = _zstd_decompress_bounded(data, size)
        elif algo is CompressAlgo.LZ4_BLOCK:
            out = lz4.block.decompress(data, uncompressed_size=size)
        elif algo is CompressAlgo.NONE:
            out = bytes(data)
        elif algo is CompressAlgo.GZIP:
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = decomp.decompress(data, size + 1)
        else:
            raise UnsupportedError(f"compressor {algo!r} is not supported")
    except (pyzstd.ZstdError, lz4.block.LZ4BlockError, ValueError, OverflowError, zlib.error) as exc:
        raise FormatError(f"{algo.name.lower()} data does not decompress: {exc}") from exc
    if len(out) != size:
        raise FormatError(f"{algo.name.lower()} data decompresses to {len(out)} bytes, expected {size}")
    return out


def _zstd_decompress_bounded(data: bytes | memoryview, size: int) -> bytes:
    """Decompress a zstd frame without ever producing more than size + 1 bytes."""
    decomp = pyzstd.ZstdDecompressor()
    out = decomp.decompress(data, max_length=size + 1)
    if len(out) <= size and not decomp.eof:
        raise FormatError("zstd frame is truncated")
    return out
