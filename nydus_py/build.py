"""`nydus-py build` and `nydus-py merge`: layers -> per-layer blobs + one merged bootstrap, packaged as an
OCI image layout in OUTDIR.

OUTDIR (../shared/DESIGN.md): `blobs/sha256/<blob id>` per layer blob, the merged `bootstrap`, and around
them `oci-layout`, `index.json` and the manifest, config and bootstrap layer in `blobs/sha256/`.
Everything is written under a hidden temporary directory or a temporary name and renamed into place when
complete; a failed command leaves OUTDIR as it was (or removes it, when the command created it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform as host
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nydus_py import overlay
from nydus_py.blob.reader import BlobReader, RandomAccess
from nydus_py.blob.writer import BlobWriter
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.chunker import ChunkPipeline, ChunkStats
from nydus_py.config import BuildConfig, WhiteoutSpec
from nydus_py.errors import FormatError, UnsupportedError, UsageError
from nydus_py.format import oci
from nydus_py.fsutil import atomic_output, fsync_dir
from nydus_py.image import BlobInfo
from nydus_py.format.blobmeta import BlobFeatures
from nydus_py.merge import MergeInput, bootstrap_bytes, read_layer, relabel
from nydus_py.model import ChunkRef, Tree, is_marker, new_directory
from nydus_py.oci.layout import Descriptor, Json, LayoutWriter, parse_platform
from nydus_py.oci.package import LayerBlob, write_nydus_image
from nydus_py.sources.directory import DirectorySource
from nydus_py.sources.tarball import TarSource, open_layer_file

Source = DirectorySource | TarSource


@dataclass(frozen=True, slots=True)
class BlobOutput:
    """A layer blob as written to OUTDIR (or, reused, where it already was)."""

    info: BlobInfo
    path: Path | None
    referenced: bool = True
    remote: RandomAccess | None = None
    source_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.info.blob_id, "path": str(self.path) if self.path else None,
                "size": self.info.compressed_size, "uncompressed_size": self.info.uncompressed_size,
                "chunk_count": self.info.chunk_count, "referenced": self.referenced,
                "reused": self.remote is not None}


@dataclass(slots=True)
class BuildResult:
    bootstrap: Path
    blobs: list[BlobOutput]  # exactly the bootstrap's device table, in order
    layers: list[BlobOutput]  # every layer blob, in layer order, referenced or not
    entries: int
    stats: ChunkStats
    manifest: Descriptor | None = None
    layout: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        doc: dict[str, Any] = {
            "bootstrap": str(self.bootstrap),
            "blobs": [b.to_json() for b in self.blobs],
            "layers": [b.to_json() for b in self.layers],
        }
        if self.manifest is not None:
            doc["manifest"] = self.manifest.to_json()
            doc["layout"] = str(self.layout)
        doc.update({
            "counts": {"entries": self.entries, "files": s.files, "chunks": s.chunks, "stored_chunks": s.stored,
                       "hole_chunks": s.hole_chunks},
            "dedup": {"hits": s.dedup_hits, "bytes_in": s.bytes_in, "bytes_stored": s.bytes_stored},
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        })
        return doc


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """What describes the OCI image around the build: base config, platform, tag, media type family."""

    config_file: Path | None = None
    platform: str | None = None
    tag: str | None = None
    docker_types: bool = False


@contextlib.contextmanager
def staging(outdir: Path) -> Iterator[Path]:
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


def open_source(layer: str, config: BuildConfig) -> Source:
    """A directory (plain or overlayfs upper) or a layer tar (file or '-')."""
    if layer != "-" and Path(layer).is_dir():
        return DirectorySource(layer, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns)
    if layer != "-" and not Path(layer).exists():
        raise UsageError(f"{layer}: no such layer (a directory, a tar file or '-')")
    return TarSource(*open_layer_file(layer), whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns)


@dataclass(slots=True)
class BuiltLayer:
    name: str
    tree: Tree
    info: BlobInfo
    stored: dict[tuple[bytes, int], ChunkRef]
    path: Path | None = None  # the blob file in the work directory; None for a reused blob
    remote: RandomAccess | None = None  # a reused blob, where it already is
    source_digest: str | None = None  # the source layer it was converted from


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
        if len(boot.blobs) != 1:
            raise UnsupportedError(f"reused blob {self.blob_id}: references other blobs (cross-layer dedup)")
        relabel(boot.tree, {0: index})
        with BlobReader(self.blob) as reader:
            toc = reader.toc_digest()
        toc_digest, toc_size = toc if toc is not None else (bytes(32), 0)
        info = replace(boot.blobs[0], blob_id=self.blob_id, blob_index=index, compressed_size=self.blob.size,
                       toc_digest=toc_digest, toc_size=toc_size,
                       features=boot.blobs[0].features & ~BlobFeatures.INLINED_FS_META)
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


def _build_layer(index: int, name: str, source: Source, workdir: Path, config: BuildConfig, lower: list[BuiltLayer],
                 stats: ChunkStats) -> BuiltLayer:
    """Read one source and write its blob: data, chunk info, digests, inline bootstrap (markers kept), TOC."""
    writer = BlobWriter(workdir, blob_index=index, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                        digester=config.digester.algo)
    known: dict[tuple[bytes, int], ChunkRef] = {}
    if config.cross_layer_dedup:
        for layer in lower:
            for key, ref in layer.stored.items():
                known.setdefault(key, ref)
    try:
        pipeline = ChunkPipeline(writer, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                                 digester=config.digester.algo, workers=config.workers, known=known,
                                 progress=config.progress)
        try:
            for file in source.files():
                pipeline.add(file)
            pipeline.finish()
        finally:
            pipeline.close()
        for stat_name in ("files", "chunks", "stored", "dedup_hits", "hole_chunks", "bytes_in", "bytes_stored"):
            setattr(stats, stat_name, getattr(stats, stat_name) + getattr(pipeline.stats, stat_name))
        data_info = writer.finish_data()
        infos = {i: layer.info for i, layer in enumerate(lower)}
        infos[index] = data_info
        inline, _ = bootstrap_bytes(source.tree, infos, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                                    digester=config.digester.algo)
        info = writer.finish(inline)
    except BaseException:
        writer.discard()  # close and remove the temporary blob (and stop its writer thread)
        raise
    own = {k: v for k, v in pipeline.stored.items() if v.blob_index == index}
    return BuiltLayer(name=name, tree=source.tree, info=info, stored=own, path=writer.path)


def _refuse_real_markers(tree: Tree, layer: str) -> None:
    """With `--whiteout-spec none` in a layered build, a real `.wh.*` file would read as a whiteout to any
    later merge: refuse it (../shared/DESIGN.md)."""
    for path, inode in tree.walk():
        for entry in inode.entries if inode.is_dir else []:
            if is_marker(entry.name):
                where = (path.rstrip(b"/") + b"/" + entry.name).decode(errors="backslashreplace")
                raise UnsupportedError(f"{layer}: {where}: a file named '.wh.*' cannot be represented in a "
                                       "layered image")


def build_layers(sources: Iterable[tuple[str, Source | ReusedLayer]], work: Path, config: BuildConfig, *,
                 layered: bool) -> BuiltImage:
    """Build every (name, source) into a layer blob in `work` (or reuse it), then the merged bootstrap."""
    started = time.perf_counter()
    stats = ChunkStats()
    built: list[BuiltLayer] = []
    for index, (name, source) in enumerate(sources):
        if isinstance(source, ReusedLayer):
            built.append(source.built(index, name))
            continue
        built.append(_build_layer(index, name, source, work, config, built, stats))
        if layered and config.whiteout_spec is WhiteoutSpec.NONE:
            _refuse_real_markers(source.tree, name)
    data_done = time.perf_counter()
    if built:
        merged = overlay.merge_layers([layer.tree for layer in built],
                                      whiteouts=config.whiteout_spec is not WhiteoutSpec.NONE)
    else:  # an image with `"layers": []`: an empty root and no blobs, as nydus-image builds an empty directory
        merged = Tree(root=new_directory())
    plain, keys = bootstrap_bytes(merged, {i: layer.info for i, layer in enumerate(built)},
                                  chunk_size=config.chunk_size, compressor=config.compressor.algo,
                                  digester=config.digester.algo, prefetch=config.prefetch_patterns)
    return BuiltImage(layers=built, merged=merged, bootstrap=plain, keys=keys, stats=stats,
                      seconds_data=data_done - started)


def publish_layers(built: BuiltImage, writer: LayoutWriter) -> list[BlobOutput]:
    """Move every layer blob from the work directory into the layout's blobs/sha256/ (reused ones stay where
    they are)."""
    writer.prepare()
    outputs = []
    for index, layer in enumerate(built.layers):
        path = None
        if layer.path is not None:
            os.chmod(layer.path, 0o644)
            path = writer.blobs / layer.info.blob_id
            os.replace(layer.path, path)
        outputs.append(BlobOutput(info=layer.info, path=path, referenced=index in built.keys,
                                  remote=layer.remote, source_digest=layer.source_digest))
    return outputs


def layer_blobs(outputs: list[BlobOutput], annotations: dict[str, str] | None = None) -> list[LayerBlob]:
    """The blob layers of the manifest; a converted layer names its source layer (for later reuse)."""
    out = []
    for o in outputs:
        notes = dict(annotations or {})
        if o.source_digest and annotations is not None:
            notes[oci.SOURCE_LAYER_ANNOTATION] = o.source_digest
        out.append(LayerBlob(blob_id=o.info.blob_id, size=o.info.compressed_size, path=o.path, remote=o.remote,
                             has_data=o.info.chunk_count > 0, annotations=notes))
    return out


def write_bootstrap_file(path: Path, data: bytes) -> None:
    with atomic_output(path) as f:
        f.write(data)


def base_config(options: ImageOptions) -> Json:
    """The image config the build describes: --config FILE, else a minimal one; --platform overrides."""
    if options.config_file is not None:
        try:
            config = json.loads(options.config_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{options.config_file}: cannot read the image config ({exc})") from None
        if not isinstance(config, dict):
            raise UsageError(f"{options.config_file}: the image config must be a JSON object")
    else:
        config = {"architecture": _host_arch(), "os": "linux", "config": {}}
    if options.platform:
        config.update(parse_platform(options.platform))
    return config


def _host_arch() -> str:
    machine = host.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def build_image(layers: list[str], outdir: str | os.PathLike[str], config: BuildConfig, *,
                extra_bootstrap: str | os.PathLike[str] | None = None,
                image: ImageOptions | None = None) -> BuildResult:
    """Build LAYERs (lowest first) into OUTDIR: one blob per layer, the merged bootstrap, an OCI image."""
    if not layers:
        raise UsageError("no layers given")
    if layers.count("-") > 1:
        raise UsageError("stdin ('-') can be only one layer")
    image = image or ImageOptions()
    base = base_config(image)
    out = Path(outdir).absolute()
    started = time.perf_counter()
    with staging(out) as work:
        built = build_layers(((layer, open_source(layer, config)) for layer in layers), work, config,
                             layered=len(layers) > 1)
        data_done = time.perf_counter()
        writer = LayoutWriter(out)
        outputs = publish_layers(built, writer)
        manifest, _ = write_nydus_image(writer, layer_blobs(outputs), built.bootstrap, base,
                                        docker_types=image.docker_types)
        if image.tag:
            manifest = Descriptor(manifest.media_type, manifest.digest, manifest.size,
                                  annotations={oci.REF_NAME: image.tag})
        write_bootstrap_file(out / "bootstrap", built.bootstrap)
        writer.write_index([manifest])
        if extra_bootstrap is not None:
            write_bootstrap_file(Path(extra_bootstrap), built.bootstrap)
        fsync_dir(writer.blobs)
        fsync_dir(out)
    finished = time.perf_counter()
    return BuildResult(bootstrap=out / "bootstrap", blobs=[outputs[k] for k in built.keys], layers=outputs,
                       entries=sum(1 for _ in built.merged.walk()), stats=built.stats, manifest=manifest, layout=out,
                       timings={"data": data_done - started, "bootstrap": finished - data_done,
                                "total": finished - started})


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
    # a blob without chunks has no chunk size of its own to disagree with
    sizes = {info.chunk_size for info in infos.values() if info.chunk_count}
    if len(sizes) > 1:
        raise UsageError(f"layers use different chunk sizes ({', '.join(hex(s) for s in sorted(sizes))}): cannot merge")
    # compressor and digester flags come from the last layer's bootstrap, as nydus-image merge takes them
    with staging(out):
        merged = overlay.merge_layers([layer.tree for layer in layers])
        plain, keys = bootstrap_bytes(merged, infos, chunk_size=sizes.pop() if sizes else config.chunk_size,
                                      compressor=layers[-1].compressor, digester=layers[-1].digester,
                                      prefetch=config.prefetch_patterns)
        writer = LayoutWriter(out)
        writer.prepare()
        published = {key: BlobOutput(info=info, path=writer.put_file(path, info.blob_id), referenced=key in keys)
                     for key, info, path in registry.values()}
        outputs = [published[registry[layer.own_blob][0]] for layer in layers if layer.own_blob is not None]
        write_bootstrap_file(out / "bootstrap", plain)
        if extra_bootstrap is not None:
            write_bootstrap_file(Path(extra_bootstrap), plain)
    return BuildResult(bootstrap=out / "bootstrap", blobs=[published[k] for k in keys], layers=outputs,
                       entries=sum(1 for _ in merged.walk()), stats=ChunkStats(),
                       timings={"total": time.perf_counter() - started})


__all__ = ["BuildResult", "ImageOptions", "build_image", "build_layers", "merge_images"]
