"""Layers -> per-layer blobs + one merged bootstrap. No OCI, no output directory, no JSON.

`build_layers` reads each source (a directory, an overlayfs upper directory or a layer tar) into its own
Nydus blob in a work directory the caller owns (chunk data, chunk info, digests, the inline bootstrap with
the layer's whiteouts kept as markers, TOC), or reuses a blob that already exists; then merges the layer
trees into the plain bootstrap. `merge_layer_files` does the merge step alone for layer blobs or bootstraps
already on disk. Where the results go (an OCI layout, a registry, a drop-in builder's files) is the
caller's business: see nydus_py/oci/publish.py.
References: docs/design.md "The pipeline".
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nydus_py.build import overlay
from nydus_py.blob.reader import BlobReader, RandomAccess
from nydus_py.blob.writer import BlobWriter
from nydus_py.bootstrap.layout import LayoutPlan, retarget
from nydus_py.bootstrap.writer import render_bootstrap, render_meta_area
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.blob.chunker import ChunkPipeline, ChunkStats
from nydus_py.build.config import BuildConfig
from nydus_py.sources import WhiteoutSpec
from nydus_py.errors import FormatError, UnsupportedError, UsageError
from nydus_py.format.rafs import CompressAlgo
from nydus_py.util.fsutil import output_file, remove_staging, staged_error, staging_dir
from nydus_py.util.gcpause import without_cyclic_gc
from nydus_py.image import BlobInfo
from nydus_py.build.chunkdict import verify_references
from nydus_py.build.zran import build_zran_layer
from nydus_py.build.plan import bootstrap_bytes, dataless_blob_info, final_blob_info, plan_bootstrap, relabel
from nydus_py.model import ChunkRef, Tree, is_marker, new_directory, walk_bfs
from nydus_py.sources.gzipref import ZranLayer
from nydus_py.sources.layer import Source

@dataclass(slots=True)
class BuiltLayer:
    name: str
    tree: Tree
    info: BlobInfo
    stored: dict[tuple[bytes, int], ChunkRef]  # its own chunks, kept for cross-layer dedup only
    path: Path | None = None  # the blob file in the work directory; None for a reused blob
    remote: RandomAccess | None = None  # a reused blob, where it already is
    source_digest: str | None = None  # the source layer it was converted from
    # The inline bootstrap's plan and rendered meta area, until the merged bootstrap of a one-layer image,
    # which is the same tree with another blob table entry, reuses them (then dropped: they are big).
    plan: LayoutPlan | None = None
    meta_area: bytes | None = None


@dataclass(slots=True)
class ReusedLayer:
    """A layer whose Nydus blob already exists where the image goes: only its inline bootstrap is read."""

    blob: RandomAccess
    blob_id: str
    source_digest: str | None = None

    def built(self, index: int, name: str) -> BuiltLayer:
        with BlobReader(self.blob) as reader:
            data = reader.inline_bootstrap()
        if data is None:
            raise FormatError(f"reused blob {self.blob_id}: has no inline bootstrap")
        boot = read_bootstrap(data)
        if len(boot.blobs) > 1:
            raise UnsupportedError(f"reused blob {self.blob_id}: references other blobs (cross-layer dedup)")
        if boot.blobs:
            relabel(boot.tree, {0: index})
            info = final_blob_info(boot.blobs[0], self.blob, self.blob_id, blob_index=index)
        else:  # a layer without file data: its bootstrap lists no blob, not even its own
            info = dataless_blob_info(self.blob, self.blob_id, boot, blob_index=index)
        return BuiltLayer(name=name, tree=boot.tree, info=info, stored={}, remote=self.blob,
                          source_digest=self.source_digest)


@dataclass(slots=True)
class BuiltImage:
    """Every layer blob (still in the work directory) and the merged bootstrap."""

    layers: list[BuiltLayer]
    merged: Tree
    bootstrap: bytes
    keys: list[int]  # the device table: layers[k] for k in keys
    stats: ChunkStats
    seconds_data: float = 0.0

    @property
    def entries(self) -> int:
        return sum(1 for _ in walk_bfs(self.merged))  # every entry, hardlinks included, and the root


def _add_stats(total: ChunkStats, part: ChunkStats) -> None:
    for name in ("files", "chunks", "stored", "dedup_hits", "hole_chunks", "bytes_in", "bytes_stored", "elsewhere_hits",
                 "bytes_elsewhere"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def build_layer(index: int, name: str, source: Source, workdir: Path, config: BuildConfig, lower: list[BuiltLayer],
                stats: ChunkStats, *, blob_output: BinaryIO | None = None,
                inline_prefetch: tuple[bytes, ...] = ()) -> BuiltLayer:
    """Read one source and write its blob: data, chunk info, digests, inline bootstrap (markers kept), TOC.
    The blob is a temporary file in `workdir`, or goes to `blob_output` strictly sequentially (a drop-in
    builder's `--blob`, possibly a FIFO); `inline_prefetch` fills the inline bootstrap's prefetch table."""
    writer = BlobWriter(workdir, blob_index=index, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                        digester=config.digester.algo, output=blob_output)
    # a dictionary's chunk wins, as nydus-image looks there first; then the lower layers' (cross-layer dedup)
    known: dict[tuple[bytes, int], ChunkRef] = dict(config.chunk_dict.chunks) if config.chunk_dict else {}
    if config.cross_layer_dedup:
        for layer in lower:
            for key, ref in layer.stored.items():
                known.setdefault(key, ref)
    try:
        chunks = ChunkPipeline(writer, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                               digester=config.digester.algo, workers=config.workers, known=known,
                               progress=config.progress)
        try:
            for file in source.files():
                chunks.add(file)
            chunks.finish()
        finally:
            chunks.close()
        _add_stats(stats, chunks.stats)
        # only a later layer's cross-layer dedup reads them; let the rest go before the bootstrap is planned
        own = {k: v for k, v in chunks.stored.items() if v.blob_index == index} if config.cross_layer_dedup else {}
        del chunks
        data_info = writer.finish_data()
        infos = _blob_infos(lower, config)
        infos[index] = data_info
        try:
            plan, _ = plan_bootstrap(source.tree, infos, chunk_size=config.chunk_size,
                                     compressor=config.compressor.algo, digester=config.digester.algo,
                                     prefetch=inline_prefetch)
        except (FormatError, UnsupportedError) as exc:  # the tree's rules (xattrs, ACLs) name a path: add the layer
            raise type(exc)(f"{name}: {exc}") from None
        meta_area = render_meta_area(plan)
        info = writer.finish(render_bootstrap(plan, meta_area))
    except BaseException:
        writer.discard()  # close and remove the temporary blob (and stop its writer thread)
        raise
    return BuiltLayer(name=name, tree=source.tree, info=info, stored=own, path=writer.path, plan=plan,
                      meta_area=meta_area)


def _blob_infos(built: list[BuiltLayer], config: BuildConfig) -> dict[int, BlobInfo]:
    """Blob key -> table entry of every blob a layer may reference: the layers built so far, and the
    dictionary's blobs."""
    infos = config.chunk_dict.infos() if config.chunk_dict is not None else {}
    infos.update({i: layer.info for i, layer in enumerate(built)})
    return infos


def _has_markers(tree: Tree) -> bool:
    return any(is_marker(entry.name) for inode in walk_bfs(tree) if inode.is_dir for entry in inode.entries)


def _one_layer_bootstrap(layer: BuiltLayer, config: BuildConfig,
                         whiteouts: bool) -> tuple[Tree, bytes, list[int]] | None:
    """The merged tree and bootstrap of an image of `layer` alone, from its inline bootstrap's plan: the
    overlay of one layer without markers is that layer. None when it has markers to drop or the plan
    cannot be retargeted."""
    plan, meta_area = layer.plan, layer.meta_area
    layer.plan = layer.meta_area = None
    if plan is None or meta_area is None or (whiteouts and _has_markers(layer.tree)):
        return None
    final = retarget(plan, layer.tree, [layer.info] if plan.blobs else [],
                     compressor=_superblock_compressor([layer], config), digester=config.digester.algo,
                     prefetch_paths=list(config.prefetch_patterns))
    if final is None:
        return None
    return layer.tree, render_bootstrap(final, meta_area), list(final.blob_positions)


def _superblock_compressor(built: list[BuiltLayer], config: BuildConfig) -> CompressAlgo:
    """The compressor a merged superblock names: the last layer's, as nydus-image merge takes it (a zran
    layer's is gzip; every other layer's is the build's)."""
    return built[-1].info.compressor if built else config.compressor.algo


def _zran_or_fallback(index: int, name: str, layer: ZranLayer, work: Path, config: BuildConfig,
                      built: list[BuiltLayer], stats: ChunkStats) -> BuiltLayer:
    """A zran layer; when it cannot be referenced in place and the caller can read it again, an ordinary
    layer blob instead (with a note)."""
    try:
        result = build_zran_layer(index, layer, work, config, progress=config.progress)
    except UnsupportedError as exc:
        if layer.fallback is None:
            raise
        if layer.note is not None:
            layer.note(f"{exc}; its Nydus blob holds its data")
        return build_layer(index, name, layer.fallback(), work, config, built, stats)
    _add_stats(stats, result.stats)
    return BuiltLayer(name=name, tree=result.tree, info=result.info, stored={}, path=result.path, plan=result.plan,
                      meta_area=result.meta_area)


def _refuse_real_markers(tree: Tree, layer: str) -> None:
    """With `--whiteout-spec none` in a layered build, a real `.wh.*` file would read as a whiteout to any
    later merge: refuse it (docs/design.md)."""
    for path, inode in tree.walk():
        for entry in inode.entries if inode.is_dir else []:
            if is_marker(entry.name):
                where = (path.rstrip(b"/") + b"/" + entry.name).decode(errors="backslashreplace")
                raise UnsupportedError(f"{layer}: {where}: a file named '.wh.*' cannot be represented in a "
                                       "layered image")


@without_cyclic_gc
def build_layers(sources: Iterable[tuple[str, Source | ReusedLayer | ZranLayer]], work: Path, config: BuildConfig, *,
                 layered: bool) -> BuiltImage:
    """Build every (name, source) into a layer blob in `work` (or reuse it), then the merged bootstrap."""
    started = time.perf_counter()
    stats = ChunkStats()
    built: list[BuiltLayer] = []
    for index, (name, source) in enumerate(sources):
        for layer in built:  # only a one-layer image reuses its layer's plan: no more than one alive
            layer.plan = layer.meta_area = None
        if isinstance(source, ReusedLayer):
            built.append(source.built(index, name))
            continue
        if isinstance(source, ZranLayer):
            layer = _zran_or_fallback(index, name, source, work, config, built, stats)
            built.append(layer)
            if layered and config.whiteout_spec is WhiteoutSpec.NONE:
                _refuse_real_markers(layer.tree, name)
            continue
        built.append(build_layer(index, name, source, work, config, built, stats))
        if layered and config.whiteout_spec is WhiteoutSpec.NONE:
            _refuse_real_markers(source.tree, name)
    data_done = time.perf_counter()
    whiteouts = config.whiteout_spec is not WhiteoutSpec.NONE
    # a dictionary's blobs stay out of the retargeted plan's table: render the merged bootstrap anew
    alone = len(built) == 1 and config.chunk_dict is None
    reused = _one_layer_bootstrap(built[0], config, whiteouts) if alone else None
    for layer in built:
        layer.plan = layer.meta_area = None
    if reused is not None:
        merged, plain, keys = reused
        return BuiltImage(layers=built, merged=merged, bootstrap=plain, keys=keys, stats=stats,
                          seconds_data=data_done - started)
    if built:
        merged = overlay.merge_layers([layer.tree for layer in built], whiteouts=whiteouts)
    else:  # an image with `"layers": []`: an empty root and no blobs, as nydus-image builds an empty directory
        merged = Tree(root=new_directory())
    if config.chunk_dict is not None:  # what the image takes from a stranger's dictionary, checked first
        verify_references(config.chunk_dict, merged)
    plain, keys = bootstrap_bytes(merged, _blob_infos(built, config),
                                  chunk_size=config.chunk_size, compressor=_superblock_compressor(built, config),
                                  digester=config.digester.algo, prefetch=config.prefetch_patterns)
    return BuiltImage(layers=built, merged=merged, bootstrap=plain, keys=keys, stats=stats,
                      seconds_data=data_done - started)


def build_blob_file(source: Source | ZranLayer, config: BuildConfig, *, blob: Path | None = None,
                    blob_dir: Path | None = None, prefetch: tuple[bytes, ...] = ()) -> BlobInfo:
    """One layer into one blob file with its bootstrap inline, as `nydus-image create --blob-inline-meta`
    writes it: into `blob` (a FIFO or character device in place, strictly in order, as the converter reads it;
    anything else staged beside it and renamed when complete), or into `blob_dir` named by its id (staged in a
    directory of this process's there, renamed when complete); returns its blob table entry. A ZranLayer
    gives a meta blob (named, in `blob_dir`, by its own digest: the layer keeps the blob id)."""

    def build(work: Path, out: BinaryIO | None) -> BuiltLayer:
        if isinstance(source, ZranLayer):
            result = build_zran_layer(0, source, work, config, blob_output=out, inline_prefetch=prefetch)
            return BuiltLayer(name=source.name, tree=result.tree, info=result.info, stored={}, path=result.path)
        return build_layer(0, str(source), source, work, config, [], ChunkStats(), blob_output=out,
                           inline_prefetch=prefetch)

    if blob is not None:
        if source.holds(blob):
            raise UsageError(f"{blob}: --blob names the layer being read")
        with output_file(blob) as out:
            return build(blob.parent, out).info
    if blob_dir is None:
        raise UsageError("give --blob or --blob-dir")
    try:
        work = staging_dir(blob_dir, STAGING_PREFIX)  # one file system: an atomic rename
    except OSError as exc:
        raise UsageError(f"{blob_dir}: cannot write the blob directory: {exc.strerror}") from None
    try:
        built = build(work, None)
        assert built.path is not None
        os.chmod(built.path, 0o644)
        os.replace(built.path, blob_dir / built.info.file_id)
    except OSError as exc:  # "No space left": about the blob directory, not our temporary file in it
        renamed = staged_error(exc, work, blob_dir)
        if renamed is exc:
            raise
        raise renamed from None
    finally:
        remove_staging(work)
    return built.info


STAGING_PREFIX = ".nydus-py-image-"  # the drop-in's staging directories in a --blob-dir, one per process


__all__ = ["BuiltImage", "BuiltLayer", "ReusedLayer", "build_blob_file", "build_layer", "build_layers"]
