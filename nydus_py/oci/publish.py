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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nydus_py.blob.reader import RandomAccess
from nydus_py.blob.chunker import ChunkStats
from nydus_py.build.config import BuildConfig
from nydus_py.errors import UsageError
from nydus_py.format import oci
from nydus_py.util.fsutil import atomic_output
from nydus_py.image import BlobInfo
from nydus_py.oci.documents import Descriptor, Json, decode_object
from nydus_py.oci.package import LayerBlob, write_nydus_image
from nydus_py.oci.platforms import parse_platform
from nydus_py.oci.ref import ImageRef
from nydus_py.oci.images import RegistryOptions
from nydus_py.oci.targets import LayoutWriter, PushStats, open_target
from nydus_py.util.outdir import OutputDir
from nydus_py.build.merge import merge_layer_files
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

    def to_json(self) -> dict[str, Any]:
        doc = {"id": self.info.blob_id, "path": str(self.path) if self.path else None,
               "size": self.info.compressed_size, "uncompressed_size": self.info.uncompressed_size,
               "chunk_count": self.info.chunk_count, "referenced": self.referenced,
               "reused": self.remote is not None}
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


def layer_blobs(outputs: list[BlobOutput], annotations: dict[str, str] | None = None) -> list[LayerBlob]:
    """The blob layers of the manifest; a converted layer names its source layer (for later reuse)."""
    out = []
    for o in outputs:
        notes = dict(annotations or {})
        if o.source_digest and annotations is not None:
            notes[oci.SOURCE_LAYER_ANNOTATION] = o.source_digest
        if o.info.is_separate:  # a zran blob: its data is the original layer, which nydusd fetches by this
            notes[oci.NYDUS_REF_ANNOTATION] = f"sha256:{o.info.blob_id}"
        out.append(LayerBlob(blob_id=o.info.file_id, size=o.info.file_size, path=o.path, remote=o.remote,
                             has_data=o.info.chunk_count > 0, annotations=notes))
    return out


def write_extra_bootstrap(path: Path | None, data: bytes) -> None:
    """`--bootstrap PATH`: a copy outside OUTDIR, written atomically after OUTDIR is complete."""
    if path is not None:
        with atomic_output(path) as f:
            f.write(data)


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


def build_image(layers: list[str], target: ImageRef, config: BuildConfig, *, extra_bootstrap: Path | None = None,
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
        writer = out.writer
        sources = ((layer, open_layer(layer, whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns))
                   for layer in layers)
        built = build_layers(sources, writer.work, config,
                             layered=len(layers) > 1)
        data_done = time.perf_counter()
        outputs = publish_layers(built, writer)
        manifest, _ = write_nydus_image(writer, layer_blobs(outputs), built.bootstrap, base,
                                        docker_types=image.docker_types)
        bootstrap = writer.out.publish_bytes(built.bootstrap, "bootstrap")
        manifest, push = out.publish(manifest, tag=image.tag)
        result = BuildResult(bootstrap=bootstrap, blobs=[outputs[k] for k in built.keys], layers=outputs,
                             entries=built.entries, stats=built.stats, manifest=manifest, layout=out.layout,
                             push=push, pushed_to=str(out.remote) if out.remote is not None else None)
    write_extra_bootstrap(extra_bootstrap, built.bootstrap)
    finished = time.perf_counter()
    result.timings = {"data": data_done - started, "bootstrap": finished - data_done, "total": finished - started}
    return result


def merge_images(inputs: list[Path], outdir: Path, config: BuildConfig, *, blob_dir: Path | None = None,
                 extra_bootstrap: Path | None = None) -> BuildResult:
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
            published[key] = BlobOutput(info=info, path=out.publish_blob(staged, info.blob_id, info.compressed_size),
                                        referenced=key in merged.keys)
        bootstrap = out.publish_bytes(merged.bootstrap, "bootstrap")
    write_extra_bootstrap(extra_bootstrap, merged.bootstrap)
    return BuildResult(bootstrap=bootstrap, blobs=[published[k] for k in merged.keys],
                       layers=[published[k] for k in merged.own_blobs], entries=sum(1 for _ in merged.merged.walk()),
                       stats=ChunkStats(), timings={"total": time.perf_counter() - started})


__all__ = ["BlobOutput", "BuildResult", "ImageOptions", "build_image", "layer_blobs", "merge_images",
           "publish_layers", "write_extra_bootstrap"]
