"""Find the bootstrap and the blobs of an IMAGE argument: a bootstrap file, a blob with an inline
bootstrap, or a nydus-py output directory."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.blob.reader import BlobReader
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.errors import FormatError, UsageError
from nydus_py.format import erofs
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.fsutil import file_sha256
from nydus_py.image import BlobInfo, Bootstrap, is_blob_digest
from nydus_py.oci.nydus import NydusImage, open_nydus_images

MAX_BOOTSTRAP_SIZE = 1 << 32


@dataclass(slots=True)
class OpenedImage:
    """A decoded bootstrap and where its blobs are (by blob id), as far as they were found."""

    source: Path
    bootstrap: Bootstrap
    bootstrap_bytes: bytes
    blob_paths: dict[str, Path] = field(default_factory=dict)
    inline_blob: Path | None = None  # set when IMAGE was a blob with an inline bootstrap
    oci_image: NydusImage | None = None  # set when IMAGE was an OCI image layout

    @property
    def bootstrap_file(self) -> Path | None:
        """A file holding exactly the bootstrap (None when it came out of a blob or an OCI layer)."""
        return self.source if self.inline_blob is None and self.oci_image is None else None

    def blob_path(self, info: BlobInfo) -> Path | None:
        if info.blob_id == BLOB_ID_PLACEHOLDER and self.inline_blob is not None:
            return self.inline_blob
        return self.blob_paths.get(info.blob_id)


def is_bootstrap(head: bytes) -> bool:
    magic_at = erofs.EROFS_SUPER_OFFSET
    return len(head) >= magic_at + 4 and int.from_bytes(head[magic_at : magic_at + 4], "little") == (
        erofs.EROFS_SUPER_MAGIC_V1)


def open_images(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None) -> list[OpenedImage]:
    """Every image IMAGE holds: one, or one per platform of an OCI layout (`oci:DIR[:TAG]` or a layout
    directory without a `bootstrap` file)."""
    text = os.fspath(image)
    if not text.startswith("oci:") and Path(text).is_dir() and not (Path(text) / "bootstrap").exists() and (
            Path(text) / "index.json").is_file():
        text = "oci:" + text
    if text.startswith("oci:"):
        return [_from_layout(nydus) for nydus in open_nydus_images(text)]
    return [open_image(image, blob_dir)]


def _from_layout(nydus: NydusImage) -> OpenedImage:
    source = nydus.layout / "index.json"
    opened = OpenedImage(source=source, bootstrap=read_bootstrap(nydus.bootstrap), bootstrap_bytes=nydus.bootstrap,
                         oci_image=nydus)
    for info in opened.bootstrap.blobs:
        found = find_blob_file([nydus.layout / "blobs" / "sha256"], info.blob_id)
        if found is not None:
            opened.blob_paths[info.blob_id] = found
    return opened


def open_image(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None) -> OpenedImage:
    """Decode IMAGE's bootstrap and locate its blobs (in `blob_dir`, beside it, or in its output directory).
    For an OCI layout with several platforms, the first one."""
    if os.fspath(image).startswith("oci:"):
        return open_images(image, blob_dir)[0]
    path = Path(image)
    if path.is_dir() and not (path / "bootstrap").exists() and (path / "index.json").is_file():
        return open_images(image, blob_dir)[0]
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
        search = [path.parent]
    if blob_dir is not None:
        search.insert(0, Path(blob_dir))
        search.insert(1, Path(blob_dir) / "blobs" / "sha256")
    for info in opened.bootstrap.blobs:
        found = find_blob_file(search, info.blob_id)
        if found is not None:
            opened.blob_paths[info.blob_id] = found
    return opened


def find_blob_file(folders: list[Path], blob_id: str) -> Path | None:
    """The regular file named `blob_id` in the first of `folders` that has one; only an id of 64 lowercase hex
    digits is ever used as a name (an image's other ids, `../x` among them, find nothing)."""
    if not is_blob_digest(blob_id):
        return None
    for folder in folders:
        candidate = folder / blob_id
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(candidate).st_mode):  # a symlink is not followed out of the folder
                return candidate
    return None


def _open_file(path: Path) -> OpenedImage:
    try:
        with open(path, "rb") as f:
            head = f.read(erofs.EROFS_SUPER_OFFSET + 4)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    if is_bootstrap(head):
        size = path.stat().st_size
        if size > MAX_BOOTSTRAP_SIZE:
            raise FormatError(f"{path}: {size} bytes is too big for a bootstrap")
        data = path.read_bytes()
        return OpenedImage(source=path, bootstrap=read_bootstrap(data), bootstrap_bytes=data)
    with BlobReader(path) as blob:
        data = blob.inline_bootstrap()
    if data is None:
        raise FormatError(f"{path}: neither a RAFS bootstrap nor a blob with an inline bootstrap")
    if not is_bootstrap(data):
        raise FormatError(f"{path}: inline bootstrap has no EROFS superblock")
    opened = OpenedImage(source=path, bootstrap=read_bootstrap(data), bootstrap_bytes=data, inline_blob=path)
    opened.blob_paths[file_sha256(path)] = path
    if len(opened.bootstrap.blobs) == 1:  # a layer blob's own bootstrap names itself (older builders: a real id)
        opened.blob_paths[opened.bootstrap.blobs[0].blob_id] = path
    return opened
