"""Faults: a full disk, SIGINT and SIGKILL in the middle of a build, and an image whose names try to escape
the unpack target. Never a truncated or half-written final artifact; temporary files cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nydus_py.bootstrap.reader import BootstrapParser, read_bootstrap
from nydus_py.cli.main import main
from tests.conftest import need_mount


def big_source(root: Path, megabytes: int) -> Path:
    root.mkdir()
    for i in range(megabytes):
        (root / f"f{i:03d}").write_bytes(os.urandom(1 << 20))
    return root


def final_files(out: Path) -> list[str]:
    """What a reader of OUTDIR would take for results (hidden temporary names left out)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if not any(part.startswith(".")
                                                                             for part in p.relative_to(out).parts))


def test_disk_full(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        src = big_source(tmp_path / "src", 6)
        status = main(["build", str(src), "-o", str(small / "out"), "--compressor", "none"])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "No space left on device" in err, err
        assert os.listdir(small) == []  # OUTDIR was new: removed, temporary files included
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _start_build(src: Path, out: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from nydus_py.cli.main import main; sys.exit(main(sys.argv[1:]))"
    # SIGINT as a terminal delivers it, also when the suite runs in a background job (which ignores SIGINT)
    return subprocess.Popen([sys.executable, "-c", code, "build", str(src), "-o", str(out), "--jobs", "1",
                             "--compressor", "zstd", "--quiet"], stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_work(out: Path, timeout: float = 20.0) -> None:
    """Until the build has a temporary blob under way (staged inside a new OUTDIR, beside an existing one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staged = [*out.rglob("*"), *out.parent.glob(f".{out.name}.nydus-py-*/*")]
        if any(p.name.startswith(".nydus-py-tmp-") for p in staged):
            return
        time.sleep(0.01)
    pytest.fail("the build never started writing")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_cleans_up(tmp_path: Path, signum: int) -> None:
    """Ctrl-C, and the SIGTERM that `timeout`, systemd and container runtimes send."""
    src = big_source(tmp_path / "src", 120)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"was here before")
    process = _start_build(src, out)
    _wait_for_work(out)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and b"interrupted" in err and b"Traceback" not in err
    assert sorted(os.listdir(out)) == ["keep"]  # nothing published, temporary files removed
    assert not list(tmp_path.glob(".out.nydus-py-*"))  # nor the staging beside it


def test_sigkill_leaves_no_half_written_artifact(tmp_path: Path) -> None:
    src = big_source(tmp_path / "src", 120)
    out = tmp_path / "out"
    process = _start_build(src, out)
    _wait_for_work(out)
    process.kill()
    process.wait(timeout=30)
    assert final_files(out) == []  # only hidden temporary names can remain after SIGKILL
    assert main(["build", str(src), "-o", str(out), "--quiet"]) == 0  # and the next build goes through
    assert {"bootstrap", "index.json", "oci-layout"} <= set(final_files(out))


def test_unpack_never_writes_outside_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "abcd").write_bytes(b"payload")
    assert main(["build", str(src), "-o", str(tmp_path / "img")]) == 0
    boot_path = tmp_path / "img" / "bootstrap"
    data = bytearray(boot_path.read_bytes())
    boot = read_bootstrap(bytes(data))
    parser = BootstrapParser(bytes(data), boot.meta_blkaddr, boot.chunk_size, boot.chunk_table)
    names_at = parser.raw_inode(boot.root_nid).body_end
    at = bytes(data).index(b"abcd", names_at)
    data[at : at + 4] = b"../x"  # the dirent now names a path outside any target
    boot_path.write_bytes(bytes(data))
    (tmp_path / "target").mkdir()
    for target in (tmp_path / "target" / "dir", tmp_path / "target" / "out.tar"):
        status = main(["unpack", str(tmp_path / "img"), "-o", str(target)])
        assert status == 2 and "a name cannot hold '/'" in capsys.readouterr().err  # refused when read
    assert not (tmp_path / "target" / "x").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "target" / "out.tar").exists()
    status = main(["check", str(tmp_path / "img")])
    assert status == 1 and "a name cannot hold '/'" in capsys.readouterr().out
