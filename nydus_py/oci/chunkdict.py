"""`--chunk-dict DICT` given as a Nydus image (`oci:DIR[:TAG]`, `docker://`) or a file: the dictionary, its
blobs readable through the image's store (how an image carries them: oci/publish.py `carry_dict_blobs`).
References: docs/oci.md §1.8.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nydus_py.blob.reader import BlobReader, RandomAccess, find_blob_file
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.build.config import BuildConfig, Digester
from nydus_py.build.pipeline import build_layers
from nydus_py.build.chunkdict import ChunkDict, DictBlob, dictionary_path, load_chunk_dict, read_chunk_dict_file
from nydus_py.errors import FormatError, UsageError
from nydus_py.oci.documents import Descriptor
from nydus_py.oci.images import RegistryOptions, SourceImage, VerifiedStream, open_source
from nydus_py.format.rafs import DigestAlgo
from nydus_py.image import BlobInfo
from nydus_py.model import ChunkRef, walk_bfs
from nydus_py.oci.nydus import has_bootstrap_layer, read_bootstrap_layer
from nydus_py.oci.platforms import platform_text
from nydus_py.oci.publish import BuildResult, ImageOptions, base_config, publish_image
from nydus_py.oci.targets import open_target
from nydus_py.sources.chunklist import ChunkListSource
from nydus_py.oci.ref import ImageRef, Transport, is_image_ref, parse_image_ref


def open_chunk_dict(arg: str, registry: RegistryOptions | None = None, blob_dir: Path | None = None) -> ChunkDict:
    """`--chunk-dict DICT`: a Nydus image (`oci:DIR[:TAG]`, `docker://REF`, one platform), a bootstrap file
    (its blobs in `blob_dir`, or beside it) or a layer blob with its bootstrap inline; nydus-image's
    `bootstrap=PATH` form too."""
    text = dictionary_path(arg)
    if is_image_ref(text):
        return _image_dict(parse_image_ref(text), registry or RegistryOptions())
    return read_chunk_dict_file(Path(text), blob_dir)


def _image_dict(ref: ImageRef, registry: RegistryOptions) -> ChunkDict:
    images = [image for image in open_source(ref, None, registry) if has_bootstrap_layer(image)]
    if not images:
        raise FormatError(f"{ref}: not a Nydus image, so no chunk dictionary")
    if len(images) > 1:
        raise UsageError(f"{ref}: {len(images)} Nydus images (platforms); give one by its manifest digest")
    image = images[0]
    bootstrap, _ = read_bootstrap_layer(image)
    chunk_dict = load_chunk_dict(bootstrap, str(ref))
    layers = {layer.hex: layer for layer in image.layers[:-1]}
    chunk_dict.blobs = [_image_blob(blob, layers, image, ref, registry) for blob in chunk_dict.blobs]
    return chunk_dict


def _image_blob(blob: DictBlob, layers: dict[str, Descriptor], image: SourceImage, ref: ImageRef,
                registry: RegistryOptions) -> DictBlob:
    """A dictionary image's blob, read through the image's store (verified as it streams)."""
    desc = layers.get(blob.info.file_id)
    if desc is None:
        raise FormatError(f"{ref}: its bootstrap references blob {blob.info.file_id}, which is not a layer")
    if desc.size != blob.info.file_size:
        raise FormatError(f"{ref}: blob {blob.info.file_id} is {desc.size} bytes in the manifest, "
                          f"{blob.info.file_size} in the bootstrap")

    def stream() -> VerifiedStream:
        return image.open_blob(desc)

    if ref.transport is Transport.DOCKER and ref.remote is not None:
        remote = ref.remote
        return replace(blob, source=_LazyRemoteBlob(registry, remote.registry, remote.repository, desc), open=stream,
                       repository=(remote.registry, remote.repository))
    local = find_blob_file([ref.path / "blobs" / "sha256"], desc.hex) if ref.path is not None and \
        ref.transport is Transport.OCI else None
    return replace(blob, source=local, open=stream)


class _LazyRemoteBlob:
    """A registry blob as RandomAccess, reached only when read (a dictionary blob mounted by a push is never
    read, and a build may use none of a dictionary's blobs)."""

    def __init__(self, registry: RegistryOptions, host: str, repository: str, desc: Descriptor) -> None:
        self._args = (registry, host, repository, desc)
        self._blob: RandomAccess | None = None
        self.size = desc.size
        self.name = desc.hex

    def pread(self, offset: int, size: int) -> bytes:
        if self._blob is None:
            from nydus_py.oci.registry import RemoteBlob  # the HTTP stack, for commands that reach a registry

            registry, host, repository, desc = self._args
            self._blob = RemoteBlob(registry.client(host), repository, desc.digest, desc.size)
        return self._blob.pread(offset, size)

    def close(self) -> None:
        pass


# --- making a dictionary: `nydus-py chunkdict` -------------------------------------------------------------

DEFAULT_MIN_COUNT = 2
DEFAULT_MAX_BLOB_SIZE = 1 << 30


@dataclass(slots=True)
class _Counted:
    """One source image: its name, chunk size, digester, and each distinct chunk with where to read it."""

    name: str
    chunk_size: int
    digester: DigestAlgo
    chunks: dict[tuple[bytes, int], tuple[ChunkRef, BlobInfo, BlobReader]]


@dataclass(slots=True)
class ChunkDictResult:
    """What `chunkdict` made: the dictionary image, and per source image the chunks and compressed bytes it
    would not have stored with the dictionary."""

    image: BuildResult
    chunks: int
    bytes: int  # uncompressed
    savings: list[tuple[str, int, int]]  # (image, chunks, compressed bytes)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image.to_json(), "chunks": self.chunks, "bytes": self.bytes,
                "images": [{"image": name, "chunks": chunks, "bytes": size} for name, chunks, size in self.savings]}


def make_chunk_dict(images: list[ImageRef], target: ImageRef, config: BuildConfig, *,
                    min_count: int = DEFAULT_MIN_COUNT, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
                    registry: RegistryOptions | None = None) -> ChunkDictResult:
    """A dictionary image of the chunks at least `min_count` of the Nydus `images` hold (every platform of
    each counts as one image), in blobs of at most about `max_blob_size` compressed bytes. Each chunk is read
    from the first image that has it and checked against its digest before it is stored."""
    if min_count < 1:
        raise UsageError(f"--min-count {min_count}: must be at least 1")
    registry = registry or RegistryOptions()
    with contextlib.ExitStack() as opened:
        counted = [c for ref in images for c in _count(ref, registry, opened)]
        if not counted:
            raise UsageError("no images given")
        first = counted[0]
        for other in counted[1:]:
            if (other.chunk_size, other.digester) != (first.chunk_size, first.digester):
                raise UsageError(f"{other.name}: {other.chunk_size:#x}-byte chunks named by "
                                 f"{other.digester.name.lower()}, {first.name}: {first.chunk_size:#x} and "
                                 f"{first.digester.name.lower()}: one dictionary serves one kind")
        holders = Counter(key for image in counted for key in image.chunks)  # in order of first appearance
        chosen = [key for key, count in holders.items() if count >= min_count]
        where: dict[tuple[bytes, int], tuple[ChunkRef, BlobInfo, BlobReader]] = {}
        for image in counted:  # each chunk is read from the first image that has it
            for key, found in image.chunks.items():
                where.setdefault(key, found)
        digester = Digester.BLAKE3 if first.digester is DigestAlgo.BLAKE3 else Digester.SHA256
        config = replace(config, chunk_size=first.chunk_size, digester=digester, prefetch_patterns=(),
                         cross_layer_dedup=False, chunk_dict=None)
        layers = [(f"chunk dictionary blob {i}", ChunkListSource(group, "chunk dictionary", first=start))
                  for i, (start, group) in enumerate(_groups(chosen, where, first.digester, max_blob_size))]
        started = time.perf_counter()
        with open_target(target, registry) as out:
            built = build_layers(layers, out.writer.work, config, layered=True)
            result = publish_image(built, out, config, base_config(ImageOptions()), ImageOptions())
        result.timings = {"total": time.perf_counter() - started}
    chosen_set = set(chosen)
    savings = [(image.name, sum(1 for k in image.chunks if k in chosen_set),
                sum(image.chunks[k][0].compressed_size for k in image.chunks if k in chosen_set)) for image in counted]
    return ChunkDictResult(image=result, chunks=len(chosen), bytes=sum(size for _, size in chosen), savings=savings)


def _count(ref: ImageRef, registry: RegistryOptions, opened: contextlib.ExitStack) -> list[_Counted]:
    """Each Nydus image of `ref`, its distinct chunks with the blob each is read from."""
    out = []
    for image in open_source(ref, None, registry):
        if not has_bootstrap_layer(image):
            continue
        name = f"{ref} ({platform_text(image.platform)})"
        boot = read_bootstrap(read_bootstrap_layer(image)[0])
        layers = {layer.hex: layer for layer in image.layers[:-1]}
        blobs: dict[int, tuple[BlobInfo, BlobReader]] = {}
        for info in boot.blobs:
            if info.is_separate:
                raise UsageError(f"{name}: a zran image: its chunks are in gzip layers, not in Nydus blobs")
            desc = layers.get(info.file_id)
            if desc is None:
                raise FormatError(f"{name}: its bootstrap references blob {info.file_id}, which is not a layer")
            blobs[info.blob_index] = (info, opened.enter_context(_blob_reader(ref, desc, registry)))
        chunks: dict[tuple[bytes, int], tuple[ChunkRef, BlobInfo, BlobReader]] = {}
        for inode in walk_bfs(boot.tree):
            for chunk in inode.chunks:
                info, blob = blobs[chunk.blob_index]
                chunks.setdefault((chunk.digest, chunk.uncompressed_size), (chunk, info, blob))
        out.append(_Counted(name, boot.chunk_size, boot.digester, chunks))
    if not out:
        raise FormatError(f"{ref}: not a Nydus image")
    return out


def _groups(chosen: list[tuple[bytes, int]], where: dict[tuple[bytes, int], tuple[ChunkRef, BlobInfo, BlobReader]],
            digester: DigestAlgo, max_blob_size: int) -> Iterator[tuple[int, list[tuple[int, Callable[[], bytes]]]]]:
    """The chosen chunks in blobs of about `max_blob_size` compressed bytes: (number of the first, [(size,
    read)])."""
    group: list[tuple[int, Callable[[], bytes]]] = []
    start = filled = 0
    for number, key in enumerate(chosen):
        chunk, info, blob = where[key]
        if group and filled + chunk.compressed_size > max_blob_size:
            yield start, group
            group, start, filled = [], number, 0
        group.append((chunk.uncompressed_size, _reader(chunk, info, blob, digester)))
        filled += chunk.compressed_size
    if group:
        yield start, group


def _reader(chunk: ChunkRef, info: BlobInfo, blob: BlobReader, digester: DigestAlgo) -> Callable[[], bytes]:
    return lambda: blob.read_chunk(chunk, info.compressor, digester, chunk.digest)


def _blob_reader(ref: ImageRef, desc: Descriptor, registry: RegistryOptions) -> BlobReader:
    """A source blob to read chunks out of: the layout's file, or the registry blob by HTTP ranges."""
    if ref.transport is Transport.DOCKER and ref.remote is not None:
        return BlobReader(_LazyRemoteBlob(registry, ref.remote.registry, ref.remote.repository, desc))
    if ref.transport is not Transport.OCI or ref.path is None:
        raise UsageError(f"{ref}: chunkdict reads oci:DIR[:TAG] and docker:// images")
    path = find_blob_file([ref.path / "blobs" / "sha256"], desc.hex)
    if path is None:
        raise FormatError(f"{ref}: blob {desc.digest} is missing from the layout")
    return BlobReader(path)


__all__ = ["ChunkDictResult", "make_chunk_dict", "open_chunk_dict"]
