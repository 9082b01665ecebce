"""The 512-byte tar header, as the two tar writers Nydus images depend on write it.

`TarHeader` is the POSIX header layout (GNU keeps atime/ctime/sparse data where ustar has `prefix`; both
are zero here). Two dialects, each matched byte for byte:
- NYDUS_TAIL: the GNU header the Rust tar crate writes *after* each section of a Nydus blob (mode, uid,
  gid and device fields all NUL; checksum as 7 octal digits and NUL);
- GO_USTAR: the ustar header Go's archive/tar writes for the bootstrap layer of an image (numeric fields
  as octal text; checksum as 6 octal digits, NUL and space).
References: POSIX pax/ustar; GNU tar manual "Standard" (the GNU format); Rust tar crate `Header::new_gnu`;
Go archive/tar writer.go; docs/oci.md §2.1.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from construct import Adapter, Array, Bytes, Struct, ValidationError

from nydus_py.format._fields import FastStruct

TAR_BLOCK_SIZE = 512
GNU_MAGIC = b"ustar "
GNU_VERSION = b" \0"
USTAR_MAGIC = b"ustar\0"
USTAR_VERSION = b"00"
CHKSUM_FIELD = slice(148, 156)  # TarHeader.chksum: the bytes the checksum reads as spaces


class _Octal(Adapter):  # type: ignore[misc]  # construct ships no types: its classes are Any
    """A tar numeric field: octal digits followed by NUL (all-NUL reads as 0)."""

    def _decode(self, obj: bytes, context: object, path: str) -> int:
        value = octal_value(obj)
        if value is None:
            raise ValidationError(f"{obj!r} is not an octal number", path=path)
        return value

    def _encode(self, obj: int, context: object, path: str) -> bytes:
        return octal(obj, self.subcon.sizeof())


TarHeader = Struct(  # 512 B
    "name" / Bytes(100),
    "mode" / Bytes(8),  # NYDUS_TAIL: all NUL; GO_USTAR: 7 octal digits + NUL
    "uid" / Bytes(8),
    "gid" / Bytes(8),
    "size" / _Octal(Bytes(12)),  # 11 octal digits + NUL
    "mtime" / _Octal(Bytes(12)),
    "chksum" / Bytes(8),  # octal byte sum of the header with this field read as spaces (text: per dialect)
    "typeflag" / Bytes(1),
    "linkname" / Bytes(100),
    "magic" / Bytes(6),  # GNU_MAGIC or USTAR_MAGIC
    "version" / Bytes(2),  # GNU_VERSION or USTAR_VERSION
    "uname" / Bytes(32),
    "gname" / Bytes(32),
    "devmajor" / Bytes(8),
    "devminor" / Bytes(8),
    "prefix" / Bytes(155),  # GNU: atime, ctime, offset, longnames, sparse map (all zero here)
    "pad" / Bytes(12),
)
assert TarHeader.sizeof() == TAR_BLOCK_SIZE


class TarHeaderRecord(NamedTuple):
    """FAST_TAR_HEADER's record: every field's raw bytes (numbers are decoded by `tar_number`)."""

    name: bytes
    mode: bytes
    uid: bytes
    gid: bytes
    size: bytes
    mtime: bytes
    chksum: bytes
    typeflag: bytes
    linkname: bytes
    magic: bytes
    version: bytes
    uname: bytes
    gname: bytes
    devmajor: bytes
    devminor: bytes
    prefix: bytes
    pad: bytes


FAST_TAR_HEADER = FastStruct(TarHeader, TarHeaderRecord)
PREFIX_OFFSET = 345  # TarHeader.prefix: where GNU's own fields (GnuHeaderTail) begin instead


class TypeFlag(bytes, enum.Enum):
    """`typeflag` values a layer tar may hold (POSIX ustar and pax, GNU extensions)."""

    REG = b"0"
    AREG = b"\0"  # pre-POSIX regular file (a directory when its name ends in '/')
    LNK = b"1"  # hardlink to `linkname`
    SYM = b"2"
    CHR = b"3"
    BLK = b"4"
    DIR = b"5"
    FIFO = b"6"
    CONT = b"7"  # contiguous file: a regular file
    PAX = b"x"  # pax extended header: records for the next member
    PAX_GLOBAL = b"g"  # pax global header: records for every later member
    SOLARIS_PAX = b"X"  # Solaris' name for a pax extended header
    GNU_LONGNAME = b"L"  # the next member's name, as data
    GNU_LONGLINK = b"K"  # the next member's linkname, as data
    GNU_SPARSE = b"S"  # old GNU sparse file: map in the header and extension blocks


REGULAR_TYPES = (TypeFlag.REG, TypeFlag.AREG, TypeFlag.CONT, TypeFlag.GNU_SPARSE)  # members whose data follows

GnuSparseEntry = Struct(  # one extent of an old GNU sparse map (struct sparse in GNU tar's tar.h)
    "offset" / Bytes(12),  # in the file, as a tar number
    "numbytes" / Bytes(12),
)
assert GnuSparseEntry.sizeof() == 24

GnuHeaderTail = Struct(  # bytes 345-511 of a GNU header (where ustar has `prefix`): GNU tar's struct oldgnu_header
    "atime" / Bytes(12),
    "ctime" / Bytes(12),
    "offset" / Bytes(12),  # multi-volume archives only
    "longnames" / Bytes(4),
    "unused_pad1" / Bytes(1),
    "sp" / Array(4, GnuSparseEntry),  # the first four extents of a GNU_SPARSE member
    "isextended" / Bytes(1),  # non-zero: extension blocks (GnuSparseExtension) follow the header
    "realsize" / Bytes(12),  # the file's size; the header's `size` is the bytes stored
    "unused_pad2" / Bytes(17),
)
assert GnuHeaderTail.sizeof() == TAR_BLOCK_SIZE - PREFIX_OFFSET

GNU_SPARSE_EXTENSION_ENTRIES = 21
GnuSparseExtension = Struct(  # a 512-byte block of further extents (GNU tar's struct sparse_header)
    "sp" / Array(GNU_SPARSE_EXTENSION_ENTRIES, GnuSparseEntry),
    "isextended" / Bytes(1),
    "unused_pad" / Bytes(7),
)
assert GnuSparseExtension.sizeof() == TAR_BLOCK_SIZE


def tar_number(field: bytes) -> int | None:
    """A numeric header field: octal text (digits up to the first NUL, spaces around them), or GNU's base-256
    (first byte 0x80 positive, 0xff negative, big-endian after it); None when it is neither."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    return octal_value(field)


def checksum_matches(header: bytes, value: int | None) -> bool:
    """Whether `value` is the checksum of a 512-byte `header` (the chksum field read as spaces): the sum of its
    bytes as unsigned (POSIX), or as signed (some old tars)."""
    unsigned = tar_checksum(header)
    if value == unsigned:
        return True
    high = len(header.translate(None, _LOW_BYTES)) - len(header[CHKSUM_FIELD].translate(None, _LOW_BYTES))
    return value == unsigned - 256 * high


_LOW_BYTES = bytes(range(0x80))


_PAX_RECORD = re.compile(rb"([1-9][0-9]{0,19}) ")


def pax_records(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (keyword, value) records of a pax header's data, each `"%d %s=%s\n"` with the length counting the
    whole record; NULs after the last record are padding. None when a record is malformed (POSIX pax,
    "pax Extended Header")."""
    out = []
    pos = 0
    end = len(data.rstrip(b"\0"))
    while pos < end:
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            return None
        stop = pos + int(match.group(1))
        record = data[match.end() : stop]
        if stop > len(data) or not record.endswith(b"\n") or b"=" not in record:
            return None
        keyword, _, value = record[:-1].partition(b"=")
        if not keyword:
            return None
        out.append((keyword, value))
        pos = stop
    return out


class TarDialect(enum.Enum):
    NYDUS_TAIL = "nydus"  # Rust tar crate, GNU header
    GO_USTAR = "go"  # Go archive/tar, ustar header


def octal(value: int, width: int) -> bytes:
    """`width` bytes: octal digits then NUL (Go's formatOctal; the Rust crate's GNU numeric fields)."""
    return b"%0*o\0" % (width - 1, value)


def octal_value(field: bytes) -> int | None:
    """The number in a numeric field (digits up to the first NUL, spaces around them ignored), or None."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if digits.strip(b"01234567"):
        return None
    return int(digits, 8) if digits else 0


def has_valid_checksum(header: bytes, chksum: bytes) -> bool:
    """Whether the chksum field `chksum` of a 512-byte `header` holds its checksum."""
    return octal_value(chksum) == tar_checksum(header)


def tar_checksum(header: bytes) -> int:
    """Standard tar checksum: byte sum with the chksum field read as spaces."""
    return sum(header[: CHKSUM_FIELD.start]) + 8 * 0x20 + sum(header[CHKSUM_FIELD.stop :])


def is_tar_magic(magic: bytes) -> bool:
    return magic in (GNU_MAGIC, USTAR_MAGIC)


def encode_tar_header(name: str, size: int, dialect: TarDialect, *, mode: int = 0, typeflag: bytes = b"0") -> bytes:
    """The header of one member (uid/gid 0, mtime 0, no user or group names), as `dialect` writes it."""
    go = dialect is TarDialect.GO_USTAR

    def number(value: int, width: int) -> bytes:
        return octal(value, width) if go else bytes(width)

    fields = {
        "name": name.encode().ljust(100, b"\0"), "mode": number(mode, 8), "uid": number(0, 8), "gid": number(0, 8),
        "size": size, "mtime": 0, "chksum": b" " * 8, "typeflag": typeflag, "linkname": bytes(100),
        "magic": USTAR_MAGIC if go else GNU_MAGIC, "version": USTAR_VERSION if go else GNU_VERSION,
        "uname": bytes(32), "gname": bytes(32), "devmajor": number(0, 8), "devminor": number(0, 8),
        "prefix": bytes(155), "pad": bytes(12),
    }
    checksum = tar_checksum(TarHeader.build(fields))
    fields["chksum"] = b"%06o\0 " % checksum if go else octal(checksum, 8)
    header: bytes = TarHeader.build(fields)
    return header
