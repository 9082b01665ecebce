"""Layer sources: each turns its input into a `Tree` and hands out file contents (`model.FileContent`) in
data order. `open_layer` picks the source for a layer argument; the options every source takes live here.

References: docs/design.md "Layers and whiteouts".
"""

from __future__ import annotations

import enum


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


__all__ = ["WhiteoutSpec", "XattrNamespace"]
