"""Chunk dictionaries: chunks a build references in another image's blobs instead of storing them again
(nydus-image `create --chunk-dict bootstrap=PATH`).

A dictionary is a bootstrap: its blob table says which blobs hold its chunks, its chunk table (or, lacking
one, its files) says where each chunk lies. A chunk of the build whose digest and size the dictionary has is
recorded as the dictionary's (its blob, chunk-info index, offsets and sizes, copied as they are) and not
written to the layer's blob; every other chunk is stored as before. The dictionary's blobs a build uses join
its blob table, in order of first reference like every blob (docs/format.md §14.2). References:
docs/format.md §14.4; nydus `src/bin/nydus-image/core/chunk_dict.rs` (`HashChunkDict`), `core/node.rs`
(`deduplicate_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from nydus_py.blob.reader import BlobReader, RandomAccess, find_blob_file
from nydus_py.bootstrap.reader import is_bootstrap, read_bootstrap, read_bootstrap_file, read_tables
from nydus_py.build.plan import final_blob_info
from nydus_py.errors import FormatError, UsageError
from nydus_py.format import erofs, rafs
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.format.rafs import DigestAlgo
from nydus_py.image import BlobInfo, is_blob_digest
from nydus_py.model import ChunkRef, Tree, walk_bfs
from nydus_py.util.fsutil import Readable, file_sha256, read_head

DICT_KEY_BASE = 1 << 16  # blob keys of a dictionary's blobs in a build: never a layer's index


@dataclass(frozen=True, slots=True)
class DictBlob:
    """One blob of a dictionary: its table entry as a bootstrap that references it records it (real id, file
    size, TOC), and where its bytes are when known: `source` for reading parts of it (a file, a registry
    blob), `open` for streaming it whole (checked against its id by whoever copies it)."""

    info: BlobInfo
    source: Path | RandomAccess | None = None
    open: Callable[[], Readable] | None = None
    repository: tuple[str, str] | None = None  # (registry, repository) of a dictionary image: mountable from


@dataclass(slots=True)
class ChunkDict:
    """A loaded dictionary: its blobs and, by (digest, uncompressed size), the chunk to reference (its
    blob_index is `DICT_KEY_BASE` + the blob's position in `blobs`)."""

    name: str
    chunk_size: int
    digester: DigestAlgo
    blobs: list[DictBlob]
    chunks: dict[tuple[bytes, int], ChunkRef]

    def infos(self) -> dict[int, BlobInfo]:
        """Blob key -> table entry, for every blob of the dictionary."""
        return {DICT_KEY_BASE + i: blob.info for i, blob in enumerate(self.blobs)}

    def blob(self, key: int) -> DictBlob | None:
        """The dictionary blob of a build's blob key (None: not a dictionary blob)."""
        position = key - DICT_KEY_BASE
        return self.blobs[position] if 0 <= position < len(self.blobs) else None

    def check_fits(self, chunk_size: int, digester: DigestAlgo) -> None:
        """A dictionary serves a build with its chunk size and digester only (nydus `check_compatibility`;
        a digest of another algorithm would never match, so say so rather than dedup nothing)."""
        if chunk_size != self.chunk_size:
            raise UsageError(f"{self.name}: the chunk dictionary has {self.chunk_size:#x}-byte chunks, the build "
                             f"{chunk_size:#x} (--chunk-size)")
        if digester != self.digester:
            raise UsageError(f"{self.name}: the chunk dictionary's chunks are named by {self.digester.name.lower()}, "
                             f"the build's by {digester.name.lower()} (--digester)")


def dictionary_path(arg: str) -> str:
    """nydus-image's `--chunk-dict` value: `bootstrap=PATH` or a bare PATH (nydus `parse_chunk_dict_arg`:
    split at the first `=`, and `bootstrap` is the only type)."""
    kind, sep, path = arg.partition("=")
    if not sep:
        return arg
    if kind != "bootstrap":
        raise UsageError(f"--chunk-dict {arg}: invalid chunk dict type {kind!r} (only bootstrap=PATH)")
    if not path:
        raise UsageError(f"--chunk-dict {arg}: no path")
    return path


def load_chunk_dict(data: bytes, name: str, *, own: tuple[str, Path | RandomAccess] | None = None,
                    find: Callable[[str], Path | RandomAccess | None] | None = None) -> ChunkDict:
    """A dictionary from a bootstrap's bytes (plain, merged, or a layer blob's inline one). `own` is (id,
    file) of the layer blob the bootstrap came from, whose entry carries the placeholder id; `find` locates
    the other blobs by id. FormatError when the bootstrap is malformed or lists more blobs than RAFS v6
    allows."""
    def keys(table: list[BlobInfo]) -> dict[int, int]:
        return {info.blob_index: DICT_KEY_BASE + i for i, info in enumerate(table)}

    try:
        tables = read_tables(data, keys)
        if not tables.chunk_table:  # a bootstrap without a chunk table: its chunks are in its files
            tables.chunk_table = [c for inode in walk_bfs(read_bootstrap(data, keys).tree) for c in inode.chunks]
    except FormatError as exc:
        raise FormatError(f"{name}: not a usable chunk dictionary: {exc}") from None
    if not tables.is_rafs:
        raise FormatError(f"{name}: a plain EROFS image, not a RAFS bootstrap: it has no chunks to share")
    if len(tables.blobs) > rafs.MAX_BLOBS:
        raise FormatError(f"{name}: the chunk dictionary lists {len(tables.blobs)} blobs; RAFS v6 allows at most "
                          f"{rafs.MAX_BLOBS}")
    blobs = [_dict_blob(info, name, own, find) for info in tables.blobs]
    chunks: dict[tuple[bytes, int], ChunkRef] = {}
    # the chunk table is sorted by digest, then blob: a chunk in several blobs is taken from the first, as
    # nydus-image takes it
    for ref in tables.chunk_table:
        _check_chunk(ref, blobs, tables.chunk_size, name)
        chunks.setdefault((ref.digest, ref.uncompressed_size), ref)
    return ChunkDict(name=name, chunk_size=tables.chunk_size, digester=tables.digester, blobs=blobs, chunks=chunks)


def _check_chunk(ref: ChunkRef, blobs: list[DictBlob], chunk_size: int, name: str) -> None:
    """A dictionary chunk is copied into the bootstraps that use it: it must lie in a blob of the dictionary,
    inside that blob's data and device image, at a block the device table can address."""
    position = ref.blob_index - DICT_KEY_BASE
    where = f"{name}: chunk {ref.digest.hex()[:16]}"
    if not 0 <= position < len(blobs):
        raise FormatError(f"{where}: names blob {ref.blob_index}, which is not in the dictionary's blob table")
    info = blobs[position].info
    if not 0 < ref.uncompressed_size <= chunk_size or ref.uncompressed_offset % erofs.EROFS_BLKSIZ \
            or ref.uncompressed_offset + ref.uncompressed_size > info.uncompressed_size \
            or ref.uncompressed_offset // erofs.EROFS_BLKSIZ >= 1 << 32:
        raise FormatError(f"{where}: uncompressed range {ref.uncompressed_offset:#x}+{ref.uncompressed_size:#x} is not "
                          f"a chunk of blob {info.blob_id}")
    if ref.compressed_offset + ref.compressed_size > info.compressed_size or ref.ci_index >= info.chunk_count:
        raise FormatError(f"{where}: lies past the data or the chunk info of blob {info.blob_id}")


def verify_references(chunk_dict: ChunkDict, tree: Tree) -> None:
    """Before an image that uses a dictionary is published: each dictionary blob it references (when its bytes
    are at hand) has the chunk info its table entry claims, and every chunk taken from it reads back and
    matches its digest (a dictionary comes from a stranger). FormatError naming the blob otherwise."""
    used: dict[int, dict[int, ChunkRef]] = {}
    for inode in walk_bfs(tree):
        for ref in inode.chunks:
            if chunk_dict.blob(ref.blob_index) is not None:
                used.setdefault(ref.blob_index, {}).setdefault(ref.ci_index, ref)
    for key, refs in used.items():
        blob = chunk_dict.blob(key)
        assert blob is not None
        if blob.source is None:
            continue  # not at hand: the image cannot carry it either, and says so
        info = blob.info
        with BlobReader(blob.source) as reader:
            header = reader.ci_header(info)
            claimed = (info.ci_compressor, info.ci_offset, info.ci_compressed_size, info.ci_uncompressed_size,
                       info.chunk_count)
            if (header.ci_compressor, header.ci_offset, header.ci_compressed_size, header.ci_uncompressed_size,
                    header.ci_entries) != claimed:
                raise FormatError(f"{chunk_dict.name}: blob {info.blob_id}: its chunk info is not what the "
                                  "dictionary's blob table says")
            try:
                for ref in refs.values():
                    reader.read_chunk(ref, info.compressor, chunk_dict.digester, ref.digest)
            except FormatError as exc:
                raise FormatError(f"{chunk_dict.name}: blob {info.blob_id}: {exc}") from None


def _dict_blob(info: BlobInfo, name: str, own: tuple[str, Path | RandomAccess] | None,
               find: Callable[[str], Path | RandomAccess | None] | None) -> DictBlob:
    if info.blob_id == BLOB_ID_PLACEHOLDER:
        if own is None:
            raise FormatError(f"{name}: a layer's bootstrap names its blob by a placeholder; give the layer blob "
                              "as the chunk dictionary")
        blob_id, source = own
        return DictBlob(info=final_blob_info(info, source, blob_id), source=source, open=_opener(source))
    if info.is_separate:  # nydus-snapshotter builds no zran layer with a dictionary either
        raise UsageError(f"{name}: blob {info.blob_id} is a zran blob (its chunks are in a gzip layer): a zran "
                         "image is no chunk dictionary")
    if not is_blob_digest(info.file_id):
        raise FormatError(f"{name}: blob id {info.file_id!r} is not 64 lowercase hex digits")
    found = find(info.file_id) if find is not None else None
    return DictBlob(info=replace(info, blob_index=0), source=found, open=_opener(found))


def _opener(source: Path | RandomAccess | None) -> Callable[[], Readable] | None:
    if not isinstance(source, Path):
        return None
    path = source
    return lambda: path.open("rb")


def read_chunk_dict_file(path: Path, blob_dir: Path | None = None) -> ChunkDict:
    """A dictionary from a file: a bootstrap (its blobs looked for in `blob_dir`, `blobs/sha256/` beside it,
    and beside it) or a layer blob with its bootstrap inline (the blob itself then one of its blobs)."""
    name = str(path)
    head = read_head(path, 4096, "the chunk dictionary")
    folders = [*([blob_dir, blob_dir / "blobs" / "sha256"] if blob_dir else []), path.parent / "blobs" / "sha256",
               path.parent]

    def find(blob_id: str) -> Path | None:
        return find_blob_file(folders, blob_id)

    if is_bootstrap(head):
        return load_chunk_dict(read_bootstrap_file(path), name, find=find)
    with BlobReader(path) as reader:
        data = reader.inline_bootstrap()
    if data is None:
        raise FormatError(f"{name}: neither a bootstrap nor a layer blob with its bootstrap inline")
    return load_chunk_dict(data, name, own=(file_sha256(path), path), find=find)


__all__ = ["DICT_KEY_BASE", "ChunkDict", "DictBlob", "dictionary_path", "load_chunk_dict", "read_chunk_dict_file",
           "verify_references"]
