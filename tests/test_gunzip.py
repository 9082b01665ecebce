"""The threaded gzip reader reads what gzip.GzipFile reads and refuses what it refuses."""

from __future__ import annotations

import gzip
import io
import os
import random
import zlib

import pytest

from nydus_py.sources import gunzip
from nydus_py.sources.gunzip import threaded_gunzip


def _both(data: bytes) -> tuple[bytes | type[BaseException], bytes | type[BaseException]]:
    def read(reader: io.BufferedIOBase) -> bytes | type[BaseException]:
        try:
            with reader:
                out = []
                while block := reader.read(7919):  # odd sizes: reads cross the reader's blocks
                    out.append(block)
                return b"".join(out)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            return type(exc)

    return read(gzip.GzipFile(fileobj=io.BytesIO(data))), read(threaded_gunzip(io.BufferedReader(io.BytesIO(data))))


def _member(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture()
def payload() -> bytes:
    rng = random.Random(7)
    return b"".join(rng.choice([b"nydus ", b"rafs ", os.urandom(64)]) for _ in range(60000))  # ~1.5 MB


@pytest.mark.parametrize("case", ["one", "members", "zero-padded", "empty-member"])
def test_reads_what_gzipfile_reads(payload: bytes, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gunzip, "BLOCK", 1 << 16)  # several blocks, and a bounded queue that fills
    stream = {"one": _member(payload),
              "members": _member(payload[:1000]) + _member(payload[1000:]),
              "zero-padded": _member(payload) + bytes(5000),
              "empty-member": _member(b"") + _member(payload)}[case]
    ours, reference = _both(stream)
    assert ours == reference == payload


@pytest.mark.parametrize("case", ["truncated", "bad crc", "garbage after", "corrupt deflate"])
def test_refuses_what_gzipfile_refuses(payload: bytes, case: str) -> None:
    good = _member(payload)
    stream = {"truncated": good[:-20],
              "bad crc": good[:-8] + bytes([good[-8] ^ 1]) + good[-7:],
              "garbage after": good + b"not gzip",
              "corrupt deflate": good[:10] + b"\xff" * 50 + good[60:]}[case]
    ours, reference = _both(stream)
    assert isinstance(reference, type) and isinstance(ours, type)
    assert issubclass(ours, (EOFError, zlib.error, gzip.BadGzipFile))


def test_an_error_is_raised_at_every_later_read(payload: bytes) -> None:
    reader = threaded_gunzip(io.BufferedReader(io.BytesIO(_member(payload)[:-20])))
    with pytest.raises(EOFError):
        while reader.read(1 << 20):
            pass
    with pytest.raises(EOFError):
        reader.read(1)
    reader.close()


def test_closing_early_stops_the_reader_thread(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gunzip, "BLOCK", 1 << 12)
    raw = io.BufferedReader(io.BytesIO(_member(payload)))
    reader = threaded_gunzip(raw)
    assert reader.read(10) == payload[:10]
    inner = reader.raw
    reader.close()
    assert not inner._thread.is_alive()  # type: ignore[attr-defined]
    assert raw.closed


def test_members_split_anywhere_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member may end at any byte of a read block, even with one byte of the next member's magic after it,
    or between zero bytes of padding."""
    monkeypatch.setattr(gunzip, "BLOCK", 512)
    rng = random.Random(11)
    for _ in range(60):
        members = [_member(os.urandom(rng.randrange(0, 3000))) for _ in range(rng.randrange(1, 4))]
        first = members[0]
        # the first member ends 1 or 2 bytes before a block boundary in a third of the cases
        if rng.random() < 0.3 and len(first) < 512:
            members[0] = _member(b"")  # 20 bytes
            members.insert(1, b"\0" * (512 - 20 - rng.randrange(1, 3)))
        stream = b"".join(members) + b"\0" * rng.randrange(0, 600)
        ours, reference = _both(stream)
        assert ours == reference


def test_a_bad_trailer_is_met_after_the_data(payload: bytes) -> None:
    """zlib checks the CRC with the member's last bytes in hand: they are still read before the error, which
    comes where GzipFile raises it (so a tar parser blames the stream, not its last entry)."""
    good = _member(payload)
    bad = good[:-8] + bytes([good[-8] ^ 1]) + good[-7:]
    reader = threaded_gunzip(io.BufferedReader(io.BytesIO(bad)))
    data = reader.read(len(payload))
    assert data == payload
    with pytest.raises(zlib.error):
        reader.read(1)
    reader.close()


def test_pipes_are_not_read_on_a_thread() -> None:
    """A pipe (stdin) can stall: a thread blocked reading it would abort interpreter exit."""
    from nydus_py.sources.tarball import decompressed

    read_end, write_end = os.pipe()
    os.write(write_end, _member(b"x"))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        stream = decompressed(pipe)
        assert isinstance(stream, gzip.GzipFile)
        assert stream.read() == b"x"
