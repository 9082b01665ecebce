"""`nydus-py-image`, the drop-in nydus-image for BuildKit and nydus-snapshotter: nydus-snapshotter's own converter
(Pack, Merge, Unpack, driven by tests/interop/converter) builds images with it, with the real nydus-image 2.2, and
with the two mixed; nydusd and the kernel serve every result equal to overlayfs's view of the same layers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from nydus_py.cli.nydus_image import main as image_main
from tests.compare import differences
from tests.conftest import need_mount
from tests.layers import OverlayStack, upper_to_oci_tar
from tests.nydus_stack import inline_bootstrap, need_nydus, nydus_image, nydusd_mount
from tests.test_layers import stack  # noqa: F401 (the four-layer overlayfs stack fixture)


def ours() -> str:
    path = shutil.which("nydus-py-image")
    assert path is not None, "nydus-py-image is not installed (pip install -e .)"
    return path


def converter(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([need_nydus("nydus-converter-harness"), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def layer_tars(stack: OverlayStack, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: F811
    """The overlayfs stack as OCI layer tars, and a layer without data. Uncompressed: BuildKit and containerd's
    converter hand `Pack` the decompressed layer (nydus-image 2.2's tar-rafs reads plain tars only). Rewritten by
    GNU tar in POSIX format: 2.2's tar parser wants device numbers in every header, which Python's tarfile leaves
    empty for non-devices (as POSIX allows) and GNU and Go tar writers fill."""
    work = tmp_path_factory.mktemp("tars")
    tars = []
    for i, upper in enumerate(stack.uppers):
        tree = work / f"tree{i}"
        tree.mkdir()
        subprocess.run(["tar", "-C", str(tree), "--xattrs", "--xattrs-include=*", "-xpf",
                        str(upper_to_oci_tar(upper, work / f"python{i}.tar"))], check=True)
        tars.append(work / f"layer{i}.tar")
        subprocess.run(["tar", "-C", str(tree), "--format=posix", "--xattrs", "--xattrs-include=*", "-cf",
                        str(tars[-1]), "."], check=True)
    dataless = work / "dataless.tar"
    with tarfile.open(dataless, "w") as tar:
        tar.addfile(tarfile.TarInfo(".wh.not-there"))
    tars.insert(2, dataless)
    return tars


def convert(tars: list[Path], work: Path, pack_with: str, merge_with: str) -> tuple[Path, Path]:
    """Pack every layer, merge: (blob directory named by digest, the merged bootstrap)."""
    blobs = work / "blobs"
    blobs.mkdir(parents=True)
    paths = []
    for i, tar in enumerate(tars):
        blob = work / f"blob{i}"
        converter("pack", "-builder", pack_with, "-prefetch", "/", "-out", blob, tar)
        paths.append(blob)
    digests = json.loads(converter("merge", "-builder", merge_with, "-out", work / "bootstrap.tar", *paths).stdout)
    for blob in paths:  # the blob id of a layer is the sha256 of its blob (what the snapshotter names it by)
        import hashlib

        name = hashlib.sha256(blob.read_bytes()).hexdigest()
        blob.rename(blobs / name)
    assert {d.removeprefix("sha256:") for d in digests} <= {p.name for p in blobs.iterdir()}
    with tarfile.open(work / "bootstrap.tar") as tar:
        boot = tar.extractfile("image/image.boot")
        assert boot is not None
        (work / "image.boot").write_bytes(boot.read())
    return blobs, work / "image.boot"


@pytest.mark.parametrize(("pack_with", "merge_with"), [("ours", "ours"), ("theirs", "theirs"), ("ours", "theirs"),
                                                       ("theirs", "ours")])
def test_the_converter_builds_with_either_builder(stack: OverlayStack, layer_tars: list[Path],  # noqa: F811
                                                  tmp_path: Path, pack_with: str, merge_with: str) -> None:
    need_mount()
    builders = {"ours": ours(), "theirs": need_nydus("nydus-image")}
    blobs, boot = convert(layer_tars, tmp_path, builders[pack_with], builders[merge_with])
    nydus_image("check", "--bootstrap", boot)
    whole_seconds = pack_with == "theirs"  # nydus-image 2.2's tar-rafs ignores PAX mtimes (README, Compatibility)
    with stack.view() as view:
        with nydusd_mount(boot, blobs, tmp_path) as mnt:
            assert differences(view, mnt, mtime_ns=not whole_seconds) == []
        mnt = tmp_path / "kernel"
        mnt.mkdir()
        from nydus_py.cli.main import main

        assert main(["mount", str(boot), str(mnt), "--blob-dir", str(blobs), "--cache-dir", str(tmp_path / "c")]) == 0
        try:
            assert differences(view, mnt, mtime_ns=not whole_seconds) == []
        finally:
            assert main(["umount", str(mnt)]) == 0


def test_unpack_through_the_converter_matches_the_real_builder(layer_tars: list[Path], tmp_path: Path) -> None:
    """Each builder packs the first layer; each unpacks its own blob back to a tar: the trees are equal."""
    trees = []
    for name, builder in (("ours", ours()), ("theirs", need_nydus("nydus-image"))):
        work = tmp_path / name
        work.mkdir()
        converter("pack", "-builder", builder, "-out", work / "blob", layer_tars[0])
        converter("unpack", "-builder", builder, "-out", work / "layer.tar", work / "blob")
        (work / "tree").mkdir()
        subprocess.run(["tar", "-C", str(work / "tree"), "--xattrs", "--xattrs-include=*", "-xpf",
                        str(work / "layer.tar")], check=True)
        trees.append(work / "tree")
    # nydus-image 2.2 writes ustar times (whole seconds), ours nanoseconds; its tar has no entry for the root,
    # which extraction then dates to now: give both roots one time
    for tree in trees:
        os.utime(tree, ns=(0, 0))
    assert differences(trees[1], trees[0], mtime_ns=False) == []


def test_feature_detection_sees_tar_rafs_and_nothing_we_lack() -> None:
    """nydus-snapshotter runs `create -h` and searches the text (pkg/converter/tool/feature.go)."""
    done = subprocess.run([ours(), "create", "-h"], capture_output=True, text=True, check=True)
    assert "--type" in done.stdout and "tar-rafs" in done.stdout
    assert "--batch-size" not in done.stdout and "--encrypt" not in done.stdout
    version = subprocess.run([ours(), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Version:")


@pytest.mark.parametrize(("args", "status", "says"), [
    (["create", "--batch-size", "0x100000", "x"], 2, "--batch-size"),
    (["create", "--encrypt", "x"], 2, "--encrypt"),
    (["create", "--fs-version", "5", "--blob-inline-meta", "--blob", "b", "x"], 1, "only RAFS v6"),
    (["create", "--blob-inline-meta", "--bootstrap", "b", "--blob", "x", "y"], 2, "conflicts"),
    (["unpack", "--bootstrap", "b", "--backend-type", "registry", "--output", "o"], 1, "backends are not supported"),
])
def test_unsupported_options_fail_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     args: list[str], status: int, says: str) -> None:
    assert image_main(args) == status
    err = capsys.readouterr().err
    assert says in err


def test_merge_needs_a_blob_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A source bootstrap whose name is not its blob's digest, without --blob-digests: refused, exit 1."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "l.tar"), "."], check=True)
    assert image_main(["create", "--type", "tar-rafs", "--blob-inline-meta", "--blob", str(tmp_path / "blob"),
                       str(tmp_path / "l.tar")]) == 0
    inline_bootstrap(tmp_path / "blob", tmp_path / "layer.boot")
    assert image_main(["merge", "--bootstrap", str(tmp_path / "m"), str(tmp_path / "layer.boot")]) == 1
    assert "--blob-digests" in capsys.readouterr().err
    digest = "ab" * 32
    assert image_main(["merge", "--bootstrap", str(tmp_path / "m"), "--output-json", str(tmp_path / "m.json"),
                       str(tmp_path / "layer.boot"), "--blob-digests", digest]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["blobs"] == [digest]


def test_create_into_a_blob_directory_names_the_blob_by_its_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data" * 1000)
    (tmp_path / "blobs").mkdir()
    assert image_main(["create", "--blob-inline-meta", "--blob-dir", str(tmp_path / "blobs"), "--output-json",
                       str(tmp_path / "out.json"), str(src)]) == 0
    (blob,) = (tmp_path / "blobs").iterdir()  # nothing else left there
    import hashlib

    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out.json").read_text())["blobs"] == [blob.name]
