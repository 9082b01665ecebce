"""`nydus-py check IMAGE --source SOURCE`: is a Nydus image the filesystem of the OCI image it was converted from?

What nydusify's `check` does with two mounts (the source's layers under overlayfs, the Nydus image under
nydusd), done without mounting anything: the source's layers are read as streams, each applied over the ones
below it, and the merged view is compared path by path with the Nydus image's tree, each regular file's content
hashed on both sides. Only the facts of each path are kept (`PathFacts`: never file contents), so memory grows
with the number of paths, which the layer limits of sources/ bound (MAX_LAYER_ENTRIES, MAX_LAYER_XATTR_BYTES).

The source side is read here, independently of the converter (sources/tarball.py, build/overlay.py): only the
tar reader and the decompression are shared, so a mistake of the converter is not repeated by its check. How
layers apply, as containerd's applier and overlayfs show them (OCI image-spec layer.md, "Whiteouts"):
- a `.wh.NAME` entry hides NAME of the lower layers and `.wh..wh..opq` every lower entry of its directory;
  both apply to the lower layers only, never to entries of their own layer, and are no paths of the result;
- an entry replaces the lower one of its name; a directory over a directory keeps the lower children and takes
  the upper attributes, unless the upper one is implicit: a parent its tar has no entry for;
- a hardlink is the file it links to: its facts and content are compared, link counts and inode sharing not.
Compared per path: type, permission bits (with setuid, setgid, sticky), uid, gid, mtime in seconds, a regular
file's size and the sha256 of its content (holes of sparse members read as zeros), a symlink's target, a
device's numbers, every xattr. A directory no layer has an entry for, and the root (containerd's applier
ignores an entry that resolves to the root; nydusify skips "/"), are compared for presence only. A symlink's
permission bits are 0777, as Linux makes every symlink.
References: OCI image-spec layer.md; containerd archive/tar.go (applyNaive, mkparent); dragonflyoss/nydus
contrib/nydusify/pkg/checker/rule/filesystem.go.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import posixpath
import stat
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from nydus_py.errors import FormatError, NydusError, UnsupportedError, UsageError
from nydus_py.format import oci
from nydus_py.format.tar import TypeFlag
from nydus_py.model import OPAQUE_MARKER, WHITEOUT_PREFIX, FileKind, Inode, Tree, is_marker, is_void_whiteout
from nydus_py.oci.copy import copy_image
from nydus_py.oci.documents import Json
from nydus_py.oci.images import RegistryOptions, SourceImage, VerifiedStream, open_source, verified_layers
from nydus_py.oci.nydus import is_nydus_image, open_layout_images, open_platform_images
from nydus_py.oci.platforms import platform_of, platform_text
from nydus_py.oci.ref import ImageRef, Transport, is_image_ref, parse_image_ref
from nydus_py.read.check import CheckReport, check_path
from nydus_py.read.locate import OpenedImage
from nydus_py.read.unpack import ChunkReader
from nydus_py.sources import MAX_LAYER_ENTRIES, MAX_LAYER_XATTR_BYTES
from nydus_py.sources.tarball import decompressed
from nydus_py.sources.tarstream import STREAM_ERRORS, TarMember, TarReader
from nydus_py.util.fsutil import remove_staging, staging_dir

_KIND_OF_TYPE = {
    TypeFlag.REG.value: FileKind.REG, TypeFlag.AREG.value: FileKind.REG, TypeFlag.CONT.value: FileKind.REG,
    TypeFlag.GNU_SPARSE.value: FileKind.REG, TypeFlag.DIR.value: FileKind.DIR, TypeFlag.SYM.value: FileKind.SYMLINK,
    TypeFlag.CHR.value: FileKind.CHR, TypeFlag.BLK.value: FileKind.BLK, TypeFlag.FIFO.value: FileKind.FIFO,
}
_SCHILY_XATTR = b"SCHILY.xattr."  # GNU tar, Go's archive/tar, containerd: the value's bytes as they are
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."  # bsdtar: the name URL-encoded, the value base64
_BLOCK = 1 << 20
_ZEROS = bytes(_BLOCK)


# --- the facts of one path, and what differs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What is compared of one path. A hardlink's facts are its target's."""

    kind: FileKind
    mode: int = 0o755  # permission bits with setuid, setgid and sticky (stat.S_IMODE)
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds since the epoch
    size: int = 0  # regular files; 0 for the rest
    target: bytes = b""  # symlinks
    device: tuple[int, int] = (0, 0)  # (major, minor) of character and block devices
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # sorted by name
    digest: bytes = b""  # sha256 of a regular file's content (its holes as zeros)
    implicit: bool = False  # a directory no entry describes: compared for presence only


_IMPLICIT_DIR = PathFacts(FileKind.DIR, implicit=True)


@dataclass(slots=True)
class FactsNode:
    """A path of the source's merged view: its facts, and for a directory its children by name."""

    facts: PathFacts
    children: dict[bytes, FactsNode] | None = None  # None: not a directory


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a path of the Nydus image differs from the source: `what` is `missing` (the source has the path,
    the Nydus image not), `extra` (the other way round), `type`, `mode`, `uid`, `gid`, `mtime`, `size`,
    `symlink target`, `device`, `xattr NAME` or `content`; `source` and `nydus` are the two values as text (None
    where the side has no such value)."""

    path: bytes  # absolute, b"/" for the root
    what: str
    source: str | None
    nydus: str | None
    platform: str = ""  # the platform compared (os/arch[/variant]), when the images name one

    @property
    def path_text(self) -> str:
        return _text(self.path)

    def line(self, with_platform: bool = False) -> str:
        """The line `check --source` prints for it."""
        where = f" [{self.platform}]" if with_platform and self.platform else ""
        if self.what == "missing":
            return f"missing: {self.path_text} (in the source, not in the Nydus image){where}"
        if self.what == "extra":
            return f"extra: {self.path_text} (in the Nydus image, not in the source){where}"
        return (f"differs: {self.path_text}: {self.what} (source {_shown(self.source)}, nydus {_shown(self.nydus)})"
                f"{where}")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path_text, "what": self.what, "source": self.source, "nydus": self.nydus,
                "platform": self.platform}


@dataclass(slots=True)
class VerifyReport:
    """How the Nydus image compares with SOURCE: every difference (in path order per platform), the number
    of paths compared (those of either side) and the platforms compared. Not `compared` when the Nydus image
    could not be opened (the check says why)."""

    source: str
    differences: list[Difference] = field(default_factory=list)
    paths: int = 0
    platforms: list[str] = field(default_factory=list)
    compared: bool = True

    @property
    def equal(self) -> bool:
        return self.compared and not self.differences

    @property
    def differing_paths(self) -> int:
        return len({(d.platform, d.path) for d in self.differences})

    def lines(self) -> list[str]:
        """One line per difference (naming the platform when several were compared)."""
        several = len(self.platforms) > 1
        return [difference.line(several) for difference in self.differences]

    def verdict(self) -> str:
        if not self.compared:
            return f"not compared with {self.source} (the image could not be opened)"
        if self.equal:
            return f"equal to {self.source} ({self.paths} paths compared)"
        return f"{self.differing_paths} paths differ from {self.source} ({self.paths} paths compared)"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "equal": self.equal, "compared": self.compared, "paths_compared": self.paths,
                "platforms": self.platforms, "differences": [d.to_json() for d in self.differences]}


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _shown(value: str | None) -> str:
    return "absent" if value is None else value


# --- the source: layers applied in order -------------------------------------------------------------------


@dataclass(slots=True)
class _Layer:
    """One layer as read: its own tree (implicit parents included), and its whiteouts and opaque directories,
    which apply to the layers below it."""

    root: FactsNode = field(default_factory=lambda: FactsNode(_IMPLICIT_DIR, {}))
    whiteouts: list[list[bytes]] = field(default_factory=list)  # path components of each name hidden
    opaque: list[list[bytes]] = field(default_factory=list)  # path components of each opaque directory
    entries: int = 0
    xattr_bytes: int = 0


def source_tree(image: SourceImage, name: str) -> FactsNode:
    """The merged view of `image`'s layers (lowest first), each layer streamed once and verified against its
    digest to its end; `name` names the image in messages. FormatError for a layer that is no readable tar, or
    that breaks a rule extraction cannot follow (an entry below a file of its own layer, a hardlink to nothing,
    a name escaping the root, more than MAX_LAYER_ENTRIES entries); UnsupportedError for a layer that is no tar."""
    view = FactsNode(_IMPLICIT_DIR, {})
    with verified_layers(image) as open_layer:
        for desc in image.layers:
            if desc.media_type and desc.media_type not in oci.TAR_LAYER_TYPES:
                raise UnsupportedError(f"{name}: layer {desc.digest}: media type {desc.media_type} is no layer tar")
            layer = _read_layer(open_layer(desc), f"{name}: layer {desc.digest}", view)
            _apply(view, layer)
    return view


def _read_layer(stream: VerifiedStream, name: str, lower: FactsNode) -> _Layer:
    try:
        tar = decompressed(cast(BinaryIO, stream))
    except STREAM_ERRORS as exc:
        raise FormatError(f"{name}: cannot read the layer ({exc})") from None
    reader = TarReader(tar, name)
    layer = _Layer()
    for member in reader.members():
        layer.entries += 1
        if layer.entries > MAX_LAYER_ENTRIES:
            raise FormatError(f"{name}: more than {MAX_LAYER_ENTRIES} entries in one layer")
        _add(layer, lower, member, reader, name)
    return layer


def _components(raw: bytes, name: str) -> list[bytes]:
    """A member name as path components below the root (`/` and `./` in front dropped, as containerd takes
    them); NUL or a `..` that leaves the root is an error."""
    if b"\0" in raw:
        raise FormatError(f"{name}: {_text(raw)!r}: name contains NUL")
    depth = 0
    for part in raw.split(b"/"):
        depth += -1 if part == b".." else 0 if part in (b"", b".") else 1
        if depth < 0:
            raise FormatError(f"{name}: {_text(raw)!r}: name escapes the root with '..'")
    norm = posixpath.normpath(b"/" + raw).lstrip(b"/")
    return [] if norm in (b"", b".") else norm.split(b"/")


def _directory(root: FactsNode, parts: list[bytes]) -> FactsNode | None:
    """The layer's directory `parts`, missing ones made implicit (as containerd's mkparent makes them); None when
    one of them is a non-directory of the layer."""
    node = root
    for part in parts:
        assert node.children is not None
        child = node.children.get(part)
        if child is None:
            child = node.children[part] = FactsNode(_IMPLICIT_DIR, {})
        elif child.children is None:
            return None
        node = child
    return node


def _find(root: FactsNode, parts: list[bytes]) -> FactsNode | None:
    node: FactsNode | None = root
    for part in parts:
        if node is None or node.children is None:
            return None
        node = node.children.get(part)
    return node


def _add(layer: _Layer, lower: FactsNode, member: TarMember, reader: TarReader, name: str) -> None:
    parts = _components(member.name, name)
    if not parts:  # the root: presence only (containerd's applier ignores an entry that resolves to it)
        return
    base = parts[-1]
    parent = _directory(layer.root, parts[:-1])
    if is_marker(base):
        if is_void_whiteout(base):  # OCI layer.md names no entry so; containerd refuses it
            raise FormatError(f"{name}: {_text(member.name)!r}: a whiteout must name an entry, not '', '.' or '..'")
        if parent is None:
            return  # below a non-directory of this layer, which already hides the whole lower entry
        if base == OPAQUE_MARKER:
            layer.opaque.append(parts[:-1])
        else:
            layer.whiteouts.append([*parts[:-1], base[len(WHITEOUT_PREFIX) :]])
        return
    if parent is None:
        raise FormatError(f"{name}: {_text(member.name)!r}: an entry below a non-directory of its own layer")
    assert parent.children is not None
    if member.typeflag == TypeFlag.LNK.value:
        facts = _link_target(layer, lower, member, name)
    else:
        facts = _member_facts(member, reader, name)
        layer.xattr_bytes += sum(len(k) + len(v) for k, v in facts.xattrs)
        if layer.xattr_bytes > MAX_LAYER_XATTR_BYTES:
            raise FormatError(f"{name}: xattrs of more than {MAX_LAYER_XATTR_BYTES >> 20} MiB in one layer")
    existing = parent.children.get(base)
    if facts.kind is FileKind.DIR and existing is not None and existing.children is not None:
        existing.facts = facts  # a directory entry again: new attributes, the children stay
    else:
        parent.children[base] = FactsNode(facts, {} if facts.kind is FileKind.DIR else None)


def _link_target(layer: _Layer, lower: FactsNode, member: TarMember, name: str) -> PathFacts:
    """A hardlink's facts: those of the file it names, an earlier entry of its layer or a lower layer's."""
    parts = _components(member.linkname, name)
    for tree in (layer.root, lower):
        node = _find(tree, parts)
        if node is not None and node.children is None:
            return node.facts
    raise FormatError(f"{name}: {_text(member.name)!r}: hardlink to {_text(member.linkname)!r}, which is no file "
                      "of this or a lower layer")


def _member_facts(member: TarMember, reader: TarReader, name: str) -> PathFacts:
    kind = _KIND_OF_TYPE.get(member.typeflag)
    if kind is None:
        raise FormatError(f"{name}: {_text(member.name)!r}: unsupported tar entry type {member.typeflag!r}")
    return PathFacts(
        kind=kind,
        mode=0o777 if kind is FileKind.SYMLINK else stat.S_IMODE(member.mode),
        uid=member.uid,
        gid=member.gid,
        mtime=member.mtime,
        size=member.size if kind is FileKind.REG else 0,
        target=member.linkname if kind is FileKind.SYMLINK else b"",
        device=(member.devmajor, member.devminor) if kind in (FileKind.CHR, FileKind.BLK) else (0, 0),
        xattrs=_xattrs(member, name),
        digest=_content_digest(member, reader, name) if kind is FileKind.REG else b"",
    )


def _xattrs(member: TarMember, name: str) -> tuple[tuple[bytes, bytes], ...]:
    """The member's xattrs from its pax records (`SCHILY.xattr.NAME`, `LIBARCHIVE.xattr.NAME`), sorted."""
    out: dict[bytes, bytes] = {}
    for key, value in member.pax.items():
        if key.startswith(_SCHILY_XATTR):
            out[key[len(_SCHILY_XATTR) :]] = value
        elif key.startswith(_LIBARCHIVE_XATTR):
            try:
                decoded = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
            except binascii.Error:
                raise FormatError(f"{name}: {_text(member.name)!r}: pax record {_text(key)} is not base64") from None
            out[urllib.parse.unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])] = decoded
    return tuple(sorted(out.items()))


def _content_digest(member: TarMember, reader: TarReader, name: str) -> bytes:
    """sha256 of a regular member's content, streamed: a sparse member's extents at their offsets, zeros between
    (GNU tar manual, "Sparse Formats")."""
    hasher = hashlib.sha256()
    at = 0
    for offset, length in member.sparse if member.sparse is not None else [(0, member.size)]:
        _hash_zeros(hasher, offset - at)
        left = length
        while left:
            data = reader.read(min(left, _BLOCK))
            if not data:
                raise FormatError(f"{name}: {_text(member.name)!r}: tar entry data is truncated")
            hasher.update(data)
            left -= len(data)
        at = offset + length
    _hash_zeros(hasher, member.size - at)
    return hasher.digest()


def _hash_zeros(hasher: hashlib._Hash, count: int) -> None:
    while count > 0:
        hasher.update(_ZEROS[: min(count, _BLOCK)])
        count -= _BLOCK


def _apply(view: FactsNode, layer: _Layer) -> None:
    """`layer` over `view`: its opaque directories and whiteouts hide lower entries first (OCI layer.md: they
    apply to the lower layers only), then each of its entries replaces the lower one of its name; two
    directories merge, an explicit upper one's attributes winning."""
    for parts in layer.opaque:
        node = _find(view, parts)
        if node is not None and node.children is not None:
            node.children = {}
    for parts in layer.whiteouts:
        parent = _find(view, parts[:-1])
        if parent is not None and parent.children is not None:
            parent.children.pop(parts[-1], None)
    pending = [(view, layer.root)]
    while pending:
        lower, upper = pending.pop()
        assert lower.children is not None and upper.children is not None
        for base, child in upper.children.items():
            below = lower.children.get(base)
            if child.children is not None and below is not None and below.children is not None:
                if not child.facts.implicit:
                    below.facts = child.facts
                pending.append((below, child))
            else:
                lower.children[base] = child


# --- the comparison ---------------------------------------------------------------------------------------


def compare_tree(source: FactsNode, tree: Tree, chunks: ChunkReader, platform: str = ""
                 ) -> tuple[list[Difference], int]:
    """(differences, paths compared) between the source view `source` and a Nydus image's `tree`, whose file
    data `chunks` reads (digest-checked). Paths are visited depth first, the names of each directory in order,
    and differences come out in that order. Content that cannot be read (a missing blob, a chunk failing its
    digest) is a `content` difference saying why."""
    out: list[Difference] = []
    digests: dict[int, bytes | str] = {}  # id(inode) -> its content digest (hardlinks share one inode)
    count = 0
    stack: list[tuple[bytes, FactsNode | None, Inode | None]] = [(b"/", source, tree.root)]
    while stack:
        path, src, inode = stack.pop()
        count += 1
        if src is None:
            assert inode is not None
            out.append(Difference(path, "extra", None, inode.kind.value, platform))
        elif inode is None:
            out.append(Difference(path, "missing", src.facts.kind.value, None, platform))
        else:
            out += _compare(path, src.facts, inode, chunks, digests, platform)
        below = src.children if src is not None and src.children is not None else {}
        nydus = {e.name: e.inode for e in inode.entries} if inode is not None and inode.is_dir else {}
        prefix = path if path.endswith(b"/") else path + b"/"
        for name in sorted(below.keys() | nydus.keys(), reverse=True):
            stack.append((prefix + name, below.get(name), nydus.get(name)))
    return out, count


def _compare(path: bytes, src: PathFacts, inode: Inode, chunks: ChunkReader, digests: dict[int, bytes | str],
             platform: str) -> list[Difference]:
    def diff(what: str, source: object, nydus: object) -> Difference:
        return Difference(path, what, str(source), str(nydus), platform)

    if src.kind is not inode.kind:
        return [diff("type", src.kind.value, inode.kind.value)]
    if src.implicit:
        return []
    out = []
    mode = stat.S_IMODE(inode.mode)
    if src.mode != mode:
        out.append(diff("mode", f"{src.mode:04o}", f"{mode:04o}"))
    for what, mine, theirs in (("uid", src.uid, inode.uid), ("gid", src.gid, inode.gid),
                               ("mtime", src.mtime, inode.mtime)):
        if mine != theirs:
            out.append(diff(what, mine, theirs))
    if src.kind is FileKind.SYMLINK and src.target != inode.symlink_target:
        out.append(diff("symlink target", _text(src.target), _text(inode.symlink_target)))
    if src.kind in (FileKind.CHR, FileKind.BLK):
        device = (os.major(inode.rdev), os.minor(inode.rdev))
        if src.device != device:
            out.append(diff("device", "{}:{}".format(*src.device), "{}:{}".format(*device)))
    theirs_xattrs = dict(inode.xattrs)
    mine_xattrs = dict(src.xattrs)
    for key in sorted(mine_xattrs.keys() | theirs_xattrs.keys()):
        a, b = mine_xattrs.get(key), theirs_xattrs.get(key)
        if a != b:
            out.append(Difference(path, f"xattr {_text(key)}", None if a is None else _text(a),
                                  None if b is None else _text(b), platform))
    if src.kind is FileKind.REG:
        if src.size != inode.size:
            out.append(diff("size", src.size, inode.size))
        digest = digests.get(id(inode))
        if digest is None:
            digest = digests[id(inode)] = _nydus_digest(inode, chunks)
        if digest != src.digest:
            shown = f"sha256:{digest.hex()}" if isinstance(digest, bytes) else digest
            out.append(diff("content", f"sha256:{src.digest.hex()}", shown))
    return out


def _nydus_digest(inode: Inode, chunks: ChunkReader) -> bytes | str:
    """sha256 of a Nydus file's content, its chunks read in order and checked against their digests (a chunk
    of zeros, which nydus writes as a hole, is not read); why not, as text, when it cannot be read."""
    hasher = hashlib.sha256()
    left = inode.size
    try:
        for chunk in inode.chunks:
            size = min(chunk.uncompressed_size, left)
            if chunks.is_hole(chunk):
                _hash_zeros(hasher, size)
            else:
                hasher.update(chunks.read(chunk)[:size])
            left -= size
    except NydusError as exc:
        return f"unreadable ({exc})"
    if left:
        return f"unreadable (its chunks hold {inode.size - left} of its {inode.size} bytes)"
    return hasher.digest()


# --- images: platforms paired, then compared ------------------------------------------------------------------


def _source_images(source: ImageRef, registry: RegistryOptions) -> list[SourceImage]:
    """SOURCE's images to compare with (the original manifests of an index that also holds Nydus ones)."""
    images = [image for image in open_source(source, None, registry) if not is_nydus_image(image)]
    if not images:
        raise UsageError(f"{source}: a Nydus image, not an OCI image to compare with")
    return images


def _pair(source: ImageRef, images: list[SourceImage], platform: Json | None) -> SourceImage:
    """The source image of `platform` (the one there is, for a Nydus image without a platform)."""
    if len(images) == 1:
        return images[0]
    if platform is None:
        raise UsageError(f"{source}: {len(images)} platforms, and the Nydus image names none to pick one by (give "
                         "it as oci:DIR[:TAG])")
    wanted = platform_of(platform)
    for image in images:
        if platform_of(image.platform) == wanted:
            return image
    raise UsageError(f"{source}: no image for platform {platform_text(platform)} of the Nydus image")


def compare_images(source: ImageRef, images: list[SourceImage], nydus: list[tuple[Json | None, OpenedImage]]
                   ) -> VerifyReport:
    """Compare each opened Nydus image (with the platform of its manifest, None when it has none) with the
    source image of the same platform among `images` (SOURCE's). UsageError when a platform has no source
    image; the errors of `source_tree` (naming SOURCE, the platform and the layer) when a layer cannot be read."""
    report = VerifyReport(source=str(source))
    for platform, opened in nydus:
        image = _pair(source, images, platform)
        name = platform_text(image.platform)
        view = source_tree(image, f"{source} ({name})")
        chunks = ChunkReader(opened)
        try:
            differences, count = compare_tree(view, opened.bootstrap.tree, chunks, name)
        finally:
            chunks.close()
        report.differences += differences
        report.paths += count
        report.platforms.append(name)
    return report


@contextlib.contextmanager
def _fetched(ref: ImageRef, registry: RegistryOptions) -> Iterator[ImageRef]:
    """A Nydus image where the read side opens it: a `docker://` image copied (every blob verified) into a
    temporary layout, removed afterwards (as a push stages its layout: oci/targets.py); a layout as it is."""
    if ref.transport is not Transport.DOCKER:
        yield ref
        return
    work = staging_dir(tempfile.gettempdir(), "nydus-py-check-")
    try:
        layout = work / "image"
        local = ImageRef(Transport.OCI, f"oci:{layout}", path=layout)
        copy_image(ref, local, registry)
        yield local
    finally:
        remove_staging(work)


def verify_conversion(source: ImageRef, nydus: ImageRef, registry: RegistryOptions | None = None) -> VerifyReport:
    """Compare every platform of the Nydus image `nydus` (`oci:DIR[:TAG]`, or `docker://REF`, copied into a
    temporary layout first) with the same platform of `source` (`oci:`, `oci-archive:`, `docker-archive:` or
    `docker://`; the original manifests when it is an index that also holds Nydus ones): the report lists each
    path that differs, and how (`VerifyReport.equal` when none does). It does not check the Nydus image's
    structure (`check` does). UsageError for a reference that names no image, a Nydus SOURCE, or a platform
    the source lacks; FormatError (naming the image, platform and layer) for an image that cannot be read."""
    registry = registry or RegistryOptions()
    images = _source_images(source, registry)
    with _fetched(nydus, registry) as local:
        return compare_images(source, images, open_layout_images(local))


@dataclass(slots=True)
class SourceCheck:
    """`check IMAGE [--source SOURCE]`: the check of IMAGE, and its comparison with SOURCE (None when no
    SOURCE was given; not `compared` when IMAGE could not be opened, which the check reports as a defect)."""

    report: CheckReport
    verify: VerifyReport | None = None


def check_with_source(image: str, source: ImageRef | None, registry: RegistryOptions | None = None, *,
                      blob_dir: str | Path | None = None, require_data: bool = False) -> SourceCheck:
    """`check IMAGE [--source SOURCE]`: check IMAGE (a bootstrap, a blob, an output directory, `oci:DIR[:TAG]`
    or `docker://REF`, copied into a temporary layout first) as `check` does, then compare each of its platforms
    with SOURCE's. SOURCE is opened first, so a bad reference fails before any work (UsageError or FormatError
    naming it)."""
    registry = registry or RegistryOptions()
    images = _source_images(source, registry) if source is not None else []
    opened: list[tuple[Json | None, OpenedImage]] = []

    def opener(path: str | os.PathLike[str], blobs: str | os.PathLike[str] | None) -> list[OpenedImage]:
        found = open_platform_images(path, blobs)
        opened.extend(found)
        return [one for _, one in found]

    ref = parse_image_ref(image) if is_image_ref(image) else None
    with contextlib.ExitStack() as stack:
        if ref is not None and ref.transport is Transport.DOCKER:
            image = stack.enter_context(_fetched(ref, registry)).text
        report = check_path(image, blob_dir, opener=opener, require_data=require_data)
        if source is None:
            return SourceCheck(report)
        if not opened:
            return SourceCheck(report, VerifyReport(source=str(source), compared=False))
        return SourceCheck(report, compare_images(source, images, opened))


__all__ = ["Difference", "FactsNode", "PathFacts", "SourceCheck", "VerifyReport", "check_with_source",
           "compare_images", "compare_tree", "source_tree", "verify_conversion"]
