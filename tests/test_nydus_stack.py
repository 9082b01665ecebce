"""The real Nydus stack judges our images, and our read side reads its images.

- nydusd 2.2 (FUSE, localfs backend) serves every kind of image we write, equal to the source;
- nydus-image 2.2 checks, inspects, unpacks and merges (as nydus-snapshotter calls it) what we write;
- nydus-image 2.2's own images are read by our inspect, check, unpack and mount;
- a bootstrap built by nydus-image 2.2 and one built by us from the same tree differ only where README says.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fixtures.trees import fix_times, make_corpus
from nydus_py.format.rafs import SuperFlags
from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.layers import OverlayStack, make_umoci_image, upper_to_oci_tar
from tests.nydus_stack import inline_bootstrap, need_nydus, nydus_image, nydusd_mount, snapshotter_merge
from tests.test_layers import stack  # noqa: F401 (the four-layer overlayfs stack fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bootstrap_diff  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every named test tree (hardlinks of every type, devices, xattrs incl. ACLs, holes, long names...)."""
    need_mount()
    root = tmp_path_factory.mktemp("corpus") / "tree"
    root.mkdir()
    return make_corpus(root)


@pytest.fixture(scope="module")
def corpus_22(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The corpus as nydus-image 2.2 can take it: without POSIX ACL xattrs (2.2's prefix check wants a name
    longer than `system.posix_acl_access`), without an xattr value holding a newline byte (2.2's tar parser
    calls such a PAX record malformed), with owners below 2^21 (2.2's tar-rafs ignores PAX uid/gid records and
    reads only the ustar fields), and with a root mtime of 0 (dir-rafs writes 0 for the root)."""
    root = tmp_path_factory.mktemp("corpus22") / "tree"
    subprocess.run(["cp", "-a", str(corpus), str(root)], check=True)
    for path in [root, *root.rglob("*")]:
        for name in os.listxattr(path, follow_symlinks=False):
            value = os.getxattr(path, name, follow_symlinks=False)
            if name.startswith("system.posix_acl_"):
                os.removexattr(path, name, follow_symlinks=False)
            elif b"\n" in value:
                os.setxattr(path, name, value.replace(b"\n", b" "), follow_symlinks=False)
        st = os.lstat(path)
        if max(st.st_uid, st.st_gid) >= 1 << 21:
            os.chown(path, st.st_uid % (1 << 21), st.st_gid % (1 << 21), follow_symlinks=False)
    os.utime(root, ns=(0, 0))
    return root


def tar_of(tree: Path, out: Path) -> Path:
    """A PAX tar of `tree` made by GNU tar, entries in name order as layer producers (containerd's differ,
    BuildKit) write them: nydus-image numbers inodes in entry order, so readdir order would make it vary."""
    subprocess.run(["tar", "-C", str(tree), "--format=pax", "--sort=name", "--xattrs", "--xattrs-include=*", "-cf",
                    str(out), "."], check=True, capture_output=True)
    return out


def extracted(tar: Path, out: Path) -> Path:
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "--xattrs", "--xattrs-include=*", "--same-owner", "-xpf", str(tar)],
                   check=True, capture_output=True)
    return out


def build(*args: str) -> dict:
    out = Path(args[args.index("-o") + 1])
    assert main(["build", *args, "--output-json", f"{out}.json", "--quiet"]) == 0
    return json.loads(Path(f"{out}.json").read_text())


# --- nydusd serves our images -------------------------------------------------------------------------------

@pytest.mark.parametrize(("compressor", "digester"), [("zstd", "blake3"), ("zstd", "sha256"), ("lz4_block", "blake3"),
                                                      ("lz4_block", "sha256"), ("none", "blake3"), ("none", "sha256")])
def test_nydusd_serves_directory_builds(corpus: Path, tmp_path: Path, compressor: str, digester: str) -> None:
    out = tmp_path / "out"
    build(str(corpus), "-o", str(out), "--compressor", compressor, "--digester", digester)
    with nydusd_mount(out / "bootstrap", out / "blobs" / "sha256", tmp_path, prefetch=True) as mnt:
        assert differences(corpus, mnt) == []


def test_nydusd_serves_small_chunks_without_prefetch(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(str(corpus / "file_data"), "-o", str(out), "--chunk-size", "4KiB", "--no-prefetch")
    with nydusd_mount(out / "bootstrap", out / "blobs" / "sha256", tmp_path, prefetch=False) as mnt:
        assert differences(corpus / "file_data", mnt) == []


def test_nydusd_serves_overlay_build(stack: OverlayStack, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(*map(str, stack.uppers), "-o", str(out))
    with stack.view() as view, nydusd_mount(out / "bootstrap", out / "blobs" / "sha256", tmp_path) as mnt:
        assert len(list(view.rglob("*"))) >= 10
        assert differences(view, mnt) == []


def test_nydusd_serves_converted_image(tmp_path: Path) -> None:
    """The bootstrap of the image's bootstrap layer (what nydus-snapshotter hands nydusd), blobs by digest."""
    (tmp_path / "src").mkdir()
    source = make_umoci_image(tmp_path / "src", need_tool("umoci"), "v1")
    out = tmp_path / "out"
    assert main(["convert", f"oci:{source / 'image'}:v1", f"oci:{out}:v1"]) == 0
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    layer = out / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]
    with tarfile.open(layer) as tar:
        boot = tar.extractfile("image/image.boot")
        assert boot is not None
        (tmp_path / "image.boot").write_bytes(boot.read())
    with nydusd_mount(tmp_path / "image.boot", out / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(source / "truth" / "rootfs", mnt) == []


# --- nydus-image reads our output ---------------------------------------------------------------------------

def test_nydus_image_checks_inspects_and_unpacks_our_images(corpus_22: Path, stack: OverlayStack,
                                                            tmp_path: Path) -> None:
    single = build(str(corpus_22), "-o", str(tmp_path / "single"))
    layered = build(*map(str, stack.uppers), "-o", str(tmp_path / "layered"))
    bootstraps = [Path(single["bootstrap"]), Path(layered["bootstrap"])]
    bootstraps += [inline_bootstrap(Path(layer["path"]), tmp_path / f"inline-{i}")
                   for i, layer in enumerate(single["layers"] + layered["layers"])]
    for boot in bootstraps:
        nydus_image("check", "--bootstrap", boot, "--output-json", tmp_path / "check.json")
        assert json.loads((tmp_path / "check.json").read_text())["bootstrap"] == str(boot)
        stats = json.loads(nydus_image("inspect", "-R", "stats", boot).stdout)
        ours = json.loads(subprocess.run([sys.executable, "-m", "nydus_py.cli", "inspect", str(boot), "--json"],
                                         capture_output=True, text=True, check=True).stdout)
        assert stats["inodes_count"] == ours["inodes"], boot
        blobs = json.loads(nydus_image("inspect", "-R", "blobs", boot).stdout)
        assert [(b["compressed_size"], b["decompressed_size"]) for b in blobs] == [
            (b["compressed_size"], b["uncompressed_size"]) for b in ours["blobs"]]
        if not boot.name.startswith("inline-"):  # 2.2 shows an inline bootstrap's placeholder id as its file name
            assert [b["blob_id"] for b in blobs] == [b["id"] for b in ours["blobs"]]
    (blob,) = single["blobs"]
    nydus_image("unpack", "--bootstrap", single["bootstrap"], "--blob", blob["path"], "--output", tmp_path / "u.tar")
    # nydus-image unpack writes ustar times (whole seconds) and leaves sockets out, as tar must
    unpacked = extracted(tmp_path / "u.tar", tmp_path / "unpacked")
    expected = extracted(tar_of(corpus_22, tmp_path / "src.tar"), tmp_path / "expected")
    assert differences(expected, unpacked, mtime=False) == []


def test_nydus_image_merges_our_layers_as_the_snapshotter_does(stack: OverlayStack, tmp_path: Path) -> None:
    tars = [upper_to_oci_tar(u, tmp_path / f"layer{i}.tar") for i, u in enumerate(stack.uppers)]
    tars.insert(2, tmp_path / "dataless.tar")  # a layer without data: deletions only
    with tarfile.open(tars[2], "w") as tar:
        tar.addfile(tarfile.TarInfo(".wh.does-not-exist"))
    doc = build(*map(str, tars), "-o", str(tmp_path / "out"))
    merged = snapshotter_merge([Path(layer["path"]) for layer in doc["layers"]], tmp_path)
    blob_dir = tmp_path / "out" / "blobs" / "sha256"
    with stack.view() as view, nydusd_mount(merged, blob_dir, tmp_path) as mnt:
        assert differences(view, mnt) == []
    nydus_image("check", "--bootstrap", merged)
    # and our merge of the same blobs agrees with nydus-image's on every field but those README lists
    lines = bootstrap_diff.differences(merged.read_bytes(), (tmp_path / "out" / "bootstrap").read_bytes())
    assert {bootstrap_diff.field_of(line) for line in lines} <= FORMAT_CHANGES | SNAPSHOTTER_MERGE, lines


def test_cross_layer_dedup_layers_are_refused_by_nydus_image_merge(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(os.urandom(10000))
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "f", tmp_path / "b" / "g")
    (tmp_path / "b" / "h").write_bytes(b"data of its own")
    doc = build(str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"), "--cross-layer-dedup")
    sources = []
    for layer in doc["layers"]:
        sources.append(inline_bootstrap(Path(layer["path"]), tmp_path / Path(layer["path"]).name))
    done = subprocess.run([need_nydus("nydus-image"), "merge", "--bootstrap", str(tmp_path / "m"),
                           *map(str, sources)], capture_output=True, text=True)
    # the upper layer references the lower layer's blob besides its own; nydus-image wants one per layer
    assert done.returncode != 0 and "multiple associated data blobs" in done.stderr + done.stdout


# --- we read nydus-image's output ---------------------------------------------------------------------------

# (name, create arguments, source kind): what nydus-image 2.2 offers, each read back by our read side
NYDUS_IMAGE_CASES = [
    ("dir-inline-zstd-blake3", ["-t", "dir-rafs", "--blob-inline-meta", "--features", "blob-toc"], "dir"),
    ("dir-separate-lz4-sha256-4k", ["-t", "dir-rafs", "--compressor", "lz4_block", "--digester", "sha256",
                                    "--chunk-size", "0x1000"], "dir"),
    ("dir-separate-none-16m", ["-t", "dir-rafs", "--compressor", "none", "--chunk-size", "0x1000000"], "dir"),
    ("dir-inline-none-sha256", ["-t", "dir-rafs", "--blob-inline-meta", "--features", "blob-toc",
                                "--compressor", "none", "--digester", "sha256"], "dir"),
    ("tar-inline-zstd", ["-t", "tar-rafs", "--blob-inline-meta", "--features", "blob-toc"], "tar"),
    ("tar-separate-lz4-4k", ["-t", "tar-rafs", "--compressor", "lz4_block", "--chunk-size", "0x1000"], "tar"),
    ("dir-chunk-dict", ["-t", "dir-rafs", "--chunk-dict", "bootstrap={dict}"], "dir"),
    ("dir-overlayfs-whiteouts", ["-t", "dir-rafs", "--whiteout-spec", "overlayfs"], "overlay"),
    ("dir-oci-whiteouts", ["-t", "dir-rafs", "--whiteout-spec", "oci"], "oci-markers"),
]


def _nydus_image_source(kind: str, corpus_22: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(what to give nydus-image, the tree the image must show)."""
    if kind == "tar":
        tar = tar_of(corpus_22, tmp_path / "src.tar")
        return tar, extracted(tar, tmp_path / "expected")
    if kind == "dir":
        return corpus_22, corpus_22
    # a single layer with whiteouts: dir-rafs drops them (and keeps what is left)
    src, expected = tmp_path / "src", tmp_path / "expected"
    for tree in (src, expected):
        (tree / "d").mkdir(parents=True)
        (tree / "d" / "kept").write_bytes(b"kept\n")
    if kind == "overlay":
        os.mknod(src / "gone", 0o600 | 0o020000, os.makedev(0, 0))
    else:
        (src / ".wh.gone").write_bytes(b"")
        (src / "d" / ".wh..wh..opq").write_bytes(b"")
    for tree in (src, expected):
        fix_times(tree)
        os.utime(tree, ns=(0, 0))
    return src, expected


@pytest.mark.parametrize(("name", "args", "kind"), NYDUS_IMAGE_CASES, ids=[c[0] for c in NYDUS_IMAGE_CASES])
def test_we_read_nydus_image_output(corpus_22: Path, tmp_path: Path, name: str, args: list[str], kind: str) -> None:
    source, expected = _nydus_image_source(kind, corpus_22, tmp_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    if "bootstrap={dict}" in args:  # a chunk dictionary made from part of the tree
        nydus_image("create", "--fs-version", "6", "-B", tmp_path / "dict.boot", "-D", blobs, source / "file_data")
        args = [a.replace("{dict}", str(tmp_path / "dict.boot")) for a in args]
    inline = "--blob-inline-meta" in args
    boot_args = [] if inline else ["-B", str(tmp_path / "boot")]
    nydus_image("create", "--fs-version", "6", "-D", blobs, *boot_args, *args, source)
    if inline:
        (blob,) = blobs.iterdir()
        image = [str(blob)]
    else:
        image = [str(tmp_path / "boot"), "--blob-dir", str(blobs)]
    assert main(["check", *image]) == 0
    assert main(["inspect", *image]) == 0
    assert main(["unpack", *image, "-o", str(tmp_path / "unpacked")]) == 0
    # nydus-image 2.2's tar-rafs takes mtimes from the ustar field (whole seconds), not from PAX records
    whole_seconds = kind == "tar"
    assert differences(expected, tmp_path / "unpacked", mtime_ns=not whole_seconds) == []
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", *image, str(mnt), "--cache-dir", str(tmp_path / "cache")]) == 0
    try:
        assert differences(expected, mnt, mtime_ns=not whole_seconds) == []
    finally:
        assert main(["umount", str(mnt)]) == 0


# --- byte comparison ----------------------------------------------------------------------------------------

# Fields where nydus-image 2.2 and current nydus-image (which we follow) differ: docs/format.md §14.3.
FORMAT_CHANGES = {
    "device.mapped_blkaddr",  # 2.2 writes 0; current nydus-image aligns device slots to 512 KiB
    "ext.s_flags",  # current nydus-image adds ENCRYPTION_NONE
    "inode.i_ino",  # the root: 2.2 writes 0, current nydus-image 1
    "chunk.flags", "chunk.crc32",  # current nydus-image records a CRC-32C per chunk
}
# A merge as nydus-snapshotter runs it passes no --blob-sizes/--blob-toc-digests for ordinary layers: the blob
# table keeps what each layer's inline table says (the size before image.boot, no TOC), docs/format.md §14.3
SNAPSHOTTER_MERGE = {"blob.compressed_size", "blob.blob_toc_size", "blob.blob_toc_digest"}
# Deliberate differences of ours (README "Deliberate differences")
OURS = {
    "inode.xattr_order",  # we sort xattrs by name; nydus-image writes hash order (not reproducible)
    "inode.i_mtime", "inode.i_mtime_nsec",  # the root keeps the source's mtime (dir-rafs writes 0)
}


@pytest.mark.parametrize("kind", ["dir", "tar"])
def test_bootstraps_differ_only_where_readme_says(corpus_22: Path, tmp_path: Path, kind: str) -> None:
    """The same tree and options: nydus-image 2.2's inline bootstrap and ours, field by field."""
    source = corpus_22 if kind == "dir" else tar_of(corpus_22, tmp_path / "src.tar")
    (tmp_path / "ni").mkdir()
    nydus_image("create", "--fs-version", "6", "-t", f"{kind}-rafs", "--blob-inline-meta", "--features", "blob-toc",
                "-D", tmp_path / "ni", source)
    (theirs,) = (tmp_path / "ni").iterdir()
    ours = build(str(source), "-o", str(tmp_path / "us"), "--no-prefetch")["layers"][0]["path"]
    a = inline_bootstrap(theirs, tmp_path / "a").read_bytes()
    b = inline_bootstrap(Path(ours), tmp_path / "b").read_bytes()
    lines = bootstrap_diff.differences(a, b)
    fields = {bootstrap_diff.field_of(line) for line in lines}
    assert fields <= FORMAT_CHANGES | OURS, lines
    # the tool sees them (not xattr_order: nydus-image's hash order is random per run, and may come out sorted)
    assert {"ext.s_flags", "inode.i_ino", "chunk.crc32"} <= fields, lines
    # only the root's number differs (2.2: 0 for dir-rafs, 2 for tar-rafs; current nydus-image and we: 1)
    assert [line.split(":")[0] for line in lines if line.startswith("inode.i_ino ")] == ["inode.i_ino /"], lines
    flags_a, flags_b = bootstrap_diff.describe(a)["ext.s_flags"], bootstrap_diff.describe(b)["ext.s_flags"]
    assert flags_b == flags_a | SuperFlags.ENCRYPTION_NONE
