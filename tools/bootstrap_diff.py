#!/usr/bin/env python3
"""Compare two RAFS v6 bootstraps field by field: the superblock, the extended superblock, the device and blob
tables, every inode (found by path, so nids may differ) with its xattrs in on-disk order and its chunks, and
the chunk table (entries matched by digest). Prints one line per difference, `FIELD: A != B`, and exits 1
when there is any (0 when none, 2 when a file cannot be read).

    python3 tools/bootstrap_diff.py A B [--ignore FIELD ...]

FIELD names the record and the on-disk field (`superblock.inos`, `blob[0].compressed_size`,
`inode.i_ino /etc/passwd`, `chunk.flags <digest>`); `--ignore superblock.inos` or a record prefix
(`--ignore inode.i_ino`) leaves those out. Layout positions that follow from a different but valid layout
(nids, block addresses, table offsets) are not compared; their consequences (sizes, counts) are.
"""

from __future__ import annotations

import argparse
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from nydus_py.bootstrap.reader import BootstrapParser
from nydus_py.errors import NydusError
from nydus_py.format import erofs, parse, rafs

# fields whose value is a position in the bootstrap, not a property of the image
_POSITIONS = {"meta_blkaddr", "root_nid", "devt_slotoff", "s_blob_table_offset", "s_chunk_table_offset",
              "s_prefetch_table_offset", "i_u", "nid", "s_blob_table_size", "s_chunk_table_size",
              "s_prefetch_table_size", "checksum", "blocks"}


def _fields(prefix: str, record: object, suffix: str = "") -> Iterator[tuple[str, object]]:
    items = record._asdict() if hasattr(record, "_asdict") else dict(record)  # FastStruct record or Container
    for name, value in items.items():
        if name.startswith("_") or name in _POSITIONS:
            continue
        yield f"{prefix}.{name}{suffix}", value


def describe(data: bytes) -> dict[str, object]:
    """{field name: value} for everything the comparison looks at."""
    out: dict[str, object] = {}
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    ext = parse(rafs.SuperBlockExt, data, what="extended superblock", offset=rafs.EXT_SUPER_OFFSET)
    out.update(_fields("superblock", sb))
    out.update(_fields("ext", ext))
    for i in range(sb.extra_devices):
        at = erofs.device_table_offset(sb.devt_slotoff) + i * erofs.EROFS_DEVT_SLOT_SIZE
        out.update(_fields(f"device[{i}]", parse(erofs.DeviceSlot, data, what="device slot", offset=at)))
    for i in range(ext.s_blob_table_size // rafs.Blob.sizeof()):
        at = ext.s_blob_table_offset + i * rafs.Blob.sizeof()
        out.update(_fields(f"blob[{i}]", parse(rafs.Blob, data, what="blob table entry", offset=at)))
    for at in range(ext.s_chunk_table_offset, ext.s_chunk_table_offset + ext.s_chunk_table_size,
                    rafs.ChunkInfo.sizeof()):
        chunk = parse(rafs.ChunkInfo, data, what="chunk table entry", offset=at)
        out.update(_fields("chunk", chunk, f" {bytes(chunk.block_id).hex()}"))
    out["prefetch.count"] = ext.s_prefetch_table_size // rafs.PREFETCH_ENTRY_SIZE
    parser = BootstrapParser(data, sb.meta_blkaddr, ext.s_chunk_size, None)
    for path, raw in _walk(parser, sb.root_nid):
        shown = path.decode(errors="backslashreplace")
        out.update(_fields("inode", raw.record, f" {shown}"))
        xattrs = parser.xattrs(raw)
        if xattrs:
            out[f"inode.xattr_order {shown}"] = list(xattrs)
            out[f"inode.xattrs {shown}"] = sorted(xattrs.items())
        if raw.datalayout == erofs.DataLayout.CHUNK_BASED:
            out[f"inode.chunk_count {shown}"] = len(parser.chunk_addrs(raw))
        elif stat.S_ISLNK(raw.record.i_mode):  # type: ignore[attr-defined]
            out[f"inode.symlink {shown}"] = parser.flat_data(raw)
        out[f"inode.datalayout {shown}"] = raw.datalayout
    return out


def _walk(parser: BootstrapParser, root_nid: int) -> Iterator[tuple[bytes, object]]:
    """(path, raw inode) for every name, directories' names in on-disk order."""
    stack = [(b"/", root_nid)]
    seen: set[int] = set()
    while stack:
        path, nid = stack.pop()
        raw = parser.raw_inode(nid)
        yield path, raw
        if not stat.S_ISDIR(raw.record.i_mode) or nid in seen:  # type: ignore[attr-defined]
            continue
        seen.add(nid)
        for name, child, _ in parser.dirents(raw):
            if name not in (b".", b".."):
                stack.append((path.rstrip(b"/") + b"/" + name, child))


def differences(a: bytes, b: bytes, ignore: tuple[str, ...] = ()) -> list[str]:
    """`FIELD: A != B` for every field that differs (or exists on one side only)."""
    left, right = describe(a), describe(b)
    out = []
    for key in sorted(left.keys() | right.keys()):
        if any(key == i or key.startswith(i + " ") or key.startswith(i + ".") for i in ignore):
            continue
        if left.get(key, "<missing>") != right.get(key, "<missing>"):
            out.append(f"{key}: {_show(left.get(key, '<missing>'))} != {_show(right.get(key, '<missing>'))}")
    return out


def field_of(line: str) -> str:
    """The field name of a difference line, without the record it is about: `inode.i_ino`, `blob.features`."""
    return re.sub(r"\[\d+\]", "", line.split(":", 1)[0].split(" ", 1)[0])


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex() if any(c < 32 or c > 126 for c in value) else repr(value.decode())
    return repr(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--ignore", action="append", default=[], help="a field or record prefix to leave out")
    args = parser.parse_args(argv)
    try:
        lines = differences(args.a.read_bytes(), args.b.read_bytes(), tuple(args.ignore))
    except (OSError, NydusError) as exc:
        print(f"bootstrap_diff: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
