"""nydus_py/sources/tarstream.py: our tar reader against what GNU tar and Python's tarfile write (every sparse
format, long names, pax records), the ends a stream may have, and malformed headers it must refuse."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from nydus_py.errors import FormatError
from nydus_py.sources.tarball import TarSource
from nydus_py.sources.tarstream import MAX_HEADER_RECORD, TarReader
from tests.conftest import need_tool


def members(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(name, typeflag, size) of every member, its data read."""
    reader = TarReader(io.BytesIO(data), "t.tar")
    out = []
    for member in reader.members():
        out.append((member.name, member.typeflag, member.size))
    return out


def files_of(data: bytes) -> dict[bytes, bytes]:
    """Every regular file of a layer tar, as the build reads it (holes expanded)."""
    source = TarSource(io.BytesIO(data), "t.tar")
    out = {}
    for content in source.files():
        out[content.path.split(b": ", 1)[1]] = b"".join(
            data if data is not None else bytes(length) for _, length, data in content.pieces(1 << 16))
    return out


def python_tar(entries: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _record(keyword: bytes, value: bytes) -> bytes:
    body = b" " + keyword + b"=" + value + b"\n"
    size = len(body) + 1
    while len(str(size)) + len(body) != size:
        size += 1
    return str(size).encode() + body


@pytest.mark.parametrize(("fmt", "sparse_version"), [("gnu", None), ("posix", "0.0"), ("posix", "0.1"),
                                                      ("posix", "1.0")])
def test_every_sparse_format_gnu_tar_writes(tmp_path: Path, fmt: str, sparse_version: str | None) -> None:
    tar = need_tool("tar")
    path = tmp_path / "src" / "sparse"
    path.parent.mkdir()
    with open(path, "wb") as f:
        for i in range(30):  # more extents than the old GNU header holds: extension blocks too
            f.seek(i * (200 << 10) + 100)
            f.write(os.urandom(5000))
        f.truncate(40 << 20)  # ends in a hole
    (tmp_path / "src" / "after").write_bytes(b"the member after the sparse one")
    version = [f"--sparse-version={sparse_version}"] if sparse_version else []
    subprocess.run([tar, f"--format={fmt}", "--sparse", *version, "-C", str(tmp_path / "src"), "-cf",
                    str(tmp_path / "t.tar"), "sparse", "after"], check=True)
    got = files_of((tmp_path / "t.tar").read_bytes())
    assert got[b"sparse"] == path.read_bytes()
    assert got[b"after"] == b"the member after the sparse one"


def test_a_stream_that_ends_right_after_its_last_member() -> None:
    """No end-of-archive blocks (umoci insert writes layers so): GNU tar, Go and tarfile accept it."""
    data = python_tar({"a": b"A" * 700, "b": b"B"})
    end = len(data) - len(data.rstrip(b"\0"))
    trimmed = data[: len(data) - end + (-(len(data) - end) % 512)]  # the last member's padding kept
    assert len(trimmed) % 512 == 0 and not trimmed.endswith(bytes(1024))
    assert files_of(trimmed) == {b"a": b"A" * 700, b"b": b"B"}


def test_a_stream_that_ends_inside_the_last_members_padding() -> None:
    """Go's archive/tar pads a member when the next header or the end comes: without them, no padding."""
    data = python_tar({"a": b"A" * 700, "b": b"B" * 10})
    unpadded = data[: 512 + 1024 + 512 + 10]
    assert files_of(unpadded) == {b"a": b"A" * 700, b"b": b"B" * 10}


@pytest.mark.parametrize(("cut", "words"), [(512 + 100, "truncated"), (1024 + 512 + 12, "a header ends after 12")])
def test_a_stream_cut_inside_a_header_or_data_is_an_error(cut: int, words: str) -> None:
    data = python_tar({"a": b"A" * 700, "b": b"B"}, tarfile.GNU_FORMAT)
    with pytest.raises(FormatError, match=words):
        files_of(data[:cut])


def test_gnu_long_names_and_pax_paths_of_any_bytes() -> None:
    long_name = "d/" * 80 + "f" * 200
    data = python_tar({long_name: b"gnu"}, tarfile.GNU_FORMAT)[:-1024]  # and no end-of-archive blocks
    assert members(data) == [(long_name.encode(), b"0", 3)]
    raw_name = b"caf\xe9/\xff"  # not UTF-8: a pax path with hdrcharset=BINARY keeps the bytes
    records = b"".join(_record(k, v) for k, v in [(b"hdrcharset", b"BINARY"), (b"path", raw_name)])
    assert members(_pax_member(records, b"x") + bytes(1024))[0][0] == raw_name


def _pax_member(records: bytes, typeflag: bytes, member: bytes | None = None) -> bytes:
    """A pax header with `records`, then a one-byte file (or `member`, a whole header and data)."""
    pax = tarfile.TarInfo("PaxHeaders/f")
    pax.type, pax.size = typeflag, len(records)
    out = pax.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)
    if member is None:
        info = tarfile.TarInfo("f")
        info.size = 1
        member = info.tobuf(tarfile.USTAR_FORMAT) + b"x" + bytes(511)
    return out + member


@pytest.mark.parametrize(("records", "words"), [
    (_record(b"uid", b"abc"), "not a number"),  # tarfile would read it as 0
    (b"99 path=short\n", "malformed pax record"),  # the length runs past the data
    (b"11 path=ab\nZ", "malformed pax record"),  # junk after a record
    (b"0 path=\n", "malformed pax record"),
    (_record(b"mtime", b"soon"), "not a number"),
])
def test_malformed_pax_records_are_refused(records: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        members(_pax_member(records, b"x") + bytes(1024))


def test_global_pax_records_apply_to_every_later_member() -> None:
    records = _record(b"SCHILY.xattr.user.all", b"yes")
    data = _pax_member(records, b"g") + bytes(1024)
    reader = TarReader(io.BytesIO(data), "t.tar")
    (member,) = reader.members()
    assert member.pax[b"SCHILY.xattr.user.all"] == b"yes"


def test_special_headers_must_be_followed_by_a_member() -> None:
    records = _record(b"path", b"x")
    pax = tarfile.TarInfo("PaxHeaders/f")
    pax.type, pax.size = b"x", len(records)
    with pytest.raises(FormatError, match="special headers"):
        members(pax.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512) + bytes(1024))


def test_a_gnu_long_name_over_the_cap_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, MAX_HEADER_RECORD + 1
    with pytest.raises(FormatError, match="GNU long name of"):
        members(info.tobuf(tarfile.GNU_FORMAT))  # no data follows: it is refused from the header


def test_a_header_with_a_bad_checksum_names_its_offset() -> None:
    data = bytearray(python_tar({"a": b"A", "b": b"B"}, tarfile.USTAR_FORMAT))
    data[1024 + 10] ^= 0xFF  # inside the second header's name
    with pytest.raises(FormatError, match="bad header checksum at byte 1024"):
        members(bytes(data))


# --- hostile headers (trust round 3, second pass): each bounded in time and memory --------------------------


def header(name: bytes = b"f", typeflag: bytes = b"0", size: bytes | int = 0, magic: bytes = b"ustar\x0000",
           tail: bytes | None = None) -> bytes:
    """One raw 512-byte header; `size` as a number (octal) or raw field bytes (e.g. base-256)."""
    size_field = size if isinstance(size, bytes) else b"%011o\0" % size
    block = (name.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" * 2 + size_field + b"00000000000\0" + b" " * 8
             + typeflag + bytes(100) + magic + bytes(80) + (tail if tail is not None else bytes(167)))
    assert len(block) == 512
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def pax_header(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    data = b"".join(_record(k, v) for k, v in records)
    return header(b"pax", typeflag, len(data)) + padded(data)


NEGATIVE = b"\xff" * 11 + b"\xfb"  # -5 in GNU base-256


@pytest.mark.parametrize(("value", "words"), [(b"1e999999999", "is not a number"),
                                               (b"1E99999999999999999", "is not a number"),
                                               (b"99999999999999999999999", "is not a number")])
def test_a_pax_mtime_is_a_plain_decimal(value: bytes, words: str) -> None:
    """No exponent: `1e999999999` would ask Decimal for a number of a billion digits (and never return)."""
    with pytest.raises(FormatError, match=words):
        members(pax_header([(b"mtime", value)]) + header(b"f") + bytes(1024))


def test_pax_mtimes_keep_their_fraction_exactly() -> None:
    reader = TarReader(io.BytesIO(pax_header([(b"mtime", b"-1.25")]) + header(b"f") + bytes(1024)), "t")
    (member,) = list(reader.members())
    assert (member.mtime, member.mtime_nsec) == (-2, 750_000_000)


@pytest.mark.parametrize("data", [
    header(b"pax", b"x", NEGATIVE) + header(b"f"),  # a pax header of -5 bytes
    header(b"././@LongLink", b"L", NEGATIVE) + header(b"f"),
    header(b"f", b"0", b"\xff" * 10 + b"\xfe\x00"),  # a regular member of -512 bytes
])
def test_negative_sizes_are_refused(data: bytes) -> None:
    with pytest.raises(FormatError, match="not a size"):
        members(data + bytes(1024))


def test_special_headers_before_one_member_are_capped_together() -> None:
    chain = b"".join(header(b"././@LongLink", b"L", 1000) + padded(b"n" * 1000) for _ in range(1100))
    with pytest.raises(FormatError, match="special headers of more than 1 MiB"):
        members(chain + header(b"f") + bytes(1024))


def test_global_pax_records_keep_only_what_members_take() -> None:
    records = [(b"comment", b"x" * 100)] * 2000 + [(b"uid", b"7")]
    data = pax_header(records, b"g") + b"".join(header(b"f%d" % i) for i in range(3)) + bytes(1024)
    reader = TarReader(io.BytesIO(data), "t")
    got = list(reader.members())
    assert all(m.uid == 7 and b"comment" not in m.pax for m in got)


def test_a_gnu_header_has_no_prefix() -> None:
    """A GNU header keeps atime and ctime where ustar has `prefix`: GNU tar and Go ignore it there."""
    gnu = header(b"file", magic=b"ustar  \0", tail=b"14620213540\0" + bytes(155))
    assert members(gnu + bytes(1024)) == [(b"file", b"0", 0)]


def test_a_pax_1_0_sparse_map_is_read_in_linear_time() -> None:
    """65536 extents announced, then one newline a block: refused when the map outgrows what it announced."""
    pax = pax_header([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"f"),
                      (b"GNU.sparse.realsize", b"1000")])
    body = padded(b"65536\n") + b"\n".ljust(512, b"\0") * 8000
    started = time.monotonic()
    with pytest.raises(FormatError, match="longer than its extents can be|truncated"):
        members(pax + header(b"f", size=len(body)) + body + bytes(1024))
    assert time.monotonic() - started < 5


def test_an_old_gnu_sparse_extension_chain_is_bounded() -> None:
    """Empty extension blocks, each saying another follows: counted, and refused past what 65536 extents need."""
    tail = bytes(137) + b"\x01" + b"%011o\0" % 100 + bytes(17)  # no extents here, isextended, realsize 100
    extension = bytes(504) + b"\x01" + bytes(7)
    data = header(b"s", b"S", 0, magic=b"ustar  \0", tail=tail) + extension * 4000 + bytes(1024)
    with pytest.raises(FormatError, match="more than 65536 extents"):
        members(data)
