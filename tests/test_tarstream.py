"""nydus_py/sources/tarstream.py: our tar reader against what GNU tar and Python's tarfile write (every sparse
format, long names, pax records), the ends a stream may have, and malformed headers it must refuse."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
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
