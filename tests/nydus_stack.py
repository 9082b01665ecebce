"""The real Nydus stack as a test oracle: nydusd (FUSE), nydus-image and nydusify, installed by
tools/install-nydus-stack.sh. Tests that need them skip on a user's machine without them and fail in CI
(NYDUS_PY_REQUIRE_NYDUS=1)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from nydus_py.blob.reader import BlobReader

TOOLS_CACHE = Path(os.environ.get("NYDUS_PY_TOOLS", "/var/cache/nydus-py-tools"))
MOUNT_WAIT = 30.0  # seconds nydusd may take to serve a mount


def missing(reason: str) -> NoReturn:
    """A tool the test needs is missing: a failure in CI (NYDUS_PY_REQUIRE_NYDUS=1), else a skip."""
    if os.environ.get("NYDUS_PY_REQUIRE_NYDUS") == "1":
        pytest.fail(f"NYDUS_PY_REQUIRE_NYDUS=1 but {reason}")
    pytest.skip(reason)


def need_nydus(name: str, installer: str = "tools/install-nydus-stack.sh") -> str:
    """The path of a tool of the real stack (`nydusd`, `nydus-image`, `buildkitd`...): on PATH, else the newest
    one in the tools cache that `installer` fills."""
    path = shutil.which(name)
    if path is None:
        found = sorted([*TOOLS_CACHE.glob(f"*/bin/{name}"), *TOOLS_CACHE.glob(f"*/{name}")],
                       key=lambda p: p.stat().st_mtime)
        path = str(found[-1]) if found else None
    if path is None:
        missing(f"{name} is not installed (run {installer})")
    return path


def need_fuse() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "nydusd's FUSE mounts need root here"
    elif not Path("/dev/fuse").exists():
        reason = "/dev/fuse is missing"
    if reason:
        missing(reason)


def nydus_image(*args: str | os.PathLike[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run nydus-image; a non-zero exit fails the test with its output."""
    done = subprocess.run([need_nydus("nydus-image"), *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=300)
    assert done.returncode == 0, f"nydus-image {' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


@contextlib.contextmanager
def nydusd_mount(bootstrap: Path, blob_dir: Path, workdir: Path, *, prefetch: bool = True) -> Iterator[Path]:
    """nydusd serving `bootstrap` over FUSE, blobs read by id from `blob_dir` (localfs backend, blobcache);
    yields the mount point, unmounts and stops nydusd after."""
    nydusd = need_nydus("nydusd")
    need_fuse()
    run = Path(workdir) / f"nydusd-{time.monotonic_ns()}"
    mnt, cache = run / "mnt", run / "cache"
    mnt.mkdir(parents=True)
    cache.mkdir()
    config = {
        "device": {"backend": {"type": "localfs", "config": {"dir": str(blob_dir)}},
                   "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}}},
        # 2.2 refuses digest_validate for RAFS v6 ("doesn't support integrity validation yet")
        "mode": "direct", "digest_validate": False, "enable_xattr": True,
        "fs_prefetch": {"enable": prefetch, "threads_count": 2},
    }
    (run / "config.json").write_text(json.dumps(config))
    log = (run / "nydusd.log").open("wb")
    # --rlimit-nofile 0: raising the hard limit needs CAP_SYS_RESOURCE, which a container's root may lack
    proc = subprocess.Popen([nydusd, "--config", str(run / "config.json"), "--bootstrap", str(bootstrap),
                             "--mountpoint", str(mnt), "--log-level", "warn", "--rlimit-nofile", "0"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nydusd did not serve {bootstrap}:\n{(run / 'nydusd.log').read_text()[-3000:]}")
            time.sleep(0.05)
        yield mnt
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def inline_bootstrap(blob: Path, out: Path) -> Path:
    """A layer blob's `image.boot`, written to `out`."""
    with BlobReader(blob) as reader:
        data = reader.inline_bootstrap()
    assert data is not None, f"{blob}: no image.boot"
    out.write_bytes(data)
    return out


def snapshotter_merge(layer_blobs: list[Path], workdir: Path, *, patterns: str = "/") -> Path:
    """Merge layer blobs the way nydus-snapshotter's converter does (pkg/converter `Merge`): each blob's
    `image.boot` unpacked into a file named by the blob digest's hex, then `nydus-image merge --prefetch-policy
    fs --output-json ... --bootstrap OUT boot...` with the prefetch patterns on stdin (no --blob-digests for
    ordinary layers). Returns the merged bootstrap."""
    work = workdir / "snapshotter-merge"
    work.mkdir()
    sources = []
    for blob in layer_blobs:
        sources.append(inline_bootstrap(blob, work / blob.name))
    target = work / "bootstrap"
    nydus_image("merge", "--log-level", "warn", "--prefetch-policy", "fs", "--output-json", work / "merge.json",
                "--bootstrap", target, *sources, stdin=patterns)
    return target
