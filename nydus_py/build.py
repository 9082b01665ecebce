"""`nydus-py build`: a source tree -> one data blob (with its inline bootstrap) + the plain bootstrap.

OUTDIR layout (../shared/DESIGN.md): `blobs/sha256/<blob id>` per blob and `bootstrap`. Everything is
written under a hidden temporary directory inside OUTDIR and renamed into place when complete; a failed
build leaves OUTDIR as it was (or removes it, when the build created it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nydus_py.blob.writer import BlobWriter
from nydus_py.bootstrap.layout import plan_layout
from nydus_py.bootstrap.writer import write_bootstrap
from nydus_py.chunker import ChunkPipeline, ChunkStats
from nydus_py.config import BuildConfig
from nydus_py.errors import UsageError
from nydus_py.fsutil import atomic_output
from nydus_py.image import BlobInfo
from nydus_py.model import Tree
from nydus_py.sources.directory import DirectorySource


@dataclass(frozen=True, slots=True)
class BlobOutput:
    """A blob as written to OUTDIR."""

    info: BlobInfo
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {"id": self.info.blob_id, "path": str(self.path), "size": self.info.compressed_size,
                "uncompressed_size": self.info.uncompressed_size, "chunk_count": self.info.chunk_count}


@dataclass(slots=True)
class BuildResult:
    bootstrap: Path
    blobs: list[BlobOutput]  # exactly the bootstrap's device table, in order
    layers: list[BlobOutput]  # every layer blob written, referenced or not
    entries: int
    stats: ChunkStats
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "bootstrap": str(self.bootstrap),
            "blobs": [b.to_json() for b in self.blobs],
            "layers": [b.to_json() for b in self.layers],
            "counts": {"entries": self.entries, "files": s.files, "chunks": s.chunks, "stored_chunks": s.stored,
                       "hole_chunks": s.hole_chunks},
            "dedup": {"hits": s.dedup_hits, "bytes_in": s.bytes_in, "bytes_stored": s.bytes_stored},
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


@dataclass(slots=True)
class _Layer:
    tree: Tree
    writer: BlobWriter
    info: BlobInfo
    stats: ChunkStats


def _build_layer(source: Path, workdir: Path, config: BuildConfig) -> _Layer:
    """Scan one source and write its blob: data, chunk info, digests, inline bootstrap, TOC."""
    reader = DirectorySource(source)
    writer = BlobWriter(workdir, blob_index=0, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                        digester=config.digester.algo)
    pipeline = ChunkPipeline(writer, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                             digester=config.digester.algo, workers=config.workers)
    try:
        for file in reader.files():
            pipeline.add(file)
        pipeline.finish()
    finally:
        pipeline.close()
    data_info = writer.finish_data()
    inline = _bootstrap_bytes(reader.tree, [data_info] if data_info.chunk_count else [], config)
    info = writer.finish(inline)
    return _Layer(tree=reader.tree, writer=writer, info=info, stats=pipeline.stats)


def _bootstrap_bytes(tree: Tree, blobs: list[BlobInfo], config: BuildConfig) -> bytes:
    plan = plan_layout(tree, blobs, chunk_size=config.chunk_size, compressor=config.compressor.algo,
                       digester=config.digester.algo)
    return write_bootstrap(plan)


@contextlib.contextmanager
def _staging(outdir: Path):  # type: ignore[no-untyped-def]
    """A hidden work directory inside OUTDIR, removed afterwards; OUTDIR itself removed on failure if new."""
    created = False
    try:
        if outdir.exists() and not outdir.is_dir():
            raise UsageError(f"{outdir}: output exists and is not a directory")
        if not outdir.exists():
            outdir.mkdir(parents=True)
            created = True
        work = Path(tempfile.mkdtemp(prefix=".nydus-py-", dir=outdir))
    except OSError as exc:
        raise UsageError(f"{outdir}: cannot write output directory: {exc.strerror}") from exc
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)


def build_image(source: str | os.PathLike[str], outdir: str | os.PathLike[str], config: BuildConfig,
                *, extra_bootstrap: str | os.PathLike[str] | None = None) -> BuildResult:
    """Build `source` (a directory) into OUTDIR: its blob and the plain bootstrap."""
    out = Path(outdir).absolute()
    started = time.perf_counter()
    with _staging(out) as work:
        layer = _build_layer(Path(source), work, config)
        data_done = time.perf_counter()
        referenced = [layer.info] if layer.info.chunk_count else []
        plain = _bootstrap_bytes(layer.tree, referenced, config)
        blob_dir = out / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(work / "bootstrap") as f:
            f.write(plain)
        if extra_bootstrap is not None:
            with atomic_output(Path(extra_bootstrap)) as f:
                f.write(plain)
        blob_path = blob_dir / layer.info.blob_id
        os.chmod(layer.writer.path, 0o644)
        os.replace(layer.writer.path, blob_path)
        os.replace(work / "bootstrap", out / "bootstrap")
    finished = time.perf_counter()
    output = BlobOutput(info=layer.info, path=blob_path)
    return BuildResult(
        bootstrap=out / "bootstrap",
        blobs=[output] if referenced else [],
        layers=[output],
        entries=sum(1 for _ in layer.tree.walk()),
        stats=layer.stats,
        timings={"data": data_done - started, "bootstrap": finished - data_done, "total": finished - started},
    )
