"""`nydus-py-image` under hostile use (trust round 3): outputs staged and renamed (FIFOs and character devices
written in place), the input never overwritten, flag values validated, prefetch lists bounded, interrupted runs
leave nothing, a full disk names the file. Each case runs the real command in a child process with a 3 GiB
address-space limit and a time limit, as BuildKit and the snapshotter converter run it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from nydus_py import read_bootstrap

MEMORY_LIMIT = 3_000_000 * 1024
TIME_LIMIT = 30.0
CODE = "import sys; from nydus_py.cli.nydus_image import main; sys.exit(main(sys.argv[1:]))"


def drop_in(*args: str | Path, stdin: bytes | int | None = None) -> subprocess.CompletedProcess[str]:
    """nydus-py-image ARGS in a child process, bounded in memory and time."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CODE, *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=TIME_LIMIT * 2,
                          **({"input": stdin.decode()} if isinstance(stdin, bytes) else {"stdin": stdin}))
    assert time.monotonic() - started < TIME_LIMIT, f"took {time.monotonic() - started:.1f}s"
    return done


def failed(done: subprocess.CompletedProcess[str], *words: str, status: int = 1) -> None:
    """nydus-image's status for errors (1), one line on stderr naming what it must."""
    assert done.returncode == status, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def layer_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def create(source: Path, blob: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return drop_in("create", "--type", "tar-rafs", "--blob", blob, "--blob-inline-meta", "--features", "blob-toc",
                   *extra, source)


# --- 1. outputs are staged and renamed -------------------------------------------------------------------


def test_a_failed_create_leaves_the_previous_blob_as_it_was(tmp_path: Path) -> None:
    good = layer_tar(tmp_path / "good.tar", {"f": b"data" * 2000})
    blob = tmp_path / "layer.blob"
    assert create(good, blob).returncode == 0
    before = blob.read_bytes()
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(good.read_bytes()[:4000])  # cut inside the member's data
    failed(create(corrupt, blob), "truncated")
    assert blob.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.tar", "good.tar", "layer.blob"]


@pytest.mark.parametrize("how", ["same path", "hardlink"])
def test_blob_naming_the_input_never_destroys_it(tmp_path: Path, how: str) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"f": b"data" * 1000})
    before = source.read_bytes()
    blob = source if how == "same path" else tmp_path / "link"
    if how == "hardlink":
        os.link(source, blob)
    failed(create(source, blob), "--blob names the same file as SOURCE")
    assert source.read_bytes() == before


def test_blob_inside_the_source_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    done = drop_in("create", "--type", "dir-rafs", "--blob", tmp_path / "src" / "out.blob", "--blob-inline-meta",
                   tmp_path / "src")
    failed(done, "--blob names the layer being read")
    assert os.listdir(tmp_path / "src") == ["f"]


def test_a_symlink_at_an_output_is_replaced_not_written_through(tmp_path: Path) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"f": b"data"})
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "blob").symlink_to(victim)
    assert create(source, tmp_path / "blob").returncode == 0
    assert victim.read_bytes() == b"precious" and not (tmp_path / "blob").is_symlink()
    (tmp_path / "out.tar").symlink_to(victim)
    done = drop_in("unpack", "--blob", tmp_path / "blob", "--output", tmp_path / "out.tar", "--bootstrap",
                   tmp_path / "blob")
    assert done.returncode == 0, done.stderr
    assert victim.read_bytes() == b"precious" and not (tmp_path / "out.tar").is_symlink()
    with tarfile.open(tmp_path / "out.tar") as archive:
        assert archive.extractfile("f").read() == b"data"  # type: ignore[union-attr]


def test_unpack_whose_chunk_fails_its_digest_leaves_no_partial_tar(tmp_path: Path) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"a": os.urandom(300_000), "b": os.urandom(300_000)})
    blob = tmp_path / "blob"
    assert create(source, blob, "--compressor", "none", "--chunk-size", "0x10000").returncode == 0
    data = bytearray(blob.read_bytes())
    data[200_000] ^= 0xFF  # inside the chunk data
    blob.write_bytes(bytes(data))
    (tmp_path / "out.tar").write_bytes(b"the previous tar")
    done = drop_in("unpack", "--blob", blob, "--output", tmp_path / "out.tar", "--bootstrap", blob)
    failed(done, "digest")
    assert (tmp_path / "out.tar").read_bytes() == b"the previous tar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "layer.tar", "out.tar"]


def test_fifos_are_written_in_place_in_order(tmp_path: Path) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"f": b"fifo data" * 1000})
    fifo = tmp_path / "blob.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert create(source, fifo).returncode == 0
    reader.join(10)
    assert got and fifo.is_fifo()  # written through the FIFO, which is still one
    (tmp_path / "copy").write_bytes(got[0])  # what was streamed is a whole layer blob
    from nydus_py.read.locate import open_image

    inode = open_image(tmp_path / "copy").bootstrap.tree.lookup(b"/f")
    assert inode is not None and inode.size == len(b"fifo data" * 1000)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_create_into_a_blob_dir_leaves_no_staging(tmp_path: Path, signum: int) -> None:
    """The source is a FIFO fed half its tar, so the build is surely under way (not done) when the signal
    comes, however fast the machine."""
    tar = layer_tar(tmp_path / "big.tar", {f"f{i}": os.urandom(1 << 20) for i in range(8)}).read_bytes()
    fifo = tmp_path / "layer.fifo"
    os.mkfifo(fifo)
    half_written, release = threading.Event(), threading.Event()

    def feed() -> None:
        with open(fifo, "wb") as out, contextlib.suppress(BrokenPipeError):
            out.write(tar[: len(tar) // 2])
            out.flush()
            half_written.set()
            release.wait(60)
            out.write(tar[len(tar) // 2 :])

    feeder = threading.Thread(target=feed)
    feeder.start()
    (tmp_path / "blobs").mkdir()
    process = subprocess.Popen([sys.executable, "-c", CODE, "create", "--type", "tar-rafs", "--blob-dir",
                                str(tmp_path / "blobs"), "--blob-inline-meta", "--compressor", "zstd", str(fifo)],
                               stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not (half_written.is_set() and any((tmp_path / "blobs").iterdir())) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        release.set()
        feeder.join(60)
    assert process.returncode == 1 and err == b"Error: interrupted\n", err  # one line, no blank one before it
    assert list((tmp_path / "blobs").iterdir()) == []


def test_a_killed_create_leaves_staging_that_the_next_run_removes(tmp_path: Path) -> None:
    big = tmp_path / "big.tar"
    layer_tar(big, {f"f{i}": os.urandom(1 << 20) for i in range(160)})
    (tmp_path / "blobs").mkdir()
    process = subprocess.Popen([sys.executable, "-c", CODE, "create", "--type", "tar-rafs", "--blob-dir",
                                str(tmp_path / "blobs"), "--blob-inline-meta", str(big)])
    deadline = time.monotonic() + 20
    while not any((tmp_path / "blobs").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait(10)
    assert [p.name.startswith(".nydus-py-image-") for p in (tmp_path / "blobs").iterdir()] == [True]
    small = layer_tar(tmp_path / "small.tar", {"f": b"x"})
    assert drop_in("create", "--type", "tar-rafs", "--blob-dir", tmp_path / "blobs", "--blob-inline-meta",
                   small).returncode == 0
    assert [not p.name.startswith(".") for p in (tmp_path / "blobs").iterdir()] == [True]


# --- 2. merge's flag values ------------------------------------------------------------------------------


@pytest.fixture
def two_bootstraps(tmp_path: Path) -> list[Path]:
    """Two per-layer bootstraps named by their blob's id, as the converter extracts them, and their blobs."""
    out = []
    for i in range(2):
        blob = tmp_path / f"blob{i}"
        assert create(layer_tar(tmp_path / f"l{i}.tar", {f"f{i}": os.urandom(5000)}), blob).returncode == 0
        from nydus_py.blob.reader import BlobReader
        from nydus_py.util.fsutil import file_sha256

        with BlobReader(blob) as reader:
            boot = reader.inline_bootstrap()
        assert boot is not None
        path = tmp_path / f"{file_sha256(blob)}"
        path.write_bytes(boot)
        out.append(path)
    return out


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--blob-sizes", "abc,1", "--blob-sizes: 'abc' is not a size"),
    ("--blob-sizes", "-5,1", "--blob-sizes: '-5' is not a size"),
    ("--blob-sizes", f"{1 << 64},1", f"--blob-sizes: '{1 << 64}' is not a size"),
    ("--blob-toc-sizes", "1,x", "--blob-toc-sizes: 'x' is not a size"),
    ("--blob-toc-digests", "zz,zz", "--blob-toc-digests: 'zz' is not a sha256 digest"),
    ("--blob-digests", "sha256:" + "A" * 64 + ",x", "--blob-digests: 'sha256:AAAA"),
    ("--blob-digests", "ab" * 31 + "," + "ab" * 32, "--blob-digests: '" + "ab" * 31 + "' is not a sha256 digest"),
])
def test_malformed_merge_flag_values_name_the_flag_and_the_value(two_bootstraps: list[Path], tmp_path: Path,
                                                                 flag: str, value: str, words: str) -> None:
    done = drop_in("merge", "--bootstrap", tmp_path / "merged", flag, value, *two_bootstraps)
    failed(done, words)
    assert not (tmp_path / "merged").exists()


def test_a_wrong_count_of_flag_values_is_a_usage_error(two_bootstraps: list[Path], tmp_path: Path) -> None:
    failed(drop_in("merge", "--bootstrap", tmp_path / "m", "--blob-sizes", "1", *two_bootstraps),
           "--blob-sizes: 1 values for 2 sources")


def test_a_blob_size_smaller_than_its_chunks_is_refused_and_check_finds_it(two_bootstraps: list[Path],
                                                                            tmp_path: Path) -> None:
    done = drop_in("merge", "--bootstrap", tmp_path / "m", "--blob-sizes", "100,100", *two_bootstraps)
    failed(done, "--blob-sizes 100 is smaller than")
    # a bootstrap that says so anyway (made by another tool) is defective for both CLIs' check
    boot = bytearray(two_bootstraps[0].read_bytes())
    table = read_bootstrap(bytes(boot))
    from nydus_py.format import rafs

    at = table.blobs[0].blob_index * rafs.Blob.sizeof() + _blob_table_offset(bytes(boot))
    field = rafs.Blob.subcons[7]  # compressed_size
    assert field.name == "compressed_size"
    offset = at + sum(s.sizeof() for s in rafs.Blob.subcons[:7])
    boot[offset : offset + 8] = (100).to_bytes(8, "little")
    (tmp_path / "small").write_bytes(bytes(boot))
    failed(drop_in("check", "--bootstrap", tmp_path / "small"), "past the blob's 100 bytes")
    from nydus_py.cli.main import main

    assert main(["check", str(tmp_path / "small")]) == 1


def _blob_table_offset(boot: bytes) -> int:
    from nydus_py.format import rafs

    return rafs.FAST_SUPER_BLOCK_EXT.unpack_record(boot, rafs.EXT_SUPER_OFFSET).s_blob_table_offset


# --- 3. prefetch lists are bounded -----------------------------------------------------------------------


def test_dev_zero_as_a_prefetch_list_is_refused_at_once(tmp_path: Path) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"f": b"x"})
    with open("/dev/zero", "rb") as zero:
        started = time.monotonic()
        done = drop_in("create", "--type", "tar-rafs", "--blob", tmp_path / "blob", "--blob-inline-meta",
                       "--prefetch-policy", "fs", source, stdin=zero)
        assert time.monotonic() - started < 5
    failed(done, "prefetch pattern longer than 4096 bytes")
    assert not (tmp_path / "blob").exists()


def test_too_many_prefetch_patterns_are_refused(two_bootstraps: list[Path], tmp_path: Path) -> None:
    many = b"/a\n" * ((1 << 20) + 1)
    done = drop_in("merge", "--bootstrap", tmp_path / "m", "--prefetch-policy", "fs", *two_bootstraps, stdin=many)
    failed(done, "more than 1048576 prefetch patterns")


# --- 6. a full disk names the path -----------------------------------------------------------------------


def test_a_full_disk_names_the_blob_being_written(tmp_path: Path) -> None:
    from tests.conftest import need_mount

    need_mount()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        source = layer_tar(tmp_path / "layer.tar", {"f": os.urandom(3 << 20)})
        done = create(source, small / "layer.blob", "--compressor", "none")
        failed(done, f"{small}/", "No space left on device")
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_json_output_is_written_whole(tmp_path: Path) -> None:
    source = layer_tar(tmp_path / "layer.tar", {"f": b"x"})
    (tmp_path / "out.json").symlink_to(tmp_path / "elsewhere.json")
    assert create(source, tmp_path / "blob", "--output-json", str(tmp_path / "out.json")).returncode == 0
    assert not (tmp_path / "elsewhere.json").exists()
    assert json.loads((tmp_path / "out.json").read_text())["blobs"]


# --- round 3, second pass: every output, not only --blob -------------------------------------------------


def test_devices_fifos_and_own_descriptors_at_outputs_are_written_in_place(tmp_path: Path) -> None:
    """`--output-json /dev/null` keeps /dev/null a device (a copy of it here), a symlink to a FIFO is written
    through to its reader, and /dev/stdout is the process's own output."""
    layer = layer_tar(tmp_path / "layer.tar", {"f": b"data"})
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert create(layer, tmp_path / "b1", "--output-json", str(null)).returncode == 0
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    fifo = tmp_path / "json.fifo"
    os.mkfifo(fifo)
    (tmp_path / "via-link").symlink_to(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert create(layer, tmp_path / "b2", "--output-json", str(tmp_path / "via-link")).returncode == 0
    reader.join(10)
    assert json.loads(got[0])["blobs"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (tmp_path / "via-link").is_symlink()
    done = create(layer, tmp_path / "b3", "--output-json", "/dev/stdout")
    assert done.returncode == 0 and json.loads(done.stdout)["blobs"]


def test_an_output_naming_an_input_or_another_output_is_refused(tmp_path: Path) -> None:
    layer = layer_tar(tmp_path / "layer.tar", {"f": b"data" * 100})
    before = layer.read_bytes()
    failed(create(layer, tmp_path / "b", "--output-json", str(layer)), "--output-json names the same file as SOURCE")
    failed(create(layer, tmp_path / "b", "--output-json", str(tmp_path / "b")),
           "--output-json names the same file as --blob")
    assert layer.read_bytes() == before and not (tmp_path / "b").exists()


def test_an_output_json_that_cannot_be_written_fails_before_anything_is_published(tmp_path: Path) -> None:
    """Read-only (a bind mount): refused before the blob or OUTDIR is written. A missing directory is made."""
    layer = layer_tar(tmp_path / "layer.tar", {"f": b"data" * 100})
    (tmp_path / "ro").mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "ro"), str(tmp_path / "ro")], check=True)
    try:
        failed(create(layer, tmp_path / "b", "--output-json", str(tmp_path / "ro" / "x.json")), "ro/x.json",
               "Read-only file system")
        assert not (tmp_path / "b").exists()
        out = tmp_path / "outdir"
        done = subprocess.run([sys.executable, "-m", "nydus_py.cli", "build", str(layer), "-o", str(out), "-q",
                               "--output-json", str(tmp_path / "ro" / "x.json")], capture_output=True, text=True)
        assert done.returncode == 2 and "ro/x.json" in done.stderr and not out.exists()
    finally:
        subprocess.run(["umount", str(tmp_path / "ro")], check=True)
    assert create(layer, tmp_path / "b", "--output-json", str(tmp_path / "new" / "dir" / "x.json")).returncode == 0
    assert json.loads((tmp_path / "new" / "dir" / "x.json").read_text())["blobs"]


def test_a_blob_dir_inside_the_source_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "bd").mkdir(parents=True)
    (tmp_path / "src" / "f").write_bytes(b"data")
    for blob_dir in (tmp_path / "src" / "bd", tmp_path / "src"):
        done = drop_in("create", "--type", "dir-rafs", "--blob-dir", blob_dir, "--blob-inline-meta", tmp_path / "src")
        failed(done, "--blob-dir is inside the source directory")
    assert sorted(os.listdir(tmp_path / "src")) == ["bd", "f"] and not os.listdir(tmp_path / "src" / "bd")


def test_a_live_runs_staging_is_kept_whatever_its_pid_says(tmp_path: Path) -> None:
    """Staging is locked, not guessed from PIDs: a run in another PID namespace (here: a staging directory
    named by a PID that does not exist, whose lock a live process holds) is never removed, and an unlocked one
    is."""
    import fcntl

    from nydus_py.util.fsutil import remove_stale_staging

    live, dead = tmp_path / ".nydus-py-image-999999999-live", tmp_path / ".nydus-py-image-999999998-dead"
    live.mkdir()
    dead.mkdir()
    holder = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        removed = remove_stale_staging(tmp_path, ".nydus-py-image-")
    finally:
        os.close(holder)
    assert removed == [dead] and live.exists() and not dead.exists()


def test_a_killed_runs_temporary_output_is_removed_by_the_next_run(tmp_path: Path) -> None:
    big = layer_tar(tmp_path / "big.tar", {f"f{i}": os.urandom(1 << 20) for i in range(64)})
    blob = tmp_path / "out" / "layer.blob"
    blob.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CODE, "create", "--type", "tar-rafs", "--blob", str(blob),
                             "--blob-inline-meta", str(big)], preexec_fn=os.setsid)
    deadline = time.monotonic() + 20
    while not any(p.name.startswith(".nydus-py-tmp-") for p in blob.parent.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p for p in blob.parent.iterdir() if p.name.startswith(".nydus-py-tmp-")]
    small = layer_tar(tmp_path / "small.tar", {"f": b"x"})
    assert create(small, blob).returncode == 0
    assert sorted(p.name for p in blob.parent.iterdir()) == ["layer.blob"]


def test_duplicate_blob_ids_are_one_blob_and_sizes_are_bounded(tmp_path: Path) -> None:
    """nydus-image merges two layers of one blob into one table entry; a size over RAFS's 2^40 is refused."""
    layer = layer_tar(tmp_path / "layer.tar", {"f": b"data" * 100})
    blob = tmp_path / "layer.blob"
    assert create(layer, blob).returncode == 0
    from nydus_py.blob.reader import BlobReader

    with BlobReader(blob) as reader:
        boot = reader.inline_bootstrap()
    assert boot is not None
    blob_id = __import__("hashlib").sha256(blob.read_bytes()).hexdigest()
    (tmp_path / blob_id).write_bytes(boot)
    merged = tmp_path / "merged"
    assert drop_in("merge", "--bootstrap", merged, "--blob-digests", f"{blob_id},{blob_id}", tmp_path / blob_id,
                   tmp_path / blob_id).returncode == 0
    assert [b.blob_id for b in read_bootstrap(merged.read_bytes()).blobs] == [blob_id]
    failed(drop_in("merge", "--bootstrap", tmp_path / "m2", "--blob-sizes", str(1 << 41), tmp_path / blob_id),
           "--blob-sizes", "up to 2^40", status=1)
    assert not (tmp_path / "m2").exists()


def test_a_source_bootstrap_that_is_a_device_is_refused_at_once(tmp_path: Path) -> None:
    failed(drop_in("check", "--bootstrap", "/dev/zero"), "/dev/zero", "not a regular file")
    zero = tmp_path / ("b" * 64)
    zero.symlink_to("/dev/zero")
    failed(drop_in("merge", "--bootstrap", tmp_path / "m", zero), "not a regular file")


def test_a_reader_that_goes_away_is_one_line(tmp_path: Path) -> None:
    big = layer_tar(tmp_path / "big.tar", {f"f{i}": os.urandom(1 << 20) for i in range(16)})
    fifo = tmp_path / "blob.fifo"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with open(fifo, "rb") as f:
            f.read(1000)

    reader = threading.Thread(target=read_a_little)
    reader.start()
    done = create(big, fifo)
    reader.join(10)
    failed(done, "blob.fifo", "Broken pipe")
    check = subprocess.run(["bash", "-o", "pipefail", "-c",
                            f"{sys.executable} -c '{CODE}' --version | (exec 0<&-; sleep 0.5)"],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "broken pipe" in check.stderr and check.stderr.count("\n") == 1


def test_messages_name_the_output_not_a_temporary_file(tmp_path: Path) -> None:
    """A full disk (a 1 MiB tmpfs) names --blob-dir and the output JSON as given."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        big = layer_tar(tmp_path / "big.tar", {"f": os.urandom(3 << 20)})
        done = drop_in("create", "--type", "tar-rafs", "--blob-dir", small, "--blob-inline-meta", big)
        failed(done, f"{small}: No space left on device")
        assert ".nydus-py" not in done.stderr and os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
