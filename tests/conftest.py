"""Shared test fixtures: where the real nydus-image vectors are (fixtures/nydus/), and kernel-mount helpers that
skip on a user's machine but fail in CI (NYDUS_PY_REQUIRE_MOUNT=1)."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NYDUS_FIXTURES = ROOT / "fixtures" / "nydus"  # real nydus-image output (fixtures/README.md)
GOLDEN = ROOT / "fixtures" / "golden"
V1_BOOT = NYDUS_FIXTURES / "rafs-v6-2.2.boot"
V1_BLOB = NYDUS_FIXTURES / "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
V2_BLOB = NYDUS_FIXTURES / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
V3_META = NYDUS_FIXTURES / "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"


def _required(var: str) -> bool:
    return os.environ.get(var) == "1"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if _required("NYDUS_PY_REQUIRE_MOUNT"):
            pytest.fail(f"NYDUS_PY_REQUIRE_MOUNT=1 but {name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def need_mount() -> None:
    """Kernel mounts need root and EROFS; in CI their absence is a failure, elsewhere a skip."""
    reason = None
    if os.geteuid() != 0:
        reason = "kernel mounts need root"
    elif "erofs" not in Path("/proc/filesystems").read_text() and not _can_load_erofs():
        reason = "the kernel has no EROFS support"
    if reason:
        if _required("NYDUS_PY_REQUIRE_MOUNT"):
            pytest.fail(f"NYDUS_PY_REQUIRE_MOUNT=1 but {reason}")
        pytest.skip(reason)


def _can_load_erofs() -> bool:
    with contextlib.suppress(OSError):
        os.system("modprobe erofs >/dev/null 2>&1")
    return "erofs" in Path("/proc/filesystems").read_text()


@contextlib.contextmanager
def kernel_mount(bootstrap: Path, devices: Sequence[Path]) -> Iterator[Path]:
    """Mount `bootstrap` with one device image per slot; yields the mount point, unmounts after."""
    from nydus_py.read.kmount import mount_erofs, umount

    need_mount()
    mountpoint = Path(tempfile.mkdtemp(prefix="nydus-py-mnt-"))
    mount_erofs(bootstrap, devices, mountpoint)
    try:
        yield mountpoint
    finally:
        umount(mountpoint)
        mountpoint.rmdir()


def golden_bytes(name: str) -> bytes:
    return gzip.decompress((GOLDEN / name).read_bytes())


@contextlib.contextmanager
def mount_output(bootstrap: Path, blob_dir: Path, workdir: Path) -> Iterator[Path]:
    """Expand every blob of `bootstrap` (found in `blob_dir`) into a device image and mount it."""
    from nydus_py import expand_blob, read_bootstrap

    boot = read_bootstrap(bootstrap.read_bytes())
    devices = []
    for info in boot.blobs:
        devices.append(expand_blob(blob_dir / info.blob_id, info, workdir / f"blob-cache-{info.blob_index}").path)
    with kernel_mount(bootstrap, devices) as mnt:
        yield mnt


def fsck_extract(bootstrap: Path, devices: Sequence[Path], out: Path) -> None:
    import subprocess

    fsck = need_tool("fsck.erofs")
    args = [fsck, *(f"--device={d}" for d in devices), f"--extract={out}", str(bootstrap)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def corpus_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The test corpus (fixtures/trees.py) and its nydus-py build (OUTDIR), made once per session."""
    from fixtures.trees import make_corpus
    from nydus_py.cli.main import main

    need_mount()
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("img") / "out"
    assert main(["build", str(corpus), "-o", str(out)]) == 0
    return corpus, out
