"""Read side: inspect, check, unpack (directory and tar) and mount, on our images and nydus-image's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.trees import fix_times, make_corpus
from nydus_py.bootstrap.reader import BootstrapParser, read_bootstrap
from nydus_py.cli import main
from nydus_py.format import erofs
from tests.compare import differences
from tests.conftest import ROOT, V1_BOOT, V2_BLOB, need_mount, need_nydus_fixtures, need_tool
from tests.layers import OverlayStack
from tests.test_build_errors import run_as_nobody
from tests.test_layers import base_layer, second_layer


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def corpus_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_mount()
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("img") / "out"
    assert main(["build", str(corpus), "-o", str(out)]) == 0
    return corpus, out


def test_unpack_to_directory(corpus_image: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, image = corpus_image
    assert main(["unpack", str(image), "-o", str(tmp_path / "x")]) == 0
    assert differences(corpus, tmp_path / "x") == []
    sparse = tmp_path / "x" / "file_data" / "sparse"
    assert sparse.stat().st_blocks * 512 < sparse.stat().st_size  # holes stay holes


def test_unpack_to_tar_extracted_by_gnu_tar(corpus_image: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, image = corpus_image
    tar = need_tool("tar")
    assert main(["unpack", str(image), "-o", str(tmp_path / "out.tar")]) == 0
    (tmp_path / "x").mkdir()
    subprocess.run([tar, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tmp_path / "out.tar"),
                    "-C", str(tmp_path / "x")], check=True)
    os.utime(tmp_path / "x", ns=(os.lstat(corpus).st_mtime_ns,) * 2)  # GNU tar leaves '.' alone
    diffs = differences(corpus, tmp_path / "x")
    assert diffs == [f"only in source: {b'specials/sock'!r}"]  # tar cannot hold a socket, as OCI layers do not


def test_mount_and_umount(corpus_image: tuple[Path, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    corpus, image = corpus_image
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    status, out, _ = run(capsys, "mount", str(image), str(mnt), "--cache-dir", str(cache))
    try:
        assert status == 0 and "mounted" in out
        assert differences(corpus, mnt) == []
    finally:
        assert main(["umount", str(mnt)]) == 0
    (device,) = cache.iterdir()  # one verified device image, named by what made it
    assert device.name.endswith(".device")
    before = device.stat().st_mtime_ns
    status, _, _ = run(capsys, "mount", str(image), str(mnt), "--cache-dir", str(cache))  # reuses the cache
    main(["umount", str(mnt)])
    assert status == 0 and device.stat().st_mtime_ns == before


def test_mount_needs_root(corpus_image: tuple[Path, Path]) -> None:
    _, image = corpus_image
    status, err = run_as_nobody("mount", str(image), "/tmp", "--cache-dir", "/tmp/nydus-py-nobody-cache")
    assert status == 2 and "needs root" in err and err.count("\n") == 1


def test_mount_an_inline_layer_blob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"inline" * 1000)
    fix_times(src)
    assert main(["build", str(src), "-o", str(tmp_path / "out"), "--output-json", str(tmp_path / "r.json")]) == 0
    blob = json.loads((tmp_path / "r.json").read_text())["layers"][0]["path"]
    (tmp_path / "mnt").mkdir()
    assert main(["mount", blob, str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "c")]) == 0
    try:
        assert (tmp_path / "mnt" / "f").read_bytes() == b"inline" * 1000
    finally:
        main(["umount", str(tmp_path / "mnt")])


def test_check_passes_on_our_images(corpus_image: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, image = corpus_image
    status, out, err = run(capsys, "check", str(image), "--json")
    doc = json.loads(out)
    assert status == 0 and doc["sound"] and doc["blobs_checked"] == 1 and doc["chunks_verified"] > 10
    for info in read_bootstrap((image / "bootstrap").read_bytes()).blobs:  # the layer blob, inline bootstrap
        assert run(capsys, "check", str(image / "blobs" / "sha256" / info.blob_id))[0] == 0


def test_check_passes_on_a_layered_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    stack = OverlayStack(tmp_path)
    for change in (base_layer, second_layer):
        stack.add_layer(change)
    assert main(["build", *map(str, stack.uppers), "-o", str(tmp_path / "out")]) == 0
    status, out, _ = run(capsys, "check", str(tmp_path / "out"))
    assert status == 0 and "sound (" in out and "2 blobs" in out
    assert main(["unpack", str(tmp_path / "out"), "-o", str(tmp_path / "x")]) == 0
    with stack.view() as view:
        assert differences(view, tmp_path / "x") == []


@pytest.mark.parametrize("image", ["v1", "v2"])
def test_check_passes_on_real_nydus_images(capsys: pytest.CaptureFixture[str], image: str) -> None:
    need_nydus_fixtures()
    status, out, _ = run(capsys, "check", str(V1_BOOT if image == "v1" else V2_BLOB))
    assert status == 0 and "sound" in out and "1 blobs" in out and "defect" not in out


def test_inspect_shows_tables_and_path(corpus_image: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, image = corpus_image
    status, out, _ = run(capsys, "inspect", str(image), "/symlinks", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["prefetch_nids"] == [doc["root_nid"]]
    assert doc["blobs"][0]["feature_names"] == ["ALIGNED", "INLINED_CHUNK_DIGEST", "HAS_TAR_HEADER", "HAS_TOC",
                                                "CAP_TAR_TOC"]
    assert any(line.endswith("/symlinks/short -> target") for line in doc["listing"])
    assert all("/symlinks" in line for line in doc["listing"])


# --- check finds hand-made defects ------------------------------------------------------------------


@pytest.fixture()
def small_image(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, Path]:
    compressor = getattr(request, "param", "zstd")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data").write_bytes(os.urandom(5000) + b"z" * 20000)
    (src / "top").write_bytes(b"top file")
    out = tmp_path / "out"
    assert main(["build", str(src), "-o", str(out), "--compressor", compressor, "--chunk-size", "4KiB"]) == 0
    (info,) = read_bootstrap((out / "bootstrap").read_bytes()).blobs
    return out / "bootstrap", out / "blobs" / "sha256" / info.blob_id, out


def patch_file(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def root_dirents(boot_path: Path) -> int:
    """File offset of the root directory's inline dirents."""
    data = boot_path.read_bytes()
    boot = read_bootstrap(data)
    parser = BootstrapParser(data, boot.meta_blkaddr, boot.chunk_size, boot.chunk_table)
    return parser.raw_inode(boot.root_nid).body_end


def expect_defect(capsys: pytest.CaptureFixture[str], image: Path, text: str) -> None:
    status, out, _ = run(capsys, "check", str(image))
    assert status == 1, out
    assert any(line.startswith("defect: ") and text in line for line in out.splitlines()), out


def test_defect_bad_magic(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    patch_file(boot, erofs.EROFS_SUPER_OFFSET, b"\0\0\0\0")
    expect_defect(capsys, out, "magic")


def test_defect_wrong_counts(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    table = read_bootstrap(boot.read_bytes())
    at = 0x1000 + 72  # blob table entry 0: chunk_count
    patch_file(boot, at, (table.blobs[0].chunk_count + 1).to_bytes(4, "little"))
    expect_defect(capsys, out, "16 * chunk_count")


def test_defect_dirent_past_the_end(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    patch_file(boot, root_dirents(boot) + 12 + 8, (3000).to_bytes(2, "little"))  # dirent 1's nameoff
    expect_defect(capsys, out, "dirent")


def test_defect_loop_in_directory_graph(small_image: tuple[Path, Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    at = root_dirents(boot)
    root_nid = read_bootstrap(boot.read_bytes()).root_nid
    patch_file(boot, at + 2 * 12, root_nid.to_bytes(8, "little"))  # "sub" (sorted after "." and "..") -> root
    expect_defect(capsys, out, "loop")


def test_defect_chunk_fails_to_decompress(small_image: tuple[Path, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    from nydus_py.blob.reader import BlobReader

    with BlobReader(blob) as reader:
        chunk = next(c for c in reader.chunk_infos() if c.compressed)
    patch_file(blob, chunk.compressed_offset + 4, b"\xff" * 8)  # inside a zstd frame
    expect_defect(capsys, out, f"chunk {chunk.ci_index} at {chunk.compressed_offset:#x}: zstd")


@pytest.mark.parametrize("small_image", ["none"], indirect=True)
def test_defect_chunk_digest_differs(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    patch_file(blob, 100, b"\x00\x01\x02")  # stored raw: still "decompresses", but the digest differs
    expect_defect(capsys, out, "digest does not match")


def test_defect_truncated_blob(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    os.truncate(blob, blob.stat().st_size - 100)
    expect_defect(capsys, out, "blob")


def test_check_cannot_run_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", str(tmp_path / "missing"))
    assert status == 2 and err.count("\n") == 1


def test_fuzzed_images_end_cleanly() -> None:
    """A few hundred mutated bootstraps and blobs through check and inspect (tools/fuzz_read.py runs more):
    exit 0, 1 or 2 with a clean message, within 5 s each, in 2 GiB of address space."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz_read.py"), "--cases", "400", "--seed", "2026",
                           "--max-seconds", "5", "--max-memory-mib", "2048"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "400 cases" in done.stdout and "0 failures" in done.stdout
