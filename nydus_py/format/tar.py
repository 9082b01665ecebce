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

from construct import Adapter, Bytes, Struct, ValidationError

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
