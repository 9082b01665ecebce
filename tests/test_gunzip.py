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
