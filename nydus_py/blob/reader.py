"""Native Nydus blob files -> TOC, chunk info array, chunk digests, inline bootstrap and chunk data.

A blob is read from its end: the last 512 bytes are a tail tar header (`rafs.blob.toc` when the blob has
a TOC), and every section is the data just before its header. Blobs without a TOC are walked header by
header; blobs without tar headers need the blob table entry from a bootstrap (`BlobInfo`).
References: docs/format.md §11; docs/oci.md §2.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nydus_py.blob import compress
from nydus_py.blob.digests import chunk_digest
from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format import blobmeta, parse, rafs, tar
from nydus_py.format.blobmeta import BlobFeatures
from nydus_py.format.rafs import MAX_CHUNK_SIZE, CompressAlgo, DigestAlgo
from nydus_py.image import BlobInfo, is_blob_digest

MAX_TOC_SIZE = 1 << 20  # nydus-snapshotter refuses bigger TOCs
MAX_META_SIZE = 1 << 30  # bound on any metadata section we decompress into memory


@dataclass(frozen=True, slots=True)
class TocItem:
    """One TOC entry: a named section of the blob."""

    name: str
    compressor: CompressAlgo
    digest: bytes  # sha256 of the uncompressed data
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int


@dataclass(frozen=True, slots=True)
class Section:
    """A blob section found through its tail tar header."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class CiHeader:
    """The blob compression-context header (decoded), and where it was found."""

    offset: int
    features: BlobFeatures
    ci_compressor: CompressAlgo
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    zran_offset: int
    zran_size: int
    zran_count: int

    @property
    def chunk_info_v2(self) -> bool:
        return bool(self.features & BlobFeatures.CHUNK_INFO_V2)


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """One chunk as the blob's chunk info (CI) array describes it (decoded from blobmeta.ChunkInfoV1/V2)."""

    ci_index: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int
    compressed: bool
    flags: int = 0  # v2 only
    data: int = 0  # v2 only: zran/batch locator or crc32c


class ChunkExtent(Protocol):
    """Where a chunk's bytes lie in its blob: a BlobChunk, or a bootstrap's model.ChunkRef."""

    @property
    def ci_index(self) -> int: ...
    @property
    def compressed_offset(self) -> int: ...
    @property
    def compressed_size(self) -> int: ...
    @property
    def uncompressed_size(self) -> int: ...
    @property
    def compressed(self) -> bool: ...


class RandomAccess(Protocol):
    """Where a blob's bytes come from: a local file, or a registry blob read with HTTP ranges."""

    name: str
    size: int

    def pread(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class LocalFile:
    def __init__(self, path: Path) -> None:
        self.name = path.name
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise FormatError(f"{path}: cannot open blob: {exc.strerror}") from exc
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        os.close(self._fd)


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


class BlobReader:
    """Random access to one blob (a file path, or any RandomAccess). Use as a context manager."""

    def __init__(self, source: str | os.PathLike[str] | RandomAccess) -> None:
        self.local: Path | None = None  # the file's path, when the blob is a local file
        self._source: RandomAccess
        if isinstance(source, (str, os.PathLike)):
            self.local = Path(source)
            self._source = LocalFile(self.local)
        else:
            self._source = source
        self.path = Path(self._source.name)  # for messages
        self.size = self._source.size

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()

    def read_at(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise FormatError(f"{self.path.name}: {what} at {offset:#x} (+{size:#x}) is past the end of the blob "
                              f"({self.size:#x} bytes)")
        data = self._source.pread(offset, size)
        if len(data) != size:
            raise FormatError(f"{self.path.name}: short read of {what} at {offset:#x}")
        return data

    # --- tail tar headers and TOC ------------------------------------------------------------------

    def _tail_header(self, end: int) -> tuple[str, int] | None:
        """(name, size) of the tail tar header ending at `end`, or None if there is no valid one."""
        if end < tar.TAR_BLOCK_SIZE:
            return None
        raw = self.read_at(end - tar.TAR_BLOCK_SIZE, tar.TAR_BLOCK_SIZE, "tar header")
        try:
            header = parse(tar.TarHeader, raw, what="tar header", offset=0)
        except FormatError:
            return None
        if not tar.is_tar_magic(header.magic) or not tar.has_valid_checksum(raw, header.chksum):
            return None
        return blobmeta.toc_name(header.name), header.size

    def sections(self) -> list[Section]:
        """Every section behind a tail tar header, from the end of the blob backwards."""
        out = []
        end = self.size
        while True:
            found = self._tail_header(end)
            if found is None:
                break
            name, size = found
            start = end - tar.TAR_BLOCK_SIZE - size
            if start < 0:
                raise FormatError(f"{self.path.name}: tar header {name!r} at {end - 512:#x} claims {size} bytes, "
                                  "more than precede it")
            out.append(Section(name=name, offset=start, size=size))
            end = start
            if end == 0:
                break
        return out

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections() if s.name == name), None)

    def toc(self) -> list[TocItem] | None:
        """The TOC entries, or None when the blob has no `rafs.blob.toc`."""
        found = self._tail_header(self.size)
        if found is None or found[0] != blobmeta.TOC_ENTRY_BLOB_TOC:
            return None
        size = found[1]
        if size % blobmeta.TocEntry.sizeof() or size > MAX_TOC_SIZE:
            raise FormatError(f"{self.path.name}: TOC size {size} is not a multiple of 128 or over 1 MiB")
        start = self.size - tar.TAR_BLOCK_SIZE - size
        raw = self.read_at(start, size, "TOC")
        items = []
        entry_size = blobmeta.TocEntry.sizeof()
        for i in range(size // entry_size):
            entry = parse(blobmeta.TocEntry, raw, what=f"{self.path.name}: TOC entry {i}", offset=i * entry_size)
            compressor = rafs.TOC_COMPRESSORS.get(entry.flags)
            if compressor is None:
                raise FormatError(f"{self.path.name}: TOC entry {i} at {start + entry_size * i:#x}: "
                                  f"flags={int(entry.flags):#x} name no single known compressor")
            items.append(TocItem(
                name=blobmeta.toc_name(entry.name),
                compressor=compressor,
                digest=entry.uncompressed_digest,
                compressed_offset=entry.compressed_offset,
                compressed_size=entry.compressed_size,
                uncompressed_size=entry.uncompressed_size,
            ))
        return items

    def toc_digest(self) -> tuple[bytes, int] | None:
        """(sha256 of TOC entries + TOC tar header, their size): what the blob table records."""
        found = self._tail_header(self.size)
        if found is None or found[0] != blobmeta.TOC_ENTRY_BLOB_TOC:
            return None
        size = found[1] + tar.TAR_BLOCK_SIZE
        return hashlib.sha256(self.read_at(self.size - size, size, "TOC")).digest(), size

    def read_toc_item(self, item: TocItem) -> bytes:
        """The uncompressed data of a TOC entry, checked against its sha256."""
        if item.uncompressed_size > MAX_META_SIZE:
            raise FormatError(f"{self.path.name}: TOC entry {item.name!r} claims {item.uncompressed_size} bytes")
        raw = self.read_at(item.compressed_offset, item.compressed_size, f"TOC entry {item.name!r}")
        data = compress.decompress(raw, item.compressor, item.uncompressed_size)
        if hashlib.sha256(data).digest() != item.digest:
            raise FormatError(f"{self.path.name}: TOC entry {item.name!r} at {item.compressed_offset:#x}: "
                              "sha256 does not match its data")
        return data

    def _toc_item(self, name: str) -> TocItem | None:
        toc = self.toc()
        return next((i for i in toc if i.name == name), None) if toc else None

    # --- metadata sections -------------------------------------------------------------------------

    def inline_bootstrap(self) -> bytes | None:
        """The bootstrap inlined in the blob (`image.boot`), decompressed, or None."""
        item = self._toc_item(blobmeta.TOC_ENTRY_BOOTSTRAP)
        if item is not None:
            return self.read_toc_item(item)
        sec = self.section(blobmeta.TOC_ENTRY_BOOTSTRAP)
        if sec is None:
            return None
        raw = self.read_at(sec.offset, sec.size, "image.boot")
        if raw[:4] == b"\x28\xb5\x2f\xfd":  # a zstd frame: inline bootstraps of blob-toc builds
            import pyzstd

            try:
                out = pyzstd.ZstdDecompressor().decompress(raw, max_length=MAX_META_SIZE + 1)
            except pyzstd.ZstdError as exc:
                raise FormatError(f"{self.path.name}: image.boot does not decompress: {exc}") from exc
            if len(out) > MAX_META_SIZE:
                raise FormatError(f"{self.path.name}: image.boot is over {MAX_META_SIZE >> 20} MiB")
            return out
        return raw

    def ci_header(self, info: BlobInfo | None = None) -> CiHeader:
        """The compression-context header: from the TOC, the `blob.meta` section, or the blob table entry."""
        offset = None
        item = self._toc_item(blobmeta.TOC_ENTRY_BLOB_META_HEADER)
        if item is not None:
            offset = item.compressed_offset
        elif info is not None and info.ci_compressed_size + info.ci_offset > 0:
            offset = info.ci_offset + info.ci_compressed_size
        else:
            sec = self.section(blobmeta.TOC_ENTRY_BLOB_META)
            if sec is not None:
                offset = sec.offset + sec.size - blobmeta.BLOB_CCT_HEADER_SIZE
        if offset is None:
            raise FormatError(f"{self.path.name}: no chunk info header (no TOC, no blob.meta section)")
        return decode_ci_header(self.read_at(offset, blobmeta.BLOB_CCT_HEADER_SIZE, "chunk info header"), offset,
                                self.path.name)

    def chunk_infos(self, header: CiHeader | None = None) -> list[BlobChunk]:
        """The chunk info array, decompressed and decoded (v1 or v2)."""
        header = header or self.ci_header()
        return decode_chunk_infos(self.chunk_info_data(header), header, self.path.name)

    def chunk_info_data(self, header: CiHeader) -> bytes:
        """The uncompressed chunk info (entries, then a zran blob's contexts and windows): no more than its
        entries and context table can need (a header claiming more is refused before anything is inflated)."""
        entry = blobmeta.CHUNK_INFO_V2_SIZE if header.chunk_info_v2 else blobmeta.CHUNK_INFO_V1_SIZE
        most = entry * header.ci_entries + header.zran_size
        if header.ci_uncompressed_size > min(most, MAX_META_SIZE):
            raise FormatError(f"{self.path.name}: chunk info header: s_ci_uncompressed_size="
                              f"{header.ci_uncompressed_size}, more than its {header.ci_entries} entries and "
                              f"{header.zran_size} bytes of zran contexts need")
        raw = self.read_at(header.ci_offset, header.ci_compressed_size, "chunk info array")
        try:
            return compress.decompress(raw, header.ci_compressor, header.ci_uncompressed_size)
        except FormatError as exc:
            raise FormatError(f"{self.path.name}: chunk info at {header.ci_offset:#x}: {exc}") from None

    def chunk_digests(self) -> list[bytes] | None:
        """The chunk digest array (`blob.digest`, blob-toc builds), or None."""
        item = self._toc_item(blobmeta.TOC_ENTRY_BLOB_DIGEST)
        if item is not None:
            data = self.read_toc_item(item)
        else:
            sec = self.section(blobmeta.TOC_ENTRY_BLOB_DIGEST)
            if sec is None:
                return None
            data = self.read_at(sec.offset, sec.size, "blob.digest")
        if len(data) % 32:
            raise FormatError(f"{self.path.name}: blob.digest size {len(data)} is not a multiple of 32")
        return [data[i : i + 32] for i in range(0, len(data), 32)]

    def read_chunk(self, chunk: ChunkExtent, compressor: CompressAlgo, digester: DigestAlgo,
                   digest: bytes | None) -> bytes:
        """The uncompressed data of one chunk: read, size-checked, decompressed and, when `digest` is
        given, checked against it. The one rule for every reader of chunk data (unpack, device images,
        check); a chunk that fails any step is a FormatError naming the blob, the chunk and its offset."""
        where = f"{self.path.name}: chunk {chunk.ci_index} at {chunk.compressed_offset:#x}"
        if chunk.uncompressed_size > MAX_CHUNK_SIZE:
            raise FormatError(f"{where}: claims {chunk.uncompressed_size} bytes, more than the largest chunk size")
        raw = self.read_at(chunk.compressed_offset, chunk.compressed_size, f"chunk {chunk.ci_index}")
        algo = compressor if chunk.compressed else CompressAlgo.NONE
        try:
            data = compress.decompress(raw, algo, chunk.uncompressed_size)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        if digest is not None and chunk_digest(data, digester) != digest:
            raise FormatError(f"{where}: {digester.name.lower()} digest does not match its data")
        return data


def decode_ci_header(raw: bytes, offset: int, what: str) -> CiHeader:
    h = parse(blobmeta.CompressionContextHeader, raw, what=f"{what}: chunk info header", offset=0)
    try:
        ci_compressor = CompressAlgo(h.s_ci_compressor)
    except ValueError:
        raise FormatError(f"{what}: chunk info header at {offset:#x}: s_ci_compressor={h.s_ci_compressor} "
                          "is unknown") from None
    return CiHeader(
        offset=offset, features=h.s_features, ci_compressor=ci_compressor, ci_entries=h.s_ci_entries,
        ci_offset=h.s_ci_offset, ci_compressed_size=h.s_ci_compressed_size,
        ci_uncompressed_size=h.s_ci_uncompressed_size, zran_offset=h.s_ci_zran_offset,
        zran_size=h.s_ci_zran_size, zran_count=h.s_ci_zran_count,
    )


def decode_chunk_infos(data: bytes, header: CiHeader, what: str) -> list[BlobChunk]:
    """Decode `header.ci_entries` chunk infos from the uncompressed CI data."""
    entry_size = blobmeta.chunk_info_size(header.chunk_info_v2)
    if header.ci_entries * entry_size > len(data):
        raise FormatError(f"{what}: chunk info header claims {header.ci_entries} entries, the array holds "
                          f"{len(data) // entry_size}")
    body = data[: header.ci_entries * entry_size]
    if header.chunk_info_v2:
        return [
            BlobChunk(ci_index=i, uncompressed_offset=uo, uncompressed_size=us, compressed_offset=co,
                      compressed_size=cs, compressed=bool(flags & blobmeta.ChunkFlagsV2.COMPRESSED),
                      flags=flags, data=extra)
            for i, (uo, us, co, cs, flags, extra) in enumerate(blobmeta.decode_chunk_info_v2_array(body))
        ]
    return [
        BlobChunk(ci_index=i, uncompressed_offset=uo, uncompressed_size=us, compressed_offset=co,
                  compressed_size=cs, compressed=cs != us)
        for i, (uo, us, co, cs) in enumerate(blobmeta.decode_chunk_info_v1_array(body))
    ]


def read_blob_meta_cache(path: str | os.PathLike[str]) -> tuple[CiHeader, list[BlobChunk]]:
    """A nydusd `<blob id>.blob.meta` cache file: uncompressed CI padded to 4 KiB, then the header."""
    data = Path(path).read_bytes()
    name = Path(path).name
    if len(data) < blobmeta.BLOB_CCT_HEADER_SIZE:
        raise FormatError(f"{name}: {len(data)} bytes is too short for a blob.meta cache file")
    offset = len(data) - blobmeta.BLOB_CCT_HEADER_SIZE
    header = decode_ci_header(data[offset:], offset, name)
    if blobmeta.cache_file_ci_size(header.ci_uncompressed_size) != offset:
        raise FormatError(f"{name}: chunk info of {header.ci_uncompressed_size} bytes does not fill the "
                          f"{offset} bytes before the header")
    if header.features & (BlobFeatures.ENCRYPTED):
        raise UnsupportedError(f"{name}: encrypted chunk info is not supported")
    return header, decode_chunk_infos(data[:offset], header, name)


def blob_id_digests(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The two names a blob file may have: the sha256 of the whole file (ours, nydus-snapshotter's), and
    nydus-image's own (`-D` naming), which skips the chunk digest array; read once, 1 MiB at a time."""
    with BlobReader(path) as blob:
        skip = blob.section(blobmeta.TOC_ENTRY_BLOB_DIGEST)
    whole, nydus = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        offset = 0
        while block := f.read(1 << 20):
            whole.update(block)
            if skip is None:
                nydus.update(block)
            else:
                lo, hi = skip.offset - offset, skip.offset + skip.size - offset
                nydus.update(block[: max(0, min(lo, len(block)))] + block[max(0, hi) :])
            offset += len(block)
    return whole.hexdigest(), nydus.hexdigest()
