"""The reader decodes real nydus-image output: trees, attributes, chunks (checked against their digests),
inline bootstraps, chunk info v1/v2; and corrupt input is a FormatError naming structure and offset."""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import blake3
import pytest

from nydus_py import BlobReader, FormatError, UnsupportedError, expand_blob, open_image, read_bootstrap
from nydus_py.blob.reader import read_blob_meta_cache
from nydus_py.format import blobmeta, tar
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.model import FileKind
from tests.conftest import V1_BLOB, V1_BOOT, V2_BLOB, V3_META, golden_bytes


@pytest.fixture()
def v1_boot() -> bytes:
    return V1_BOOT.read_bytes()


def test_v1_tree_and_attributes(v1_boot: bytes) -> None:
    boot = read_bootstrap(v1_boot)
    assert [p for p, _ in boot.tree.walk()] == [b"/", b"/lib.rs", b"/sync_io.rs"]
    lib = boot.tree.lookup(b"/lib.rs")
    assert lib is not None and lib.kind is FileKind.REG
    assert (stat.S_IMODE(lib.mode), lib.size, lib.mtime, lib.mtime_nsec) == (0o644, 16931, 1676819553, 628661334)
    assert boot.chunk_size == 1 << 20 and boot.inode_count == 3 and boot.root_nid == 128
    assert [b.blob_id for b in boot.blobs] == [V1_BLOB.name]
    assert boot.devices[0].mapped_blkaddr == 512  # the 2 MiB alignment of older builders: read, not rejected


def test_v1_chunks_decompress_to_their_digests(v1_boot: bytes) -> None:
    boot = read_bootstrap(v1_boot)
    with BlobReader(V1_BLOB) as blob:
        infos = blob.chunk_infos(blob.ci_header(boot.blobs[0]))
        digests = blob.chunk_digests()
        contents = {}
        for path, inode in boot.tree.walk():
            if inode.kind is FileKind.REG:
                (chunk,) = inode.chunks
                data = blob.read_chunk(infos[chunk.ci_index], boot.blobs[0].compressor, boot.blobs[0].digester, chunk.digest)
                assert blake3.blake3(data).digest() == chunk.digest == digests[chunk.ci_index]
                contents[path] = data
    assert len(contents[b"/lib.rs"]) == 16931 and len(contents[b"/sync_io.rs"]) == 13400
    assert contents[b"/lib.rs"].startswith(b"// Copyright")


def test_v1_toc_and_blob_id_rule(v1_boot: bytes) -> None:
    data = V1_BLOB.read_bytes()
    with BlobReader(V1_BLOB) as blob:
        toc = blob.toc()
        assert [t.name for t in toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
        for item in toc[1:]:
            blob.read_toc_item(item)  # checks each entry's sha256
        assert blob.toc_digest() == (read_bootstrap(v1_boot).blobs[0].toc_digest, 1024)
    # nydus-image's own id skips the digest array (12954..13018); ours is the whole file's sha256
    assert hashlib.sha256(data[:12954] + data[13018:]).hexdigest() == V1_BLOB.name


def test_v2_inline_bootstrap() -> None:
    opened = open_image(V2_BLOB)
    boot = opened.bootstrap
    assert [p for p, _ in boot.tree.walk()] == [b"/", b"/error.rs", b"/lib.rs", b"/logger.rs"]
    info = boot.blobs[0]
    assert opened.blob_path(info) == V2_BLOB
    with BlobReader(V2_BLOB) as blob:
        assert [t.name for t in blob.toc()] == ["image.blob", "blob.meta", "blob.meta.header", "image.boot"]
        infos = blob.chunk_infos()
        for _, inode in boot.tree.walk():
            for chunk in inode.chunks:
                data = blob.read_chunk(infos[chunk.ci_index], info.compressor, info.digester, chunk.digest)
                assert blake3.blake3(data).digest() == chunk.digest


def test_v3_zran_blob_meta_cache() -> None:
    header, infos = read_blob_meta_cache(V3_META)
    assert header.chunk_info_v2 and header.ci_entries == len(infos) == 163
    assert header.zran_offset == 163 * 24 and header.zran_count == 21
    assert all(ci.compressed and ci.flags & blobmeta.ChunkFlagsV2.ZRAN for ci in infos)
    assert all(ci.uncompressed_offset % 4096 == 0 for ci in infos)
    assert [ci.uncompressed_offset for ci in infos] == sorted(ci.uncompressed_offset for ci in infos)
    assert all(ci.data >> 32 < header.zran_count for ci in infos)  # each chunk names an existing zran context


def test_expand_blob_verifies_chunks(tmp_path: Path, v1_boot: bytes) -> None:
    boot = read_bootstrap(v1_boot)
    image = expand_blob(V1_BLOB, boot.blobs[0], tmp_path / "dev")
    dev = (tmp_path / "dev").read_bytes()
    assert image.size == len(dev) == 0x9000
    lib = boot.tree.lookup(b"/lib.rs")
    assert blake3.blake3(dev[: lib.size]).digest() == lib.chunks[0].digest
    # a flipped byte in chunk data: it no longer decompresses or no longer matches
    bad = bytearray(V1_BLOB.read_bytes())
    bad[100] ^= 0xFF
    (tmp_path / "bad").write_bytes(bad)
    with pytest.raises(FormatError, match="chunk 0"):
        expand_blob(tmp_path / "bad", boot.blobs[0], tmp_path / "dev2")
    assert not (tmp_path / "dev2").exists() and list(tmp_path.glob(".dev2*")) == []


def test_plain_erofs_image_from_mkfs() -> None:
    boot = read_bootstrap(golden_bytes("mkfs-erofs-blobdev.img.gz"))
    assert not boot.rafs
    small = boot.tree.lookup(b"/small")
    assert small.xattrs == {b"user.comment": b"golden", b"trusted.bin": bytes([0, 1, 2, 255])}
    assert boot.tree.lookup(b"/link").symlink_target == b"small"
    assert boot.tree.lookup(b"/bigowner").uid == 70000
    assert BLOB_ID_PLACEHOLDER == "x" * 64


# --- corrupt input --------------------------------------------------------------------------------


def corrupt(data: bytes, offset: int, patch: bytes) -> bytes:
    return data[:offset] + patch + data[offset + len(patch) :]


@pytest.mark.parametrize(("name", "mutate", "message"), [
    ("bad magic", lambda d: corrupt(d, 0x400, b"\0\0\0\0"), r"superblock at 0x400: .*magic"),
    ("truncated superblock", lambda d: d[:0x420], r"superblock at 0x400: truncated"),
    ("unknown incompat bit", lambda d: corrupt(d, 0x450, (0x1000C).to_bytes(4, "little")),
     r"superblock at 0x400: .*FeatureIncompat"),
    ("unknown super flag", lambda d: corrupt(d, 0x480, (0x194 | 0x800).to_bytes(8, "little")),
     r"extended superblock at 0x480: .*SuperFlags"),
    ("blob table past the end", lambda d: corrupt(d, 0x490, (256 * 1000).to_bytes(4, "little")),
     r"blob table at 0x1000 .*past the end"),
    ("chunk table past the end", lambda d: corrupt(d, 0x4A0, (80 * 10**6).to_bytes(8, "little")),
     r"chunk table at 0x4000 .*past the end"),
    ("device count past the end", lambda d: corrupt(d, 0x456, (60000).to_bytes(2, "little")),
     r"device table at 0x580 .*past the end"),
    ("root nid past the end", lambda d: corrupt(d, 0x40E, (0xFFFF).to_bytes(2, "little")), r"inode nid 65535 at"),
    ("dirent count past the block", lambda d: corrupt(d, 0x3048, (600).to_bytes(2, "little")),
     r"dirent block of directory nid 128 at 0x3040"),
    ("dirent names out of order", lambda d: corrupt(d, 0x3054, (70).to_bytes(2, "little")),
     r"dirent 0 of directory nid 128 at 0x3040: name offsets 48..70"),
    ("file size beyond its chunk indexes", lambda d: corrupt(d, 0x30A8, (1 << 40).to_bytes(8, "little")),
     r"chunk indexes of inode nid 133 at 0x30e0 .*past the end"),
    ("unknown i_format bits", lambda d: corrupt(d, 0x30A0, (0x209).to_bytes(2, "little")),
     r"inode nid 133 at 0x30a0: i_format=0x209"),
    ("truncated file", lambda d: d[:0x3010], r"chunk table at 0x4000 .*past the end"),
])
def test_corrupt_bootstrap_is_a_format_error(v1_boot: bytes, name: str, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError, match=message):
        read_bootstrap(mutate(v1_boot))


def test_directory_loop_is_detected(v1_boot: bytes) -> None:
    # point the dirent of lib.rs at the root directory itself (and make the types agree)
    looped = corrupt(v1_boot, 0x3040 + 24, (128).to_bytes(8, "little") + (51).to_bytes(2, "little") + b"\x02")
    with pytest.raises(FormatError, match="loop"):
        read_bootstrap(looped)


def test_unsupported_block_size(v1_boot: bytes) -> None:
    with pytest.raises(UnsupportedError, match="blkszbits=9"):
        read_bootstrap(corrupt(v1_boot, 0x40C, b"\x09"))


@pytest.mark.parametrize(("name", "mutate", "message"), [
    ("truncated blob", lambda d: d[:-100], r"neither a RAFS bootstrap nor a blob"),
    ("toc size not a multiple", lambda d: d[:-512] + tar.encode_tar_header("rafs.blob.toc", 500, tar.TarDialect.NYDUS_TAIL),
     r"TOC size 500"),
    ("inline bootstrap digest", lambda d: corrupt(d, 8000, b"\xff\xff"), r"image.boot|does not decompress"),
])
def test_corrupt_blob_is_a_format_error(tmp_path: Path, name: str, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "blob"
    path.write_bytes(mutate(V2_BLOB.read_bytes()))
    with pytest.raises(FormatError, match=message):
        open_image(path)


def test_truncated_ci_array(tmp_path: Path, v1_boot: bytes) -> None:
    boot = read_bootstrap(v1_boot)
    shutil.copy(V1_BLOB, tmp_path / "blob")
    with open(tmp_path / "blob", "r+b") as f:
        f.seek(8346 + 12)  # s_ci_entries in the CI header
        f.write((1000).to_bytes(4, "little"))
    with BlobReader(tmp_path / "blob") as blob, pytest.raises(FormatError, match="claims 1000 entries"):
        blob.chunk_infos(blob.ci_header(boot.blobs[0]))


def _tree_facts(tree: object) -> list[tuple]:
    """Every entry's attributes, chunks and hardlink group (the path of the first entry of its inode)."""
    first: dict[int, bytes] = {}
    facts = []
    for path, inode in tree.walk():  # type: ignore[attr-defined]
        group = first.setdefault(id(inode), path)
        facts.append((path, inode.kind, inode.mode, inode.uid, inode.gid, inode.mtime, inode.mtime_nsec, inode.size,
                      inode.rdev, sorted(inode.xattrs.items()), inode.symlink_target, list(inode.chunks), group))
    return facts


def test_batched_file_decoding_equals_the_per_inode_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader decodes a directory's plain regular files (extended, chunk based, no xattrs, one chunk at most)
    in one batch; every inode must be what the per-inode path makes of it, in directories that mix them with
    empty files, hardlinks, xattrs, multi-chunk files, symlinks and devices."""
    import os

    from nydus_py.bootstrap import reader
    from nydus_py.cli.main import main

    src = tmp_path / "src"
    for d in ("a", "b/c"):
        (src / d).mkdir(parents=True)
        (src / d / "plain").write_bytes(b"plain data\n" * 10)
        (src / d / "empty").write_bytes(b"")
        (src / d / "big").write_bytes(os.urandom(3 * 4096 + 100))  # 4 chunks of 4 KiB
        (src / d / "same").write_bytes(b"plain data\n" * 10)  # a dedup hit: the chunk of "plain"
        os.link(src / d / "plain", src / d / "plain-link")
        (src / d / "xattr").write_bytes(b"x")
        os.setxattr(src / d / "xattr", "user.note", b"v")
        os.symlink("plain", src / d / "sym")
        os.mknod(src / d / "null", 0o20644, os.makedev(1, 3))
        os.chown(src / d / "plain", 1000, 2000)
        os.utime(src / d / "empty", ns=(1, 1_234_567_891))
    assert main(["build", str(src), "-o", str(tmp_path / "out"), "--chunk-size", "4KiB"]) == 0
    data = (tmp_path / "out" / "bootstrap").read_bytes()
    batch = reader.BootstrapParser._common_files
    decoded: list[int] = []
    monkeypatch.setattr(reader.BootstrapParser, "_common_files",
                        lambda self, nids: decoded.append(len(out := batch(self, nids))) or out)
    batched = _tree_facts(read_bootstrap(data).tree)
    assert sum(decoded) == 2 * 3  # plain (and its link), same and empty, in each directory
    monkeypatch.setattr(reader.BootstrapParser, "_common_files", lambda self, nids: {})
    per_inode = _tree_facts(read_bootstrap(data).tree)
    assert batched == per_inode
    assert len(batched) == 2 * 8 + 4  # the entries, the root and the three directories
