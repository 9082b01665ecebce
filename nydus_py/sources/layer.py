"""Which source reads a layer: a directory (plain or an overlayfs upper directory) or a layer tar (a file, a
FIFO or stdin; plain, gzip or zstd, told apart by content). The one place that picks a source class."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import BinaryIO

from nydus_py.errors import UsageError
from nydus_py.sources import WhiteoutSpec, XattrNamespace
from nydus_py.sources.chunklist import ChunkListSource
from nydus_py.sources.directory import DirectorySource
from nydus_py.sources.gzipref import ZranLayer
from nydus_py.util.fsutil import file_identity
from nydus_py.sources.tarball import TarSource

Source = DirectorySource | TarSource | ChunkListSource


class LayerKind(enum.Enum):
    AUTO = "auto"  # a directory if it is one, else a tar file ('-': stdin)
    DIRECTORY = "directory"
    TAR = "tar"  # opened as it is: a FIFO stays a FIFO (the drop-in builder's `--type tar-rafs`)


def open_layer(layer: str, *, whiteout_spec: WhiteoutSpec = WhiteoutSpec.AUTO,
               overlay_ns: XattrNamespace = XattrNamespace.TRUSTED, kind: LayerKind = LayerKind.AUTO) -> Source:
    """The source of one layer argument (UsageError naming it when it is none)."""
    is_dir = layer != "-" and Path(layer).is_dir()
    if kind is LayerKind.DIRECTORY and not is_dir:
        raise UsageError(f"{layer}: not a directory (use --type tar-rafs for a tar)")
    if is_dir and kind is not LayerKind.TAR:
        return DirectorySource(layer, whiteout_spec=whiteout_spec, overlay_ns=overlay_ns)
    if kind is LayerKind.AUTO and layer != "-" and not Path(layer).exists():
        raise UsageError(f"{layer}: no such layer (a directory, a tar file or '-')")
    stream, name = _open_tar(layer)
    return TarSource(stream, name, whiteout_spec=whiteout_spec, overlay_ns=overlay_ns)


def open_gzip_ref(layer: str) -> ZranLayer:
    """A gzip layer (a file, a FIFO or '-' for stdin) to reference in place (`--type targz-ref`)."""
    stream, name = _open_tar(layer)
    return ZranLayer(raw=stream, name=name, identity=file_identity(stream))


def _open_tar(path: str) -> tuple[BinaryIO, str]:
    """A layer tar opened for reading (or '-' for stdin), and a name for messages."""
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path  # noqa: SIM115 - the tar source owns it
    except OSError as exc:
        raise UsageError(f"{path}: cannot open the layer: {exc.strerror}") from exc


__all__ = ["LayerKind", "Source", "open_gzip_ref", "open_layer"]
