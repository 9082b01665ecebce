"""`nydus-py build` and `nydus-py merge`: layers -> per-layer blobs + one merged bootstrap in OUTDIR.

OUTDIR layout (../shared/DESIGN.md): `blobs/sha256/<blob id>` per layer blob and the merged `bootstrap`.
Everything is written under a hidden temporary directory inside OUTDIR and renamed into place when
complete; a failed command leaves OUTDIR as it was (or removes it, when the command created it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nydus_py import overlay
from nydus_py.blob.writer import BlobWriter
from nydus_py.chunker import ChunkPipeline, ChunkStats
from nydus_py.config import BuildConfig, WhiteoutSpec
from nydus_py.errors import UnsupportedError, UsageError
from nydus_py.fsutil import atomic_output
from nydus_py.image import BlobInfo
from nydus_py.merge import MergeInput, bootstrap_bytes, publish_blob, read_layer
from nydus_py.model import ChunkRef, Tree, is_marker
from nydus_py.sources.directory import DirectorySource
from nydus_py.sources.tarball import TarSource


@dataclass(frozen=True, slots=True)
class BlobOutput:
    """A layer blob as written to OUTDIR."""

    info: BlobInfo
    path: Path
    referenced: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.info.blob_id, "path": str(self.path), "size": self.info.compressed_size,
                "uncompressed_size": self.info.uncompressed_size, "chunk_count": self.info.chunk_count,
                "referenced": self.referenced}


@dataclass(slots=True)
class BuildResult:
    bootstrap: Path
    blobs: list[BlobOutput]  # exactly the bootstrap's device table, in order
    layers: list[BlobOutput]  # every layer blob, in layer order, referenced or not
    entries: int
    stats: ChunkStats
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "bootstrap": str(self.bootstrap),
            "blobs": [b.to_json() for b in self.blobs],
            "layers": [b.to_json() for b in self.layers],
            "counts": {"entries": self.entries, "files": s.files, "chunks": s.chunks, "stored_chunks": s.stored,
                       "hole_chunks": s.hole_chunks},
            "dedup": {"hits": s.dedup_hits, "bytes_in": s.bytes_in, "bytes_stored": s.bytes_stored},
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


@contextlib.contextmanager
def _staging(outdir: Path) -> Iterator[Path]:
    """A hidden work directory inside OUTDIR, removed afterwards; OUTDIR itself removed on failure if new."""
    created = False
    try:
        if outdir.exists() and not outdir.is_dir():
            raise UsageError(f"{outdir}: output exists and is not a directory")
        if not outdir.exists():
            outdir.mkdir(parents=True)
            created = True
        work = Path(tempfile.mkdtemp(prefix=".nydus-py-", dir=outdir))
    except OSError as exc:
        raise UsageError(f"{outdir}: cannot write output directory: {exc.strerror}") from exc
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)


def open_source(layer: str, config: BuildConfig) -> DirectorySource | TarSource:
    """A directory (plain or overlayfs upper) or a layer tar (file or '-')."""
    if layer != "-" and Path(layer).is_dir():
        return DirectorySource(layer, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns)
    if layer != "-" and not Path(layer).exists():
        raise UsageError(f"{layer}: no such layer (a directory, a tar file or '-')")
    return TarSource(layer, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns)


@dataclass(slots=True)
class _Layer:
    tree: Tree
    writer: BlobWriter
    info: BlobInfo
    stored: dict[tuple[bytes, int], ChunkRef]


def _build_layer(index: int, source: DirectorySource | TarSource, workdir: Path, config: BuildConfig,
                 lower: list[_Layer], stats: ChunkStats) -> _Layer:
    """Read one source and write its blob: data, chunk info, digests, inline bootstrap (markers kept), TOC."""
    writer = BlobWriter(workdir, blob_index=index, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                        digester=config.digester.algo)
    known: dict[tuple[bytes, int], ChunkRef] = {}
    if config.cross_layer_dedup:
        for layer in lower:
            for key, ref in layer.stored.items():
                known.setdefault(key, ref)
    pipeline = ChunkPipeline(writer, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                             digester=config.digester.algo, workers=config.workers, known=known)
    try:
        for file in source.files():
            pipeline.add(file)
        pipeline.finish()
    finally:
        pipeline.close()
    for name in ("files", "chunks", "stored", "dedup_hits", "hole_chunks", "bytes_in", "bytes_stored"):
        setattr(stats, name, getattr(stats, name) + getattr(pipeline.stats, name))
    data_info = writer.finish_data()
    infos = {layer.writer.blob_index: layer.info for layer in lower}
    infos[index] = data_info
    inline, _ = bootstrap_bytes(source.tree, infos, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                                digester=config.digester.algo)
    info = writer.finish(inline)
    own = {k: v for k, v in pipeline.stored.items() if v.blob_index == index}
    return _Layer(tree=source.tree, writer=writer, info=info, stored=own)


def _refuse_real_markers(tree: Tree, layer: str) -> None:
    """With `--whiteout-spec none` in a layered build, a real `.wh.*` file would read as a whiteout to any
    later merge: refuse it (../shared/DESIGN.md)."""
    for path, inode in tree.walk():
        for entry in inode.entries if inode.is_dir else []:
            if is_marker(entry.name):
                where = (path.rstrip(b"/") + b"/" + entry.name).decode(errors="backslashreplace")
                raise UnsupportedError(f"{layer}: {where}: a file named '.wh.*' cannot be represented in a "
                                       "layered image")


def build_image(layers: list[str], outdir: str | os.PathLike[str], config: BuildConfig,
                *, extra_bootstrap: str | os.PathLike[str] | None = None) -> BuildResult:
    """Build LAYERs (lowest first) into OUTDIR: one blob per layer and the merged bootstrap."""
    if not layers:
        raise UsageError("no layers given")
    if layers.count("-") > 1:
        raise UsageError("stdin ('-') can be only one layer")
    out = Path(outdir).absolute()
    started = time.perf_counter()
    stats = ChunkStats()
    with _staging(out) as work:
        built: list[_Layer] = []
        for index, layer in enumerate(layers):
            source = open_source(layer, config)
            built.append(_build_layer(index, source, work, config, built, stats))
            if len(layers) > 1 and config.whiteout_spec is WhiteoutSpec.NONE:
                _refuse_real_markers(source.tree, layer)
        data_done = time.perf_counter()
        merged = overlay.merge_layers([layer.tree for layer in built],
                                      whiteouts=config.whiteout_spec is not WhiteoutSpec.NONE)
        plain, keys = bootstrap_bytes(merged, {i: layer.info for i, layer in enumerate(built)},
                                      chunk_size=config.chunk_size, compressor=config.compressor.algo,
                                      digester=config.digester.algo, prefetch=config.prefetch_patterns)
        blob_dir = _blob_dir(out)
        outputs = []
        for index, layer in enumerate(built):  # every byte is written: now only renames remain
            os.chmod(layer.writer.path, 0o644)
            path = blob_dir / layer.info.blob_id
            os.replace(layer.writer.path, path)
            outputs.append(BlobOutput(info=layer.info, path=path, referenced=index in keys))
        result = _publish(out, work, plain, extra_bootstrap, outputs, [outputs[k] for k in keys], merged, stats)
    result.timings = {"data": data_done - started, "bootstrap": time.perf_counter() - data_done,
                      "total": time.perf_counter() - started}
    return result


def _blob_dir(out: Path) -> Path:
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    return blob_dir


def _publish(out: Path, work: Path, plain: bytes, extra_bootstrap: str | os.PathLike[str] | None,
             layers: list[BlobOutput], device_table: list[BlobOutput], merged: Tree, stats: ChunkStats) -> BuildResult:
    """Put the merged bootstrap in place (and its extra copy); the blobs are already there."""
    with atomic_output(work / "bootstrap") as f:
        f.write(plain)
    os.replace(work / "bootstrap", out / "bootstrap")
    if extra_bootstrap is not None:
        with atomic_output(Path(extra_bootstrap)) as f:
            f.write(plain)
    return BuildResult(bootstrap=out / "bootstrap", blobs=device_table, layers=layers,
                       entries=sum(1 for _ in merged.walk()), stats=stats)


def merge_images(inputs: list[str | os.PathLike[str]], outdir: str | os.PathLike[str], config: BuildConfig, *,
                 blob_dir: str | os.PathLike[str] | None = None,
                 extra_bootstrap: str | os.PathLike[str] | None = None) -> BuildResult:
    """Merge layer blobs (or bootstraps with real blob ids, blobs in `blob_dir`), lowest first, into OUTDIR."""
    if not inputs:
        raise UsageError("no layers given")
    out = Path(outdir).absolute()
    started = time.perf_counter()
    registry: dict[str, tuple[int, BlobInfo, Path]] = {}
    layers: list[MergeInput] = [read_layer(Path(p), Path(blob_dir) if blob_dir else None, registry) for p in inputs]
    infos = {key: info for key, info, _ in registry.values()}
    chunk_size = _common_chunk_size(registry, config)
    # compressor and digester flags come from the last layer's own blob, as nydus-image merge takes them
    last = next((registry[layer.own_blob][1] for layer in reversed(layers) if layer.own_blob), None)
    with _staging(out) as work:
        merged = overlay.merge_layers([layer.tree for layer in layers])
        plain, keys = bootstrap_bytes(merged, infos, chunk_size=chunk_size,
                                      compressor=last.compressor if last else config.compressor.algo,
                                      digester=last.digester if last else config.digester.algo,
                                      prefetch=config.prefetch_patterns)
        target = _blob_dir(out)
        by_key = {key: (info, path) for key, info, path in registry.values()}
        published = {key: BlobOutput(info=info, path=publish_blob(path, target, info.blob_id),
                                     referenced=key in keys) for key, (info, path) in by_key.items()}
        outputs = [published[registry[layer.own_blob][0]] for layer in layers if layer.own_blob is not None]
        result = _publish(out, work, plain, extra_bootstrap, outputs, [published[k] for k in keys], merged,
                          ChunkStats())
    result.timings = {"total": time.perf_counter() - started}
    return result


def _common_chunk_size(registry: dict[str, tuple[int, BlobInfo, Path]], config: BuildConfig) -> int:
    sizes = {info.chunk_size for _, info, _ in registry.values()}
    if len(sizes) > 1:
        raise UsageError(f"layers use different chunk sizes ({', '.join(hex(s) for s in sorted(sizes))}): cannot merge")
    return sizes.pop() if sizes else config.chunk_size


__all__ = ["BuildResult", "build_image", "merge_images"]
