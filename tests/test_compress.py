"""nydus_py.blob.compress: each codec round-trips a chunk, stores data raw when compressing does not shrink it,
and refuses data that does not expand to exactly the recorded size."""

from __future__ import annotations

import pytest

from nydus_py.blob.compress import compress, decompress
from nydus_py.errors import FormatError
from nydus_py.format.rafs import CompressAlgo

DATA = b"nydus " * 1000


@pytest.mark.parametrize("algo", [CompressAlgo.NONE, CompressAlgo.LZ4_BLOCK, CompressAlgo.ZSTD])
def test_round_trip(algo: CompressAlgo) -> None:
    stored, compressed = compress(DATA, algo)
    assert compressed is (algo is not CompressAlgo.NONE)
    assert decompress(stored, algo if compressed else CompressAlgo.NONE, len(DATA)) == DATA


def test_incompressible_data_is_stored_raw() -> None:
    import os

    noise = os.urandom(4096)
    assert compress(noise, CompressAlgo.ZSTD) == (noise, False)


@pytest.mark.parametrize("algo", [CompressAlgo.LZ4_BLOCK, CompressAlgo.ZSTD])
def test_wrong_size_or_garbage_is_a_format_error(algo: CompressAlgo) -> None:
    stored, _ = compress(DATA, algo)
    with pytest.raises(FormatError):
        decompress(stored, algo, len(DATA) - 1)
    with pytest.raises(FormatError, match="does not decompress|truncated"):
        decompress(b"\x00garbage", algo, len(DATA))
