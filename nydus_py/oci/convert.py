"""`nydus-py convert SOURCE TARGET`: an OCI or Docker image -> a Nydus image in an OCI image layout.

Every platform (or those asked for) is converted: each layer is streamed through a tar source into its
own Nydus blob, the layers are merged into one bootstrap, and the image is packaged (package.py). One
platform gives a plain manifest; several give an index; `--merge-platform` writes one index holding the
original manifests (an empty first layer added, so they never share snapshots with plain OCI images) and
the Nydus ones (artifactType and config media type of Nydus). An image that is already Nydus is left alone.
References: docs/oci.md §1.3-§1.5.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from nydus_py.build.config import BuildConfig, Digester
from nydus_py.errors import InternalError, NydusError, UnsupportedError, UsageError
from nydus_py.format import oci
from nydus_py.blob.chunker import ChunkStats
from nydus_py.oci.documents import Descriptor, digest_hex
from nydus_py.util.fsutil import remove_staging, staging_dir
from nydus_py.oci.nydus import is_nydus_image
from nydus_py.oci.package import gzip_bytes, history_per_layer, write_nydus_image
from nydus_py.oci.platforms import platform_of, platform_text
from nydus_py.oci.publish import BuildResult, carry_dict_blobs, device_table, layer_blobs, publish_layers
from nydus_py.oci.ref import ImageRef, Transport
from nydus_py.oci.images import (RegistryOptions, SourceImage, VerifiedStream, open_source, registry_images,
                                 verified_layers)
from nydus_py.oci.targets import ForeignBlob, LayoutWriter, PushStats, Target, open_target
from nydus_py.build.pipeline import ReusedLayer, build_layers
from nydus_py.sources.gzipref import ZranLayer
from nydus_py.sources.layer import Source
from nydus_py.sources.tarball import TarSource
from nydus_py.util.fsutil import Readable


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    platforms: tuple[str, ...] = ()
    docker_types: bool = False
    merge_platform: bool = False
    oci_ref: bool = False  # zran: gzip layers referenced in place, not copied (docs/oci.md §1.7)
    with_referrer: bool = False  # each Nydus manifest's `subject` is its source manifest (docs/oci.md §1.9)
    # source layer digest -> (blob digest, size) of its Nydus blob already in the target repository (the
    # service's layer tasks put them there)
    prebuilt: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ConvertResult:
    layout: Path | None  # None when the image was pushed to a registry
    tag: str | None
    top: Descriptor | None  # what index.json points at (manifest or index); None when nothing was converted
    platforms: list[tuple[str, BuildResult]] = field(default_factory=list)
    already_nydus: bool = False
    reused_layers: int = 0  # layers whose Nydus blob was already in the target repository
    reused_bytes: int = 0  # source layer bytes not downloaded or converted because of that
    push: PushStats | None = None
    warnings: list[str] = field(default_factory=list)  # one line each, for the CLI to print

    def to_json(self) -> dict[str, Any]:
        docs = []
        for name, result in self.platforms:
            doc = result.to_json()
            doc["platform"] = name
            docs.append(doc)
        out: dict[str, Any] = docs[0] if len(docs) == 1 else {"platforms": docs}
        out.update({"layout": str(self.layout) if self.layout else None,
                    "manifest": self.top.to_json() if self.top else None, "already_nydus": self.already_nydus,
                    "reused": {"layers": self.reused_layers, "source_bytes": self.reused_bytes},
                    "warnings": list(self.warnings)})
        if self.push is not None:
            out["push"] = {"uploaded": self.push.uploaded, "uploaded_bytes": self.push.uploaded_bytes,
                           "existing": self.push.existing, "existing_bytes": self.push.existing_bytes,
                           "mounted": self.push.mounted}
        return out


def build_fingerprint(config: BuildConfig, oci_ref: bool = False) -> str:
    """What a reused blob must have been built with."""
    return (f"{config.compressor.value},{config.digester.value},{config.chunk_size:#x},{config.whiteout_spec.value},"
            f"{config.overlay_xattr_ns.value}{',oci-ref' if oci_ref else ''}")


def _restricted_layer(layer: Descriptor) -> bool:
    """Whether `layer` is non-distributable (OCI) or foreign (Docker); a media type that carries no tar
    cannot be converted."""
    if layer.media_type and layer.media_type not in oci.TAR_LAYER_TYPES:
        raise UnsupportedError(f"layer {layer.digest}: media type {layer.media_type} cannot be converted")
    return layer.media_type in oci.RESTRICTED_LAYER_TYPES


def _layer_sources(image: SourceImage, open_layer: Callable[[Descriptor], Any], config: BuildConfig,
                   reusable: dict[str, ReusedLayer], warn: Callable[[str], None], *, oci_ref: bool = False,
                   tee: Callable[[Descriptor, Readable], Readable] | None = None
                   ) -> Iterator[tuple[str, Source | ReusedLayer | ZranLayer]]:
    """What each layer is built from: its reused blob, its gzip stream referenced in place (`oci_ref`; `tee`
    keeps a copy of the bytes read on their way, for the target), or its tar."""
    for layer in image.layers:
        restricted = _restricted_layer(layer)
        if layer.digest in reusable:
            yield layer.digest, reusable[layer.digest]
            continue
        if restricted:
            warn(f"layer {layer.digest} is non-distributable ({layer.media_type}); its Nydus blob is an ordinary "
                 "layer, pushed wherever the image goes")

        def tar_source(desc: Descriptor = layer) -> Source:
            return TarSource(open_layer(desc), f"layer {desc.digest}", whiteout_spec=config.whiteout_spec,
                             overlay_ns=config.overlay_xattr_ns)

        if oci_ref and layer.media_type in oci.ZRAN_LAYER_TYPES:
            raw: Readable = open_layer(layer)
            yield layer.digest, ZranLayer(raw=tee(layer, raw) if tee else raw, name=f"layer {layer.digest}",
                                          expected=layer.digest, fallback=tar_source, note=warn)
            continue
        if oci_ref:
            warn(f"layer {layer.digest} is not gzip ({layer.media_type or 'no media type'}): its Nydus blob holds its "
                 "data")
        yield layer.digest, tar_source()


class _Tee:
    """A layer's bytes on their way to the build, also written to a file of the target layout (one read of
    the layer makes both), hashed to be checked before the file is published."""

    def __init__(self, raw: Readable, out: BinaryIO, path: Path) -> None:
        self.raw, self.out, self.path = raw, out, path
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return data


def _convert_one(image: SourceImage, target: Target, config: BuildConfig, opts: ConvertOptions,
                 bootstrap_name: str, warn: Callable[[str], None], *, config_media_type: str | None = None,
                 reusable: dict[str, ReusedLayer] | None = None
                 ) -> tuple[Descriptor, BuildResult, dict[str, ForeignBlob]]:
    started = time.perf_counter()
    writer = target.writer
    tees: dict[str, _Tee] = {}

    def tee(layer: Descriptor, raw: Readable) -> Readable:  # the target keeps the originals it references
        out, path = writer.out.temporary(layer.hex)
        tees[layer.digest] = _Tee(raw, out, path)
        return tees[layer.digest]

    with verified_layers(image) as open_layer:  # every layer verified to its end before anything is published
        sources = _layer_sources(image, open_layer, config, reusable or {}, warn, oci_ref=opts.oci_ref,
                                 tee=tee)
        built = build_layers(sources, writer.work, config, layered=True)
    for layer, source in zip(built.layers, image.layers, strict=True):
        layer.source_digest = source.digest
        copied = tees.pop(source.digest, None)
        if copied is None:
            continue
        copied.out.close()
        if not layer.info.is_separate:  # built as an ordinary blob after all: the copy is not needed
            copied.path.unlink()
            continue
        if f"sha256:{copied.hash.hexdigest()}" != source.digest or copied.size != source.size:
            raise InternalError(f"layer {source.digest}: the copy kept for the target is not the layer")
        writer.put_file(copied.path, source.hex, source.size)
    outputs = publish_layers(built, writer)
    carried = carry_dict_blobs(built, config.chunk_dict, target)
    notes = {} if not _reuses_layers(config) else {
        oci.BUILD_OPTIONS_ANNOTATION: build_fingerprint(config, opts.oci_ref)}
    subject = _subject(image) if opts.with_referrer else None
    manifest, _ = write_nydus_image(writer, layer_blobs(outputs, notes, carried, built.keys), built.bootstrap,
                                    image.config, docker_types=opts.docker_types, config_media_type=config_media_type,
                                    subject=subject)
    bootstrap_path = writer.out.publish_bytes(built.bootstrap, bootstrap_name)
    result = BuildResult(bootstrap=bootstrap_path, blobs=device_table(outputs, carried, built.keys), layers=outputs,
                         entries=built.entries, stats=built.stats, manifest=manifest,
                         layout=writer.root, timings={"total": time.perf_counter() - started})
    return manifest, result, carried.foreign


def _subject(image: SourceImage) -> Descriptor:
    """The source manifest as a Nydus manifest's `subject`: media type, digest and size, and no platform (as
    nydus-snapshotter writes it: some registries, ECR among them, refuse one)."""
    desc = image.manifest_descriptor
    return Descriptor(desc.media_type or oci.OCI_MANIFEST, desc.digest, desc.size)


def _reuses_layers(config: BuildConfig) -> bool:
    """Whether converted layers are self-contained blobs a later `convert` may reuse (not with cross-layer
    dedup or a chunk dictionary: their blobs depend on what else the image holds)."""
    return not config.cross_layer_dedup and config.chunk_dict is None


def _copy_source_image(image: SourceImage, writer: LayoutWriter) -> Descriptor:
    """The original manifest for a merged index: its layers copied, an empty gzip layer put first. What is
    added or rewritten keeps the manifest's media type family (Docker types in a Docker manifest), and the
    config keeps one non-empty history entry per layer."""
    for layer in image.layers:
        writer.put_stream(image.open_blob(layer), layer)
    manifest = copy.deepcopy(image.manifest)
    manifest["mediaType"] = manifest.get("mediaType") or image.manifest_descriptor.media_type or oci.OCI_MANIFEST
    if manifest["mediaType"] not in oci.FAMILY_TYPES:
        raise UnsupportedError(f"manifest {image.manifest_descriptor.digest}: media type {manifest['mediaType']} "
                               "cannot be rewritten for --merge-platform")
    config_type, layer_type = oci.FAMILY_TYPES[manifest["mediaType"]]
    empty = writer.put_bytes(gzip_bytes(bytes(1024)), layer_type,
                             annotations={oci.NYDUS_EMPTY_LAYER_ANNOTATION: "true"})
    config = copy.deepcopy(image.config)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [oci.EMPTY_LAYER_DIFF_ID, *rootfs.get("diff_ids", [])]
    config["history"] = [dict(oci.HISTORY_EMPTY_LAYER), *history_per_layer(config.get("history"), len(image.layers))]
    config_desc = writer.put_json(config, (manifest.get("config") or {}).get("mediaType") or config_type)
    manifest["config"] = config_desc.to_json()
    manifest["layers"] = [empty.to_json(), *manifest.get("layers", [])]
    annotations = dict(manifest.get("annotations") or {})
    annotations[oci.NYDUS_SOURCE_DIGEST_ANNOTATION] = image.manifest_descriptor.digest
    manifest["annotations"] = annotations
    return writer.put_json(manifest, manifest["mediaType"], platform=image.platform,
                           annotations={oci.NYDUS_SOURCE_DIGEST_ANNOTATION: image.manifest_descriptor.digest})


def _reusable_layers(target: Target, image: SourceImage, config: BuildConfig,
                     opts: ConvertOptions) -> dict[str, ReusedLayer]:
    """Blob layers of the image already at the target tag (or built for it, `opts.prebuilt`), by source layer,
    built with the same options."""
    if target.client is None or target.remote is None or not _reuses_layers(config) or opts.oci_ref:
        return {}  # a zran layer is cheap to index again: its data is never rewritten
    from nydus_py.oci.registry import RemoteBlob  # only here: a registry target

    client, repo = target.client, target.remote.repository
    prebuilt = {layer.digest: ReusedLayer(blob=RemoteBlob(client, repo, *opts.prebuilt[layer.digest]),
                                          blob_id=digest_hex(opts.prebuilt[layer.digest][0]),
                                          source_digest=layer.digest)
                for layer in image.layers if layer.digest in opts.prebuilt}
    if len(prebuilt) == len(image.layers) or not client.manifest_exists(repo, target.tag or "latest"):
        return prebuilt
    try:
        existing = [i for i in registry_images(client, replace(target.remote, digest=None))
                    if platform_of(i.platform) == platform_of(image.platform)]
    except NydusError:
        return prebuilt
    out: dict[str, ReusedLayer] = dict(prebuilt)
    wanted = build_fingerprint(config, opts.oci_ref)
    for layer in existing[0].layers[:-1] if existing else []:
        source_digest = layer.annotations.get(oci.SOURCE_LAYER_ANNOTATION)
        if not source_digest or source_digest in out or layer.annotations.get(oci.BUILD_OPTIONS_ANNOTATION) != wanted:
            continue
        size = client.blob_size(repo, layer.digest)
        if size == layer.size:
            out[source_digest] = ReusedLayer(blob=RemoteBlob(client, repo, layer.digest, size), blob_id=layer.hex,
                                             source_digest=source_digest)
    return out


def convert_layer(source: ImageRef, layer: Descriptor, target: ImageRef, config: BuildConfig,
                  registry: RegistryOptions | None = None) -> tuple[str, int]:
    """One layer of a registry image -> its Nydus blob (what `convert` builds for it), pushed into the target's
    repository; returns (blob digest, size). The layer is checked against its digest before the blob is pushed.
    The conversion service's fan-out: its merge then reuses the blobs (`ConvertOptions.prebuilt`)."""
    from nydus_py.build.pipeline import build_layer

    registry = registry or RegistryOptions()
    remote, out = source.registry_ref(), target.registry_ref()
    client = registry.client(remote.registry)
    target_client = client if out.registry == remote.registry else registry.client(out.registry)
    name = f"layer {layer.digest}"
    work = staging_dir(tempfile.gettempdir(), "nydus-py-layer-")
    try:
        stream = VerifiedStream(client.open_blob(remote.repository, layer.digest, layer.size), layer.digest,
                                layer.size, str(source), "layer")
        try:
            built = build_layer(0, name, TarSource(stream, name, whiteout_spec=config.whiteout_spec,
                                                   overlay_ns=config.overlay_xattr_ns),
                                work, config, [], ChunkStats())
            stream.verify()
        finally:
            stream.release()
        assert built.path is not None
        blob = Descriptor(oci.NYDUS_BLOB, f"sha256:{built.info.file_id}", built.info.file_size)
        path = built.path

        def opener() -> VerifiedStream:
            return VerifiedStream(path.open("rb"), blob.digest, blob.size, str(path), "blob")

        target_client.push_blob(out.repository, blob.digest, blob.size, opener)
        return blob.digest, blob.size
    finally:
        remove_staging(work)


def _originals_warning(source: ImageRef, target: Target) -> str:
    """A zran image's originals pushed where no manifest lists them (docs/oci.md §1.7)."""
    assert target.remote is not None
    where = f"{target.remote.registry}/{target.remote.repository}"
    how = "mounted" if source.remote is not None else "uploaded"
    return (f"{target.ref}: the original layers the image reads are {how} into {where}, where no manifest lists "
            "them: registry garbage collection deletes them unless an image that lists them is kept in the "
            "registry, and copy tools other than `nydus-py copy` leave them behind")


def _refuse_foreign_originals(source: ImageRef, target: ImageRef) -> None:
    """zran is about not storing a registry's layers twice: the originals stay in the source's registry."""
    if source.remote is not None and target.remote is not None and source.remote.registry != target.remote.registry:
        raise UsageError(f"{target}: --oci-ref images must stay in {source.remote.registry}, the registry of their "
                         "original layers (convert into a repository there, or copy the source image first)")


def convert(source: ImageRef, target: ImageRef, config: BuildConfig, opts: ConvertOptions,
            registry: RegistryOptions | None = None) -> ConvertResult:
    """Convert SOURCE (`oci:`, `oci-archive:`, `docker-archive:` or `docker://`) into TARGET (`oci:DIR[:TAG]` or
    `docker://REGISTRY/REPO[:TAG]`)."""
    registry = registry or RegistryOptions()
    if opts.oci_ref:
        _refuse_foreign_originals(source, target)
    if opts.oci_ref and config.digester is not Digester.SHA256:
        raise UsageError("--oci-ref needs --digester sha256 (zran chunks are named by sha256, as nydus-image names "
                         "them)")
    if opts.merge_platform and source.transport is Transport.DOCKER_ARCHIVE:
        raise UnsupportedError("--merge-platform needs an OCI source (oci:, oci-archive: or docker://)")
    images = open_source(source, list(opts.platforms) or None, registry)
    if any(is_nydus_image(image) for image in images):  # a Nydus image, or an index that holds Nydus manifests
        return ConvertResult(layout=target.path, tag=target.tag, top=None, already_nydus=True)
    sources = (source.path,) if source.path is not None else ()
    with open_target(target, registry, source_dirs=sources) as out:
        return _convert(source, images, out, config, opts)


@contextlib.contextmanager
def _about(source: ImageRef, platform: str) -> Iterator[None]:
    """An error while converting one platform of SOURCE names the image and the platform (an index can hold
    many images, and several can fail alike)."""
    try:
        yield
    except NydusError as exc:
        message = str(exc).removeprefix(f"{source}: ")
        raise type(exc)(f"{source} ({platform}): {message}") from exc


def _warner(result: ConvertResult, where: str) -> Callable[[str], None]:
    """A warning callback that records one line about `where` in `result`."""
    return lambda message: result.warnings.append(f"{where}: {message}")


def _convert(source: ImageRef, images: list[SourceImage], target: Target, config: BuildConfig,
             opts: ConvertOptions) -> ConvertResult:
    writer = target.writer
    result = ConvertResult(layout=target.layout, tag=target.tag, top=None)
    entries: list[Descriptor] = []
    foreign: dict[str, ForeignBlob] = {}
    for image in images:
        name = platform_text(image.platform)
        bootstrap = "bootstrap" if len(images) == 1 else f"bootstrap.{name.replace('/', '-')}"
        # a Nydus config type marks the Nydus manifests of a merged index, but stays out of Docker manifests
        config_type = oci.NYDUS_CONFIG if opts.merge_platform and not opts.docker_types else None
        with _about(source, name):
            reusable = _reusable_layers(target, image, config, opts)
            manifest, built, carried = _convert_one(image, target, config, opts, bootstrap,
                                                    _warner(result, f"{source} ({name})"),
                                                    config_media_type=config_type, reusable=reusable)
        foreign.update(carried)
        result.reused_layers += len(reusable)
        result.reused_bytes += sum(layer.size for layer in image.layers if layer.digest in reusable)
        result.platforms.append((name, built))
        entries.append(Descriptor(manifest.media_type, manifest.digest, manifest.size, platform=image.platform,
                                  artifact_type=oci.NYDUS_MANIFEST_ARTIFACT if opts.merge_platform else None))
    if opts.merge_platform:
        originals = []
        for image in images:
            with _about(source, platform_text(image.platform)):
                originals.append(_copy_source_image(image, writer))
        top = writer.put_json({"schemaVersion": 2, "manifests": [d.to_json() for d in [*originals, *entries]]},
                              oci.OCI_INDEX)
    elif len(entries) == 1:
        top = Descriptor(entries[0].media_type, entries[0].digest, entries[0].size)
    else:
        top = writer.put_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                               "manifests": [d.to_json() for d in entries]}, oci.OCI_INDEX)
    same_registry = (source.remote is not None and target.remote is not None
                     and source.remote.registry == target.remote.registry)
    mount_from = source.remote.repository if same_registry and source.remote is not None else None
    if opts.oci_ref and target.remote is not None and mount_from != target.remote.repository:
        result.warnings.append(_originals_warning(source, target))
    result.top, result.push = target.publish(top, mount_from=mount_from, foreign=foreign)
    return result


__all__ = ["ConvertOptions", "ConvertResult", "convert", "convert_layer"]
