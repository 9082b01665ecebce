"""A tar stream -> its members, one at a time, each member's data read in place, in stream order.

Our own reader (not the standard library's `tarfile`): it reads exactly what it needs, never seeks, makes one
small record per member, and is strict where `tarfile` guesses. What it understands, as GNU tar, Go's
archive/tar and `tarfile` write and read it:
- ustar headers (a non-empty `prefix` joins the name), pre-POSIX ones (a regular file whose name ends in '/'
  is a directory), checksums of signed or unsigned bytes, octal or GNU base-256 numbers;
- GNU long names and link names (`L`, `K`); pax extended (`x`, `X`) and global (`g`) headers, whose records
  replace `path`, `linkpath`, `size`, `uid`, `gid` and `mtime` (exact: decimal seconds with a fraction) and
  carry everything else (xattrs) to the member; when several special headers precede one member, the first
  one's values win, as `tarfile` applies them;
- sparse files: old GNU (`S`, map in the header and extension blocks) and GNU pax 0.0, 0.1 and 1.0 (the map
  in records, or in front of the data).
The end: two zero blocks (one is enough), or the end of the stream right after a member, its zero padding
included or not (`umoci insert` stops there; GNU tar, Go and containerd accept it). A stream cut inside a
header or a member's data is an error. After the end-of-archive block the rest of the stream is read (a
compressed stream checks its trailer only at its end) and ignored.
Bounds: a pax record set, a GNU long name or link, and the global pax records of a stream hold at most
MAX_HEADER_RECORD bytes (Go's archive/tar caps them at 1 MiB too); a sparse map holds at most
MAX_SPARSE_EXTENTS extents, sorted and inside the file.
References: POSIX.1-2017 pax ("ustar Interchange Format", "pax Extended Header"); GNU tar manual, "Basic Tar
Format" and "Sparse Formats"; nydus_py/format/tar.py for the records.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyzstd
from construct import Container

from nydus_py.errors import FormatError
from nydus_py.format import parse, tar
from nydus_py.format.tar import TAR_BLOCK_SIZE, TypeFlag
from nydus_py.util.fsutil import Readable

MAX_HEADER_RECORD = 1 << 20
MAX_SPARSE_EXTENTS = 1 << 16
MAX_GLOBAL_RECORDS = 1024
MAX_SIZE = (1 << 63) - 1  # what a size, offset or length may be (a signed 64-bit off_t)
_PAX_TIME = re.compile(rb"(-)?([0-9]{1,19})(?:\.([0-9]{0,30}))?")
# global pax records a member takes (ownership, time, xattrs); the rest (comments, charsets) are not kept
_GLOBAL_KEYWORDS = frozenset({b"uid", b"gid", b"mtime"})
_XATTR_KEYS = (b"SCHILY.xattr.", b"LIBARCHIVE.xattr.")
_COPY_BLOCK = 1 << 20
# what a corrupt compressed stream raises from its read(), and what a closed or failing source raises
STREAM_ERRORS = (EOFError, zlib.error, pyzstd.ZstdError, gzip.BadGzipFile, OSError)
_SPECIAL_NAMES = {TypeFlag.PAX: "PAX header", TypeFlag.SOLARIS_PAX: "PAX header",
                  TypeFlag.PAX_GLOBAL: "global PAX header", TypeFlag.GNU_LONGNAME: "GNU long name",
                  TypeFlag.GNU_LONGLINK: "GNU long link name"}  # the headers that describe the next member
_SPECIAL = frozenset(_SPECIAL_NAMES)
_GNU_NAME_TYPES = frozenset({TypeFlag.GNU_LONGNAME, TypeFlag.GNU_LONGLINK, TypeFlag.GNU_SPARSE})
_REGULAR = frozenset(tar.REGULAR_TYPES)
_ZERO_BLOCK = bytes(TAR_BLOCK_SIZE)


@dataclass(slots=True)
class TarMember:
    """One member, its special headers applied. `size` is the file's size (a sparse file's real size);
    `sparse`, when set, lists the (offset, length) extents that hold data, the rest reads as zeros."""

    name: bytes
    typeflag: bytes
    linkname: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int  # seconds since the epoch
    mtime_nsec: int
    devmajor: int
    devminor: int
    pax: dict[bytes, bytes] = field(default_factory=dict)  # every pax record that applies (global ones too)
    sparse: list[tuple[int, int]] | None = None
    offset: int = 0  # of its first header (a special one, if any) in the stream
    data_offset: int = 0  # of its data in the stream

    @property
    def is_regular(self) -> bool:
        return self.typeflag in _REGULAR


class TarReader:
    """Iterate over `members()`; while a member is current, `read(n)` gives its stored data in order (what
    is left unread is skipped when the next member is asked for)."""

    def __init__(self, stream: Readable, name: str) -> None:
        self.stream = stream
        self.name = name  # for messages
        self.position = 0  # bytes of the stream consumed
        self._left = 0  # stored data of the current member not read yet
        self._padding = 0  # zero bytes after it, up to the next block
        self._global: dict[bytes, bytes] = {}
        self._global_size = 0

    # --- reading the stream -----------------------------------------------------------------------

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: {what}")

    def _read(self, size: int) -> bytes:
        try:
            data = self.stream.read(size)
        except STREAM_ERRORS as exc:
            raise self._fail(f"corrupt layer stream at byte {self.position} of the tar stream ({exc})") from None
        self.position += len(data)
        return data

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._read(size)
        while len(data) < size:  # a pipe may return less than asked
            more = self._read(size - len(data))
            if not more:
                raise self._fail(f"truncated tar stream: {what} ends after {len(data)} of {size} bytes")
            data += more
        return data

    def _skip(self, size: int, what: str) -> None:
        while size > 0:
            size -= len(self._read_exact(min(size, _COPY_BLOCK), what))

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of the current member's stored data (b"" at its end); a stream that ends
        before the member does is an error."""
        size = min(size, self._left)
        data = self._read_exact(size, "a member's data") if size else b""
        self._left -= size
        return data

    # --- members ----------------------------------------------------------------------------------

    def members(self) -> Iterator[TarMember]:
        while True:
            self._skip(self._left, "a member's data")
            # the zero padding after the last member may be missing too (Go's archive/tar writes it only when
            # the next header or the end of the archive comes, which `umoci insert` never writes)
            while self._padding and (padding := self._read(self._padding)):
                self._padding -= len(padding)
            self._left = self._padding = 0
            member = self._next_member()
            if member is None:
                return
            yield member

    def _next_member(self) -> TarMember | None:
        """The next member with its special headers applied, or None at the end of the archive."""
        overrides: list[tuple[TypeFlag, bytes | dict[bytes, bytes]]] = []  # special headers, in stream order
        start = self.position
        pending = 0  # bytes of special headers so far: together they are capped like one
        while True:
            block = self._read(TAR_BLOCK_SIZE)
            while 0 < len(block) < TAR_BLOCK_SIZE and (more := self._read(TAR_BLOCK_SIZE - len(block))):
                block += more  # a pipe may return less than asked
            if 0 < len(block) < TAR_BLOCK_SIZE:
                if self.position == len(block):
                    raise self._fail(f"not a readable tar stream ({len(block)} bytes, less than one header)")
                raise self._fail(f"truncated tar stream: a header ends after {len(block)} of {TAR_BLOCK_SIZE} bytes")
            if not block:  # the stream ends at a member boundary: as two zero blocks would
                if overrides:
                    raise self._fail("truncated tar stream: special headers without their member")
                return None
            if block == _ZERO_BLOCK:
                if overrides:
                    raise self._fail("special headers followed by the end of the archive")
                self._drain()
                return None
            header = self._header(block)
            kind = self._typeflag(header)
            if kind not in _SPECIAL:
                return self._member(block, header, kind, overrides, start)
            size = self._size(header.size, "size")
            if size > MAX_HEADER_RECORD:
                raise self._fail(f"{_SPECIAL_NAMES[kind]} of {size} bytes is over the {MAX_HEADER_RECORD >> 20} MiB "
                                 "limit")
            pending += size + TAR_BLOCK_SIZE
            if pending > MAX_HEADER_RECORD:
                raise self._fail(f"special headers of more than {MAX_HEADER_RECORD >> 20} MiB before one member")
            data = self._read_exact(size, f"a {_SPECIAL_NAMES[kind]}")
            self._skip(-size % TAR_BLOCK_SIZE, "padding")
            if kind in (TypeFlag.GNU_LONGNAME, TypeFlag.GNU_LONGLINK):
                overrides.append((kind, data.split(b"\0", 1)[0]))
                continue
            records = tar.pax_records(data)
            if records is None:
                raise self._fail(f"malformed pax record in the header at byte {self.position - size}")
            if kind is TypeFlag.PAX_GLOBAL:
                self._global_size += size
                if self._global_size > MAX_HEADER_RECORD:
                    raise self._fail(f"global pax records over the {MAX_HEADER_RECORD >> 20} MiB limit")
                # only what a member takes from them: each member carries them, so nothing else is kept
                self._global.update((k, v) for k, v in records if k in _GLOBAL_KEYWORDS or k.startswith(_XATTR_KEYS))
                if len(self._global) > MAX_GLOBAL_RECORDS:
                    raise self._fail(f"more than {MAX_GLOBAL_RECORDS} global pax records")
            else:
                overrides.append((kind, _sparse_keyed(records)))

    def _drain(self) -> None:
        """Read what follows the end-of-archive block (a compressed stream checks its trailer at its end)."""
        while self._read(_COPY_BLOCK):
            pass

    def _header(self, block: bytes) -> tar.TarHeaderRecord:
        header = tar.FAST_TAR_HEADER.unpack_record(block)
        if not tar.checksum_matches(block, tar.tar_number(header.chksum)):
            at = self.position - TAR_BLOCK_SIZE
            if at == 0:
                raise self._fail("not a readable tar stream (no tar header at its start)")
            raise self._fail(f"corrupt tar stream: bad header checksum at byte {at}")
        return header

    def _typeflag(self, header: tar.TarHeaderRecord) -> TypeFlag:
        try:
            return TypeFlag(header.typeflag)
        except ValueError:
            name = header.name.split(b"\0", 1)[0]
            raise self._fail(f"{name!r}: unsupported tar entry type {header.typeflag!r}") from None

    def _number(self, field_bytes: bytes, what: str) -> int:
        value = tar.tar_number(field_bytes)
        if value is None:
            raise self._fail(f"corrupt tar stream: header field {what} {field_bytes!r} is not a number")
        return value

    def _size(self, field_bytes: bytes, what: str) -> int:
        """A size, offset or length: a number from 0 to MAX_SIZE (a negative base-256 value is one too)."""
        value = self._number(field_bytes, what)
        if not 0 <= value <= MAX_SIZE:
            raise self._fail(f"corrupt tar stream: header field {what} is {value}, not a size")
        return value

    def _member(self, block: bytes, header: tar.TarHeaderRecord, kind: TypeFlag,
                overrides: list[tuple[TypeFlag, bytes | dict[bytes, bytes]]], start: int) -> TarMember:
        name = header.name.split(b"\0", 1)[0]
        if kind is TypeFlag.AREG and name.endswith(b"/"):  # pre-POSIX tars mark directories so
            kind = TypeFlag.DIR
        # a GNU header has atime, ctime and its sparse map where ustar has `prefix` (GNU tar and Go ignore it)
        prefix = header.prefix.split(b"\0", 1)[0] if header.magic != tar.GNU_MAGIC else b""
        if prefix and kind not in _GNU_NAME_TYPES:
            name = prefix + b"/" + name
        num = self._number
        member = TarMember(name=name, typeflag=kind.value, linkname=header.linkname.split(b"\0", 1)[0],
                           mode=num(header.mode, "mode"), uid=num(header.uid, "uid"), gid=num(header.gid, "gid"),
                           size=self._size(header.size, "size"), mtime=num(header.mtime, "mtime"), mtime_nsec=0,
                           devmajor=0, devminor=0, offset=start)
        if kind in (TypeFlag.CHR, TypeFlag.BLK):  # other writers leave anything in these fields
            member.devmajor, member.devminor = num(header.devmajor, "devmajor"), num(header.devminor, "devminor")
        stored = member.size
        if kind is TypeFlag.GNU_SPARSE:
            self._old_gnu_sparse(member, parse(tar.GnuHeaderTail, block, what="GNU sparse header",
                                               offset=tar.PREFIX_OFFSET))
        # the global records first, then the special headers from the last to the first: the first one's
        # values win, as tarfile applies them
        member.pax = dict(self._global)
        stored = self._apply_pax(member, member.pax, stored)
        for special, value in reversed(overrides):
            if isinstance(value, dict):
                member.pax = {**self._global, **value}
                stored = self._apply_pax(member, member.pax, stored)
            elif special is TypeFlag.GNU_LONGNAME:
                member.name = value
            else:
                member.linkname = value
        pax = member.pax
        member.data_offset = self.position
        if member.is_regular:
            self._left = stored
            self._padding = -stored % TAR_BLOCK_SIZE
            if pax.get(b"GNU.sparse.major") == b"1" and pax.get(b"GNU.sparse.minor") == b"0":
                member.sparse = self._sparse_map_1_0()
                member.data_offset = self.position
        if member.sparse is not None:
            self._check_sparse(member)
        return member

    def _apply_pax(self, member: TarMember, pax: dict[bytes, bytes], stored: int) -> int:
        """Let pax records replace header fields; returns the stored data size (pax `size`)."""
        for keyword, value in pax.items():
            if keyword in (b"path", b"GNU.sparse.name"):
                member.name = value
            elif keyword == b"linkpath":
                member.linkname = value
            elif keyword in (b"uid", b"gid", b"size", b"GNU.sparse.size", b"GNU.sparse.realsize"):
                if not value.isdigit() or len(value) > 20 or int(value) > MAX_SIZE:
                    raise self._fail(f"pax record {keyword.decode(errors='replace')}={value[:40]!r} is not a number "
                                     "that fits in 63 bits")
                if keyword == b"uid":
                    member.uid = int(value)
                elif keyword == b"gid":
                    member.gid = int(value)
                elif keyword == b"size":
                    stored = member.size = int(value)
            elif keyword == b"mtime":
                member.mtime, member.mtime_nsec = self._pax_time(value)
        real = pax.get(b"GNU.sparse.realsize", pax.get(b"GNU.sparse.size"))
        if real is not None:
            member.size = int(real)
        if b"GNU.sparse.map" in pax:
            member.sparse = self._pairs(pax[b"GNU.sparse.map"].split(b","), "GNU.sparse.map")
        elif b"GNU.sparse.offset" in pax:
            member.sparse = _sparse_0_0(pax)
        return stored

    def _pax_time(self, value: bytes) -> tuple[int, int]:
        """(seconds, nanoseconds), exact: pax writes a decimal with an optional fraction, which a float would
        round (and nothing else: no exponent, which could ask for a number of any size)."""
        match = _PAX_TIME.fullmatch(value)
        if match is None:
            raise self._fail(f"PAX mtime {value[:40]!r} is not a number")
        sign, whole, fraction = match.groups()
        seconds, nanoseconds = int(whole), int((fraction or b"").ljust(9, b"0")[:9])
        if sign:  # -1.25 is 2 s before 0, plus 0.75 s
            seconds, nanoseconds = (-seconds - 1, 1_000_000_000 - nanoseconds) if nanoseconds else (-seconds, 0)
        return seconds, nanoseconds

    def _pairs(self, numbers: list[bytes], what: str) -> list[tuple[int, int]]:
        if len(numbers) > 2 * MAX_SPARSE_EXTENTS:
            raise self._fail(f"{what}: more than {MAX_SPARSE_EXTENTS} extents")
        if len(numbers) % 2 or not all(n.isdigit() and len(n) <= 20 and int(n) <= MAX_SIZE for n in numbers):
            raise self._fail(f"{what}: not pairs of numbers that fit in 63 bits")
        values = [int(n) for n in numbers]
        return list(zip(values[::2], values[1::2], strict=True))

    def _old_gnu_sparse(self, member: TarMember, tail: Container) -> None:
        extents = [(self._size(sp.offset, "sparse offset"), self._size(sp.numbytes, "sparse size"))
                   for sp in tail.sp if sp.offset.strip(b"\0") or sp.numbytes.strip(b"\0")]
        extended = tail.isextended != b"\0"
        blocks = 0
        while extended:
            blocks += 1  # empty entries count too: a chain of them is as long as a full one
            if blocks > MAX_SPARSE_EXTENTS // tar.GNU_SPARSE_EXTENSION_ENTRIES + 1:
                raise self._fail(f"GNU sparse map: more than {MAX_SPARSE_EXTENTS} extents")
            block = parse(tar.GnuSparseExtension, self._read_exact(TAR_BLOCK_SIZE, "a GNU sparse extension block"),
                          what="GNU sparse extension block", offset=0)
            extents += [(self._size(sp.offset, "sparse offset"), self._size(sp.numbytes, "sparse size"))
                        for sp in block.sp if sp.offset.strip(b"\0") and sp.numbytes.strip(b"\0")]
            extended = block.isextended != b"\0"
        member.sparse = extents
        member.size = self._size(tail.realsize, "GNU sparse real size")

    def _sparse_map_1_0(self) -> list[tuple[int, int]]:
        """The GNU pax 1.0 map in front of the data: a count and offset/size pairs, one decimal a line, padded
        to whole blocks (which count as the member's stored data)."""
        block = self.read(TAR_BLOCK_SIZE)
        if len(block) < TAR_BLOCK_SIZE:
            raise self._fail("PAX 1.0 sparse map: truncated")
        lines = block.split(b"\n")
        count_text = lines[0]
        if not count_text.isdigit() or len(count_text) > 20:
            raise self._fail("PAX 1.0 sparse map: bad extent count")
        count = int(count_text)
        if count > MAX_SPARSE_EXTENTS:
            raise self._fail(f"PAX 1.0 sparse map: more than {MAX_SPARSE_EXTENTS} extents")
        parts, lines_seen, size = [block], block.count(b"\n"), len(block)
        limit = (1 + 2 * count) * 21 + TAR_BLOCK_SIZE  # every number at most 20 digits and its newline
        while lines_seen < 1 + 2 * count:
            more = self.read(TAR_BLOCK_SIZE)
            if len(more) < TAR_BLOCK_SIZE:
                raise self._fail("PAX 1.0 sparse map: truncated")
            size += len(more)
            if size > limit:
                raise self._fail("PAX 1.0 sparse map: longer than its extents can be")
            parts.append(more)
            lines_seen += more.count(b"\n")
        numbers = b"".join(parts).split(b"\n")[1 : 1 + 2 * count]
        return self._pairs(numbers, "PAX 1.0 sparse map")

    def _check_sparse(self, member: TarMember) -> None:
        """Extents sorted, apart, inside the file, and no more data than is stored."""
        assert member.sparse is not None
        member.sparse = [(o, n) for o, n in member.sparse if n]
        end = 0
        for offset, length in member.sparse:
            if offset < end or offset + length > member.size:
                raise self._fail(f"{member.name!r}: sparse map extents overlap, are out of order or pass the end "
                                 "of the file")
            end = offset + length
        if sum(n for _, n in member.sparse) > self._left:
            raise self._fail(f"{member.name!r}: sparse map holds more data than the member stores")


def _sparse_keyed(records: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """pax records as a dict; GNU pax 0.0's repeated offset/numbytes keywords are kept in order, joined by
    commas (one value per pair)."""
    out: dict[bytes, bytes] = {}
    for keyword, value in records:
        if keyword in (b"GNU.sparse.offset", b"GNU.sparse.numbytes") and keyword in out:
            out[keyword] += b"," + value
        else:
            out[keyword] = value
    return out


def _sparse_0_0(pax: dict[bytes, bytes]) -> list[tuple[int, int]]:
    offsets = pax.get(b"GNU.sparse.offset", b"").split(b",")
    sizes = pax.get(b"GNU.sparse.numbytes", b"").split(b",")
    if len(offsets) != len(sizes) or len(offsets) > MAX_SPARSE_EXTENTS or not all(
            n.isdigit() and len(n) <= 20 and int(n) <= MAX_SIZE for n in offsets + sizes):
        raise FormatError("GNU pax 0.0 sparse map: not pairs of numbers, or too many")
    return [(int(o), int(n)) for o, n in zip(offsets, sizes, strict=True)]


__all__ = ["MAX_HEADER_RECORD", "MAX_SPARSE_EXTENTS", "STREAM_ERRORS", "TarMember", "TarReader"]
