"""Per-layer trees -> one merged bootstrap; `nydus-py merge` of layer blobs or bootstraps.

The merged tree is the overlay of the layers (overlay.py); its device table lists the blobs the merged
tree references, in the order nydus-image merge gives them: first reference in `walk_bfs` order.
Layer blobs are kept whole: merging rewrites no data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from nydus_py.blob.reader import BlobReader, RandomAccess
from nydus_py.bootstrap.layout import LayoutPlan, plan_layout
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.bootstrap.writer import render_bootstrap
from nydus_py.errors import FormatError, UnsupportedError, UsageError
from nydus_py.format import rafs
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER, BlobFeatures
from nydus_py.image import BlobInfo, Bootstrap, is_blob_digest
from nydus_py.fsutil import file_sha256
from nydus_py.locate import find_blob_file, is_bootstrap
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
    """The blob table entry a merged bootstrap records: real id, file size, TOC size and digest (and, when
    given, the blob's index in the new table). The one rule for every merged or reused blob."""
    size, toc_digest, toc_size = _file_facts(blob)
    return replace(info, blob_id=blob_id, compressed_size=size, toc_digest=toc_digest, toc_size=toc_size,
                   features=info.features & ~BlobFeatures.INLINED_FS_META,
                   blob_index=info.blob_index if blob_index is None else blob_index)


def _file_facts(source: Path | RandomAccess) -> tuple[int, bytes, int]:
    """A blob's size, TOC digest and TOC size (zeros without a TOC)."""
    with BlobReader(source) as blob:
        toc = blob.toc_digest()
        size = blob.size
    toc_digest, toc_size = toc if toc is not None else (bytes(32), 0)
    return size, toc_digest, toc_size


@dataclass(slots=True)
class MergeInput:
    """One layer for `nydus-py merge`: its tree (chunks relabelled to global keys) and its own blob."""

    tree: Tree
    own_blob: str | None  # blob id of the layer's own blob (None for a bootstrap without one)
    compressor: CompressAlgo  # the layer bootstrap's superblock flags
    digester: DigestAlgo


def dataless_blob_info(path: Path | RandomAccess, blob_id: str, boot: Bootstrap, blob_index: int = 0) -> BlobInfo:
    """What we know of a layer blob that holds no chunk (deletions, metadata, empty files only): its
    bootstrap's blob table has no entry for it, so it is described by its file, TOC and superblock flags."""
    size, toc_digest, toc_size = _file_facts(path)
    return BlobInfo(blob_id=blob_id, blob_index=blob_index, chunk_size=boot.chunk_size, chunk_count=0,
                    compressor=boot.compressor, digester=boot.digester, features=BlobFeatures(0),
                    compressed_size=size, uncompressed_size=0, ci_compressor=CompressAlgo.NONE, ci_offset=0,
                    ci_compressed_size=0, ci_uncompressed_size=0, toc_size=toc_size, toc_digest=toc_digest)


def read_layer(path: Path, blob_dir: Path | None, blobs: dict[str, tuple[int, BlobInfo, Path]]) -> MergeInput:
    """Load a layer blob (inline bootstrap) or a plain bootstrap; register its blobs in `blobs`."""
    try:
        head = path.open("rb").read(1028)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read layer: {exc.strerror}") from exc
    own: str | None = None
    located: dict[str, Path] = {}

    def register(table: list[BlobInfo]) -> dict[int, int]:
        """Give every blob of this layer its key in `blobs` (found files, final table entries). In a layer
        blob, the placeholder id (or, from older builders, a table of one) names the blob itself."""
        mapping = {}
        for info in table:
            blob_id = info.blob_id
            if own is not None and (blob_id == BLOB_ID_PLACEHOLDER or len(table) == 1):
                blob_id = own
            elif blob_id == BLOB_ID_PLACEHOLDER:
                raise UsageError(f"{path}: bootstrap names its blob by a placeholder; merge the layer blob instead")
            if blob_id not in blobs:
                blob_path = located.get(blob_id) or _find_blob(path, blob_id, blob_dir)
                blobs[blob_id] = (len(blobs), final_blob_info(info, blob_path, blob_id), blob_path)
            mapping[info.blob_index] = blobs[blob_id][0]
        return mapping

    if is_bootstrap(head):
        boot = read_bootstrap(path.read_bytes(), register)
    else:
        with BlobReader(path) as reader:
            data = reader.inline_bootstrap()
        if data is None or not is_bootstrap(data):
            raise FormatError(f"{path}: neither a bootstrap nor a layer blob with an inline bootstrap")
        own = file_sha256(path)
        located[own] = path
        boot = read_bootstrap(data, register)
        if own not in blobs:  # a layer without data still has its blob, a layer of the image
            blobs[own] = (len(blobs), dataless_blob_info(path, own, boot), path)
    return MergeInput(tree=boot.tree, own_blob=own, compressor=boot.compressor, digester=boot.digester)


def _find_blob(layer: Path, blob_id: str, blob_dir: Path | None) -> Path:
    """A blob a layer references: in --blob-dir (flat or an OCI blobs/sha256/), or beside the layer."""
    folders = ([blob_dir, blob_dir / "blobs" / "sha256"] if blob_dir else []) + [layer.parent]
    if not is_blob_digest(blob_id):
        raise FormatError(f"{layer}: blob id {blob_id!r} is not 64 lowercase hex digits: it cannot name a file")
    found = find_blob_file(folders, blob_id)
    if found is None:
        raise UsageError(f"{layer}: blob {blob_id} not found (give --blob-dir)")
    return found


def relabel(tree: Tree, mapping: dict[int, int]) -> None:  # for trees read without read_bootstrap(relabel=)
    """Rewrite every chunk's blob_index through `mapping` (in place; each inode once)."""
    done: set[int] = set()
    for inode in walk_bfs(tree):
        if inode.chunks and id(inode) not in done:
            done.add(id(inode))
            inode.chunks = [c._replace(blob_index=mapping[c.blob_index]) for c in inode.chunks]
