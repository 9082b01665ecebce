"""Source images: `open_source(ref)` resolves any `ImageRef` to one `SourceImage` per platform.

Layouts (`oci:`), archives (`oci-archive:`, `docker-archive:`) and registries (`docker://`) are read the
same way, and nothing read is trusted:
- every document is decoded once into a typed object (documents.py), capped at 4 MiB;
- every blob (layer, config, manifest, index) is checked against its digest and declared size while it
  streams (`VerifiedStream`), and a layer is verified to its end before anything built from it is
  published; a docker-archive layer is checked against its config's `diff_ids`;
- an entry of a layout's `blobs/sha256/` must be a regular file inside the layout: it is opened with
  `O_NOFOLLOW | O_NONBLOCK` under the directory's descriptor, so a symlink, FIFO, device or directory is an
  error, never an escape or a hang;
- indexes are walked with a depth cap, a fan-out cap and a visited set.
References: OCI image-spec image-layout.md, image-index.md; docker save's manifest.json.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, cast

import pyzstd

from nydus_py.errors import FormatError, NydusError, UsageError
from nydus_py.format import oci
from nydus_py.util.fsutil import open_regular_file
from nydus_py.oci.documents import (
    MAX_DOCUMENT,
    MAX_ENTRIES,
    MAX_INDEX_DEPTH,
    MAX_MANIFESTS,
    ConfigDoc,
    Descriptor,
    DockerArchive,
    DockerArchiveEntry,
    IndexDoc,
    Json,
    ManifestDoc,
    decode,
    decode_object,
    digest_hex,
    dumps,
    is_index,
    sha256_digest,
)
from nydus_py.oci.platforms import image_platform, select_platforms
from nydus_py.oci.ref import ImageRef, Transport
from nydus_py.oci.ref import Reference, parse_creds
from nydus_py.sources.tarstream import TarReader

if TYPE_CHECKING:  # the HTTP stack is imported only by commands that reach a registry
    from _typeshed import WriteableBuffer
    from nydus_py.oci.registry import RegistryClient

MAX_ARCHIVE_MEMBERS = 1 << 16
_BLOB_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    creds: str | None = None  # USER:PASS
    plain_http: bool = False
    insecure: bool = False
    creds_file: Path | None = None  # a docker config.json to take credentials from, per host

    def client(self, registry: str) -> RegistryClient:
        from nydus_py.oci.registry import RegistryClient, docker_credentials

        creds = parse_creds(self.creds)
        if creds is None and self.creds_file is not None:
            creds = docker_credentials(registry, self.creds_file)
        return RegistryClient(registry, plain_http=self.plain_http, insecure=self.insecure, creds=creds)


class VerifiedStream(io.RawIOBase):
    """A blob read from `raw`, hashed as it streams: more bytes than declared is an error at once, and the
    end of the stream (or `verify()`) checks the size and the digest."""

    def __init__(self, raw: IO[bytes], digest: str, size: int, where: str, what: str = "blob") -> None:
        super().__init__()
        self._what = what
        self._raw = raw
        self._digest = digest
        self._size = size
        self._where = where
        self._hash = hashlib.sha256()
        self._count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def _take(self, want: int) -> bytes:
        data = self._raw.read(min(want, self._size - self._count + 1))
        if not data:
            self._check()
            return data
        self._count += len(data)
        if self._count > self._size:
            raise FormatError(f"{self._where}: {self._what} {self._digest} is larger than its declared "
                              f"{self._size} bytes")
        self._hash.update(data)
        return data

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        data = self._take(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._verified:
            return
        if self._count != self._size:
            raise FormatError(f"{self._where}: {self._what} {self._digest} has {self._count} bytes, not its declared "
                              f"{self._size}")
        if "sha256:" + self._hash.hexdigest() != self._digest:
            raise FormatError(f"{self._where}: {self._what} {self._digest} does not match its digest")
        self._verified = True

    def verify(self) -> None:
        """Read what the consumer left and check it all; then release the source."""
        try:
            while not self._verified and self._take(1 << 20):
                pass
        finally:
            self.release()

    def close(self) -> None:
        """The consumer is done; the source stays open for `verify()` (or `release()`) unless verified."""
        super().close()
        if self._verified:
            self.release()

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()


def read_verified(stream: VerifiedStream, what: str) -> bytes:
    """A whole (small) verified blob."""
    try:
        parts = []
        total = 0
        while block := stream.read(1 << 20):
            parts.append(block)
            total += len(block)
            if total > MAX_DOCUMENT:
                raise FormatError(f"{what}: over the {MAX_DOCUMENT >> 20} MiB document limit")
        data = b"".join(parts)
        stream.verify()
    finally:
        stream.release()
    return data


class BlobStore:
    """Blobs by descriptor from one place (layout, archive, registry repository): verified streams."""

    def __init__(self, name: str, open_raw: Callable[[Descriptor], IO[bytes]],
                 size_of: Callable[[str], int | None]) -> None:
        self.name = name
        self._open_raw = open_raw
        self._size_of = size_of

    def size(self, digest: str, what: str = "blob") -> int:
        """The size of the blob `digest`, which no descriptor gives (a zran layer's original, named only by
        its digest); FormatError when the store lacks it."""
        digest_hex(digest, f"{self.name}: {what}")
        size = self._size_of(digest)
        if size is None:
            raise FormatError(f"{self.name}: {what} {digest} is missing")
        return size

    def open(self, desc: Descriptor, what: str = "blob") -> VerifiedStream:
        try:
            raw = self._open_raw(desc)
        except FormatError as exc:  # say what the blob is for ("layer", "config", ...)
            raise FormatError(str(exc).replace(f"blob {desc.digest}", f"{what} {desc.digest}", 1)) from None
        return VerifiedStream(raw, desc.digest, desc.size, self.name, what)

    def read(self, desc: Descriptor, what: str) -> bytes:
        if desc.size > MAX_DOCUMENT:
            raise FormatError(f"{self.name}: {what} {desc.digest} declares {desc.size} bytes, over the "
                              f"{MAX_DOCUMENT >> 20} MiB document limit")
        return read_verified(self.open(desc, what), f"{self.name}: {what} {desc.digest}")


@dataclass(slots=True)
class SourceImage:
    """One platform's image: its manifest (validated, kept whole for rewriting), config, layers, and the
    store its blobs stream from (verified)."""

    manifest: Json
    manifest_descriptor: Descriptor
    config_bytes: bytes
    config: Json
    layers: list[Descriptor]
    store: BlobStore
    platform: Json | None = None
    config_doc: ConfigDoc = field(default_factory=ConfigDoc)

    def open_blob(self, desc: Descriptor) -> VerifiedStream:
        return self.store.open(desc, "layer")


# --- layouts ----------------------------------------------------------------------------------------------


def open_regular(dir_fd: int, name: str, where: str) -> int:
    """`name` under `dir_fd`, which must be a regular file (no symlink followed, no FIFO waited on)."""
    try:
        fd = os.open(name, _BLOB_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FormatError(f"{where} is a symlink; a layout's blobs must be regular files") from None
        if exc.errno == errno.ENOENT:
            raise FormatError(f"{where} is missing") from None
        raise FormatError(f"{where} cannot be opened ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FormatError(f"{where} is not a regular file; a layout's blobs must be regular files")
    os.set_blocking(fd, True)
    return fd


def open_subdir(dir_fd: int, path: str, where: str) -> int:
    """A directory below `dir_fd`, each component opened without following symlinks."""
    fd = os.dup(dir_fd)
    for part in path.split("/"):
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            what = "is a symlink or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
            raise FormatError(f"{where}/{path}: {what}") from None
        os.close(fd)
        fd = child
    return fd


class LayoutStore(BlobStore):
    """An OCI image layout directory (its own descriptor kept open)."""

    def __init__(self, root: Path, name: str) -> None:
        try:
            self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"{name}: not an OCI image layout ({exc.strerror})") from None
        self.root = root
        self._blobs_fd: int | None = None
        super().__init__(name, lambda desc: os.fdopen(self._blob_fd(desc.digest), "rb"), self._blob_size)

    def _blob_fd(self, digest: str) -> int:
        if self._blobs_fd is None:
            self._blobs_fd = open_subdir(self.root_fd, "blobs/sha256", self.name)
        return open_regular(self._blobs_fd, digest_hex(digest), f"{self.name}: blob {digest}")

    def _blob_size(self, digest: str) -> int:
        fd = self._blob_fd(digest)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read_top(self, name: str) -> bytes:
        """`index.json` (or another top-level document): a regular file, capped."""
        fd = open_regular(self.root_fd, name, f"{self.name}: {name}")
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_DOCUMENT:
                raise FormatError(f"{self.name}: {name}: {size} bytes is over the {MAX_DOCUMENT >> 20} MiB limit")
            return f.read(MAX_DOCUMENT + 1)


def _layout_images(ref: ImageRef) -> list[SourceImage]:
    assert ref.path is not None
    if not (ref.path / oci.INDEX_FILE).exists() and not (ref.path / oci.INDEX_FILE).is_symlink():
        raise UsageError(f"{ref}: not an OCI image layout (no index.json)")
    store = LayoutStore(ref.path, str(ref))
    index = decode(store.read_top(oci.INDEX_FILE), IndexDoc, f"{ref}: index.json")
    return _from_index(index, ref.tag, store)


# --- archives ---------------------------------------------------------------------------------------------


class ArchiveStore(BlobStore):
    """Members of a tar archive (plain, gzip, bzip2, xz or zstd), read in place, never extracted: the archive
    is indexed once by our tar reader; a member of a plain archive is then read with pread, one of a
    compressed archive by decompressing the archive again up to it."""

    def __init__(self, path: Path, name: str) -> None:
        with open_regular_file(path, f"an archive ({name})") as f:
            fd = self.fd = os.dup(f.fileno())  # held open for as long as this object serves members
        self.opener = _ARCHIVE_OPENERS.get(_archive_kind(os.pread(fd, 6, 0)))
        self.members: dict[str, tuple[bool, int, int]] = {}  # name -> (regular, data offset, size)
        try:
            reader = TarReader(self._stream(), name)
            for member in reader.members():
                if len(self.members) >= MAX_ARCHIVE_MEMBERS:
                    raise FormatError(f"{name}: more than {MAX_ARCHIVE_MEMBERS} members")
                key = _member_key(member.name.decode("utf-8", "surrogateescape"))
                self.members[key] = (member.is_regular and member.sparse is None, member.data_offset, member.size)
        except FormatError:
            os.close(fd)
            if self.members:
                raise
            raise FormatError(f"{name}: not a tar archive (plain, gzip, bzip2, xz or zstd)") from None
        super().__init__(name, lambda desc: self.open_member(f"blobs/sha256/{digest_hex(desc.digest)}"),
                         lambda digest: self.member(f"blobs/sha256/{digest_hex(digest)}")[1])

    def _stream(self) -> IO[bytes]:
        """The archive's tar stream from its start: the file itself, or its decompressor."""
        raw = os.fdopen(os.dup(self.fd), "rb")  # noqa: SIM115 - the caller owns it
        if self.opener is None:
            return raw
        return io.BufferedReader(_Decompressing(self.opener(raw), raw), 1 << 20)

    def member(self, key: str) -> tuple[int, int]:
        """(offset in the tar stream, size) of the regular member `key`."""
        found = self.members.get(_member_key(key))
        if found is None or not found[0]:
            raise FormatError(f"{self.name}: {key} is missing from the archive")
        return found[1], found[2]

    def open_member(self, key: str) -> IO[bytes]:
        offset, size = self.member(key)
        if self.opener is None:
            return io.BufferedReader(_Window(self.fd, offset, size), 1 << 20)
        stream = self._stream()
        while offset > 0:  # a compressed stream cannot seek: decompress up to the member
            skipped = len(stream.read(min(offset, 1 << 20)))
            if not skipped:
                raise FormatError(f"{self.name}: the archive ended before {key}")
            offset -= skipped
        return io.BufferedReader(_Window(stream, 0, size), 1 << 20)

    def read_member(self, key: str) -> bytes:
        _, size = self.member(key)
        if size > MAX_DOCUMENT:
            raise FormatError(f"{self.name}: {key}: {size} bytes is over the {MAX_DOCUMENT >> 20} MiB limit")
        with self.open_member(key) as f:
            return f.read(MAX_DOCUMENT + 1)


# the decompressor of each kind of archive (closed, with the file under it, by _Decompressing)
_ARCHIVE_OPENERS: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    "gzip": lambda raw: cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")),
    "bzip2": lambda raw: cast(IO[bytes], bz2.BZ2File(raw, mode="rb")),
    "xz": lambda raw: cast(IO[bytes], lzma.LZMAFile(raw, mode="rb")),  # noqa: SIM115
    "zstd": lambda raw: cast(IO[bytes], pyzstd.ZstdFile(cast(BinaryIO, raw), mode="rb")),
}


def _member_key(name: str) -> str:
    """A member's name as the archive index keeps it (`./a/b`, `a//b` and `/a/b` are all `a/b`)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _archive_kind(head: bytes) -> str:
    """The compression of an archive, by its magic bytes ('tar': none)."""
    magics = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
    return next((kind for kind, magic in magics.items() if head.startswith(magic)), "tar")


class _Decompressing(io.RawIOBase):
    """A decompressor's stream that also closes the file under it (the standard library's do not)."""

    def __init__(self, stream: IO[bytes], under: IO[bytes]) -> None:
        super().__init__()
        self._stream, self._under = stream, under

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._under.close()
            super().close()


class _Window(io.RawIOBase):
    """`size` bytes from `offset` of a file descriptor (pread: no shared position), or the next `size` bytes
    of a stream."""

    def __init__(self, source: int | IO[bytes], offset: int, size: int) -> None:
        super().__init__()
        self._source, self._offset, self._left = source, offset, size

    def readable(self) -> bool:
        return True

    def readinto(self, target: WriteableBuffer) -> int:
        buffer = memoryview(target).cast("B")
        want = min(len(buffer), self._left)
        if want == 0:
            return 0
        source = self._source
        data = os.pread(source, want, self._offset) if isinstance(source, int) else source.read(want)
        if not data:
            raise FormatError("the archive ends inside a member")
        buffer[: len(data)] = data
        self._offset += len(data)
        self._left -= len(data)
        return len(data)


def _oci_archive_images(ref: ImageRef) -> list[SourceImage]:
    assert ref.path is not None
    store = ArchiveStore(ref.path, str(ref))
    index = decode(store.read_member(oci.INDEX_FILE), IndexDoc, f"{ref}: index.json")
    return _from_index(index, ref.tag, store)


def _docker_archive_images(ref: ImageRef) -> list[SourceImage]:
    """`docker save` output: manifest.json lists images by config and layer member names; REF picks one by
    repo tag. Layers are checked against the config's diff_ids (they are uncompressed tars)."""
    assert ref.path is not None
    store = ArchiveStore(ref.path, str(ref))
    entries: list[DockerArchiveEntry] = decode(store.read_member("manifest.json"), DockerArchive,
                                               f"{ref}: manifest.json")
    if ref.tag is not None:
        entries = [e for e in entries if ref.tag in (e.repo_tags or []) or any(
            t.endswith(":" + ref.tag) for t in e.repo_tags or [])]
        if not entries:
            raise UsageError(f"{ref}: no image tagged {ref.tag!r}")
    if len(entries) > 1:
        names = "; ".join(", ".join(e.repo_tags or []) or f"<untagged {e.config}>" for e in entries)
        raise UsageError(f"{ref}: holds {len(entries)} images ({names}); name one as docker-archive:FILE:REF")
    entry = entries[0]
    config_bytes = store.read_member(entry.config)
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    named = Path(entry.config).name.removesuffix(".json")
    if len(named) == 64 and named != config_hex:  # `<image id>.json` or `blobs/sha256/<image id>`
        raise FormatError(f"{ref}: config {entry.config} does not match its digest")
    config_doc = decode(config_bytes, ConfigDoc, f"{ref}: config {entry.config}")
    config = decode_object(config_bytes, f"{ref}: config {entry.config}")
    diff_ids = config_doc.rootfs.diff_ids if config_doc.rootfs else []
    if len(diff_ids) != len(entry.layers):
        raise FormatError(f"{ref}: config {entry.config} has {len(diff_ids)} diff_ids for {len(entry.layers)} "
                          "layers")
    layers = []
    by_digest: dict[str, str] = {}
    for name, diff_id in zip(entry.layers, diff_ids, strict=True):
        _, size = store.member(name)
        digest_hex(diff_id)  # a sha256 digest, or an error naming it
        layers.append(Descriptor(media_type=oci.DOCKER_LAYER_TAR, digest=diff_id, size=size))
        by_digest[diff_id] = name
    manifest = {"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST, "config": {
        "mediaType": oci.DOCKER_CONFIG, "digest": "sha256:" + config_hex, "size": len(config_bytes)},
        "layers": [d.to_json() for d in layers]}
    raw = dumps(manifest)
    desc = Descriptor(oci.DOCKER_MANIFEST, sha256_digest(raw), len(raw))
    layer_store = BlobStore(str(ref), lambda d: store.open_member(by_digest[d.digest]),
                            lambda digest: store.member(by_digest[digest])[1] if digest in by_digest else None)
    return [SourceImage(manifest=manifest, manifest_descriptor=desc, config_bytes=config_bytes, config=config,
                        config_doc=config_doc, layers=layers, store=layer_store,
                        platform=image_platform(None, config))]


# --- indexes and manifests (layouts, archives, registries alike) -----------------------------------------


def _from_index(index: IndexDoc, tag: str | None, store: BlobStore) -> list[SourceImage]:
    manifests = [Descriptor.of(d) for d in index.manifests]
    if tag is not None:
        manifests = [d for d in manifests if d.annotations.get(oci.REF_NAME) == tag]
        if not manifests:
            raise UsageError(f"{store.name}: no image tagged {tag!r}")
    if not manifests:
        raise FormatError(f"{store.name}: the index lists no image")
    if len(manifests) > 1 and tag is None and not all(d.platform for d in manifests):
        raise UsageError(f"{store.name}: holds {len(manifests)} images; name one with :TAG")
    walk = _Walk(store)
    for desc in manifests:
        walk.resolve(desc, depth=0)
    return walk.images


@dataclass(slots=True)
class _Walk:
    """Manifests and indexes below one top: depth and fan-out capped, each digest resolved once."""

    store: BlobStore
    images: list[SourceImage] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)

    def resolve(self, desc: Descriptor, depth: int, data: bytes | None = None) -> None:
        # one manifest may stand for several platforms in an index: an entry is (digest, platform)
        key = f"{desc.digest} {sorted((desc.platform or {}).items())}"
        if key in self.visited:
            return
        self.visited.add(key)
        if depth > MAX_INDEX_DEPTH:
            raise FormatError(f"{self.store.name}: indexes nested deeper than {MAX_INDEX_DEPTH}")
        if len(self.visited) > MAX_MANIFESTS:
            raise FormatError(f"{self.store.name}: more than {MAX_MANIFESTS} manifests")
        where = f"{self.store.name}: manifest {desc.digest}"
        if data is None:
            data = self.store.read(desc, "manifest")
        if is_index(desc.media_type if desc.media_type in oci.INDEX_TYPES else None, data):
            for child in decode(data, IndexDoc, where).manifests:
                child_desc = Descriptor.of(child)
                if child_desc.platform and child_desc.platform.get("os") == "unknown":
                    continue  # attestation manifests (BuildKit) are not images
                self.resolve(child_desc, depth + 1)
            return
        doc = decode(data, ManifestDoc, where)
        manifest = decode_object(data, where)
        config_desc = Descriptor.of(doc.config)
        config_bytes = self.store.read(config_desc, "config")
        config_where = f"{self.store.name}: config {config_desc.digest}"
        config_doc = decode(config_bytes, ConfigDoc, config_where)
        config = decode_object(config_bytes, config_where)
        media_type = doc.media_type or desc.media_type
        top = Descriptor(media_type, desc.digest, desc.size, annotations=desc.annotations, platform=desc.platform,
                         artifact_type=desc.artifact_type)
        self.images.append(SourceImage(manifest=manifest, manifest_descriptor=top, config_bytes=config_bytes,
                                       config=config, config_doc=config_doc,
                                       layers=[Descriptor.of(layer) for layer in doc.layers], store=self.store,
                                       platform=image_platform(desc.platform, config)))


# --- registries -------------------------------------------------------------------------------------------


def registry_store(client: RegistryClient, ref: Reference) -> tuple[BlobStore, Descriptor, bytes]:
    """The blobs of `ref`'s repository (verified streams), and its top manifest or index."""
    repo = ref.repository
    name = str(ref)

    class _Registry(BlobStore):
        def read(self, desc: Descriptor, what: str) -> bytes:
            if what != "manifest":
                return super().read(desc, what)
            data, _, digest = client.get_manifest(repo, desc.digest)
            if digest != desc.digest or len(data) != desc.size:
                raise FormatError(f"{name}: manifest {desc.digest} does not match its descriptor")
            return data

    store = _Registry(name, lambda desc: client.open_blob(repo, desc.digest, desc.size),
                      lambda digest: client.blob_size(repo, digest))
    data, media_type, digest = client.get_manifest(repo, ref.ref)
    if len(data) > MAX_DOCUMENT:
        raise FormatError(f"{name}: manifest of {len(data)} bytes is over the {MAX_DOCUMENT >> 20} MiB limit")
    return store, Descriptor(media_type, digest, len(data)), data


def registry_images(client: RegistryClient, ref: Reference) -> list[SourceImage]:
    """One SourceImage per platform of `ref` (its layers streamed from the registry, verified)."""
    store, top, data = registry_store(client, ref)
    walk = _Walk(store)
    walk.resolve(top, depth=0, data=data)
    return walk.images


# --- the one entry point --------------------------------------------------------------------------------


def open_source(ref: ImageRef, platforms: list[str] | None = None,
                registry: RegistryOptions | None = None) -> list[SourceImage]:
    """Every image of `ref` (or those of `platforms`), one per platform."""
    try:
        if ref.transport is Transport.OCI:
            images = _layout_images(ref)
        elif ref.transport is Transport.OCI_ARCHIVE:
            images = _oci_archive_images(ref)
        elif ref.transport is Transport.DOCKER_ARCHIVE:
            images = _docker_archive_images(ref)
        else:
            remote = ref.registry_ref()
            images = registry_images((registry or RegistryOptions()).client(remote.registry), remote)
    except NydusError as exc:
        if str(exc).startswith(str(ref)):
            raise
        raise type(exc)(f"{ref}: {exc}") from exc
    return select_platforms(images, platforms, str(ref))


@contextlib.contextmanager
def verified_layers(image: SourceImage) -> Iterator[Callable[[Descriptor], VerifiedStream]]:
    """Open layers of `image`; every stream opened is verified to its end when the block completes."""
    opened: list[VerifiedStream] = []

    def open_layer(desc: Descriptor) -> VerifiedStream:
        stream = image.open_blob(desc)
        opened.append(stream)
        return stream

    try:
        yield open_layer
        for stream in opened:
            stream.verify()
    finally:
        for stream in opened:
            stream.release()


__all__ = ["MAX_ENTRIES", "BlobStore", "RegistryOptions", "SourceImage", "VerifiedStream", "open_regular",
           "open_source", "read_verified", "registry_images", "registry_store", "verified_layers"]
