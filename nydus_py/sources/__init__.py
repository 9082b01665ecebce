"""Layer sources: each turns its input into a `Tree` and hands out file contents (`model.FileContent`) in
data order. `open_layer` picks the source for a layer argument; the options every source takes live here.

References: docs/design.md "Layers and whiteouts".
"""

from __future__ import annotations

import enum

# What one layer may hold, counted as it is read (memory grows with both; a layer is refused past them, in
# one line, rather than the machine running out): entries (nydus-py needs about 1.4 KiB per entry while it
# builds), and xattr bytes (names and values; they are copied into the bootstrap for every inode).
MAX_LAYER_ENTRIES = 1_500_000
MAX_LAYER_XATTR_BYTES = 64 << 20


class WhiteoutSpec(enum.Enum):
    """How a layer source marks removals: `auto` is overlayfs for directories and OCI for tars."""

    AUTO = "auto"
    OCI = "oci"
    OVERLAYFS = "overlayfs"
    NONE = "none"


class XattrNamespace(enum.Enum):
    """The xattr namespace an overlayfs mount used for its bookkeeping (`userxattr` mounts: user)."""

    TRUSTED = "trusted"
    USER = "user"


__all__ = ["MAX_LAYER_ENTRIES", "MAX_LAYER_XATTR_BYTES", "WhiteoutSpec", "XattrNamespace"]
