"""Blob -> device image: what the kernel reads through `mount -o device=` (nydusd's fscache blob cache).

Each chunk is decompressed, checked against its digest and written at its uncompressed offset; the
image is `uncompressed_size` bytes long, zeros where no chunk lies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nydus_py.blob.reader import BlobReader
from nydus_py.errors import FormatError
from nydus_py.util.fsutil import atomic_output
from nydus_py.image import BlobInfo


@dataclass(frozen=True, slots=True)
class DeviceImage:
    path: Path
    size: int
    chunks: int


def expand_blob(source: str | os.PathLike[str] | BlobReader, info: BlobInfo, out_path: str | os.PathLike[str],
                expected_digests: dict[int, bytes] | None = None) -> DeviceImage:
    """Write the device image of a blob to `out_path` (atomically), verifying every chunk.

    Digests come from the blob's own digest array when it has one, else from `expected_digests`
    (ci_index -> digest, e.g. from a bootstrap's chunk table); a chunk with neither is a FormatError.
    """
    with source if isinstance(source, BlobReader) else BlobReader(source) as blob:
        infos = blob.chunk_infos(blob.ci_header(info))
        digests = blob.chunk_digests()
        if digests is not None and len(digests) != len(infos):
            raise FormatError(f"{blob.path.name}: {len(digests)} chunk digests for {len(infos)} chunks")
        with atomic_output(out_path) as out:
            for chunk in infos:
                end = chunk.uncompressed_offset + chunk.uncompressed_size
                if end > info.uncompressed_size:
                    raise FormatError(f"{blob.path.name}: chunk {chunk.ci_index} ends at {end:#x}, past the device "
                                      f"image size {info.uncompressed_size:#x}")
                expected = digests[chunk.ci_index] if digests is not None else (expected_digests or {}).get(
                    chunk.ci_index)
                if expected is None:
                    raise FormatError(f"{blob.path.name}: chunk {chunk.ci_index} has no digest to verify against")
                data = blob.read_chunk(chunk, info.compressor, info.digester, expected)
                out.seek(chunk.uncompressed_offset)
                out.write(data)
            out.truncate(info.uncompressed_size)
    return DeviceImage(path=Path(out_path), size=info.uncompressed_size, chunks=len(infos))
