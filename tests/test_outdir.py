"""nydus_py/util/outdir.py: one transaction per output directory: a new directory is removed after a
failure, an existing one is left unchanged, a second writer fails at once with "busy"."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nydus_py.errors import UsageError
from nydus_py.util.outdir import OutputDir
from tests.hostile import TIME_LIMIT, nydus_py, refused, snapshot


def test_a_failed_build_into_a_new_directory_removes_only_what_it_created(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    refused(nydus_py("build", str(tmp_path / "bad.tar"), "-o", str(tmp_path / "new")))
    assert sorted(os.listdir(tmp_path)) == ["bad.tar"]


def test_a_busy_output_directory_fails_at_once_without_touching_it(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"f")
    out = tmp_path / "out"
    assert nydus_py("build", str(tmp_path / "tree"), "-o", str(out)).returncode == 0
    before = snapshot(out)
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another writer holds the directory
        started = time.monotonic()
        refused(nydus_py("build", str(tmp_path / "tree"), "-o", str(out)), str(out), "is busy")
        assert time.monotonic() - started < 10
    finally:
        os.close(fd)
    assert snapshot(out) == before
    assert nydus_py("build", str(tmp_path / "tree"), "-o", str(out)).returncode == 0


def test_two_concurrent_builds_into_one_directory(tmp_path: Path) -> None:
    """Both succeed, or one fails at once with "busy"; the winner's image is complete either way."""
    (tmp_path / "tree").mkdir()
    for i in range(200):
        (tmp_path / "tree" / f"f{i}").write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nydus_py.cli", "build", str(tmp_path / "tree"), "-o", str(out)]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=TIME_LIMIT), p.stderr.read() if p.stderr else "") for p in runs]
    assert any(status == 0 for status, _ in results), results
    for status, err in results:
        assert status == 0 or (status == 2 and "is busy" in err), results
    assert nydus_py("check", str(out)).returncode == 0
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_a_rolled_back_transaction_puts_back_what_it_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputDir.open(out) as first:
        first.publish_bytes(b"old", "blobs/x")
    with pytest.raises(RuntimeError), OutputDir.open(out) as second:
        second.publish_bytes(b"new", "blobs/x")
        second.publish_bytes(b"extra", "extra")
        raise RuntimeError("a later step failed")
    assert (out / "blobs" / "x").read_bytes() == b"old"
    assert sorted(p.name for p in out.iterdir()) == ["blobs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging area went with it


def _publish_blob(outdir: Path, data: bytes) -> Path:
    """Stage `data` and publish it as the blob of its digest; returns the staged file's path."""
    with OutputDir.open(outdir) as out:
        f, tmp = out.temporary("blob")
        with f:
            f.write(data)
        out.publish_blob(tmp, hashlib.sha256(data).hexdigest(), len(data))
    return tmp


def test_an_existing_blob_is_kept_only_when_it_verifies(tmp_path: Path) -> None:
    good = b"content"
    with OutputDir.open(tmp_path / "out") as out:
        target = out.publish_bytes(b"tampered", f"blobs/sha256/{hashlib.sha256(good).hexdigest()}")
    inode = target.stat().st_ino
    _publish_blob(tmp_path / "out", good)
    assert target.read_bytes() == good and target.stat().st_ino != inode  # replaced: it did not verify
    inode = target.stat().st_ino
    staged = _publish_blob(tmp_path / "out", good)
    assert target.stat().st_ino == inode  # kept: the same file, verified
    assert not staged.exists()


def test_a_symlinked_component_is_never_written_through(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blobs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="not a directory"), OutputDir.open(tmp_path / "out") as out:
        out.publish_bytes(b"x", "blobs/sha256/y")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("existing", [False, True])
def test_a_killed_convert_leaves_staging_that_the_next_run_removes(tmp_path: Path, existing: bool) -> None:
    """SIGKILL runs no cleanup: the staging directory stays (beside an existing OUTDIR, inside a new one). The
    next run into the same target holds the lock, so no live run owns it: it removes it."""
    from tests.hostile import make_layout

    make_layout(tmp_path / "src", {f"f{i}": os.urandom(1 << 20) for i in range(120)})
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    cmd = [sys.executable, "-m", "nydus_py.cli", "convert", f"oci:{tmp_path / 'src'}:v1", f"oci:{out}", "--jobs", "1"]
    process = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)

    def staged() -> list[Path]:
        return [*tmp_path.glob(".out.nydus-py-*"), *(out.glob(".nydus-py-*") if out.is_dir() else [])]

    deadline = time.monotonic() + 20
    while not any(p.is_dir() and any(p.iterdir()) for p in staged()) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait(10)
    left = staged()
    assert len(left) == 1 and f"-{process.pid}-" in left[0].name
    small = tmp_path / "small"
    make_layout(small)
    assert nydus_py("convert", f"oci:{small}:v1", f"oci:{out}:small").returncode == 0
    assert staged() == []



def test_a_sweep_leaves_what_another_run_is_making(tmp_path: Path) -> None:
    """Each run sweeps what killed runs left (their locks are free) before making its own staging. A run
    makes its directory under another name, locks it, then renames it: so a sweep never takes one being made
    for a killed run's (that name is swept only once an hour old), and under its own name it is locked."""
    from nydus_py.util.fsutil import MAKING_PREFIX, remove_staging, remove_stale_staging, staging_dir

    killed = tmp_path / "nydus-py-push-1-abc"  # a killed run's: its lock is free
    being_made = tmp_path / f"{MAKING_PREFIX}def"  # another run's, between mkdtemp and flock
    abandoned = tmp_path / f"{MAKING_PREFIX}ghi"  # a run killed right then, long ago
    for path in (killed, being_made, abandoned):
        path.mkdir()
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))
    ours = staging_dir(tmp_path, "nydus-py-push-")
    assert ours.name.startswith(f"nydus-py-push-{os.getpid()}-") and ours.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([being_made.name, ours.name])
    assert remove_stale_staging(tmp_path, "nydus-py-push-") == []  # ours is locked under its own name
    remove_staging(ours)
    assert [p.name for p in tmp_path.iterdir()] == [being_made.name]
