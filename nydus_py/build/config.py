"""Build options as one frozen object, made by the CLI (or a library caller) and read by every stage."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nydus_py.errors import UsageError
from nydus_py.util.fsutil import Readable
from nydus_py.sources import WhiteoutSpec, XattrNamespace
from nydus_py.format.rafs import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, CompressAlgo, DigestAlgo

if TYPE_CHECKING:
    from nydus_py.build.chunkdict import ChunkDict


class Compressor(enum.Enum):
    """Chunk compressors a build can write (the names nydus-image uses)."""

    ZSTD = "zstd"
    LZ4_BLOCK = "lz4_block"
    NONE = "none"

    @property
    def algo(self) -> CompressAlgo:
        return {Compressor.ZSTD: CompressAlgo.ZSTD, Compressor.LZ4_BLOCK: CompressAlgo.LZ4_BLOCK,
                Compressor.NONE: CompressAlgo.NONE}[self]


class Digester(enum.Enum):
    BLAKE3 = "blake3"
    SHA256 = "sha256"

    @property
    def algo(self) -> DigestAlgo:
        return DigestAlgo.BLAKE3 if self is Digester.BLAKE3 else DigestAlgo.SHA256



@dataclass(frozen=True, slots=True)
class BuildConfig:
    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    chunk_size: int = DEFAULT_CHUNK_SIZE
    jobs: int = 0  # 0: all cores
    whiteout_spec: WhiteoutSpec = WhiteoutSpec.AUTO
    overlay_xattr_ns: XattrNamespace = XattrNamespace.TRUSTED
    prefetch_patterns: tuple[bytes, ...] = (b"/",)  # paths the merged bootstrap prefetches; "/" = all (BuildKit)
    cross_layer_dedup: bool = False
    chunk_dict: ChunkDict | None = field(default=None, compare=False)  # chunks to reference, not store
    progress: Callable[[int], None] | None = field(default=None, compare=False)  # called with each file's bytes

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        if self.chunk_dict is not None:
            self.chunk_dict.check_fits(self.chunk_size, self.digester.algo)
        if self.jobs < 0:
            raise UsageError(f"--jobs {self.jobs}: must be at least 1 (or 0 for all cores)")

    @property
    def workers(self) -> int:
        return self.jobs or os.cpu_count() or 1


def check_chunk_size(size: int) -> int:
    if not (MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE) or size & (size - 1):
        raise UsageError(f"chunk size {size:#x}: must be a power of two from 4 KiB to 16 MiB")
    return size


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """`1MiB`, `512KiB`, `1GiB`, `0x100000` or `1048576` -> bytes (binary units)."""
    raw = text.strip().lower()
    if raw.startswith("0x"):
        try:
            return int(raw, 16)
        except ValueError:
            raise UsageError(f"{text!r} is not a size") from None
    digits = raw.rstrip("kmgib")
    unit = raw[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise UsageError(f"{text!r} is not a size (use e.g. 1MiB, 512KiB or 0x100000)")
    return int(digits) * _UNITS[unit]


# Bounds on a prefetch list (a file or stdin, from strangers as often as not): a pattern is a path (PATH_MAX);
# the list has at most MAX_PREFETCH_PATTERNS of them, in at most MAX_PREFETCH_BYTES.
MAX_PREFETCH_LINE = 4096
MAX_PREFETCH_PATTERNS = 1 << 20
MAX_PREFETCH_BYTES = 64 << 20
_READ_BLOCK = 64 << 10


def read_prefetch_patterns(stream: Readable, what: str) -> tuple[bytes, ...]:
    """Prefetch patterns, one absolute path a line (blank lines ignored), as nydus-image reads them, from
    `stream`, read in blocks and refused (UsageError naming `what`) as soon as a bound is passed."""
    lines: list[bytes] = []
    partial = b""
    total = 0
    while block := stream.read(_READ_BLOCK):
        total += len(block)
        if total > MAX_PREFETCH_BYTES:
            raise UsageError(f"{what}: prefetch patterns over {MAX_PREFETCH_BYTES >> 20} MiB")
        *done, partial = (partial + block).split(b"\n")
        lines += done
        if len(partial) > MAX_PREFETCH_LINE or any(len(line) > MAX_PREFETCH_LINE for line in done):
            raise UsageError(f"{what}: a prefetch pattern longer than {MAX_PREFETCH_LINE} bytes")
        if len(lines) > MAX_PREFETCH_PATTERNS:
            raise UsageError(f"{what}: more than {MAX_PREFETCH_PATTERNS} prefetch patterns")
    return parse_prefetch_patterns(b"\n".join([*lines, partial]), what)


def parse_prefetch_patterns(text: bytes, what: str = "prefetch patterns") -> tuple[bytes, ...]:
    """Prefetch patterns, one absolute path a line (blank lines ignored), as nydus-image reads them: lines end at
    `\n` only (Rust's `lines()`, a `\r` before it dropped), as `read_prefetch_patterns` counts them."""
    paths = tuple(line.strip() for line in text.split(b"\n") if line.strip())
    bad = [p for p in paths if not p.startswith(b"/")]
    if bad:
        raise UsageError(f"{what}: prefetch pattern {bad[0].decode(errors='replace')!r}: must be an absolute path")
    return paths
