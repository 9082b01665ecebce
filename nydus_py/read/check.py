"""`nydus-py check`: is an image sound? Every rule nydusd and the kernel apply, then every chunk of every blob.

It checks rules, not "what our writer would emit": legitimate older layouts (2 MiB mapped_blkaddr, root
i_ino 0, junk in TOC reserved bytes, nydus-image's own blob-id rule) pass. Each defect names the structure,
its offset and the rule broken.
References: docs/format.md §3-§13; nydus rafs/src/metadata/layout/v6.rs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nydus_py.blob.reader import BlobChunk, BlobReader, TocItem, blob_id_digests
from nydus_py.blob.zran import ZranBlobReader
from nydus_py.bootstrap.reader import BootstrapParser, RawInode, file_type_of, read_bootstrap
from nydus_py.errors import BrokenImageError, FormatError, NydusError, UnsupportedError, UsageError
from nydus_py.format import blobmeta, erofs, tar
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER, BlobFeatures
from nydus_py.format.posix_acl import acl_xattrs_problem
from nydus_py.image import BlobInfo, Bootstrap, is_blob_digest
from nydus_py.bootstrap.reader import is_bootstrap, read_bootstrap_file
from nydus_py.read.locate import OpenedImage, open_image
from nydus_py.model import FileKind
from nydus_py.read.validate import Defect, validate_tables

_FLAT = (erofs.DataLayout.FLAT_PLAIN, erofs.DataLayout.FLAT_INLINE)


@dataclass(slots=True)
class CheckReport:
    defects: list[Defect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked (e.g. a blob not found)
    inodes: int = 0
    chunks_verified: int = 0
    blobs_checked: int = 0
    blob_ids: list[str] = field(default_factory=list)  # the bootstrap's blob table, when it could be decoded
    missing_blobs: list[str] = field(default_factory=list)  # ids of blobs not found: their data was not checked
    missing: list[str] = field(default_factory=list)  # what of each was not found ("blob ID's meta blob ...")
    blob_files: list[Path] = field(default_factory=list)  # where the checked blobs were read from

    @property
    def sound(self) -> bool:
        return not self.defects


def _defect_of(exc: NydusError, structure: str) -> Defect:
    return Defect(structure, 0, str(exc))


Opener = Callable[[str | os.PathLike[str], str | os.PathLike[str] | None], list[OpenedImage]]


def _open_one(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None) -> list[OpenedImage]:
    return [open_image(image, blob_dir)]


def check_path(image: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None, *,
               opener: Opener = _open_one, require_data: bool = False) -> CheckReport:
    """Check IMAGE (every image `opener` finds in it: the OCI layer's opener gives every platform of a
    layout); an image too broken to decode is a defect (exit 1); a missing path, or a file that is no image
    at all, a UsageError (exit 2). With `require_data`, a blob that is not found is a defect."""
    try:
        images = opener(image, blob_dir)
    except (FormatError, UnsupportedError) as exc:
        if not isinstance(exc, BrokenImageError) and not _recognizable(Path(image)):
            raise UsageError(f"{image}: not an image (no RAFS bootstrap, no Nydus blob, no OCI layout)") from None
        report = CheckReport()
        data = _bootstrap_candidate(Path(image))
        if data is not None:
            report.defects += validate_tables(data)
        if not any(str(exc) in str(d) for d in report.defects):
            report.defects.append(Defect("image", 0, str(exc)))
        return report
    report = CheckReport()
    for opened in images:
        one = check_image(opened)
        report.defects += one.defects
        report.notes += one.notes
        report.inodes += one.inodes
        report.chunks_verified += one.chunks_verified
        report.blobs_checked += one.blobs_checked
        report.missing_blobs += one.missing_blobs
        report.missing += one.missing
        report.blob_files += one.blob_files
    if require_data:
        report.defects += [Defect(what, 0, "not found (--require-data): its data cannot be checked")
                           for what in report.missing]
    return report


def _recognizable(path: Path) -> bool:
    """Whether IMAGE looks like an image at all: a directory, a bootstrap (EROFS magic) or a blob (a tail tar
    header at its end)."""
    if path.is_dir() or _bootstrap_candidate(path) is not None:
        return True
    try:
        with BlobReader(path) as blob:
            return bool(blob.sections())
    except (OSError, NydusError):
        return False


def _bootstrap_candidate(path: Path) -> bytes | None:
    """The raw bytes of IMAGE when it is a bootstrap file (for the table checks of a broken one)."""
    target = path / "bootstrap" if path.is_dir() else path
    try:
        data = read_bootstrap_file(target)
    except NydusError:
        return None
    return data if is_bootstrap(data) else None


def check_image(opened: OpenedImage) -> CheckReport:
    """Check the bootstrap and, where found, every blob it references."""
    report = CheckReport()
    data = opened.bootstrap_bytes
    report.defects += validate_tables(data)
    boot = opened.bootstrap
    try:
        _check_tree(data, boot, report)
    except NydusError as exc:
        report.defects.append(_defect_of(exc, "bootstrap"))
    _check_chunk_table(boot, report)
    _check_acls(boot, report)
    for info in boot.blobs:
        if info.blob_id != BLOB_ID_PLACEHOLDER and not is_blob_digest(info.blob_id):
            report.defects.append(Defect(f"blob table entry {info.blob_index}", 0, f"blob id {info.blob_id!r} is "
                                         "not 64 lowercase hex digits: no blob file, cache entry or URL can have it"))
            continue
        reader = opened.blob_reader(info)
        if reader is None:
            report.missing_blobs.append(info.blob_id)
            report.missing.append(opened.missing(info) or f"blob {info.blob_id}")
            continue
        report.blob_files.append(reader.local or reader.path)
        with reader:
            _check_blob(reader, info, boot, report)
    if opened.container_defects is not None:
        report.defects += opened.container_defects([b.blob_id for b in boot.blobs])
    return report


def check_bootstrap_file(path: Path) -> CheckReport:
    """`check_bootstrap_bytes` of a bootstrap file (UsageError when it cannot be read)."""
    return check_bootstrap_bytes(read_bootstrap_file(path))


def check_bootstrap_bytes(data: bytes) -> CheckReport:
    """Check a bootstrap alone (no blobs); a bootstrap that cannot even be decoded is one defect."""
    report = CheckReport()
    report.defects += validate_tables(data)
    try:
        boot = read_bootstrap(data)
    except NydusError as exc:
        report.defects.append(_defect_of(exc, "bootstrap"))
        return report
    report.blob_ids = [b.blob_id for b in boot.blobs]
    _check_tree(data, boot, report)
    _check_chunk_table(boot, report)
    _check_acls(boot, report)
    return report


def _check_tree(data: bytes, boot: Bootstrap, report: CheckReport) -> None:
    """Inode formats and layouts, dirent order and bounds, '.' and '..', nlink, chunk index ranges."""
    parser = BootstrapParser(data, boot.meta_blkaddr, boot.chunk_size, boot.chunk_table if boot.rafs else None)
    blobs = boot.blobs
    links: dict[int, int] = {}
    nlinks: dict[int, tuple[int, int]] = {}
    stack = [(boot.root_nid, boot.root_nid)]
    seen_dirs: set[int] = set()
    while stack:
        nid, parent = stack.pop()
        raw = parser.raw_inode(nid)
        report.inodes += 1
        what = f"directory nid {nid}"
        if raw.datalayout not in _FLAT:
            report.defects.append(Defect(what, raw.offset, f"data layout {raw.datalayout}: must be flat"))
            continue
        entries = parser.dirents(raw)
        names = [name for name, _, _ in entries]
        if names != sorted(names) or len(set(names)) != len(names):
            report.defects.append(Defect(what, raw.offset, "dirents are not sorted bytewise or repeat a name"))
        found = {name: child for name, child, _ in entries}
        if found.get(b".") != nid or found.get(b"..") != parent:
            report.defects.append(Defect(what, raw.offset, "'.' must name the directory and '..' its parent"))
        subdirs = 0
        for name, child_nid, file_type in entries:
            if name in (b".", b".."):
                continue
            if b"/" in name or len(name) > erofs.EROFS_NAME_LEN:
                report.defects.append(Defect(what, raw.offset, f"dirent name {name!r} is not a valid name"))
            child = parser.raw_inode(child_nid)
            kind = _kind(child)
            if kind is None or file_type_of(kind) != file_type:
                report.defects.append(Defect(f"dirent {name!r} in {what}", raw.offset,
                                             f"file type {file_type} does not match the inode's mode"))
                continue
            if kind is FileKind.DIR:
                subdirs += 1
                if child_nid in seen_dirs or child_nid == boot.root_nid:
                    report.defects.append(Defect(f"dirent {name!r} in {what}", raw.offset,
                                                 "a directory is reachable twice (loop or directory hardlink)"))
                    continue
                seen_dirs.add(child_nid)
                stack.append((child_nid, nid))
            else:
                links[child_nid] = links.get(child_nid, 0) + 1
                if links[child_nid] == 1:
                    report.inodes += 1
                    nlinks[child_nid] = (child.record.i_nlink, child.offset)
                    _check_leaf(parser, child, kind, blobs, report)
        if raw.record.i_nlink != 2 + subdirs:
            report.defects.append(Defect(what, raw.offset, f"i_nlink={raw.record.i_nlink}: a directory has "
                                         f"2 + {subdirs} subdirectories"))
    for child_nid, count in links.items():
        nlink, offset = nlinks[child_nid]
        if nlink != count and count > 1:
            report.defects.append(Defect(f"inode nid {child_nid}", offset, f"i_nlink={nlink} but {count} dirents"))
    for nid in boot.prefetch_nids:
        try:
            parser.raw_inode(nid)
        except FormatError:
            report.defects.append(Defect("prefetch table", 0, f"nid {nid} is not an inode"))


def _check_acls(boot: Bootstrap, report: CheckReport) -> None:
    """POSIX ACL xattrs must be what the kernel accepts (posix_acl_valid): it refuses to show a file whose ACL
    is not, and nydusd hands the bytes on."""
    seen: set[int] = set()
    for path, inode in boot.tree.walk():
        if id(inode) in seen or not inode.xattrs:
            continue
        seen.add(id(inode))
        problem = acl_xattrs_problem(inode.xattrs)
        if problem is not None:
            report.defects.append(Defect(f"inode {path.decode(errors='backslashreplace')}", 0, problem))


def _kind(raw: RawInode) -> FileKind | None:
    try:
        return FileKind.from_mode(raw.record.i_mode)
    except ValueError:
        return None


def _check_leaf(parser: BootstrapParser, raw: RawInode, kind: FileKind, blobs: list[BlobInfo],
                report: CheckReport) -> None:
    what = f"inode nid {raw.nid}"
    rec = raw.record
    if kind is FileKind.REG:
        if raw.datalayout != erofs.DataLayout.CHUNK_BASED:
            report.defects.append(Defect(what, raw.offset, "a regular file must be chunk based"))
            return
        for at, blob_index, ci_index, blkaddr in parser.chunk_addrs(raw):
            if not 0 <= blob_index < len(blobs):
                report.defects.append(Defect(f"chunk index of {what}", at, f"device {blob_index + 1} is not in the "
                                             f"device table ({len(blobs)} blobs)"))
                continue
            blob = blobs[blob_index]
            if ci_index >= blob.chunk_count:
                report.defects.append(Defect(f"chunk index of {what}", at, f"chunk {ci_index} is past the blob's "
                                             f"{blob.chunk_count} chunks"))
            if blkaddr * erofs.EROFS_BLKSIZ >= max(blob.uncompressed_size, 1):
                report.defects.append(Defect(f"chunk index of {what}", at, f"block {blkaddr} is past the device "
                                             "image"))
    elif kind is FileKind.SYMLINK:
        if raw.datalayout not in _FLAT or not 0 < rec.i_size < erofs.EROFS_BLKSIZ:
            report.defects.append(Defect(what, raw.offset, "a symlink needs a flat layout and 1..4095 bytes"))
    elif raw.datalayout != erofs.DataLayout.FLAT_PLAIN or rec.i_size != 0:
        report.defects.append(Defect(what, raw.offset, "a special file must be flat plain with size 0"))


def _check_chunk_table(boot: Bootstrap, report: CheckReport) -> None:
    keys = [(c.digest, c.blob_index) for c in boot.chunk_table]
    if keys != sorted(keys):
        report.defects.append(Defect("chunk table", 0, "entries are not sorted by digest and blob"))
    for i, chunk in enumerate(boot.chunk_table):
        if not 0 <= chunk.blob_index < len(boot.blobs):
            report.defects.append(Defect(f"chunk table entry {i}", 0, f"blob_index={chunk.blob_index} is unknown"))
        elif chunk.ci_index >= boot.blobs[chunk.blob_index].chunk_count:
            report.defects.append(Defect(f"chunk table entry {i}", 0, f"index={chunk.ci_index} is past the blob"))
        elif chunk.compressed_offset + chunk.compressed_size > boot.blobs[chunk.blob_index].compressed_size:
            report.defects.append(Defect(f"chunk table entry {i}", 0, "compressed data ends at "
                                         f"{chunk.compressed_offset + chunk.compressed_size}, past the blob's "
                                         f"{boot.blobs[chunk.blob_index].compressed_size} bytes"))
        if chunk.uncompressed_offset % erofs.EROFS_BLKSIZ:
            report.defects.append(Defect(f"chunk table entry {i}", 0, "uncompressed_offset is not 4 KiB aligned"))


def _check_blob(blob: BlobReader, info: BlobInfo, boot: Bootstrap, report: CheckReport) -> None:
    """A blob's files against its table entry: sizes, chunk info, every chunk, TOC and ids. A zran blob's
    `blob` is its meta blob, and its data the original layer (`blob.data`), whose id the table records."""
    name = f"blob {info.blob_id[:16]}"
    try:
        data = blob.data if isinstance(blob, ZranBlobReader) else blob
        if data.size < info.compressed_size or (info.toc_size and not info.is_separate
                                                and data.size != info.compressed_size):
            report.defects.append(Defect(name, 0, f"file is {data.size} bytes, the blob table says "
                                         f"{info.compressed_size}"))
        if info.is_separate and info.meta_size and blob.size != info.meta_size:
            report.defects.append(Defect(f"{name} meta blob", 0, f"file is {blob.size} bytes, the blob table says "
                                         f"{info.meta_size}"))
        _check_blob_meta(blob, info, boot, report, name)
        _check_toc(blob, info, report, name)
        if data.local is not None:
            _check_blob_id(data.local, info.blob_id, info, report, name)
        if info.is_separate and info.meta_id is not None and blob.local is not None:
            _check_blob_id(blob.local, info.meta_id, info, report, f"{name} meta blob")
    except NydusError as exc:
        report.defects.append(Defect(name, 0, str(exc)))
    report.blobs_checked += 1


def _check_blob_meta(blob: BlobReader, info: BlobInfo, boot: Bootstrap, report: CheckReport, name: str) -> None:
    if info.chunk_count == 0:
        return
    header = blob.ci_header(info)
    for field_name, got, want in (("s_ci_entries", header.ci_entries, info.chunk_count),
                                  ("s_ci_compressor", header.ci_compressor, info.ci_compressor),
                                  ("s_ci_offset", header.ci_offset, info.ci_offset),
                                  ("s_ci_compressed_size", header.ci_compressed_size, info.ci_compressed_size),
                                  ("s_ci_uncompressed_size", header.ci_uncompressed_size, info.ci_uncompressed_size)):
        if got != want:
            report.defects.append(Defect(f"{name} chunk info header", header.offset,
                                         f"{field_name}={got}, the blob table says {want}"))
    chunks = blob.chunk_infos(header)
    digests = blob.chunk_digests()
    if digests is not None and len(digests) != len(chunks):
        report.defects.append(Defect(f"{name} digest array", 0, f"{len(digests)} digests for {len(chunks)} chunks"))
        digests = None
    by_ci = {c.ci_index: c.digest for c in boot.chunk_table
             if 0 <= c.blob_index < len(boot.blobs) and boot.blobs[c.blob_index] is info}
    previous: BlobChunk | None = None
    for chunk in chunks:
        where = f"{name} chunk {chunk.ci_index}"
        if chunk.uncompressed_offset % erofs.EROFS_BLKSIZ or (
                chunk.uncompressed_offset + chunk.uncompressed_size > info.uncompressed_size):
            report.defects.append(Defect(where, chunk.compressed_offset, "uncompressed range is unaligned or past "
                                         "the device image"))
        if previous is not None and (chunk.compressed_offset < previous.compressed_offset
                                     or chunk.uncompressed_offset <= previous.uncompressed_offset):
            report.defects.append(Defect(where, chunk.compressed_offset, "chunks are not in increasing offset order"))
        previous = chunk
        expected = digests[chunk.ci_index] if digests is not None else by_ci.get(chunk.ci_index)
        try:
            blob.read_chunk(chunk, info.compressor, info.digester, expected)
        except FormatError as exc:
            report.defects.append(Defect(where, chunk.compressed_offset, str(exc)))
            continue
        report.chunks_verified += 1


def _check_toc(blob: BlobReader, info: BlobInfo, report: CheckReport, name: str) -> None:
    toc = blob.toc()
    if toc is None:
        if info.features & BlobFeatures.HAS_TOC and info.toc_size:
            report.defects.append(Defect(f"{name} TOC", blob.size, "the blob table announces a TOC; there is none"))
        return
    for item in toc:
        try:
            if item.name == blobmeta.TOC_ENTRY_BLOB_RAW and info.is_separate:
                continue  # the data lives in the original layer: nydus-image 2.2.0 names it, at an offset that wraps
            if item.name == blobmeta.TOC_ENTRY_BLOB_RAW:
                _check_image_blob_entry(blob, item, report, name)
            else:
                blob.read_toc_item(item)
        except FormatError as exc:
            report.defects.append(Defect(f"{name} TOC entry {item.name!r}", item.compressed_offset, str(exc)))
    digest = blob.toc_digest()
    if info.toc_size and digest != (info.toc_digest, info.toc_size):
        report.defects.append(Defect(f"{name} TOC", blob.size - info.toc_size, "TOC digest or size differ from the "
                                     "blob table"))


def _check_image_blob_entry(blob: BlobReader, item: TocItem, report: CheckReport, name: str) -> None:
    """`image.blob` is special: its digest covers the chunk data *and* its tail tar header; its offset
    is 0 (older builders wrote the data size: ignored) and its uncompressed size is the device image's."""
    section = blob.section(blobmeta.TOC_ENTRY_BLOB_RAW)
    if section is None or section.size != item.compressed_size:
        report.defects.append(Defect(f"{name} TOC entry 'image.blob'", 0, "no chunk data section of that size"))
        return
    digest = hashlib.sha256()
    for offset in range(0, section.size + tar.TAR_BLOCK_SIZE, 1 << 20):
        digest.update(blob.read_at(offset, min(1 << 20, section.size + tar.TAR_BLOCK_SIZE - offset), "image.blob"))
    if digest.digest() != item.digest:
        report.defects.append(Defect(f"{name} TOC entry 'image.blob'", 0, "sha256 does not match the chunk data"))


def _check_blob_id(path: Path, blob_id: str, info: BlobInfo, report: CheckReport, name: str) -> None:
    """Blob id = sha256 of the file (ours, nydus-snapshotter; a zran blob's data: the original layer's digest),
    or nydus-image's hash that skips the digest array."""
    if blob_id == BLOB_ID_PLACEHOLDER:
        return
    if blob_id not in blob_id_digests(path) and not _older_inline(info):
        report.defects.append(Defect(name, 0, "blob id is not the sha256 of the blob"))


def _older_inline(info: BlobInfo) -> bool:
    """nydus-image 2.2 inline-meta blobs (no TOC size recorded) were named by a hash of a prefix."""
    return info.toc_size == 0 and not info.features & BlobFeatures.HAS_TOC


__all__ = ["CheckReport", "check_bootstrap_bytes", "check_bootstrap_file", "check_image", "check_path"]
