"""Read side: inspect, check, unpack (directory and tar) and mount, on our images and nydus-image's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.trees import fix_times
from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import ROOT, need_mount, need_tool
from tests.test_build_errors import run_as_nobody


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


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


def test_fuzzed_images_end_cleanly() -> None:
    """A few hundred mutated bootstraps and blobs through check and inspect (tools/fuzz_read.py runs more):
    exit 0, 1 or 2 with a clean message, within 5 s each, in 2 GiB of address space."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz_read.py"), "--cases", "400", "--seed", "2026",
                           "--max-seconds", "5", "--max-memory-mib", "2048"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "400 cases" in done.stdout and "0 failures" in done.stdout
