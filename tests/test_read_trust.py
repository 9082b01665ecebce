"""Reading untrusted images: a blob id never becomes a path unless it is a sha256, a cached device image serves
only the blob that made it, and `mount` hands the kernel only bootstraps that pass `check`'s structural checks.
Hostile bootstraps are made from our own writer's output, rewritten through the format definitions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.format import erofs, parse, rafs
from tests.conftest import need_mount


def build_tree(tmp_path: Path, name: str, files: dict[str, bytes]) -> dict:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    for path, data in files.items():
        (src / path).write_bytes(data)
    out = tmp_path / name
    assert main(["build", str(src), "-o", str(out), "--output-json", f"{out}.json", "--quiet"]) == 0
    return json.loads(Path(f"{out}.json").read_text())


def with_blob_id(bootstrap: bytes, blob_id: bytes) -> bytes:
    """The bootstrap with its first blob's id (blob table entry and device slot tag) replaced."""
    data = bytearray(bootstrap)
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    ext = parse(rafs.SuperBlockExt, data, what="extended superblock", offset=rafs.EXT_SUPER_OFFSET)
    blob = parse(rafs.Blob, data, what="blob", offset=ext.s_blob_table_offset)
    blob.blob_id = blob_id
    data[ext.s_blob_table_offset : ext.s_blob_table_offset + rafs.Blob.sizeof()] = rafs.Blob.build(blob)
    slot_at = erofs.device_table_offset(sb.devt_slotoff)
    slot = parse(erofs.DeviceSlot, data, what="device slot", offset=slot_at)
    slot.tag = blob_id
    data[slot_at : slot_at + erofs.DeviceSlot.sizeof()] = erofs.DeviceSlot.build(slot)
    return bytes(data)


def with_root_nlink(bootstrap: bytes, nlink: int) -> bytes:
    data = bytearray(bootstrap)
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    at = erofs.nid_to_offset(sb.meta_blkaddr, sb.root_nid)
    inode = parse(erofs.InodeExtended, data, what="root inode", offset=at)
    inode.i_nlink = nlink
    data[at : at + erofs.INODE_EXTENDED_SIZE] = erofs.InodeExtended.build(inode)
    return bytes(data)


def mount(image: str, mnt: Path, cache: Path, *extra: str) -> int:
    mnt.mkdir(exist_ok=True)
    status = main(["mount", image, str(mnt), "--cache-dir", str(cache), *extra])
    if status == 0:
        main(["umount", str(mnt)])
    return status


def test_a_blob_id_that_is_not_a_sha256_never_becomes_a_path(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    doc = build_tree(tmp_path, "img", {"f": b"data" * 1000})
    (blob,) = doc["blobs"]
    outside = tmp_path / "outside"
    outside.mkdir()
    escape = os.path.relpath(outside / "X", tmp_path / "cache").encode()
    hostile_id = escape + b"/" * (64 - len(escape))  # 64 bytes of UTF-8, as nydusd's validate() allows
    assert len(hostile_id) == 64
    boot = tmp_path / "hostile.boot"
    boot.write_bytes(with_blob_id(Path(doc["bootstrap"]).read_bytes(), hostile_id))
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    os.link(blob["path"], blob_dir / blob["id"])
    capsys.readouterr()
    assert mount(str(boot), tmp_path / "mnt", tmp_path / "cache", "--blob-dir", str(blob_dir)) == 2
    err = capsys.readouterr().err
    assert "is not 64 lowercase hex digits" in err and err.count("\n") == 1
    assert list(outside.iterdir()) == [] and not (tmp_path / "cache").exists() or not any(
        (tmp_path / "cache").iterdir())
    assert main(["unpack", str(boot), "--blob-dir", str(blob_dir), "-o", str(tmp_path / "u")]) == 2
    assert main(["check", str(boot), "--blob-dir", str(blob_dir)]) == 1
    assert list(outside.iterdir()) == []


def test_a_cached_device_image_serves_only_the_blob_that_made_it(tmp_path: Path) -> None:
    """An untrusted image claims a trusted image's blob id: it is refused (its file does not hash to the id),
    and the trusted image mounted afterwards shows its own files."""
    need_mount()
    trusted = build_tree(tmp_path, "trusted", {"f": b"trusted content\n" * 100})
    attacker = build_tree(tmp_path, "attacker", {"f": b"attacker content" * 100})
    (good,) = trusted["blobs"]
    (bad,) = attacker["blobs"]
    cache = tmp_path / "cache"
    # the attacker's bootstrap names the trusted blob id; the attacker's blob file is put under that name
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "bootstrap").write_bytes(with_blob_id(Path(attacker["bootstrap"]).read_bytes(), good["id"].encode()))
    (evil / good["id"]).write_bytes(Path(bad["path"]).read_bytes())
    assert mount(str(evil / "bootstrap"), tmp_path / "mnt", cache, "--blob-dir", str(evil)) == 2
    assert not cache.exists() or list(cache.iterdir()) == []
    # with the trusted blob file itself, the attacker's metadata mounts: a device image of its own is cached
    (evil / good["id"]).write_bytes(Path(good["path"]).read_bytes())
    assert mount(str(evil / "bootstrap"), tmp_path / "mnt", cache, "--blob-dir", str(evil)) == 0
    mnt = tmp_path / "mnt"
    assert main(["mount", str(tmp_path / "trusted"), str(mnt), "--cache-dir", str(cache)]) == 0
    try:
        assert (mnt / "f").read_bytes() == b"trusted content\n" * 100
    finally:
        assert main(["umount", str(mnt)]) == 0
    assert len(list(cache.glob("*.device"))) == 2  # one per (blob file, blob table entry, chunk digests)


def test_mount_refuses_a_bootstrap_that_check_calls_defective(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    build_tree(tmp_path, "img", {"f": b"x"})
    boot = tmp_path / "bad.boot"
    boot.write_bytes(with_root_nlink((tmp_path / "img" / "bootstrap").read_bytes(), 7))
    blob_dir = tmp_path / "img" / "blobs" / "sha256"
    assert main(["check", str(boot), "--blob-dir", str(blob_dir)]) == 1
    capsys.readouterr()
    assert mount(str(boot), tmp_path / "mnt", tmp_path / "cache", "--blob-dir", str(blob_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nydus-py: {boot}: not mounted, the bootstrap is malformed: ") and err.count("\n") == 1
    assert "nlink" in err
    assert not (tmp_path / "cache").exists()  # refused before anything was expanded
    # --no-check hands it to the kernel as it is (a wrong link count does not stop the kernel)
    assert mount(str(boot), tmp_path / "mnt", tmp_path / "cache", "--blob-dir", str(blob_dir), "--no-check") == 0


def test_unpack_never_leaves_a_partial_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The second file's chunk is corrupt: exit 2, and neither the target nor any staging name is left."""
    doc = build_tree(tmp_path, "img", {"a": b"first file\n" * 100, "b": os.urandom(5000)})
    (blob,) = doc["blobs"]
    data = bytearray(Path(blob["path"]).read_bytes())
    from nydus_py.blob.reader import BlobReader

    with BlobReader(blob["path"]) as reader:
        second = max(reader.chunk_infos(reader.ci_header()), key=lambda c: c.compressed_offset)
    data[second.compressed_offset + 10] ^= 0xFF  # inside the chunk data of the file unpacked last
    Path(blob["path"]).write_bytes(bytes(data))
    parent = tmp_path / "out"
    parent.mkdir()
    capsys.readouterr()
    assert main(["unpack", doc["bootstrap"], "-o", str(parent / "new")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(parent.iterdir()) == []
    assert main(["unpack", doc["bootstrap"], "-o", str(tmp_path / "missing" / "parents" / "new")]) == 2
    assert not (tmp_path / "missing").exists()


def with_dirent_nid(bootstrap: bytes, directory: bytes, name: bytes, nid: int) -> bytes:
    """The bootstrap with the dirent `name` of `directory` pointing at inode `nid`."""
    from nydus_py.bootstrap.reader import BootstrapParser

    data = bytearray(bootstrap)
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    ext = parse(rafs.SuperBlockExt, data, what="extended superblock", offset=rafs.EXT_SUPER_OFFSET)
    parser = BootstrapParser(bytes(data), sb.meta_blkaddr, ext.s_chunk_size, None)
    dir_nid = sb.root_nid
    for part in directory.strip(b"/").split(b"/"):
        dir_nid = next(n for entry, n, _ in parser.dirents(parser.raw_inode(dir_nid)) if entry == part)
    for at, _length in parser.data_blocks(parser.raw_inode(dir_nid)):
        for i in range(erofs.dirent_count(parse(erofs.Dirent, data, what="dirent", offset=at).nameoff)):
            dirent = parse(erofs.Dirent, data, what="dirent", offset=at + i * erofs.DIRENT_SIZE)
            if [e for e, n, _ in parser.dirents(parser.raw_inode(dir_nid)) if n == dirent.nid] == [name]:
                dirent.nid = nid
                data[at + i * erofs.DIRENT_SIZE : at + (i + 1) * erofs.DIRENT_SIZE] = erofs.Dirent.build(dirent)
                return bytes(data)
    raise AssertionError(f"no dirent {name!r} in {directory!r}")


def with_inode_count(bootstrap: bytes, count: int) -> bytes:
    data = bytearray(bootstrap)
    sb = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET)
    sb.inos = count
    data[erofs.EROFS_SUPER_OFFSET : erofs.EROFS_SUPER_OFFSET + erofs.SuperBlock.sizeof()] = erofs.SuperBlock.build(sb)
    return bytes(data)


@pytest.mark.parametrize("hostile", ["cycle", "inode-count"])
def test_bounded_work_on_hostile_metadata(tmp_path: Path, hostile: str) -> None:
    """A directory graph with a cycle, or a superblock claiming 2^32-1 inodes: every read-side command ends
    at once with a clean status, whatever the counts claim."""
    import subprocess
    import sys
    import time

    need_mount()
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(b"f")
    assert main(["build", str(src), "-o", str(tmp_path / "img"), "--quiet"]) == 0
    data = (tmp_path / "img" / "bootstrap").read_bytes()
    if hostile == "cycle":
        root_nid = parse(erofs.SuperBlock, data, what="superblock", offset=erofs.EROFS_SUPER_OFFSET).root_nid
        data = with_dirent_nid(data, b"/d", b"e", root_nid)
    else:
        data = with_inode_count(data, 0xFFFF_FFFF)
    boot = tmp_path / "img" / "hostile.boot"
    boot.write_bytes(data)
    blobs = str(tmp_path / "img" / "blobs" / "sha256")
    (tmp_path / "mnt").mkdir()
    commands = {"check": ["check", str(boot), "--blob-dir", blobs],
                "inspect": ["inspect", str(boot), "--blob-dir", blobs],
                "unpack": ["unpack", str(boot), "--blob-dir", blobs, "-o", str(tmp_path / "u.tar")],
                "mount": ["mount", str(boot), str(tmp_path / "mnt"), "--blob-dir", blobs, "--cache-dir",
                          str(tmp_path / "cache")]}
    for name, args in commands.items():
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "nydus_py.cli", *args], capture_output=True, text=True,
                              timeout=60)
        assert time.monotonic() - started < 30, name
        if hostile == "cycle":
            assert done.returncode == (1 if name == "check" else 2), (name, done.stderr)
            assert done.stderr.count("\n") == (0 if name == "check" else 1), (name, done.stderr)
        else:
            assert done.returncode in (0, 1, 2) and "Traceback" not in done.stderr, (name, done.stderr)
        if name == "mount" and done.returncode == 0:
            assert main(["umount", str(tmp_path / "mnt")]) == 0


def test_a_dirent_name_with_a_slash_is_refused_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crafted name `c/d` would become a path in a tar, a merge or a directory: every reader refuses it."""
    from nydus_py.cli.nydus_image import main as image_main

    build_tree(tmp_path, "img", {"etc": b"x"})
    data = bytearray((tmp_path / "img" / "bootstrap").read_bytes())
    at = data.index(b"etc", erofs.EROFS_SUPER_OFFSET + erofs.SuperBlock.sizeof())  # the dirent name (3 bytes)
    data[at : at + 3] = b"c/d"
    boot = tmp_path / "slash.boot"
    boot.write_bytes(bytes(data))
    blobs = str(tmp_path / "img" / "blobs" / "sha256")
    assert main(["check", str(boot), "--blob-dir", blobs]) == 1
    capsys.readouterr()
    for args in (["unpack", str(boot), "--blob-dir", blobs, "-o", str(tmp_path / "u.tar")],
                 ["unpack", str(boot), "--blob-dir", blobs, "-o", str(tmp_path / "u")],
                 ["merge", str(boot), "--blob-dir", blobs, "-o", str(tmp_path / "m")],
                 ["inspect", str(boot)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "cannot hold '/'" in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "u.tar").exists() and not (tmp_path / "u").exists() and not (tmp_path / "m").exists()
    assert image_main(["merge", "--bootstrap", str(tmp_path / "mm"), str(boot), "--blob-digests", "ab" * 32]) == 1
    assert not (tmp_path / "mm").exists()
