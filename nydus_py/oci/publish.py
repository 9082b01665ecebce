"""Publishing built images: `build_image` (`nydus-py build`) and `merge_images` (`nydus-py merge`).

The pipeline (../pipeline.py) makes the blobs and the merged bootstrap in the target's staging area; here
they become an OCI image layout in OUTDIR (`blobs/sha256/<blob id>`, the plain `bootstrap` beside the layout,
`oci-layout`, `index.json` last) or are pushed to a registry, and the result is described for
`--output-json`. Every write goes through the target's one `OutputDir` transaction (../outdir.py).
References: docs/design.md "Outputs and results".
"""

from __future__ import annotations

import os
import platform as host
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

from nydus_py.blob.reader import RandomAccess
from nydus_py.blob.chunker import ChunkStats
from nydus_py.build.config import BuildConfig
from nydus_py.errors import UsageError
from nydus_py.format import oci
from nydus_py.util.fsutil import Readable
from nydus_py.image import BlobInfo
from nydus_py.oci.documents import Descriptor, Json, decode_object
from nydus_py.oci.package import LayerBlob, write_nydus_image
from nydus_py.oci.platforms import parse_platform
from nydus_py.oci.ref import ImageRef
from nydus_py.oci.images import RegistryOptions, VerifiedStream
from nydus_py.oci.targets import ForeignBlob, LayoutWriter, PushStats, Target, open_target
from nydus_py.util.outdir import OutputDir
from nydus_py.build.merge import merge_layer_files
from nydus_py.build.chunkdict import ChunkDict, DictBlob
from nydus_py.build.pipeline import BuiltImage, build_layers
from nydus_py.sources.layer import open_layer


@dataclass(frozen=True, slots=True)
class BlobOutput:
    """A layer blob as written to OUTDIR (or, reused, where it already was)."""

    info: BlobInfo
    path: Path | None
    referenced: bool = True
    remote: RandomAccess | None = None
    source_digest: str | None = None
    from_dict: bool = False  # a chunk dictionary's blob, which the image references

    def to_json(self) -> dict[str, Any]:
        doc = {"id": self.info.blob_id, "path": str(self.path) if self.path else None,
               "size": self.info.compressed_size, "uncompressed_size": self.info.uncompressed_size,
               "chunk_count": self.info.chunk_count, "referenced": self.referenced,
               "reused": self.remote is not None and not self.from_dict, "chunk_dict": self.from_dict}
        if self.info.is_separate:  # a zran blob: its data is the original layer, its file the meta blob
            doc.update({"meta_id": self.info.file_id, "meta_size": self.info.file_size})
        return doc


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
    push: PushStats | None = None
    pushed_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        doc: dict[str, Any] = {
            "bootstrap": str(self.bootstrap),
            "blobs": [b.to_json() for b in self.blobs],
            "layers": [b.to_json() for b in self.layers],
        }
        if self.manifest is not None:
            doc["manifest"] = self.manifest.to_json()
            doc["layout"] = str(self.layout) if self.layout else None
        doc.update({
            "counts": {"entries": self.entries, "files": s.files, "chunks": s.chunks, "stored_chunks": s.stored,
                       "hole_chunks": s.hole_chunks},
            "dedup": {"hits": s.dedup_hits, "bytes_in": s.bytes_in, "bytes_stored": s.bytes_stored,
                      "referenced_elsewhere": {"chunks": s.elsewhere_hits, "bytes": s.bytes_elsewhere}},
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


def publish_layers(built: BuiltImage, writer: LayoutWriter) -> list[BlobOutput]:
    """Move every layer blob from the staging area into the layout's blobs/sha256/ (reused ones stay where
    they are)."""
    outputs = []
    for index, layer in enumerate(built.layers):
        path = None
        if layer.path is not None:
            path = writer.put_file(layer.path, layer.info.file_id, layer.info.file_size)
        outputs.append(BlobOutput(info=layer.info, path=path, referenced=index in built.keys,
                                  remote=layer.remote, source_digest=layer.source_digest))
    return outputs


@dataclass(slots=True)
class CarriedBlobs:
    """The dictionary blobs an image references: by blob key, and those a registry push mounts instead of
    reading from the layout. An image lists every blob its bootstrap references, so a registry copy, nydusd
    and nydus-snapshotter find them (docs/oci.md §1.8)."""

    outputs: dict[int, BlobOutput]
    foreign: dict[str, ForeignBlob]


def carry_dict_blobs(built: BuiltImage, chunk_dict: ChunkDict | None, target: Target) -> CarriedBlobs:
    """Put the dictionary blobs the image references where it goes: into the layout (copied, checked against
    their ids), or, for a registry target in the dictionary image's registry, mounted by the push. A blob of
    a dictionary that is not found is refused here, with nothing published."""
    carried = CarriedBlobs(outputs={}, foreign={})
    if chunk_dict is None:
        return carried
    for key in built.keys:
        blob = chunk_dict.blob(key)
        if blob is None:
            continue
        info = replace(blob.info, blob_index=built.keys.index(key))
        desc = Descriptor(oci.NYDUS_BLOB, f"sha256:{info.file_id}", info.file_size)
        where = f"{chunk_dict.name}: chunk dictionary blob {info.file_id}"
        if blob.open is None:
            raise UsageError(f"{where} is not found (give the blobs with --chunk-dict-blob-dir, or the dictionary "
                             "as an image)")
        mount = _mount_source(blob, target)
        if mount is not None:
            repository, remote = mount
            carried.foreign[desc.digest] = ForeignBlob(repository=repository, open=_verified(blob.open, desc, where))
            carried.outputs[key] = BlobOutput(info=info, path=None, remote=remote, from_dict=True)
            continue
        path = target.writer.put_stream(_verified(blob.open, desc, where)(), desc)
        carried.outputs[key] = BlobOutput(info=info, path=path, from_dict=True)
    return carried


def _mount_source(blob: DictBlob, target: Target) -> tuple[str, RandomAccess] | None:
    """(repository, blob) of a dictionary image's blob in the target's registry: the push mounts it from
    there (and reads it only if that fails)."""
    if target.remote is None or blob.repository is None or blob.source is None or isinstance(blob.source, Path):
        return None
    registry, repository = blob.repository
    return (repository, blob.source) if registry == target.remote.registry else None


def _verified(open_blob: Callable[[], Readable], desc: Descriptor, where: str) -> Callable[[], VerifiedStream]:
    """A dictionary blob's bytes, checked against its id as they stream (a dictionary comes from a stranger)."""
    return lambda: VerifiedStream(cast(IO[bytes], open_blob()), desc.digest, desc.size, where)


def device_table(outputs: list[BlobOutput], carried: CarriedBlobs, keys: list[int]) -> list[BlobOutput]:
    """The blobs of the bootstrap's device table, in order: layer blobs by index, dictionary blobs by key."""
    return [carried.outputs[k] if k in carried.outputs else outputs[k] for k in keys]


def layer_blobs(outputs: list[BlobOutput], annotations: dict[str, str] | None = None,
                carried: CarriedBlobs | None = None, keys: list[int] | None = None) -> list[LayerBlob]:
    """The blob layers of the manifest: the image's own blobs in layer order, then the chunk dictionary's it
    references, in blob-table order (nydus-snapshotter `mergeManifestBlobDigests`); a converted layer names
    its source layer (for later reuse)."""
    out = []
    dict_blobs = [carried.outputs[k] for k in keys or [] if carried is not None and k in carried.outputs]
    for o in [*outputs, *dict_blobs]:
        if o.from_dict:
            out.append(LayerBlob(info=o.info, path=o.path, remote=o.remote,
                                 annotations={oci.CHUNK_DICT_ANNOTATION: "true"}))
            continue
        notes = dict(annotations or {})
        if o.source_digest and annotations is not None:
            notes[oci.SOURCE_LAYER_ANNOTATION] = o.source_digest
        if o.info.is_separate:  # a zran blob: its data is the original layer, which nydusd fetches by this
            notes[oci.NYDUS_REF_ANNOTATION] = f"sha256:{o.info.blob_id}"
        out.append(LayerBlob(info=o.info, path=o.path, remote=o.remote, annotations=notes))
    return out


def base_config(options: ImageOptions) -> Json:
    """The image config the build describes: --config FILE, else a minimal one; --platform overrides."""
    if options.config_file is not None:
        try:
            data = options.config_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"{options.config_file}: cannot read the image config ({exc.strerror})") from None
        config = decode_object(data, f"{options.config_file}")
    else:
        config = {"architecture": _host_arch(), "os": "linux", "config": {}}
    if options.platform:
        config.update(parse_platform(options.platform))
    return config


def _host_arch() -> str:
    machine = host.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def build_image(layers: list[str], target: ImageRef, config: BuildConfig, *,
                extra_bootstrap: Callable[[bytes], None] | None = None,
                image: ImageOptions | None = None, registry: RegistryOptions | None = None) -> BuildResult:
    """Build LAYERs (lowest first) into TARGET (a directory/`oci:` layout, or `docker://`): one blob per layer,
    the merged bootstrap, an OCI image."""
    if not layers:
        raise UsageError("no layers given")
    if layers.count("-") > 1:
        raise UsageError("stdin ('-') can be only one layer")
    image = image or ImageOptions()
    base = base_config(image)
    started = time.perf_counter()
    source_dirs = tuple(Path(layer) for layer in layers if layer != "-")
    with open_target(target, registry, source_dirs=source_dirs) as out:
        sources = ((layer, open_layer(layer, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns))
                   for layer in layers)
        built = build_layers(sources, out.writer.work, config, layered=len(layers) > 1)
        data_done = time.perf_counter()
        result = publish_image(built, out, config, base, image)
    if extra_bootstrap is not None:  # `--bootstrap PATH`, after OUTDIR is complete
        extra_bootstrap(built.bootstrap)
    finished = time.perf_counter()
    result.timings = {"data": data_done - started, "bootstrap": finished - data_done, "total": finished - started}
    return result


def publish_image(built: BuiltImage, out: Target, config: BuildConfig, base: Json, image: ImageOptions) -> BuildResult:
    """A built image into its target: the layer blobs, the dictionary blobs it references, the bootstrap
    layer, config and manifest, the plain `bootstrap` beside the layout; then index.json (and the push)."""
    writer = out.writer
    outputs = publish_layers(built, writer)
    carried = carry_dict_blobs(built, config.chunk_dict, out)
    manifest, _ = write_nydus_image(writer, layer_blobs(outputs, carried=carried, keys=built.keys), built.bootstrap,
                                    base, docker_types=image.docker_types)
    bootstrap = writer.out.publish_bytes(built.bootstrap, "bootstrap")
    manifest, push = out.publish(manifest, tag=image.tag, foreign=carried.foreign)
    return BuildResult(bootstrap=bootstrap, blobs=device_table(outputs, carried, built.keys), layers=outputs,
                       entries=built.entries, stats=built.stats, manifest=manifest, layout=out.layout,
                       push=push, pushed_to=str(out.remote) if out.remote is not None else None)


def merge_images(inputs: list[Path], outdir: Path, config: BuildConfig, *, blob_dir: Path | None = None,
                 extra_bootstrap: Callable[[bytes], None] | None = None) -> BuildResult:
    """Merge layer blobs (or bootstraps with real blob ids, blobs in `blob_dir`), lowest first, into OUTDIR:
    the blobs in blobs/sha256/ and the merged `bootstrap`."""
    started = time.perf_counter()
    merged = merge_layer_files(inputs, blob_dir, config)
    with OutputDir.open(outdir) as out:
        published: dict[int, BlobOutput] = {}
        for key, (info, path) in merged.blobs.items():
            assert path is not None  # merge_layer_files found every blob on disk
            staged = out.staging / f"blob.{key}"
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            published[key] = BlobOutput(info=info, path=out.publish_blob(staged, info.file_id, info.file_size),
                                        referenced=key in merged.keys)
        bootstrap = out.publish_bytes(merged.bootstrap, "bootstrap")
    if extra_bootstrap is not None:
        extra_bootstrap(merged.bootstrap)
    return BuildResult(bootstrap=bootstrap, blobs=[published[k] for k in merged.keys],
                       layers=[published[k] for k in merged.own_blobs], entries=sum(1 for _ in merged.merged.walk()),
                       stats=ChunkStats(), timings={"total": time.perf_counter() - started})


__all__ = ["BlobOutput", "BuildResult", "CarriedBlobs", "ImageOptions", "build_image", "carry_dict_blobs",
           "device_table", "layer_blobs", "merge_images", "publish_image", "publish_layers"]
