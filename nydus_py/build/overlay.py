"""Layer trees -> the merged view a container sees under overlayfs / containerd.

Each layer tree records removals as OCI markers: `.wh.NAME` hides NAME of the lower layers and
`.wh..wh..opq` hides everything the lower layers had in its directory. Applying an upper layer, per
directory: markers are applied to the lower entries first (so a whiteout and a new entry of the same name
in one layer mean "replace"), then every upper entry replaces the lower one of the same name; two
directories merge, the upper one's attributes winning (unless the upper one only has the default
attributes of a parent its tar did not list: extraction would leave the lower directory as it was).
Markers never reach the result, including those of the lowest layer (nydus-image leaves those visible;
we do not).

Layer trees are never modified: merged directories are new inodes; everything else is shared, so
hardlinks (one Inode object) stay linked.
References: docs/format.md §14.1; OCI image-spec layer.md (whiteouts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from nydus_py.model import OPAQUE_MARKER, WHITEOUT_PREFIX, Entry, Inode, Tree, has_default_attributes, is_marker


def _dir_like(upper: Inode) -> Inode:
    """A new directory inode with `upper`'s attributes and no entries yet."""
    return replace(upper, entries=[], xattrs=dict(upper.xattrs))


def _fill(result: Inode, lower: Inode | None, upper: Inode, pending: list[tuple[Inode | None, Inode, Inode]],
          is_marker: Callable[[bytes], bool]) -> None:
    """Set `result`'s entries: `upper`'s over `lower`'s; merged subdirectories are queued in `pending`."""
    names = {e.name for e in upper.entries}
    entries: dict[bytes, Entry] = {}
    if lower is not None and not (OPAQUE_MARKER in names and is_marker(OPAQUE_MARKER)):
        entries = {e.name: e for e in lower.entries}
    for name in names:
        if is_marker(name) and name != OPAQUE_MARKER:
            entries.pop(name[len(WHITEOUT_PREFIX) :], None)
    for entry in upper.entries:
        if is_marker(entry.name):
            continue
        if entry.inode.is_dir:
            below = entries.get(entry.name)
            lower_dir = below.inode if below is not None and below.inode.is_dir else None
            child = _dir_like(_attributes_of(lower_dir, entry.inode))
            pending.append((lower_dir, entry.inode, child))
            entries[entry.name] = Entry(name=entry.name, inode=child)
        else:
            entries[entry.name] = entry
    result.entries = sorted(entries.values(), key=lambda e: e.name)


def _no_marker(name: bytes) -> bool:
    return False


def _attributes_of(lower: Inode | None, upper: Inode) -> Inode:
    """Whose attributes a merged directory takes: the upper one's, unless it only has the defaults of a
    directory the layer has no entry for (a tar's missing parent) and a lower directory exists."""
    return lower if lower is not None and has_default_attributes(upper) else upper


def apply_layer(lower: Tree | None, upper: Tree, *, whiteouts: bool = True) -> Tree:
    """The view of `upper` over `lower` (None: an empty lower, which just drops `upper`'s markers).
    Without `whiteouts` (`--whiteout-spec none`) a `.wh.*` entry is an ordinary file."""
    marker = is_marker if whiteouts else _no_marker
    root = _dir_like(_attributes_of(lower.root if lower else None, upper.root))
    pending: list[tuple[Inode | None, Inode, Inode]] = [(lower.root if lower else None, upper.root, root)]
    while pending:
        lower_dir, upper_dir, result = pending.pop()
        _fill(result, lower_dir, upper_dir, pending, marker)
    return Tree(root=root)


def merge_layers(layers: list[Tree], *, whiteouts: bool = True) -> Tree:
    """The overlay of `layers`, lowest first."""
    merged: Tree | None = None
    for layer in layers:
        merged = apply_layer(merged, layer, whiteouts=whiteouts)
    assert merged is not None, "merge_layers needs at least one layer"
    return merged
