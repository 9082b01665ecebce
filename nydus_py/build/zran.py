"""OCI-reference (zran) layers: a gzip layer -> a small meta blob whose chunks point into the layer itself.

The layer is read once, in order: its gzip stream is inflated by the zran reader (which notes every deflate
block boundary), the tar inside by our tar reader straight from it (no buffering in between, so each chunk's
read is seen on its own), and for each chunk the indexer picks its decompression context. Nothing of the data
is stored: the meta blob holds the chunk info (v2: gzip range, context, offset), the contexts with their
windows, the chunk digests (sha256, as nydus-image 2.2 forces for `targz-ref`), the layer's bootstrap and a
TOC. Its blob table entry names the original layer (its digest and size), which nydusd fetches.
References: docs/format.md §11.10; nydus src/bin/nydus-image/builder/tarball.rs (targz-ref),
src/bin/nydus-image/core/node.rs (read_file_chunk: one context choice per chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nydus_py.blob.chunker import ChunkStats
from nydus_py.blob.digests import crc32c
from nydus_py.blob.writer import BlobWriter
from nydus_py.blob.zran import GzipIndexReader, ZranIndexer
from nydus_py.bootstrap.layout import LayoutPlan
from nydus_py.bootstrap.writer import render_bootstrap, render_meta_area
from nydus_py.build.config import BuildConfig
from nydus_py.build.plan import plan_bootstrap
from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.image import BlobInfo
from nydus_py.model import ChunkRef, Tree
from nydus_py.sources.gzipref import ZranLayer
from nydus_py.sources.tarball import TarSource
from nydus_py.util.fsutil import Readable


@dataclass(slots=True)
class ZranResult:
    tree: Tree
    info: BlobInfo  # the final blob table entry (the layer's id and size; the meta blob's digest and size)
    path: Path | None
    plan: LayoutPlan
    meta_area: bytes
    stats: ChunkStats


def build_zran_layer(index: int, layer: ZranLayer, workdir: Path, config: BuildConfig, *,
                     blob_output: BinaryIO | None = None, inline_prefetch: tuple[bytes, ...] = (),
                     progress: Callable[[int], None] | None = None) -> ZranResult:
    """Read the gzip layer once and write its meta blob (a temporary file in `workdir`, or `blob_output` in
    order); UnsupportedError when the layer cannot be referenced in place (several gzip members, sparse
    members), FormatError when it is corrupt."""
    reader = _HashingGzip(layer.raw, layer.name)
    indexer = ZranIndexer(reader.gzip)
    source = TarSource(reader.gzip, layer.name, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns,
                       decompress=False)
    # the chunk info is compressed as TOC metadata always is (zstd); the chunks themselves stay gzip
    writer = BlobWriter(workdir, blob_index=index, chunk_size=config.chunk_size, compressor=CompressAlgo.ZSTD,
                        digester=DigestAlgo.SHA256, output=blob_output)
    chunk_size = config.chunk_size
    stored: dict[tuple[bytes, int], ChunkRef] = {}
    stats = ChunkStats()
    try:
        for file in source.files():
            if file.extents is not None:
                raise UnsupportedError(f"{layer.name}: {file.path.decode(errors='replace')}: a sparse member cannot "
                                       "be referenced in place")
            refs = []
            pieces = iter(file.pieces(chunk_size))
            for _ in range(-(-file.inode.size // chunk_size)):
                indexer.begin(chunk_size)  # before the chunk's bytes are read: its context is chosen here
                offset, length, data = next(pieces)
                chunk = indexer.end()
                assert data is not None
                digest = hashlib.sha256(data).digest()
                ref = stored.get((digest, length))
                if ref is None:
                    ref = stored[(digest, length)] = writer.append_zran_chunk(length, digest, crc32c(data), offset,
                                                                              chunk)
                    stats.stored += 1
                    stats.bytes_stored += length
                else:
                    stats.dedup_hits += 1
                refs.append(ref)
            file.inode.chunks = refs
            stats.files += 1
            stats.chunks += len(refs)
            stats.bytes_in += file.inode.size
            if progress is not None:
                progress(file.inode.size)
        reader.gzip.drain()
        layer_id = reader.digest()
        if layer.expected is not None and f"sha256:{layer_id}" != layer.expected:
            raise FormatError(f"{layer.name}: the layer does not match its digest")
        data_info = writer.finish_zran_data(indexer.finished(), layer_id, reader.gzip.read_in)
        try:
            plan, _ = plan_bootstrap(source.tree, {index: data_info}, chunk_size=chunk_size,
                                     compressor=CompressAlgo.GZIP, digester=DigestAlgo.SHA256,
                                     prefetch=inline_prefetch)
        except (FormatError, UnsupportedError) as exc:  # the tree's rules name a path: add the layer
            raise type(exc)(f"{layer.name}: {exc}") from None
        meta_area = render_meta_area(plan)
        info = writer.finish(render_bootstrap(plan, meta_area))
    except BaseException:
        writer.discard()
        raise
    finally:
        reader.gzip.close()
    return ZranResult(tree=source.tree, info=info, path=writer.path, plan=plan, meta_area=meta_area, stats=stats)


class _HashingGzip:
    """The zran reader over `raw`, its gzip bytes hashed as they are read (the layer's id)."""

    def __init__(self, raw: Readable, name: str) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.gzip = GzipIndexReader(self, name)

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        return data

    def digest(self) -> str:
        return self._hash.hexdigest()


__all__ = ["ZranResult", "build_zran_layer"]
