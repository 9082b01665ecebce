"""`nydus-py convert SOURCE TARGET`: an OCI or Docker image -> a Nydus image in an OCI image layout.

Every platform (or those asked for) is converted: each layer is streamed through a tar source into its
own Nydus blob, the layers are merged into one bootstrap, and the image is packaged (package.py). One
platform gives a plain manifest; several give an index; `--merge-platform` writes one index holding the
original manifests (an empty first layer added, so they never share snapshots with plain OCI images) and
the Nydus ones (artifactType and config media type of Nydus). An image that is already Nydus is left alone.
References: ../shared/reference/oci-packaging.md §1.3-§1.5.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nydus_py.build import (
    BuildResult,
    Source,
    build_layers,
    layer_blobs,
    publish_layers,
    staging,
    write_bootstrap_file,
)
from nydus_py.config import BuildConfig
from nydus_py.errors import UnsupportedError, UsageError
from nydus_py.format import oci
from nydus_py.oci.layout import Descriptor, LayoutWriter, SourceImage, open_source, platform_text, \
    split_reference
from nydus_py.oci.package import gzip_bytes, write_nydus_image
from nydus_py.sources.tarball import TarSource

_LAYER_TYPES = {oci.OCI_LAYER_TAR, oci.OCI_LAYER_GZIP, oci.OCI_LAYER_ZSTD, oci.DOCKER_LAYER_GZIP, oci.DOCKER_LAYER_TAR,
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    platforms: tuple[str, ...] = ()
    docker_types: bool = False
    merge_platform: bool = False


@dataclass(slots=True)
class ConvertResult:
    layout: Path
    tag: str | None
    top: Descriptor | None  # what index.json points at (manifest or index); None when nothing was converted
    platforms: list[tuple[str, BuildResult]] = field(default_factory=list)
    already_nydus: bool = False

    def to_json(self) -> dict[str, Any]:
        docs = []
        for name, result in self.platforms:
            doc = result.to_json()
            doc["platform"] = name
            docs.append(doc)
        out: dict[str, Any] = docs[0] if len(docs) == 1 else {"platforms": docs}
        out.update({"layout": str(self.layout), "manifest": self.top.to_json() if self.top else None,
                    "already_nydus": self.already_nydus})
        return out


def is_nydus(image: SourceImage) -> bool:
    layers = image.manifest.get("layers") or []
    return bool(layers) and oci.NYDUS_BOOTSTRAP_ANNOTATION in (layers[-1].get("annotations") or {})


def _layer_sources(image: SourceImage, config: BuildConfig) -> Iterator[tuple[str, Source]]:
    for layer in image.layers:
        if layer.media_type and layer.media_type not in _LAYER_TYPES:
            raise UnsupportedError(f"layer {layer.digest}: media type {layer.media_type} cannot be converted")
        yield layer.digest, TarSource(image.open_blob(layer.digest), f"layer {layer.digest}",
                                      whiteout_spec=config.whiteout_spec, overlay_ns=config.overlay_xattr_ns)


def _convert_one(image: SourceImage, writer: LayoutWriter, work: Path, config: BuildConfig, opts: ConvertOptions,
                 bootstrap_path: Path, *, config_media_type: str | None = None) -> tuple[Descriptor, BuildResult]:
    started = time.perf_counter()
    built = build_layers(_layer_sources(image, config), work, config, layered=True)
    outputs = publish_layers(built, writer)
    source_config = image.config
    manifest, _ = write_nydus_image(writer, layer_blobs(outputs), built.bootstrap, source_config,
                                    docker_types=opts.docker_types, config_media_type=config_media_type)
    write_bootstrap_file(bootstrap_path, built.bootstrap)
    result = BuildResult(bootstrap=bootstrap_path, blobs=[outputs[k] for k in built.keys], layers=outputs,
                         entries=sum(1 for _ in built.merged.walk()), stats=built.stats, manifest=manifest,
                         layout=writer.root, timings={"total": time.perf_counter() - started})
    return manifest, result


def _copy_source_image(image: SourceImage, writer: LayoutWriter) -> Descriptor:
    """The original manifest for a merged index: its layers copied, an empty gzip layer put first."""
    for layer in image.layers:
        target = writer.blobs / layer.hex
        if not target.is_file():
            tmp = writer.blobs / f".{layer.hex}.tmp"
            digest = hashlib.sha256()
            with image.open_blob(layer.digest) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
            if digest.hexdigest() != layer.hex:
                tmp.unlink()
                raise UsageError(f"layer {layer.digest}: content does not match its digest")
            tmp.rename(target)
    empty = writer.put_bytes(gzip_bytes(bytes(1024)), oci.OCI_LAYER_GZIP,
                             annotations={oci.NYDUS_EMPTY_LAYER_ANNOTATION: "true"})
    config = copy.deepcopy(image.config)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [oci.EMPTY_LAYER_DIFF_ID, *rootfs.get("diff_ids", [])]
    config["history"] = [dict(oci.HISTORY_EMPTY_LAYER), *(config.get("history") or [])]
    config_desc = writer.put_json(config, oci.OCI_CONFIG)
    manifest = copy.deepcopy(image.manifest)
    manifest["mediaType"] = manifest.get("mediaType", oci.OCI_MANIFEST)
    manifest["config"] = config_desc.to_json()
    manifest["layers"] = [empty.to_json(), *manifest.get("layers", [])]
    annotations = dict(manifest.get("annotations") or {})
    annotations[oci.NYDUS_SOURCE_DIGEST_ANNOTATION] = image.manifest_descriptor.digest
    manifest["annotations"] = annotations
    return writer.put_json(manifest, manifest["mediaType"], platform=image.platform,
                           annotations={oci.NYDUS_SOURCE_DIGEST_ANNOTATION: image.manifest_descriptor.digest})


def convert(source: str, target: str, config: BuildConfig, opts: ConvertOptions) -> ConvertResult:
    """Convert SOURCE (`oci:`, `oci-archive:` or `docker-archive:`) into the layout TARGET (`oci:DIR[:TAG]`)."""
    if not target.startswith("oci:"):
        raise UsageError(f"{target}: the target must be oci:DIR[:TAG]")
    path, tag = split_reference(target, "oci")
    images = open_source(source, list(opts.platforms) or None)
    if opts.merge_platform and source.startswith("docker-archive:"):
        raise UnsupportedError("--merge-platform needs an OCI source (oci: or oci-archive:)")
    out = Path(path).absolute()
    writer = LayoutWriter(out)
    if all(is_nydus(image) for image in images):
        return ConvertResult(layout=out, tag=tag, top=None, already_nydus=True)
    if any(is_nydus(image) for image in images):
        raise UnsupportedError(f"{source}: mixes Nydus and plain manifests")
    result = ConvertResult(layout=out, tag=tag, top=None)
    with staging(out) as work:
        writer.prepare()
        entries: list[Descriptor] = []
        for image in images:
            name = platform_text(image.platform)
            bootstrap = out / ("bootstrap" if len(images) == 1 else f"bootstrap.{name.replace('/', '-')}")
            config_type = oci.NYDUS_CONFIG if opts.merge_platform else None
            manifest, built = _convert_one(image, writer, work, config, opts, bootstrap, config_media_type=config_type)
            result.platforms.append((name, built))
            extra = {"artifact_type": oci.NYDUS_MANIFEST_ARTIFACT} if opts.merge_platform else {}
            entries.append(Descriptor(manifest.media_type, manifest.digest, manifest.size, platform=image.platform,
                                      **extra))
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
        if opts.merge_platform:
            originals = [_copy_source_image(image, writer) for image in images]
            top = writer.put_json({"schemaVersion": 2, "manifests": [d.to_json() for d in [*originals, *entries]]},
                                  oci.OCI_INDEX)
        elif len(entries) == 1:
            top = Descriptor(entries[0].media_type, entries[0].digest, entries[0].size)
        else:
            top = writer.put_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                   "manifests": [d.to_json() for d in entries]}, oci.OCI_INDEX)
        if tag:
            top = Descriptor(top.media_type, top.digest, top.size, annotations={oci.REF_NAME: tag})
        writer.write_index([top])
        result.top = top
    return result


__all__ = ["ConvertOptions", "ConvertResult", "convert"]
