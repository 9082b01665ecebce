"""Tree + blob table -> a bootstrap's layout plan and bytes; the blob table entries a bootstrap records.

Every bootstrap nydus-py writes goes through here: a layer blob's inline bootstrap, the plain bootstrap of
a build, and a merge's. Its device table lists the blobs the tree references, in the order nydus-image merge
gives them (first reference in `walk_bfs` order), and at most `rafs.MAX_BLOBS` of them.
References: docs/format.md §5, §6, §14.2; nydus `src/bin/nydus-image/merge.rs`.
"""

from __future__ import annotations

from pathlib import Path

from nydus_py.blob.reader import BlobReader, RandomAccess
from nydus_py.bootstrap.layout import LayoutPlan, plan_layout
from nydus_py.bootstrap.writer import render_bootstrap
from nydus_py.errors import UnsupportedError
from nydus_py.format import rafs
from nydus_py.format.blobmeta import BlobFeatures
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.image import BlobInfo, Bootstrap
from nydus_py.model import Tree, walk_bfs


def referenced_blobs(tree: Tree) -> list[int]:
    """Blob keys (ChunkRef.blob_index) the tree uses, in order of first reference."""
    seen: dict[int, None] = {}
    for inode in walk_bfs(tree):
        for chunk in inode.chunks:
            seen.setdefault(chunk.blob_index)
    return list(seen)


def bootstrap_bytes(tree: Tree, blobs: dict[int, BlobInfo], *, chunk_size: int, compressor: CompressAlgo,
                    digester: DigestAlgo, prefetch: tuple[bytes, ...] = ()) -> tuple[bytes, list[int]]:
    """Render a bootstrap of `tree` whose device table is the blobs it references; (bytes, their keys)."""
    plan, keys = plan_bootstrap(tree, blobs, chunk_size=chunk_size, compressor=compressor, digester=digester,
                                prefetch=prefetch)
    return render_bootstrap(plan), keys


def plan_bootstrap(tree: Tree, blobs: dict[int, BlobInfo], *, chunk_size: int, compressor: CompressAlgo,
                   digester: DigestAlgo, prefetch: tuple[bytes, ...] = ()) -> tuple[LayoutPlan, list[int]]:
    """The layout of `bootstrap_bytes`, for a caller that renders it (and may reuse it); (plan, blob keys)."""
    keys = referenced_blobs(tree)
    if len(keys) > rafs.MAX_BLOBS:
        raise UnsupportedError(f"the merged image references {len(keys)} blobs; RAFS v6 allows at most "
                               f"{rafs.MAX_BLOBS}")
    plan = plan_layout(tree, [blobs[k] for k in keys], chunk_size=chunk_size, compressor=compressor,
                       digester=digester, blob_keys=keys, prefetch_paths=list(prefetch))
    return plan, keys


def final_blob_info(info: BlobInfo, blob: Path | RandomAccess, blob_id: str, blob_index: int | None = None) -> BlobInfo:
    """The blob table entry a merged bootstrap records for a blob file found on disk (or in a registry): its
    facts read from the file (`BlobInfo.merged_entry`)."""
    size, toc_digest, toc_size = _file_facts(blob)
    return info.merged_entry(file_id=blob_id, file_size=size, toc_digest=toc_digest, toc_size=toc_size,
                             blob_index=blob_index)


def dataless_blob_info(blob: Path | RandomAccess, blob_id: str, boot: Bootstrap, blob_index: int = 0) -> BlobInfo:
    """What we know of a layer blob that holds no chunk (deletions, metadata, empty files only): its
    bootstrap's blob table has no entry for it, so it is described by its file, TOC and superblock flags."""
    size, toc_digest, toc_size = _file_facts(blob)
    return BlobInfo(blob_id=blob_id, blob_index=blob_index, chunk_size=boot.chunk_size, chunk_count=0,
                    compressor=boot.compressor, digester=boot.digester, features=BlobFeatures(0),
                    compressed_size=size, uncompressed_size=0, ci_compressor=CompressAlgo.NONE, ci_offset=0,
                    ci_compressed_size=0, ci_uncompressed_size=0, toc_size=toc_size, toc_digest=toc_digest)


def _file_facts(source: Path | RandomAccess) -> tuple[int, bytes, int]:
    """A blob's size, TOC digest and TOC size (zeros without a TOC)."""
    with BlobReader(source) as blob:
        toc = blob.toc_digest()
        size = blob.size
    toc_digest, toc_size = toc if toc is not None else (bytes(32), 0)
    return size, toc_digest, toc_size


def relabel(tree: Tree, mapping: dict[int, int]) -> None:  # for trees read without read_bootstrap(relabel=)
    """Rewrite every chunk's blob_index through `mapping` (in place; each inode once; unmapped ones kept)."""
    done: set[int] = set()
    for inode in walk_bfs(tree):
        if inode.chunks and id(inode) not in done:
            done.add(id(inode))
            inode.chunks = [c._replace(blob_index=mapping.get(c.blob_index, c.blob_index)) for c in inode.chunks]


__all__ = ["bootstrap_bytes", "dataless_blob_info", "final_blob_info", "plan_bootstrap", "referenced_blobs",
           "relabel"]
