"""A gzip layer to reference in place (zran, nydus-image's `targz-ref`): its compressed bytes, read once by
the zran builder (build/zran.py), which keeps none of its data. References: docs/format.md §11.10."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nydus_py.util.fsutil import Readable, is_file

if TYPE_CHECKING:
    from nydus_py.sources.layer import Source


@dataclass(slots=True)
class ZranLayer:
    """A gzip layer whose compressed bytes `raw` gives. `expected` is its digest when known (a manifest's
    layer descriptor): the bytes read must hash to it."""

    raw: Readable
    name: str
    expected: str | None = None  # "sha256:<hex>"
    fallback: Callable[[], Source] | None = None  # the layer read again as an ordinary source
    note: Callable[[str], None] | None = None  # told why a fallback was taken
    identity: tuple[int, int] | None = None  # (device, inode) of the file read, when it is one

    def holds(self, path: Path) -> bool:
        """Whether writing `path` would write the layer being read (the same file, or a hardlink to it)."""
        return is_file(self.identity, path)


__all__ = ["ZranLayer"]
