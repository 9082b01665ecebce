"""Images wherever they are: local layouts and archives (layout.py) or registries (registry.py).

`open_source` resolves any SOURCE to one `SourceImage` per platform, layers streamed from where they are;
`push_layout` uploads an image from a local layout to a registry (blobs first, HEAD to skip what is there,
cross-repository mounts when the registry offers them, then manifests by digest and the top one by tag);
`copy_image` copies an image as it is (same bytes, same digests) between layouts and registries.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from nydus_py.errors import FormatError, UsageError
from nydus_py.format import oci
from nydus_py.oci import layout
from nydus_py.oci.layout import Descriptor, Json, SourceImage, digest_hex, parse_json
from nydus_py.oci.platforms import image_platform, select_platforms
from nydus_py.oci.registry import Reference, RegistryClient, parse_creds, parse_reference

MAX_CONFIG = 64 << 20


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    creds: str | None = None  # USER:PASS
    plain_http: bool = False
    insecure: bool = False

    def client(self, registry: str) -> RegistryClient:
        return RegistryClient(registry, plain_http=self.plain_http, insecure=self.insecure,
                              creds=parse_creds(self.creds))


def open_source(reference: str, platforms: list[str] | None = None,
                registry: RegistryOptions | None = None) -> list[SourceImage]:
    if reference.startswith("docker://"):
        ref = parse_reference(reference)
        client = (registry or RegistryOptions()).client(ref.registry)
        return select_platforms(registry_images(client, ref), platforms, str(ref))
    return layout.open_source(reference, platforms)


def registry_images(client: RegistryClient, ref: Reference) -> list[SourceImage]:
    """One SourceImage per platform of `ref` (its layers streamed from the registry when opened)."""
    repo = ref.repository
    data, media_type, digest = client.get_manifest(repo, ref.ref)
    doc = parse_json(data, f"{ref}")
    top = Descriptor(doc.get("mediaType") or media_type, digest, len(data))
    if (doc.get("mediaType") or media_type) in oci.INDEX_TYPES or "manifests" in doc:
        images = []
        for child in doc.get("manifests") or []:
            desc = Descriptor.from_json(child, str(ref))
            if desc.platform and desc.platform.get("os") == "unknown":
                continue
            child_data, child_type, _ = client.get_manifest(repo, desc.digest)
            images.append(_registry_image(client, repo, parse_json(child_data, desc.digest),
                                          Descriptor(desc.media_type or child_type, desc.digest, desc.size,
                                                     platform=desc.platform, artifact_type=desc.artifact_type)))
        return images
    return [_registry_image(client, repo, doc, top)]


def _registry_image(client: RegistryClient, repo: str, manifest: Json, desc: Descriptor) -> SourceImage:
    config_desc = Descriptor.from_json(manifest.get("config") or {}, desc.digest)
    if config_desc.size > MAX_CONFIG:
        raise FormatError(f"{client.registry}/{repo}: config {config_desc.digest} is too large")
    with client.open_blob(repo, config_desc.digest) as f:
        config_bytes = f.read()
    layers = [Descriptor.from_json(layer, desc.digest) for layer in manifest.get("layers") or []]
    config = parse_json(config_bytes, config_desc.digest)
    return SourceImage(manifest=manifest, manifest_descriptor=desc, config_bytes=config_bytes, layers=layers,
                       open_blob=lambda d: client.open_blob(repo, d), platform=image_platform(desc.platform, config))


# --- pushing a layout -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PushStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    existing: int = 0
    existing_bytes: int = 0
    mounted: int = 0


def push_layout(root: Path, top: Descriptor, ref: Reference, client: RegistryClient,
                mount_from: str | None = None) -> PushStats:
    """Upload the image `top` of the layout at `root` to `ref` (tag or digest)."""
    stats = PushStats()
    _push(root, top, ref.repository, client, mount_from, stats, depth=0)
    data = (root / "blobs" / "sha256" / top.hex).read_bytes()
    if ref.tag:
        client.put_manifest(ref.repository, ref.tag, data, top.media_type)
    return stats


def _push(root: Path, desc: Descriptor, repo: str, client: RegistryClient, mount_from: str | None, stats: PushStats,
          depth: int) -> None:
    if depth > 4:
        raise FormatError(f"{root}: indexes nested too deeply")
    path = root / "blobs" / "sha256" / desc.hex
    doc = parse_json(path.read_bytes(), desc.digest)
    if desc.media_type in oci.INDEX_TYPES or "manifests" in doc:
        for child in doc.get("manifests") or []:
            _push(root, Descriptor.from_json(child, desc.digest), repo, client, mount_from, stats, depth + 1)
    else:
        for blob in [doc["config"], *(doc.get("layers") or [])]:
            blob_desc = Descriptor.from_json(blob, desc.digest)
            blob_path = root / "blobs" / "sha256" / blob_desc.hex
            how = client.push_blob(repo, blob_desc.digest, blob_desc.size, lambda p=blob_path: open(p, "rb"),
                                   mount_from=mount_from)
            if how == "exists":
                stats.existing += 1
                stats.existing_bytes += blob_desc.size
            elif how == "mounted":
                stats.mounted += 1
            else:
                stats.uploaded += 1
                stats.uploaded_bytes += blob_desc.size
    client.put_manifest(repo, desc.digest, path.read_bytes(), desc.media_type or doc.get("mediaType", ""))


# --- copying an image as it is ----------------------------------------------------------------------------


def copy_image(source: str, target: str, registry: RegistryOptions | None = None) -> Descriptor:
    """Copy the image SOURCE to TARGET byte for byte; each side is `oci:DIR[:TAG]` or `docker://REF`."""
    registry = registry or RegistryOptions()
    staging_dir: Path | None = None
    if source.startswith("docker://"):
        ref = parse_reference(source)
        client = registry.client(ref.registry)
        import tempfile

        staging_dir = Path(tempfile.mkdtemp(prefix="nydus-py-copy-"))
        writer = layout.LayoutWriter(staging_dir)
        writer.prepare()
        top = _pull(client, ref.repository, ref.ref, writer, depth=0)
        root = staging_dir
    elif source.startswith("oci:"):
        path, tag = layout.split_reference(source, "oci")
        root = Path(path)
        top = _layout_top(root, tag)
    else:
        raise UsageError(f"{source}: copy reads oci:DIR[:TAG] or docker://REF")
    try:
        if target.startswith("docker://"):
            ref = parse_reference(target)
            push_layout(root, top, ref, registry.client(ref.registry))
        elif target.startswith("oci:"):
            path, tag = layout.split_reference(target, "oci")
            out = layout.LayoutWriter(Path(path))
            out.prepare()
            _copy_blobs(root, top, out, depth=0)
            out.write_index([Descriptor(top.media_type, top.digest, top.size,
                                        annotations={oci.REF_NAME: tag} if tag else {})])
        else:
            raise UsageError(f"{target}: copy writes oci:DIR[:TAG] or docker://REF")
    finally:
        if staging_dir is not None:
            shutil.rmtree(staging_dir, ignore_errors=True)
    return top


def _layout_top(root: Path, tag: str | None) -> Descriptor:
    index = parse_json((root / oci.INDEX_FILE).read_bytes() if (root / oci.INDEX_FILE).is_file() else b"x",
                      f"{root}/index.json")
    found = [d for d in index.get("manifests") or [] if tag is None or d.get("annotations", {}).get(oci.REF_NAME) == tag]
    if len(found) != 1:
        raise UsageError(f"{root}: {'no' if not found else 'more than one'} image{' tagged ' + tag if tag else ''}")
    return Descriptor.from_json(found[0], str(root))


def _pull(client: RegistryClient, repo: str, ref: str, writer: layout.LayoutWriter, depth: int) -> Descriptor:
    if depth > 4:
        raise FormatError(f"{client.registry}/{repo}: indexes nested too deeply")
    data, media_type, digest = client.get_manifest(repo, ref)
    doc = parse_json(data, digest)
    desc = writer.put_bytes(data, doc.get("mediaType") or media_type)
    if desc.media_type in oci.INDEX_TYPES or "manifests" in doc:
        for child in doc.get("manifests") or []:
            _pull(client, repo, Descriptor.from_json(child, digest).digest, writer, depth + 1)
        return desc
    for blob in [doc["config"], *(doc.get("layers") or [])]:
        blob_desc = Descriptor.from_json(blob, digest)
        if not (writer.blobs / digest_hex(blob_desc.digest)).is_file():
            with client.open_blob(repo, blob_desc.digest) as src:
                writer.put_stream(src, blob_desc.digest, f"{client.registry}/{repo}: blob")
    return desc


def _copy_blobs(root: Path, desc: Descriptor, out: layout.LayoutWriter, depth: int) -> None:
    path = root / "blobs" / "sha256" / desc.hex
    out.put_file(path, desc.hex)
    doc = parse_json(path.read_bytes(), desc.digest)
    for child in doc.get("manifests") or []:
        _copy_blobs(root, Descriptor.from_json(child, desc.digest), out, depth + 1)
    for blob in ([doc["config"]] if "config" in doc else []) + (doc.get("layers") or []):
        blob_desc = Descriptor.from_json(blob, desc.digest)
        out.put_file(root / "blobs" / "sha256" / blob_desc.hex, blob_desc.hex)
