"""Bad input to `nydus-py build`: one line on stderr, exit 2, no traceback, nothing left in OUTDIR."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import sys
import tarfile
from pathlib import Path

import pytest

from nydus_py.bootstrap.layout import plan_layout
from nydus_py.cli.main import main
from nydus_py.errors import FormatError, UnsupportedError
from nydus_py.format.rafs import CompressAlgo, DigestAlgo
from nydus_py.model import Entry, FileKind, Inode, Tree, new_directory
from tests.conftest import need_mount


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    _, err = capsys.readouterr()
    return status, err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("nydus-py")


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    (path / "file").write_bytes(b"content")
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--chunk-size", "3000"], "chunk size"),
    (["--chunk-size", "32MiB"], "chunk size"),
    (["--chunk-size", "lots"], "not a size"),
    (["--compressor", "gzip"], "gzip"),
    (["--digester", "md5"], "md5"),
    (["--jobs", "-1"], "jobs"),
])
def test_bad_options(capsys: pytest.CaptureFixture[str], src: Path, tmp_path: Path, args: list[str],
                     message: str) -> None:
    status, err = run(capsys, "build", str(src), "-o", str(tmp_path / "out"), *args)
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, err = run(capsys, "build", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert status == 2 and one_line(err) and "missing" in err
    assert not (tmp_path / "out").exists()


def test_source_file_that_is_not_a_tar(capsys: pytest.CaptureFixture[str], src: Path, tmp_path: Path) -> None:
    status, err = run(capsys, "build", str(src / "file"), "-o", str(tmp_path / "out"))
    assert status == 2 and one_line(err) and "not a readable tar stream" in err
    assert not (tmp_path / "out").exists()


def test_output_is_a_file(capsys: pytest.CaptureFixture[str], src: Path, tmp_path: Path) -> None:
    (tmp_path / "out").write_bytes(b"x")
    status, err = run(capsys, "build", str(src), "-o", str(tmp_path / "out"))
    assert status == 2 and one_line(err) and "not a directory" in err
    assert (tmp_path / "out").read_bytes() == b"x"


def test_read_only_output(capsys: pytest.CaptureFixture[str], src: Path, tmp_path: Path) -> None:
    need_mount()
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        status, err = run(capsys, "build", str(src), "-o", str(ro / "out"))
        assert status == 2 and one_line(err) and "cannot write" in err
        status, err = run(capsys, "build", str(src), "-o", str(ro))
        assert status == 2 and one_line(err)
        assert os.listdir(ro) == []
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def run_as_nobody(*args: str) -> tuple[int, str]:
    """Run the CLI in a forked child that dropped root (the interpreter under /root stays loaded)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 3
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = os.fdopen(write_fd, "w")
            status = main(list(args))
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        err = f.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), err


def test_unreadable_file_as_unprivileged_user() -> None:
    """Root ignores modes: run the build as `nobody` against a file only root may read."""
    need_mount()
    tmp_path = Path(tempfile.mkdtemp(prefix="nydus-py-nobody-"))  # pytest's tmp root is private to root
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"content")
    secret = src / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 65534, 65534)
    for path in (tmp_path, src):
        os.chmod(path, 0o755)
    try:
        status, err = run_as_nobody("build", str(src), "-o", str(out))
        assert status == 2, err
        assert one_line(err) and "secret" in err and "Permission denied" in err
        assert os.listdir(out) == []
    finally:
        shutil.rmtree(tmp_path)


def test_failure_late_in_the_build_leaves_outdir_as_it_was(capsys: pytest.CaptureFixture[str], src: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"already here")

    def fail(*_: object, **__: object) -> bytes:
        raise FormatError("injected failure")

    monkeypatch.setattr("nydus_py.build.pipeline.overlay.merge_layers", fail)  # after every layer blob is written
    monkeypatch.setattr("nydus_py.build.pipeline.retarget", fail)  # the same point for a one-layer image
    status, err = run(capsys, "build", str(src), "-o", str(out))
    assert status == 2 and "injected failure" in err
    assert sorted(os.listdir(out)) == ["keep"]  # no blobs/, no hidden temporary files


def test_unsupported_xattr_prefix_names_the_file() -> None:
    root = new_directory()
    odd = Inode(kind=FileKind.REG, mode=0o100644, xattrs={b"system.nfs4_acl": b"x"})
    root.entries.append(Entry(name=b"odd", inode=odd))
    with pytest.raises(UnsupportedError, match=r"/odd: xattr 'system.nfs4_acl'"):
        plan_layout(Tree(root=root), [], chunk_size=1 << 20, compressor=CompressAlgo.ZSTD,
                    digester=DigestAlgo.BLAKE3)


def test_file_changing_size_is_detected(tmp_path: Path) -> None:
    from nydus_py.blob.writer import BlobWriter
    from nydus_py.blob.chunker import ChunkPipeline
    from nydus_py.sources.directory import DirectorySource

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10000)
    reader = DirectorySource(src)
    writer = BlobWriter(tmp_path, blob_index=0, chunk_size=4096, compressor=CompressAlgo.ZSTD,
                        digester=DigestAlgo.BLAKE3)
    pipeline = ChunkPipeline(writer, chunk_size=4096, compressor=CompressAlgo.ZSTD, digester=DigestAlgo.BLAKE3,
                             workers=1)
    (file,) = list(reader.files())
    os.truncate(src / "f", 5000)
    with pytest.raises(FormatError, match="shrank"):
        pipeline.add(file)
    writer.discard()


def test_process_settings_come_back_after_builds(src: Path, tmp_path: Path) -> None:
    """A build changes two process-wide settings while it runs, the cyclic collector (paused) and the thread
    switch interval (shorter while chunk workers run), and puts both back: after a failing build, and when
    pipelines overlap (the interval is restored when the last one stops, not the first)."""
    import gc

    from nydus_py.blob.writer import BlobWriter
    from nydus_py.blob.chunker import WORKER_SWITCH_INTERVAL, ChunkPipeline

    interval = sys.getswitchinterval()
    assert gc.isenabled() and interval > WORKER_SWITCH_INTERVAL
    assert main(["build", str(src), "-o", str(tmp_path / "out")]) == 0
    assert main(["build", str(tmp_path / "missing"), "-o", str(tmp_path / "out2")]) == 2
    assert gc.isenabled() and gc.get_freeze_count() == 0 and sys.getswitchinterval() == interval

    def pipeline() -> tuple[ChunkPipeline, BlobWriter]:
        writer = BlobWriter(tmp_path, blob_index=0, chunk_size=4096, compressor=CompressAlgo.ZSTD,
                            digester=DigestAlgo.BLAKE3)
        return ChunkPipeline(writer, chunk_size=4096, compressor=CompressAlgo.ZSTD, digester=DigestAlgo.BLAKE3,
                             workers=2), writer

    (first, w1), (second, w2) = pipeline(), pipeline()
    assert sys.getswitchinterval() == WORKER_SWITCH_INTERVAL
    first.close()
    assert sys.getswitchinterval() == WORKER_SWITCH_INTERVAL  # the second still runs its workers
    second.close()
    assert sys.getswitchinterval() == interval
    w1.discard()
    w2.discard()


@pytest.mark.parametrize("how", ["stdin", "file"])
def test_an_endless_prefetch_list_is_refused_at_once(src: Path, tmp_path: Path, how: str) -> None:
    """/dev/zero as the prefetch list: one line, exit 2, in well under a second of reading, in bounded memory."""
    import resource
    import subprocess
    import sys
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    source = "-" if how == "stdin" else "/dev/zero"
    with open("/dev/zero", "rb") as zero:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "nydus_py.cli", "build", str(src), "-o", str(tmp_path / "out"),
                               "--prefetch-patterns", source], stdin=zero, capture_output=True, text=True,
                              preexec_fn=limit, timeout=60)
        took = time.monotonic() - started
    assert done.returncode == 2 and one_line(done.stderr) and "longer than 4096 bytes" in done.stderr, done.stderr
    assert took < 5 and not (tmp_path / "out").exists()


# --- what one layer may hold: refused in one line before the memory runs out ------------------------------


def tar_of(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO((data or {}).get(info.name, b"")))
    return path


def test_a_layer_of_too_many_entries(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    monkeypatch.setattr("nydus_py.sources.tarball.MAX_LAYER_ENTRIES", 100)
    monkeypatch.setattr("nydus_py.sources.directory.MAX_LAYER_ENTRIES", 100)
    layer = tar_of(tmp_path / "many.tar", [tarfile.TarInfo(f"f{i}") for i in range(101)])
    status, err = run(capsys, "build", str(layer), "-o", str(tmp_path / "o1"))
    assert status == 2 and one_line(err) and "more than 100 entries in one layer" in err
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(101):
        (tree / f"f{i}").write_bytes(b"")
    status, err = run(capsys, "build", str(tree), "-o", str(tmp_path / "o2"))
    assert status == 2 and one_line(err) and "more than 100 entries in one layer" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_layer_of_too_many_xattr_bytes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    """A global pax xattr lands on every member: the bytes are counted per inode."""
    monkeypatch.setattr("nydus_py.sources.tarball.MAX_LAYER_XATTR_BYTES", 10_000)
    members = []
    for i in range(30):
        info = tarfile.TarInfo(f"f{i}")
        info.pax_headers = {"SCHILY.xattr.user.big": "v" * 500}
        members.append(info)
    layer = tar_of(tmp_path / "xattrs.tar", members)
    status, err = run(capsys, "build", str(layer), "-o", str(tmp_path / "o"))
    assert status == 2 and one_line(err) and "xattrs of more than" in err


def test_a_layer_of_too_many_holes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    """A sparse member of 2^62 bytes without data: its holes cost nothing to send, so they are counted."""
    monkeypatch.setattr("nydus_py.blob.chunker.MAX_HOLE_CHUNKS", 1000)
    info = tarfile.TarInfo("sparse")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "sparse",
                        "GNU.sparse.realsize": str(1 << 62)}
    info.size = 512
    layer = tar_of(tmp_path / "holes.tar", [info], {"sparse": b"0\n".ljust(512, b"\0")})
    status, err = run(capsys, "build", str(layer), "-o", str(tmp_path / "o"))
    assert status == 2 and one_line(err) and "more than 1000 chunks of holes in one layer" in err


def test_a_prefetch_line_is_ended_by_a_newline_only(src: Path, tmp_path: Path) -> None:
    """`\\r` does not split a line (nydus-image's `lines()`): a list cannot slip past the pattern count."""
    from nydus_py.build.config import parse_prefetch_patterns

    assert parse_prefetch_patterns(b"/a\r/b\r\n/c\n") == (b"/a\r/b", b"/c")
