"""nydus-py: build, read, check and mount Nydus (RAFS v6) container images.

The public names are imported on first use, so that `nydus-py` starts fast whatever the command.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BlobReader": "nydus_py.blob.reader",
    "expand_blob": "nydus_py.blob.device",
    "read_bootstrap": "nydus_py.bootstrap.reader",
    "open_image": "nydus_py.read.locate",
    "FormatError": "nydus_py.errors",
    "InternalError": "nydus_py.errors",
    "NydusError": "nydus_py.errors",
    "UnsupportedError": "nydus_py.errors",
    "UsageError": "nydus_py.errors",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nydus_py' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
