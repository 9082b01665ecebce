"""`nydus-py copy SOURCE TARGET`: an image as it is (same bytes, same digests) between layouts and
registries. Every blob is verified against its digest and size as it is copied (sources.py); the target
is written through the one publishing transaction (targets.py), so a failed copy leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nydus_py.errors import FormatError, UsageError
from nydus_py.format import oci
from nydus_py.oci.documents import (
    MAX_INDEX_DEPTH,
    MAX_MANIFESTS,
    Descriptor,
    IndexDoc,
    ManifestDoc,
    decode,
    is_index,
    referenced_layers,
)
from nydus_py.oci.ref import ImageRef, Transport
from nydus_py.oci.images import BlobStore, LayoutStore, RegistryOptions, registry_store
from nydus_py.oci.targets import LayoutWriter, open_target


@dataclass(slots=True)
class _Copy:
    store: BlobStore
    writer: LayoutWriter
    visited: set[str] = field(default_factory=set)

    def manifest(self, desc: Descriptor, depth: int, data: bytes | None = None) -> None:
        if desc.digest in self.visited:
            return
        self.visited.add(desc.digest)
        if depth > MAX_INDEX_DEPTH or len(self.visited) > MAX_MANIFESTS:
            raise FormatError(f"{self.store.name}: indexes nested or fanned out too far")
        data = self.store.read(desc, "manifest") if data is None else data
        where = f"{self.store.name}: manifest {desc.digest}"
        if is_index(desc.media_type if desc.media_type in oci.INDEX_TYPES else None, data):
            for child in decode(data, IndexDoc, where).manifests:
                self.manifest(Descriptor.of(child), depth + 1)
        else:
            doc = decode(data, ManifestDoc, where)
            layers = [Descriptor.of(layer) for layer in doc.layers]
            # a zran image's originals go with it, though no manifest lists them (docs/oci.md §1.7)
            originals = [Descriptor(oci.OCI_LAYER_GZIP, digest, self.store.size(digest, "original layer"))
                         for digest in referenced_layers(layers)]
            for blob_desc in [Descriptor.of(doc.config), *layers, *originals]:
                self.writer.put_stream(self.store.open(blob_desc), blob_desc)
        self.writer.put_bytes(data, desc.media_type)


def copy_image(source: ImageRef, target: ImageRef, registry: RegistryOptions | None = None) -> Descriptor:
    """Copy the image SOURCE to TARGET byte for byte; each side is `oci:DIR[:TAG]` or `docker://REF`."""
    registry = registry or RegistryOptions()
    if source.transport is Transport.OCI:
        assert source.path is not None
        layout = LayoutStore(source.path, str(source))
        top, data = _layout_top(layout, source)
        store: BlobStore = layout
    elif source.transport is Transport.DOCKER:
        remote = source.registry_ref()
        store, top, data = registry_store(registry.client(remote.registry), remote)
    else:
        raise UsageError(f"{source}: copy reads oci:DIR[:TAG] or docker://REF")
    with open_target(target, registry) as out:
        _Copy(store, out.writer).manifest(top, 0, data)
        out.publish(top)
    return top


def _layout_top(store: LayoutStore, ref: ImageRef) -> tuple[Descriptor, bytes]:
    index = decode(store.read_top(oci.INDEX_FILE), IndexDoc, f"{ref}: index.json")
    found = [Descriptor.of(d) for d in index.manifests
             if ref.tag is None or (d.annotations or {}).get(oci.REF_NAME) == ref.tag]
    if len(found) != 1:
        raise UsageError(f"{ref}: {'no' if not found else 'more than one'} image"
                         f"{' tagged ' + ref.tag if ref.tag else ''}")
    return found[0], store.read(found[0], "manifest")


__all__ = ["copy_image"]
