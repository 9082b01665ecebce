"""Random access into gzip streams ("zran"): the decompression contexts of an OCI-reference (zran) blob.

A zran blob keeps no chunk data: its chunks point into the original gzip layer, each through a context, a
restart point (a deflate block boundary: its offsets in the gzip and the tar stream, the partly used byte and
its bit count, and the 32 KiB window before it) from which a raw inflate can start. Contexts are chosen as
nydus-image 2.2 chooses them, once per chunk, while the layer is read in one pass: a chunk starts a new
context at the last block boundary passed when the current one has taken 512 KiB of gzip, or would pass
2 MiB of tar with the chunk, or when a large gap follows its last chunk.

Python's zlib module cannot stop at block boundaries (Z_BLOCK), report the bit position (data_type), prime
bits (inflatePrime) or hand out the window (inflateGetDictionary), so this module binds the system's libz
with ctypes: a small, complete binding of the seven calls it needs (released GIL, no build step).
References: docs/format.md §11.6 and §11.10; nydus utils/src/compress/zlib_random.rs (ZranReader,
ZranGenerator, ZranDecoder), storage/src/meta/zran.rs (ZranContextGenerator: 512 KiB / 1 MiB / 2 MiB);
zlib.h (inflate, Z_BLOCK, data_type, inflatePrime, inflateGetDictionary, inflateSetDictionary).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections import OrderedDict
from dataclasses import dataclass, replace

from nydus_py.blob.digests import chunk_digest
from nydus_py.blob.reader import BlobChunk, BlobReader, ChunkExtent, RandomAccess
from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format import blobmeta, rafs
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.image import BlobInfo
from nydus_py.util.fsutil import Readable

# nydus storage/src/meta/zran.rs ZranContextGenerator::new: RAFS_DEFAULT_CHUNK_SIZE / 2, * 1, * 2
MIN_COMPRESSED = 512 << 10
MAX_COMPRESSED = 1 << 20
MAX_UNCOMPRESSED = 2 << 20
# what one layer may cost us: contexts keep a 32 KiB window each until the meta blob is written (8192 of them
# are 256 MiB, a tar of 16 GiB or more), and a deflate block boundary costs a window copy (zlib's own blocks
# hold thousands of bytes; a stream of empty ones is an attack on our time)
MAX_CONTEXTS = 8192
MIN_BLOCK_INPUT = 1024
FREE_BOUNDARIES = 10_000
READ_BLOCK = 64 << 10  # ZRAN_READER_BUF_SIZE: the gzip bytes read at a time
WINDOW = blobmeta.ZRAN_DICT_WINDOW

_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR = 0, 1, -5
_Z_NO_FLUSH, _Z_BLOCK = 0, 5
_BLOCK_BOUNDARY = 0x80  # data_type: inflate stopped at the end of a block (or of a gzip header)
_GZIP_WBITS, _RAW_WBITS = 31, -15


class _ZStream(ctypes.Structure):
    """zlib.h `z_stream` on LP64 Linux (x86_64, aarch64): 112 bytes."""

    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


assert ctypes.sizeof(_ZStream) == 112, "z_stream layout: only LP64 platforms are supported"
_libz = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
_STREAM_P = ctypes.POINTER(_ZStream)
_libz.zlibVersion.restype = ctypes.c_char_p
_libz.inflateInit2_.argtypes = [_STREAM_P, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libz.inflate.argtypes = [_STREAM_P, ctypes.c_int]
_libz.inflateReset.argtypes = [_STREAM_P]
_libz.inflateReset2.argtypes = [_STREAM_P, ctypes.c_int]
_libz.inflateEnd.argtypes = [_STREAM_P]
_libz.inflatePrime.argtypes = [_STREAM_P, ctypes.c_int, ctypes.c_int]
_libz.inflateSetDictionary.argtypes = [_STREAM_P, ctypes.c_void_p, ctypes.c_uint]
_libz.inflateGetDictionary.argtypes = [_STREAM_P, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)]
_ZLIB_VERSION = _libz.zlibVersion()


class _Inflater:
    """One zlib inflate stream (`window_bits` 31: gzip members; -15: raw deflate)."""

    def __init__(self, window_bits: int) -> None:
        self.z = _ZStream()
        self.ref = ctypes.byref(self.z)
        if _libz.inflateInit2_(self.ref, window_bits, _ZLIB_VERSION, ctypes.sizeof(_ZStream)) != _Z_OK:
            raise MemoryError("zlib inflateInit2 failed")

    def inflate(self, flush: int) -> int:
        return int(_libz.inflate(self.ref, flush))

    def message(self, status: int) -> str:
        return (self.z.msg or b"").decode(errors="replace") or f"zlib status {status}"

    def close(self) -> None:
        _libz.inflateEnd(self.ref)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a gzip reader is: gzip bytes consumed, tar bytes produced, and at a block boundary the bits of
    the last consumed byte that belong to the next block (and that byte)."""

    in_pos: int
    out_pos: int
    pending_bits: int
    previous_byte: int


@dataclass(frozen=True, slots=True)
class ZranContext:
    """A restart point and the stretch of the gzip it decodes (ZranInflateContext with its window)."""

    in_offset: int
    out_offset: int
    in_len: int
    out_len: int
    ctx_byte: int
    ctx_bits: int
    window: bytes


@dataclass(frozen=True, slots=True)
class ZranChunk:
    """Where one chunk lies: its context, its offset in the context's output, its gzip range."""

    context: int
    offset: int
    in_pos: int
    in_len: int


class GzipIndexReader:
    """A gzip layer read once, in order: `read(n)` hands out its tar bytes (for the tar reader) and, at every
    deflate block boundary passed, the position and the window are noted (for the contexts). One gzip member
    only: nydusd 2.2 cannot decode a context that crosses into another member (UnsupportedError)."""

    def __init__(self, raw: Readable, name: str) -> None:
        self.raw = raw
        self.name = name
        self._z = _Inflater(_GZIP_WBITS)
        self._in = (ctypes.c_ubyte * READ_BLOCK)()
        self._in_base = ctypes.addressof(self._in)
        self._z.z.next_in = self._in_base
        self._z.z.avail_in = 0
        self.total_in = 0  # gzip bytes consumed by inflate
        self.total_out = 0  # tar bytes produced
        self.read_in = 0  # gzip bytes read from `raw`
        self._last_byte = 0  # the last byte of the previous input block
        self._window = (ctypes.c_ubyte * WINDOW)()
        self._out = ctypes.create_string_buffer(READ_BLOCK)  # reused by every read
        self.boundary = Position(0, 0, 0, 0)
        self.boundary_window = b""
        self.boundaries = 0  # deflate block boundaries passed
        self._ended = False

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: {what}")

    def position(self) -> Position:
        """zlib_random.rs get_compression_info: the pending bits of the last byte and that byte."""
        z = self._z.z
        bits = z.data_type & 7
        previous = 0
        if bits:
            at = (z.next_in or self._in_base) - self._in_base
            previous = self._last_byte if at == 0 else self._in[at - 1]
        return Position(self.total_in, self.total_out, bits, previous)

    def read(self, size: int = -1) -> bytes:
        """Up to `size` tar bytes (fewer at a block boundary; b"" at the end of the gzip stream)."""
        if size == 0 or self._ended:
            return b""
        size = READ_BLOCK if size < 0 else size
        if size > len(self._out):
            self._out = ctypes.create_string_buffer(size)
        start = ctypes.addressof(self._out)
        z = self._z.z
        z.next_out = start
        z.avail_out = size
        while True:
            if z.avail_in == 0 and not self._refill():
                if z.avail_out != size:
                    break
                raise self._fail("the gzip stream ends before its end marker (truncated)")
            before_in, before_out = z.avail_in, z.avail_out
            status = self._z.inflate(_Z_BLOCK)
            self.total_in += before_in - z.avail_in
            self.total_out += before_out - z.avail_out
            if status == _Z_STREAM_END:
                self._end_of_member()
                break
            if status == _Z_OK:
                if z.data_type & _BLOCK_BOUNDARY:
                    self._note_boundary()
                if z.avail_out != size:
                    break
                continue
            if status == _Z_BUF_ERROR and z.avail_in == 0:
                continue
            raise self._fail(f"corrupt gzip data at byte {self.total_in} ({self._z.message(status)})")
        return ctypes.string_at(start, size - z.avail_out)

    def _refill(self) -> bool:
        z = self._z.z
        if z.next_in and z.next_in > self._in_base:
            self._last_byte = self._in[z.next_in - self._in_base - 1]
        data = self.raw.read(READ_BLOCK)
        if not data:
            return False
        self.read_in += len(data)
        ctypes.memmove(self._in, data, len(data))
        z.next_in = self._in_base
        z.avail_in = len(data)
        return True

    def _note_boundary(self) -> None:
        self.boundaries += 1
        if self.boundaries > FREE_BOUNDARIES and self.boundaries > self.read_in // MIN_BLOCK_INPUT:
            raise UnsupportedError(f"{self.name}: over {self.boundaries - 1} deflate blocks in "
                                   f"{self.read_in} bytes (fewer than {MIN_BLOCK_INPUT} bytes each)")
        length = ctypes.c_uint(0)
        if _libz.inflateGetDictionary(self._z.ref, self._window, ctypes.byref(length)) != _Z_OK:
            raise self._fail("zlib cannot hand out the window")
        self.boundary = self.position()
        self.boundary_window = ctypes.string_at(self._window, length.value)  # a slice would make a list of ints

    def _end_of_member(self) -> None:
        """The end of the gzip member: another one must not follow (the rest must be empty)."""
        z = self._z.z
        rest = ctypes.string_at(z.next_in, z.avail_in)
        while not rest.strip(b"\0"):
            more = self.raw.read(READ_BLOCK)
            if not more:
                self._ended = True
                return
            self.read_in += len(more)
            rest = more
        raise UnsupportedError(f"{self.name}: more than one gzip member (nydusd 2.2 cannot serve such a layer "
                               "by reference)")

    def drain(self) -> None:
        """Read the gzip stream to its end (the tar reader may stop at its end-of-archive block)."""
        while self.read(READ_BLOCK):
            pass
        if not self._ended:
            raise self._fail("the gzip stream ends before its end marker (truncated)")

    def close(self) -> None:
        self._z.close()


class ZranIndexer:
    """Chooses a context for each chunk of the layer being read (`begin` before the chunk's bytes are read,
    `end` after), as nydus-image 2.2's ZranGenerator does with ZranContextGenerator's sizes."""

    def __init__(self, reader: GzipIndexReader) -> None:
        self.reader = reader
        self.contexts: list[ZranContext] = []
        self._current: int | None = None
        self._current_block_start = 0  # in_pos of the block boundary the current context started at
        self._chunk_in = 0
        self._chunk_out = 0

    def begin(self, chunk_size: int) -> None:
        here = self.reader.position()
        index = self._current
        if index is None:
            index = self._new_context()
        else:
            current = self.contexts[index]
            compressed = here.in_pos - current.in_offset
            uncompressed = here.out_pos - current.out_offset
            moved = self.reader.boundary.in_pos != self._current_block_start  # a new boundary was passed
            if moved and (compressed >= MAX_COMPRESSED // 2 or uncompressed + chunk_size >= MAX_UNCOMPRESSED):
                index = self._new_context()
            elif moved and compressed > 2 * current.in_len and current.in_len > MIN_COMPRESSED:
                index = self._new_context()  # a large gap since the context's last chunk
        self._current = index
        self._chunk_in, self._chunk_out = here.in_pos, here.out_pos

    def end(self) -> ZranChunk:
        assert self._current is not None, "end() without begin()"
        here = self.reader.position()
        opened = self.contexts[self._current]  # its stretch now reaches the end of this chunk
        context = self.contexts[self._current] = replace(opened, in_len=here.in_pos - opened.in_offset,
                                                         out_len=here.out_pos - opened.out_offset)
        return ZranChunk(context=self._current, offset=self._chunk_out - context.out_offset,
                         in_pos=self._chunk_in, in_len=here.in_pos - self._chunk_in)

    def _new_context(self) -> int:
        if len(self.contexts) == MAX_CONTEXTS:
            raise UnsupportedError(f"{self.reader.name}: needs over {MAX_CONTEXTS} zran contexts "
                                   f"({MAX_CONTEXTS * WINDOW >> 20} MiB of windows)")
        boundary = self.reader.boundary
        self.contexts.append(ZranContext(boundary.in_pos, boundary.out_pos, 0, 0, boundary.previous_byte,
                                         boundary.pending_bits, self.reader.boundary_window))
        self._current_block_start = boundary.in_pos
        return len(self.contexts) - 1

    def finished(self) -> list[ZranContext]:
        return list(self.contexts)


# what one context may make us read and inflate: nydus-image's contexts reach about two chunks (at most 16 MiB
# each), and nydusd refuses one over 16 MiB of output (storage/src/cache/mod.rs); a stranger's asks no more
MAX_CONTEXT_OUTPUT = 2 * rafs.MAX_CHUNK_SIZE
MAX_CONTEXT_INPUT = 2 * MAX_CONTEXT_OUTPUT  # incompressible data stored raw costs a few bytes per 64 KiB


def encode_contexts(contexts: list[ZranContext]) -> bytes:
    """The context table of a zran blob's chunk info: the contexts, then every window, in context order
    (nydus ZranContextGenerator::to_vec)."""
    records = []
    dict_offset = 0
    for c in contexts:
        records.append(blobmeta.FAST_ZRAN_CONTEXT.pack(c.in_offset, c.out_offset, dict_offset, c.in_len, c.out_len,
                                                       len(c.window), c.ctx_byte, c.ctx_bits, bytes(2)))
        dict_offset += len(c.window)
    return b"".join(records) + b"".join(c.window for c in contexts)


def decode_contexts(table: bytes, count: int, what: str) -> list[ZranContext]:
    """The contexts of a context table (`encode_contexts`), every window inside the table."""
    size = blobmeta.ZRAN_CONTEXT_SIZE
    if count * size > len(table):
        raise FormatError(f"{what}: {count} zran contexts do not fit in {len(table)} bytes")
    windows = count * size
    out = []
    for i in range(count):
        r = blobmeta.FAST_ZRAN_CONTEXT.unpack_record(table, i * size)
        start = windows + r.dict_offset
        if r.dict_size > WINDOW or start + r.dict_size > len(table) or r.ctx_bits > 7:
            raise FormatError(f"{what}: zran context {i} has a window or bit count out of range")
        if r.out_len > MAX_CONTEXT_OUTPUT or r.in_len > MAX_CONTEXT_INPUT:
            raise FormatError(f"{what}: zran context {i} spans {r.in_len} gzip bytes to {r.out_len} tar bytes, over "
                              f"the {MAX_CONTEXT_INPUT >> 20} MiB and {MAX_CONTEXT_OUTPUT >> 20} MiB limits")
        out.append(ZranContext(r.in_offset, r.out_offset, r.in_len, r.out_len, r.ctx_byte, r.ctx_bits,
                               table[start : start + r.dict_size]))
    return out


def _check_total_work(contexts: list[ZranContext], what: str) -> None:
    """Contexts may overlap by a block or so (each starts at the boundary before its first chunk); contexts
    that cover the same stretch many times over would make reading the blob inflate the layer that many times."""
    covered = max((c.out_offset + c.out_len for c in contexts), default=0)
    inflated = sum(c.out_len for c in contexts)
    if inflated > 2 * covered + MAX_CONTEXT_OUTPUT:
        raise FormatError(f"{what}: its zran contexts inflate {inflated} bytes to cover {covered} "
                          "(they overlap over and over)")


def inflate_context(gzip_bytes: bytes, context: ZranContext, what: str) -> bytes:
    """The `out_len` tar bytes a context decodes from its `in_len` gzip bytes (`gzip_bytes`): a raw inflate
    primed with the pending bits and the window (nydus ZranDecoder::uncompress); a gzip member that ends
    inside the stretch goes on into the next member, as nydus 2.3's decoder does."""
    if len(gzip_bytes) != context.in_len:
        raise FormatError(f"{what}: zran context wants {context.in_len} gzip bytes, got {len(gzip_bytes)}")
    z = _Inflater(_RAW_WBITS)
    try:
        if context.ctx_bits and _libz.inflatePrime(z.ref, context.ctx_bits,
                                                  context.ctx_byte >> (8 - context.ctx_bits)) != _Z_OK:
            raise FormatError(f"{what}: zran context bits cannot be primed")
        window = ctypes.create_string_buffer(context.window, len(context.window))
        if context.window and _libz.inflateSetDictionary(z.ref, window, len(context.window)) != _Z_OK:
            raise FormatError(f"{what}: zran context window refused")
        source = ctypes.create_string_buffer(gzip_bytes, len(gzip_bytes))
        out = ctypes.create_string_buffer(context.out_len)
        z.z.next_in, z.z.avail_in = ctypes.addressof(source), len(gzip_bytes)
        z.z.next_out, z.z.avail_out = ctypes.addressof(out), context.out_len
        while z.z.avail_out:
            status = z.inflate(_Z_NO_FLUSH)
            if status == _Z_STREAM_END and z.z.avail_in:
                _next_member(z, what)  # a member ends inside: skip its trailer and the next header
                continue
            if status not in (_Z_OK, _Z_STREAM_END) or (status == _Z_STREAM_END and z.z.avail_out):
                raise FormatError(f"{what}: zran context does not decode ({z.message(status)})")
            if status == _Z_OK and not z.z.avail_in and z.z.avail_out:
                raise FormatError(f"{what}: zran context decodes to less than its {context.out_len} bytes")
        return out.raw
    finally:
        z.close()


def _next_member(z: _Inflater, what: str) -> None:
    """After a raw member's end: skip the 8-byte gzip trailer, read the next member's header (a gzip
    inflate that stops at the header's end), then inflate raw again (nydus 2.3, commit 96f402bf)."""
    if z.z.avail_in < 8:
        raise FormatError(f"{what}: zran context ends inside a gzip trailer")
    z.z.next_in += 8
    z.z.avail_in -= 8
    _libz.inflateReset2(z.ref, _GZIP_WBITS)
    saved_avail = z.z.avail_out
    z.z.avail_out = 0  # a header makes no output: stop at its end (Z_BLOCK), consume nothing more
    while True:
        status = z.inflate(_Z_BLOCK)
        if z.z.data_type & _BLOCK_BOUNDARY:
            break
        if status != _Z_OK or not z.z.avail_in:
            raise FormatError(f"{what}: zran context: the next gzip header does not decode")
    z.z.avail_out = saved_avail
    _libz.inflateReset2(z.ref, _RAW_WBITS)




class ZranBlobReader(BlobReader):
    """A zran blob as the read side sees it: its meta blob (chunk info, contexts, digests, TOC: everything
    BlobReader reads) and the original gzip layer, where `read_chunk` decodes each chunk through its context
    (the last few contexts decoded are kept: consecutive chunks share them)."""

    CACHED_CONTEXTS = 4

    def __init__(self, meta: str | os.PathLike[str] | RandomAccess, data: str | os.PathLike[str] | RandomAccess,
                 info: BlobInfo) -> None:
        super().__init__(meta)
        self.data = BlobReader(data)
        self.info = info
        self._entries: list[BlobChunk] | None = None
        self._contexts: list[ZranContext] | None = None
        self._decoded: OrderedDict[int, bytes] = OrderedDict()

    def close(self) -> None:
        self.data.close()
        super().close()

    def contexts(self) -> list[ZranContext]:
        """The contexts of the chunk info's context table."""
        if self._contexts is None:
            header = self.ci_header(self.info)
            table = self.chunk_info_data(header)
            if header.zran_offset + header.zran_size > len(table):
                raise FormatError(f"{self.path.name}: the zran context table lies past the chunk info")
            contexts = decode_contexts(table[header.zran_offset : header.zran_offset + header.zran_size],
                                       header.zran_count, self.path.name)
            _check_total_work(contexts, self.path.name)
            self._contexts = contexts
        return self._contexts

    def entries(self) -> list[BlobChunk]:
        if self._entries is None:
            self._entries = self.chunk_infos(self.ci_header(self.info))
        return self._entries

    def chunk_context(self, ci_index: int) -> tuple[int, int]:
        """(context index, offset in its output) of a chunk, checked against the context table."""
        entries, contexts = self.entries(), self.contexts()
        if not 0 <= ci_index < len(entries):
            raise FormatError(f"{self.path.name}: chunk {ci_index} is past the chunk info")
        entry = entries[ci_index]
        context, offset = entry.data >> 32, entry.data & 0xFFFF_FFFF
        where = f"{self.path.name}: chunk {ci_index}"
        if not entry.flags & blobmeta.ChunkFlagsV2.ZRAN:
            raise FormatError(f"{where}: not a zran chunk in a zran blob")
        if context >= len(contexts):
            raise FormatError(f"{where}: zran context {context} is past the {len(contexts)} contexts")
        c = contexts[context]
        if offset + entry.uncompressed_size > c.out_len:
            raise FormatError(f"{where}: lies past its zran context's {c.out_len} bytes")
        if entry.compressed_offset < c.in_offset or entry.compressed_offset + entry.compressed_size > (
                c.in_offset + c.in_len):
            raise FormatError(f"{where}: its gzip range lies outside its zran context's")
        if c.in_offset + c.in_len > self.data.size:
            raise FormatError(f"{where}: its zran context reads past the {self.data.size}-byte layer")
        return context, offset

    def read_chunk(self, chunk: ChunkExtent, compressor: CompressAlgo, digester: DigestAlgo,
                   digest: bytes | None) -> bytes:
        context, offset = self.chunk_context(chunk.ci_index)
        decoded = self._decoded.get(context)
        if decoded is None:
            c = self.contexts()[context]
            decoded = inflate_context(self.data.read_at(c.in_offset, c.in_len, f"zran context {context}"), c,
                                      f"{self.path.name}: zran context {context}")
            self._decoded[context] = decoded
            if len(self._decoded) > self.CACHED_CONTEXTS:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(context)
        data = decoded[offset : offset + chunk.uncompressed_size]
        if digest is not None and chunk_digest(data, digester) != digest:
            raise FormatError(f"{self.path.name}: chunk {chunk.ci_index} (zran context {context}): "
                              f"{digester.name.lower()} digest does not match its data")
        return data


def blob_reader(info: BlobInfo, data: str | os.PathLike[str] | RandomAccess,
                meta: str | os.PathLike[str] | RandomAccess | None = None) -> BlobReader:
    """The reader of a blob's chunks: its file, or for a zran blob its meta blob and the original layer."""
    if info.is_separate:
        if meta is None:
            raise FormatError(f"blob {info.blob_id}: a zran blob needs its meta blob")
        return ZranBlobReader(meta, data, info)
    return BlobReader(data)


__all__ = ["MAX_COMPRESSED", "MAX_UNCOMPRESSED", "MIN_COMPRESSED", "GzipIndexReader", "Position", "ZranBlobReader",
           "ZranChunk", "ZranContext", "ZranIndexer", "blob_reader", "decode_contexts", "encode_contexts",
           "inflate_context"]
