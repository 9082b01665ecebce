"""`nydus-py build`: named trees -> blob + bootstrap; the kernel mount, fsck.erofs and our own reader must
all show exactly the source tree, for every compressor, both digesters and 4 KiB / 1 MiB / 16 MiB chunks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fixtures.trees import large_sparse, make_corpus, fix_times
from nydus_py import read_bootstrap
from nydus_py.blob.reader import BlobReader
from nydus_py.cli.main import main
from nydus_py.format.blobmeta import BLOB_ID_PLACEHOLDER
from nydus_py.read.locate import file_sha256, open_image
from nydus_py.read.validate import validate_tables
from tests.compare import differences
from tests.conftest import fsck_extract, mount_output, need_mount

CONFIGS = [
    ("zstd", "blake3", "1MiB"),
    ("lz4_block", "sha256", "4KiB"),
    ("none", "blake3", "16MiB"),
    ("zstd", "sha256", "0x1000"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_mount()  # the corpus needs root (owners, devices, trusted.* xattrs)
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def build(source: Path, out: Path, *extra: str) -> dict:
    status = main(["build", str(source), "-o", str(out), "--output-json", str(out.parent / f"{out.name}.json"),
                   *extra])
    assert status == 0
    return json.loads((out.parent / f"{out.name}.json").read_text())


@pytest.fixture(scope="module", params=CONFIGS, ids=["-".join(c) for c in CONFIGS])
def built(request: pytest.FixtureRequest, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    compressor, digester, chunk = request.param
    out = tmp_path_factory.mktemp("out") / "image"
    doc = build(corpus, out, "--compressor", compressor, "--digester", digester, "--chunk-size", chunk)
    return out, doc


def test_result_json_and_layout(built: tuple[Path, dict]) -> None:
    out, doc = built
    assert doc["bootstrap"] == str(out / "bootstrap") and os.path.isabs(doc["bootstrap"])
    boot = read_bootstrap((out / "bootstrap").read_bytes())
    assert [b["id"] for b in doc["blobs"]] == [b.blob_id for b in boot.blobs] == [d.tag for d in boot.devices]
    for blob in doc["blobs"]:
        path = Path(blob["path"])
        assert path == out / "blobs" / "sha256" / blob["id"]
        assert file_sha256(path) == blob["id"] and path.stat().st_size == blob["size"]
    assert sorted(os.listdir(out)) == ["blobs", "bootstrap", "index.json", "oci-layout"]
    assert doc["dedup"]["hits"] > 0 and doc["counts"]["entries"] == sum(1 for _ in boot.tree.walk())


def test_kernel_mount_equals_source(built: tuple[Path, dict], corpus: Path, tmp_path: Path) -> None:
    out, _ = built
    with mount_output(out / "bootstrap", out / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(corpus, mnt) == []


def test_fsck_erofs_extract_agrees(built: tuple[Path, dict], corpus: Path, tmp_path: Path) -> None:
    out, _ = built
    boot = read_bootstrap((out / "bootstrap").read_bytes())
    from nydus_py import expand_blob

    devices = [expand_blob(out / "blobs" / "sha256" / b.blob_id, b, tmp_path / f"dev{b.blob_index}").path
               for b in boot.blobs]
    fsck_extract(out / "bootstrap", devices, tmp_path / "x")
    # erofs-utils 1.5 extracts content, modes, owners and times; it restores no xattrs, loses suid/sgid
    # (it chowns after chmod) and writes hardlinks as separate files
    assert differences(corpus, tmp_path / "x", xattrs=False, setid=False, hardlinks=False) == []


def test_reader_decodes_the_same_tree(built: tuple[Path, dict], corpus: Path) -> None:
    out, _ = built
    opened = open_image(out)
    assert len(opened.blob_paths) == len(opened.bootstrap.blobs)
    source = {p: i for p, i in _source_entries(corpus)}
    decoded = {p: inode for p, inode in opened.bootstrap.tree.walk()}
    assert sorted(decoded) == sorted(source)
    for path, inode in decoded.items():
        st, target, xattrs = source[path]
        assert (inode.mode, inode.uid, inode.gid) == (st.st_mode, st.st_uid, st.st_gid), path
        assert inode.mtime * 10**9 + inode.mtime_nsec == st.st_mtime_ns, path
        assert inode.xattrs == xattrs, path
        if target is not None:
            assert inode.symlink_target == target
        if inode.chunks:
            assert inode.size == st.st_size


def _source_entries(root: Path):  # type: ignore[no-untyped-def]
    rb = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(rb):
        for name in ([b""] if dirpath == rb else []) + dirnames + filenames:
            full = os.path.join(dirpath, name) if name else dirpath
            rel = b"/" + os.path.relpath(full, rb) if name or dirpath != rb else b"/"
            rel = b"/" if rel == b"/." else rel
            st = os.lstat(full)
            target = os.readlink(full) if os.path.islink(full) else None
            xattrs = {os.fsencode(x): os.getxattr(full, x, follow_symlinks=False)
                      for x in os.listxattr(full, follow_symlinks=False)}
            yield rel, (st, target, xattrs)


def test_nydusd_validate_rules_hold(built: tuple[Path, dict]) -> None:
    out, doc = built
    assert validate_tables((out / "bootstrap").read_bytes()) == []
    for layer in doc["layers"]:
        inline = open_image(Path(layer["path"]))
        assert validate_tables(inline.bootstrap_bytes) == []
        assert [b.blob_id for b in inline.bootstrap.blobs] == [BLOB_ID_PLACEHOLDER]


def test_blob_tail_tar_layout(built: tuple[Path, dict]) -> None:
    out, doc = built
    path = Path(doc["blobs"][0]["path"])
    boot = read_bootstrap((out / "bootstrap").read_bytes())
    info = boot.blobs[0]
    with BlobReader(path) as blob:
        assert [s.name for s in reversed(blob.sections())] == [
            "image.blob", "blob.meta", "blob.digest", "image.boot", "rafs.blob.toc"]
        toc = blob.toc()
        assert [t.name for t in toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest", "image.boot"]
        assert all(t.compressor.name in ("NONE", "ZSTD") for t in toc)  # never lz4_block (snapshotter)
        for item in toc[1:]:
            blob.read_toc_item(item)
        assert blob.toc_digest() == (info.toc_digest, info.toc_size)
        header = blob.ci_header(info)
        assert (header.ci_offset, header.ci_entries) == (info.ci_offset, info.chunk_count)
        assert len(blob.chunk_digests()) == info.chunk_count
    assert info.compressed_size == path.stat().st_size


def test_jobs_and_listing_order_do_not_change_bytes(corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "reversed"
    other.mkdir(mode=corpus.stat().st_mode & 0o7777)
    make_corpus(other, reverse=True)
    outputs = []
    for name, source, jobs in (("j1", corpus, "1"), ("j2", corpus, "2"), ("rev", other, "2")):
        out = tmp_path / name
        build(source, out, "--jobs", jobs)
        blobs = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
        outputs.append(((out / "bootstrap").read_bytes(), blobs))
    assert outputs[0] == outputs[1] == outputs[2]


def test_extra_bootstrap_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    build(src, tmp_path / "out", "--bootstrap", str(tmp_path / "copy.boot"))
    assert (tmp_path / "copy.boot").read_bytes() == (tmp_path / "out" / "bootstrap").read_bytes()


def test_metadata_only_tree_has_no_device(tmp_path: Path) -> None:
    need_mount()
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    os.symlink("dir", src / "link")
    fix_times(src)
    doc = build(src, tmp_path / "out")
    assert doc["blobs"] == [] and len(doc["layers"]) == 1
    with BlobReader(Path(doc["layers"][0]["path"])) as blob:
        assert [t.name for t in blob.toc()] == ["image.boot"]
    with mount_output(tmp_path / "out" / "bootstrap", tmp_path / "out", tmp_path) as mnt:
        assert differences(src, mnt) == []


@pytest.mark.large
def test_file_over_4gib(tmp_path: Path) -> None:
    need_mount()
    src = tmp_path / "src"
    src.mkdir()
    large_sparse(src)
    fix_times(src)
    doc = build(src, tmp_path / "out", "--chunk-size", "16MiB")
    assert doc["counts"]["hole_chunks"] > 300 and doc["blobs"][0]["size"] < 1 << 20
    with mount_output(tmp_path / "out" / "bootstrap", tmp_path / "out" / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(src, mnt) == []
