"""Human and machine descriptions of an image (`nydus-py inspect`): returns text and dicts, prints nothing."""

from __future__ import annotations

import enum
import os
import stat
import time
from typing import Any

from nydus_py.image import BlobInfo, Bootstrap
from nydus_py.model import FileKind, Inode


def flag_names(flags: enum.IntFlag) -> list[str]:
    return [member.name for member in type(flags) if member in flags and member.name]


def summary(bootstrap: Bootstrap, dictionary: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The superblock facts, tables and counts as plain JSON-ready values; `dictionary`: the ids of blobs the
    image's package lists as a chunk dictionary's."""
    inodes = {id(inode) for _, inode in bootstrap.tree.walk()}
    entries = sum(1 for _ in bootstrap.tree.walk())
    return {
        "bootstrap_size": bootstrap.size,
        "rafs": bootstrap.rafs,
        "flags": int(bootstrap.flags),
        "flag_names": flag_names(bootstrap.flags),
        "chunk_size": bootstrap.chunk_size,
        "inodes": bootstrap.inode_count,
        "entries": entries,
        "unique_inodes": len(inodes),
        "meta_blkaddr": bootstrap.meta_blkaddr,
        "root_nid": bootstrap.root_nid,
        "blocks": bootstrap.blocks,
        "chunk_table_entries": len(bootstrap.chunk_table),
        "prefetch_nids": bootstrap.prefetch_nids,
        "devices": [{"tag": d.tag, "blocks": d.blocks, "mapped_blkaddr": d.mapped_blkaddr} for d in bootstrap.devices],
        "blobs": [{**blob_summary(b), "chunk_dict": b.file_id in dictionary} for b in bootstrap.blobs],
    }


def blob_summary(info: BlobInfo) -> dict[str, Any]:
    return {
        "id": info.blob_id,
        "index": info.blob_index,
        "chunk_count": info.chunk_count,
        "chunk_size": info.chunk_size,
        "compressor": info.compressor.name.lower(),
        "digester": info.digester.name.lower(),
        "features": int(info.features),
        "feature_names": flag_names(info.features),
        "compressed_size": info.compressed_size,
        "uncompressed_size": info.uncompressed_size,
        "ci_compressor": info.ci_compressor.name.lower(),
        "ci_offset": info.ci_offset,
        "ci_compressed_size": info.ci_compressed_size,
        "ci_uncompressed_size": info.ci_uncompressed_size,
        "toc_size": info.toc_size,
        "toc_digest": info.toc_digest.hex(),
        # zran: the chunks are in the original gzip layer (`id`); the meta blob holds the chunk info
        "meta_id": info.meta_id if info.is_separate else None,
        "meta_size": info.meta_size if info.is_separate else None,
    }


def summary_text(bootstrap: Bootstrap, dictionary: frozenset[str] = frozenset()) -> list[str]:
    s = summary(bootstrap, dictionary)
    lines = [
        f"bootstrap:   {s['bootstrap_size']} bytes, {'RAFS v6' if s['rafs'] else 'plain EROFS'}",
        f"flags:       {s['flags']:#x} ({', '.join(s['flag_names']) or 'none'})",
        f"chunk size:  {s['chunk_size']:#x}",
        f"inodes:      {s['inodes']} (s_inos), {s['entries']} entries, {s['unique_inodes']} distinct inodes",
        f"meta block:  {s['meta_blkaddr']}, root nid {s['root_nid']}, {s['blocks']} device blocks",
        f"chunk table: {s['chunk_table_entries']} entries",
        f"prefetch:    {len(s['prefetch_nids'])} nids",
        f"blobs:       {len(s['blobs'])}",
    ]
    for blob, device in zip(s["blobs"], s["devices"] + [None] * len(s["blobs"]), strict=False):
        lines.append(f"  [{blob['index']}] {blob['id']}{' (from a chunk dictionary)' if blob['chunk_dict'] else ''}")
        lines.append(f"      {blob['chunk_count']} chunks, {blob['compressor']}/{blob['digester']}, "
                     f"compressed {blob['compressed_size']}, uncompressed {blob['uncompressed_size']}")
        lines.append(f"      features {blob['features']:#x} ({', '.join(blob['feature_names'])})")
        if "SEPARATE" in blob["feature_names"]:
            meta = f"meta blob {blob['meta_id']} ({blob['meta_size']} bytes)" if blob["meta_id"] else "meta inline"
            lines.append(f"      zran: data in the original gzip layer, {meta}")
        if device is not None:
            lines.append(f"      device slot: {device['blocks']} blocks at mapped block {device['mapped_blkaddr']}")
    return lines


def _type_char(kind: FileKind) -> str:
    return {FileKind.REG: "-", FileKind.DIR: "d", FileKind.SYMLINK: "l", FileKind.CHR: "c", FileKind.BLK: "b",
            FileKind.FIFO: "p", FileKind.SOCK: "s"}[kind]


def listing(bootstrap: Bootstrap, path: bytes = b"/") -> list[str]:
    """`ls -l`-style lines for every entry at or below `path`."""
    prefix = path.rstrip(b"/")
    nlinks: dict[int, int] = {}
    for _, inode in bootstrap.tree.walk():
        nlinks[id(inode)] = nlinks.get(id(inode), 0) + 1
    lines = []
    for entry_path, inode in bootstrap.tree.walk():
        if prefix and entry_path != prefix and not entry_path.startswith(prefix + b"/"):
            continue
        lines.append(listing_line(entry_path, inode, nlinks.get(id(inode), 1)))
    return lines


def listing_line(path: bytes, inode: Inode, links: int) -> str:
    perms = stat.filemode(inode.mode)[1:]
    if inode.kind in (FileKind.CHR, FileKind.BLK):
        size = f"{os.major(inode.rdev)}, {os.minor(inode.rdev)}"
    else:
        size = str(inode.size)
    when = _timestamp(inode.mtime)
    name = path.decode("utf-8", "backslashreplace")
    if inode.kind is FileKind.SYMLINK:
        name += " -> " + inode.symlink_target.decode("utf-8", "backslashreplace")
    xattr_mark = "@" if inode.xattrs else " "
    return (f"{_type_char(inode.kind)}{perms}{xattr_mark} {links:>3} {inode.uid:>6} {inode.gid:>6} {size:>10} "
            f"{when}.{inode.mtime_nsec:09d} {name}")


def _timestamp(seconds: int) -> str:
    """UTC date and time of an mtime; one the C library cannot show (RAFS stores any 64-bit value) as seconds."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"@{seconds}"
