"""The merge step on files: per-layer blobs or bootstraps -> one merged bootstrap.

Two callers, one rule set. `merge_layer_files` (`nydus-py merge`) reads layer blobs (their inline
bootstraps) or plain bootstraps whose blobs it finds on disk, and describes every blob from its file.
`merge_bootstraps` (`nydus-py-image merge`, as nydus-snapshotter's converter and BuildKit call it) reads
per-layer bootstraps alone: what it knows of each layer's blob comes from the command line (`BlobFacts`) or
the bootstrap's own table, as nydus-image merge does. Both overlay the layer trees (overlay.py) and render
the bootstrap (plan.py); layer blobs are kept whole, no data is rewritten.
References: docs/format.md §14.2; nydus `src/bin/nydus-image/merge.rs`; docs/oci.md §3.3.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from nydus_py.blob.chunker import ChunkStats
from nydus_py.blob.reader import BlobReader, find_blob_file
from nydus_py.bootstrap.reader import is_bootstrap, read_bootstrap, read_bootstrap_file
from nydus_py.build import overlay
from nydus_py.build.config import BuildConfig
from nydus_py.build.plan import bootstrap_bytes, dataless_blob_info, final_blob_info, relabel
from nydus_py.errors import FormatError, UsageError
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.build.chunkdict import DICT_KEY_BASE
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.image import BlobInfo, is_blob_digest
from nydus_py.model import Tree
from nydus_py.util.fsutil import file_sha256
from nydus_py.util.gcpause import without_cyclic_gc


@dataclass(slots=True)
class MergeInput:
    """One layer of a merge: its tree (chunks relabelled to global keys) and its own blob."""

    tree: Tree
    own_blob: str | None  # blob id of the layer's own blob (None for a bootstrap without one)
    compressor: CompressAlgo  # the layer bootstrap's superblock flags
    digester: DigestAlgo
    chunk_size: int


@dataclass(slots=True)
class MergedImage:
    """A merge's result: every blob by key (final table entry, file when known), the layers' own blobs in layer
    order, and the merged bootstrap with its device table (`keys`)."""

    blobs: dict[int, tuple[BlobInfo, Path | None]]
    own_blobs: list[int]  # keys of the layers' own blobs, in layer order
    merged: Tree
    bootstrap: bytes
    keys: list[int]
    compressor: CompressAlgo
    stats: ChunkStats = field(default_factory=ChunkStats)

    @property
    def device_table(self) -> list[BlobInfo]:
        return [self.blobs[k][0] for k in self.keys]


def _merge(layers: list[MergeInput], infos: dict[int, BlobInfo], prefetch: tuple[bytes, ...],
           default_chunk_size: int) -> tuple[Tree, bytes, list[int]]:
    """Overlay the layers and render the bootstrap; compressor and digester flags come from the last layer's
    bootstrap, as nydus-image merge takes them."""
    # a blob without chunks has no chunk size of its own to disagree with
    sizes = {info.chunk_size for info in infos.values() if info.chunk_count}
    if len(sizes) > 1:
        raise UsageError(f"layers use different chunk sizes ({', '.join(hex(s) for s in sorted(sizes))}): cannot merge")
    merged = overlay.merge_layers([layer.tree for layer in layers])
    plain, keys = bootstrap_bytes(merged, infos, chunk_size=sizes.pop() if sizes else default_chunk_size,
                                  compressor=layers[-1].compressor, digester=layers[-1].digester, prefetch=prefetch)
    return merged, plain, keys


# --- nydus-py merge: layer blobs, or bootstraps whose blobs are on disk -------------------------------------


@without_cyclic_gc
def merge_layer_files(inputs: list[Path], blob_dir: Path | None, config: BuildConfig) -> MergedImage:
    """Merge layer blobs (or bootstraps with real blob ids, their blobs in `blob_dir`), lowest first."""
    if not inputs:
        raise UsageError("no layers given")
    registry: dict[str, tuple[int, BlobInfo, Path]] = {}
    layers = [read_layer(p, blob_dir, registry) for p in inputs]
    infos = {key: info for key, info, _ in registry.values()}
    merged, plain, keys = _merge(layers, infos, config.prefetch_patterns, config.chunk_size)
    blobs: dict[int, tuple[BlobInfo, Path | None]] = {key: (info, path) for key, info, path in registry.values()}
    return MergedImage(blobs=blobs, own_blobs=[registry[layer.own_blob][0] for layer in layers
                                                if layer.own_blob is not None],
                       merged=merged, bootstrap=plain, keys=keys, compressor=layers[-1].compressor)


def read_layer(path: Path, blob_dir: Path | None, blobs: dict[str, tuple[int, BlobInfo, Path]]) -> MergeInput:
    """Load a layer blob (inline bootstrap) or a plain bootstrap; register its blobs in `blobs`."""
    try:
        with path.open("rb") as f:
            head = f.read(1028)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read layer: {exc.strerror}") from exc
    own: str | None = None  # the layer blob's file id
    own_id: str | None = None  # the id its blob is listed under (a zran blob's: the original layer's)
    located: dict[str, Path] = {}

    def register(table: list[BlobInfo]) -> dict[int, int]:
        """Give every blob of this layer its key in `blobs` (found files, final table entries). In a layer
        blob, the placeholder id (or, from older builders, a table of one) names the blob itself."""
        mapping = {}
        for info in table:
            nonlocal own_id
            blob_id = file_id = info.blob_id
            if own is not None and info.is_separate and len(table) == 1:  # a zran meta blob: the file is own
                file_id, own_id = own, blob_id
            elif own is not None and (blob_id == BLOB_ID_PLACEHOLDER or len(table) == 1):
                blob_id = file_id = own
            elif blob_id == BLOB_ID_PLACEHOLDER:
                raise UsageError(f"{path}: bootstrap names its blob by a placeholder; merge the layer blob instead")
            if blob_id not in blobs:
                blob_path = located.get(file_id) or _find_blob(path, file_id, blob_dir)
                blobs[blob_id] = (len(blobs), final_blob_info(info, blob_path, file_id), blob_path)
            mapping[info.blob_index] = blobs[blob_id][0]
        return mapping

    if is_bootstrap(head):
        boot = read_bootstrap(read_bootstrap_file(path), register)
    else:
        with BlobReader(path) as reader:
            data = reader.inline_bootstrap()
        if data is None or not is_bootstrap(data):
            raise FormatError(f"{path}: neither a bootstrap nor a layer blob with an inline bootstrap")
        own = own_id = file_sha256(path)
        located[own] = path
        boot = read_bootstrap(data, register)
        if own_id not in blobs:  # a layer without data still has its blob, a layer of the image
            blobs[own_id] = (len(blobs), dataless_blob_info(path, own, boot), path)
    return MergeInput(tree=boot.tree, own_blob=own_id, compressor=boot.compressor, digester=boot.digester,
                      chunk_size=boot.chunk_size)


def _find_blob(layer: Path, blob_id: str, blob_dir: Path | None) -> Path:
    """A blob a layer references: in --blob-dir (flat or an OCI blobs/sha256/), or beside the layer."""
    folders = ([blob_dir, blob_dir / "blobs" / "sha256"] if blob_dir else []) + [layer.parent]
    if not is_blob_digest(blob_id):
        raise FormatError(f"{layer}: blob id {blob_id!r} is not 64 lowercase hex digits: it cannot name a file")
    found = find_blob_file(folders, blob_id)
    if found is None:
        raise UsageError(f"{layer}: blob {blob_id} not found (give --blob-dir)")
    return found


# --- nydus-py-image merge: per-layer bootstraps, blob facts from the command line ------------------------


@dataclass(frozen=True, slots=True)
class BlobFacts:
    """What the caller says of one layer's blob (nydus-image merge's `--blob-digests`, `--blob-sizes`,
    `--blob-toc-digests`, `--blob-toc-sizes`); None: take the bootstrap's own table entry."""

    blob_id: str | None = None  # 64 hex digits
    size: int | None = None
    toc_digest: bytes | None = None  # 32 bytes
    toc_size: int | None = None


@without_cyclic_gc
def merge_bootstraps(inputs: list[Path], facts: list[BlobFacts], prefetch: tuple[bytes, ...],
                     dictionary: frozenset[str] = frozenset()) -> MergedImage:
    """Merge per-layer bootstraps (lowest first), each with at most one blob of its own, named by `facts`, its
    own non-placeholder id, or the bootstrap's file name (nydus-snapshotter names each extracted bootstrap by
    its layer digest's hex). A layer built with a chunk dictionary also references the dictionary's blobs:
    its own is the one with the placeholder id, or the one not among `dictionary`'s blob ids (nydus-image
    merge `--chunk-dict`)."""
    if len(facts) != len(inputs):
        raise UsageError(f"{len(facts)} blob descriptions for {len(inputs)} bootstraps")
    layers: list[MergeInput] = []
    infos: dict[int, BlobInfo] = {}
    own_blobs: list[int] = []
    referenced: dict[str, tuple[int, BlobInfo]] = {}  # other blobs the layers reference, by id, once each
    first_key: dict[str, int] = {}  # blob id -> the key of the first layer that has it
    for source, fact in zip(inputs, facts, strict=True):
        key = len(infos)
        layer, info = _read_layer_bootstrap(source, key, fact, dictionary, referenced)
        layers.append(layer)
        if info is None:
            continue
        if info.file_id in first_key:  # two layers of one blob are one blob, as nydus-image merges them
            relabel(layer.tree, {key: first_key[info.file_id]})
            continue
        first_key[info.file_id] = key
        own_blobs.append(key)
        infos[key] = info
    infos.update(referenced.values())
    merged, plain, keys = _merge(layers, infos, prefetch, layers[-1].chunk_size)
    return MergedImage(blobs={key: (info, None) for key, info in infos.items()}, own_blobs=own_blobs,
                       merged=merged, bootstrap=plain, keys=keys, compressor=layers[-1].compressor)


def _read_layer_bootstrap(source: Path, key: int, facts: BlobFacts, dictionary: frozenset[str],
                          referenced: dict[str, tuple[int, BlobInfo]]) -> tuple[MergeInput, BlobInfo | None]:
    """One layer's tree (its own blob's chunks relabelled to `key`, other blobs' to their keys in
    `referenced`) and its own blob's entry as the merged table records it."""
    data = read_bootstrap_file(source)
    if not is_bootstrap(data):
        raise UsageError(f"{source}: not a RAFS bootstrap")
    own: list[BlobInfo] = []

    def keys_of(table: list[BlobInfo]) -> dict[int, int]:
        own.extend(_own_entries(table, dictionary))
        if len(own) > 1:
            raise UsageError(f"{source}: invalid per layer bootstrap, having multiple associated data blobs")
        mapping = {}
        for info in table:
            if info in own:
                mapping[info.blob_index] = key
                continue
            if not is_blob_digest(info.blob_id):
                raise FormatError(f"{source}: blob id {info.blob_id!r} is not 64 lowercase hex digits")
            entry = referenced.setdefault(info.blob_id, (DICT_KEY_BASE + len(referenced), info))
            mapping[info.blob_index] = entry[0]
        return mapping

    boot = read_bootstrap(data, keys_of)
    layer = MergeInput(tree=boot.tree, own_blob=None, compressor=boot.compressor, digester=boot.digester,
                       chunk_size=boot.chunk_size)
    if not own:
        return layer, None
    table_entry = own[0]
    if table_entry.is_separate:
        # a zran blob keeps the original layer's id (the converter names the bootstrap after it); the flags name
        # its meta blob (nydus src/bin/nydus-image/merge.rs, the SEPARATE branch)
        blob_id = _id_from_name(source, table_entry)
        file_id = facts.blob_id or blob_id
        file_size = table_entry.meta_size if facts.size is None else facts.size
        needed = 0
    else:
        blob_id = file_id = facts.blob_id or _id_from_name(source, table_entry)
        file_size = table_entry.compressed_size if facts.size is None else facts.size
        needed = max((c.compressed_offset + c.compressed_size for c in boot.chunk_table if c.blob_index == key),
                     default=0)
    if file_size < needed:
        raise UsageError(f"{source}: --blob-sizes {file_size} is smaller than the {needed} bytes its chunks occupy "
                         f"in blob {blob_id}")
    layer.own_blob = blob_id
    info = replace(table_entry, blob_id=blob_id).merged_entry(
        file_id=file_id, file_size=file_size, blob_index=key,
        toc_digest=table_entry.toc_digest if facts.toc_digest is None else facts.toc_digest,
        toc_size=table_entry.toc_size if facts.toc_size is None else facts.toc_size)
    return layer, info


def _own_entries(table: list[BlobInfo], dictionary: frozenset[str]) -> list[BlobInfo]:
    """A layer bootstrap's own blob: the entry with the placeholder id, the only entry, or the entries not
    in the chunk dictionary (more than one: the bootstrap is no layer's)."""
    placeholder = [info for info in table if info.blob_id == BLOB_ID_PLACEHOLDER]
    if placeholder or len(table) <= 1:
        return placeholder or table
    return [info for info in table if info.blob_id not in dictionary]


def _id_from_name(source: Path, info: BlobInfo) -> str:
    """The blob id a bootstrap carries, else its file name's first part (64 hex digits)."""
    if info.blob_id != BLOB_ID_PLACEHOLDER and is_blob_digest(info.blob_id):
        return info.blob_id
    name = source.name.split(".", 1)[0]
    if not is_blob_digest(name):
        raise UsageError(f"{source}: the blob id is neither in the bootstrap, nor given with --blob-digests, nor "
                         "the file's name (64 hex digits)")
    return name


__all__ = ["BlobFacts", "MergeInput", "MergedImage", "merge_bootstraps", "merge_layer_files", "read_layer"]
