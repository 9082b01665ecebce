"""Find the bootstrap and the blobs of an IMAGE argument: a bootstrap file, a blob with an inline
bootstrap, or a nydus-py output directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.blob.reader import BlobReader, find_blob_file
from nydus_py.blob.zran import blob_reader
from nydus_py.bootstrap.reader import is_bootstrap, read_bootstrap, read_bootstrap_file
from nydus_py.errors import FormatError, UsageError
from nydus_py.format import erofs
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.util.fsutil import file_sha256
from nydus_py.image import BlobInfo, Bootstrap
from nydus_py.read.validate import Defect



@dataclass(slots=True)
class OpenedImage:
    """A decoded bootstrap and where its blobs are (by blob id), as far as they were found."""

    source: Path
    bootstrap: Bootstrap
    bootstrap_bytes: bytes
    blob_paths: dict[str, Path] = field(default_factory=dict)  # blob id -> its data (a zran blob's: the layer)
    meta_paths: dict[str, Path] = field(default_factory=dict)  # zran blob id -> its meta blob
    inline_blob: Path | None = None  # set when IMAGE was a blob with an inline bootstrap
    packaged: bool = False  # the bootstrap came out of a package (an OCI image's bootstrap layer)
    # the rules of the package the bootstrap came in, given the blob ids it references (set by the layer
    # that opened the package: the core knows no OCI)
    container_defects: Callable[[list[str]], list[Defect]] | None = None
    dictionary_blobs: frozenset[str] = frozenset()  # blob ids the package lists as a chunk dictionary's

    @property
    def bootstrap_file(self) -> Path | None:
        """A file holding exactly the bootstrap (None when it came out of a blob or a package)."""
        return self.source if self.inline_blob is None and not self.packaged else None

    def blob_path(self, info: BlobInfo) -> Path | None:
        """The file holding the blob's data: the blob file, or for a zran blob the original gzip layer."""
        if info.blob_id == BLOB_ID_PLACEHOLDER and self.inline_blob is not None:
            return self.inline_blob
        return self.blob_paths.get(info.blob_id)

    def meta_path(self, info: BlobInfo) -> Path | None:
        """A zran blob's meta blob (its chunk info, contexts and TOC); None for other blobs or when not found."""
        return self.meta_paths.get(info.blob_id) if info.is_separate else None

    def blob_reader(self, info: BlobInfo) -> BlobReader | None:
        """A reader of the blob's chunks, or None when its files were not found."""
        data = self.blob_path(info)
        meta = self.meta_path(info)
        if data is None or (info.is_separate and meta is None):
            return None
        return blob_reader(info, data, meta)

    def missing(self, info: BlobInfo) -> str | None:
        """What of the blob was not found: None, its data, or its meta blob (zran)."""
        if self.blob_path(info) is None:
            return f"blob {info.blob_id}" + (" (the original layer)" if info.is_separate else "")
        if info.is_separate and self.meta_path(info) is None:
            return f"blob {info.blob_id}'s meta blob {info.meta_id or ''}".rstrip()
        return None


def open_image(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None, *,
               own_blob: Path | None = None) -> OpenedImage:
    """Decode IMAGE's bootstrap and locate its blobs (in `blob_dir`, beside it, or in its output directory).
    `own_blob` is a layer's one blob, whatever id its bootstrap gives it (nydus-image unpack's `--blob`).
    OCI layouts are opened by the OCI layer (nydus_py/oci/nydus.py), which hands back the same type."""
    path = Path(image)
    if path.is_dir():
        bootstrap_path = path / "bootstrap"
        if not bootstrap_path.is_file():
            raise UsageError(f"{path}: directory has no 'bootstrap' file (not a nydus-py output directory)")
        opened = _open_file(bootstrap_path)
        search = [path / "blobs" / "sha256"]
    else:
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        opened = _open_file(path)
        search = [path.parent, path.parent / "blobs" / "sha256"]  # beside it, or where nydus-py's OUTDIR keeps them
    if blob_dir is not None:
        search.insert(0, Path(blob_dir))
        search.insert(1, Path(blob_dir) / "blobs" / "sha256")
    locate_blobs(opened, search, own_blob=own_blob)
    if own_blob is not None:
        opened.inline_blob = None
    return opened


def locate_blobs(opened: OpenedImage, search: list[Path], *, own_blob: Path | None = None) -> None:
    """Find every blob of the bootstrap in `search` (files named by id): a zran blob's data is the original
    layer (named by the blob id) and its meta blob is named by its own digest (or is IMAGE itself)."""
    for info in opened.bootstrap.blobs:
        if info.is_separate and info.blob_id not in opened.meta_paths and info.meta_id:
            meta = find_blob_file(search, info.meta_id)
            if meta is not None:
                opened.meta_paths[info.blob_id] = meta
        found = own_blob or opened.blob_paths.get(info.blob_id) or find_blob_file(search, info.blob_id)
        if found is not None:
            opened.blob_paths[info.blob_id] = found


def _open_file(path: Path) -> OpenedImage:
    try:
        with open(path, "rb") as f:
            head = f.read(erofs.EROFS_SUPER_OFFSET + 4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    if is_bootstrap(head):
        data = read_bootstrap_file(path)
        return OpenedImage(source=path, bootstrap=read_bootstrap(data), bootstrap_bytes=data)
    with BlobReader(path) as blob:
        inline = blob.inline_bootstrap()
    if inline is None:
        raise FormatError(f"{path}: neither a RAFS bootstrap nor a blob with an inline bootstrap")
    data = inline
    if not is_bootstrap(data):
        raise FormatError(f"{path}: inline bootstrap has no EROFS superblock")
    opened = OpenedImage(source=path, bootstrap=read_bootstrap(data), bootstrap_bytes=data, inline_blob=path)
    own = opened.bootstrap.blobs[0] if len(opened.bootstrap.blobs) == 1 else None
    if own is not None and own.is_separate:  # a zran layer's meta blob: its data is the original layer
        opened.meta_paths[own.blob_id] = path
        return opened
    opened.blob_paths[file_sha256(path)] = path
    if own is not None:  # a layer blob's own bootstrap names itself (older builders: a real id)
        opened.blob_paths[own.blob_id] = path
    return opened
