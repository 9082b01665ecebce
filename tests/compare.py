"""Entry-by-entry comparison of two directory trees, as the build tests' oracle uses it.

Compared: type, full mode, uid, gid, size (files, symlinks), content (sha256), symlink target, rdev,
every xattr, mtime (seconds and nanoseconds) and hardlink groups. Directory sizes and link counts are
filesystem-specific and are not compared.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nydus_py.util.fsutil import file_sha256


def _xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)}


def snapshot(root: Path, *, mtime: bool = True, mtime_ns: bool = True, root_mtime: bool = True, xattrs: bool = True,
             setid: bool = True, hardlinks: bool = True) -> tuple[dict[bytes, tuple], list]:
    """{relative path: attributes} and the hardlink groups of a tree (`mtime_ns=False`: whole seconds;
    `root_mtime=False`: not the root's, which containerd's layer applier never sets)."""
    entries: dict[bytes, tuple] = {}
    by_inode: dict[tuple[int, int], list[bytes]] = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in [b"", *dirnames, *filenames] if dirpath == root_b else [*dirnames, *filenames]:
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            attrs = [st.st_mode if setid else st.st_mode & ~0o6000, st.st_uid, st.st_gid]
            if xattrs:
                attrs.append(sorted(_xattrs(Path(os.fsdecode(full))).items()))
            if mtime and (root_mtime or rel != b"."):
                attrs += [st.st_mtime_ns if mtime_ns else int(st.st_mtime)]
            if kind == stat.S_IFREG:
                attrs += [st.st_size, file_sha256(Path(os.fsdecode(full)))]
                if hardlinks:
                    by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif kind == stat.S_IFLNK:
                attrs += [st.st_size, os.readlink(full)]
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                attrs += [os.major(st.st_rdev), os.minor(st.st_rdev)]
            entries[rel] = tuple(attrs)
    groups = sorted(sorted(g) for g in by_inode.values() if len(g) > 1)
    return entries, groups


def differences(source: Path, built: Path, **kwargs: bool) -> list[str]:
    """Human-readable differences between two trees (empty when they are equal)."""
    src, src_links = snapshot(source, **kwargs)
    dst, dst_links = snapshot(built, **kwargs)
    out = [f"only in source: {p!r}" for p in sorted(src.keys() - dst.keys())]
    out += [f"only in image: {p!r}" for p in sorted(dst.keys() - src.keys())]
    for path in sorted(src.keys() & dst.keys()):
        if src[path] != dst[path]:
            out.append(f"{path!r}: source {src[path]!r:.300} != image {dst[path]!r:.300}")
    if src_links != dst_links:
        out.append(f"hardlink groups differ: {src_links} != {dst_links}")
    return out
