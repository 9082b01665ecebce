"""Chunk digests (blake3 or sha256 of the uncompressed data) and the chunk table's CRC-32C."""

from __future__ import annotations

import hashlib

import blake3
import crc32c as _crc32c

from nydus_py.format.rafs import DigestAlgo


def chunk_digest(data: bytes | memoryview, algo: DigestAlgo) -> bytes:
    if algo is DigestAlgo.BLAKE3:
        return blake3.blake3(data).digest()
    return hashlib.sha256(data).digest()


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli, iSCSI) as nydus stores it in the chunk table."""
    return _crc32c.crc32c(data)

