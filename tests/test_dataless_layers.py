"""Layers that hold no chunk (deletions only, an opaque directory, metadata changes, empty files, directories,
symlinks, devices) through every path that handles layer blobs: build, merge, convert, check, inspect, unpack
and mount. The oracle is `umoci unpack` of the same layers as an OCI image."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import need_mount, need_tool

MTIME = 1_700_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
           link: str = "", devmajor: int = 0, devminor: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size = kind, mode, MTIME, len(data)
    info.linkname, info.devmajor, info.devminor = link, devmajor, devminor
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(buf.getvalue())
    return path


LOWER = [member("d", tarfile.DIRTYPE, mode=0o755), member("d/old", data=b"old\n"), member("keep", data=b"keep\n")]
TOP = [member("top", data=b"data above the data-less layer\n")]

# Each kind of layer that writes no chunk, over LOWER.
DATALESS = {
    "deletion": [member(".wh.d"), member(".wh.keep")],
    "opaque": [member("d", tarfile.DIRTYPE, mode=0o755), member("d/.wh..wh..opq")],
    "metadata": [member("d", tarfile.DIRTYPE, mode=0o700)],
    "empty-files": [member("empty"), member("d/old")],  # a new empty file, and a file emptied
    "directories": [member("new", tarfile.DIRTYPE, mode=0o755), member("new/sub", tarfile.DIRTYPE, mode=0o750)],
    "symlinks": [member("link", tarfile.SYMTYPE, link="keep"), member("d/dangling", tarfile.SYMTYPE, link="nowhere")],
    "devices": [member("null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
                member("fifo", tarfile.FIFOTYPE)],
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def umoci_image(root: Path, tars: list[Path]) -> tuple[str, Path]:
    """An OCI image of `tars` made by umoci, and what `umoci unpack` makes of it."""
    umoci = need_tool("umoci")
    image = root / "image"
    run(umoci, "init", "--layout", str(image))
    run(umoci, "new", "--image", f"{image}:v1")
    for tar in tars:
        run(umoci, "raw", "add-layer", "--image", f"{image}:v1", str(tar))
    run(umoci, "unpack", "--image", f"{image}:v1", str(root / "truth"))
    return f"oci:{image}:v1", root / "truth" / "rootfs"


def build_one(tar: Path, outdir: Path) -> Path:
    """Build one layer tar; the path of its layer blob."""
    report = outdir.with_suffix(".json")
    assert main(["build", str(tar), "-o", str(outdir), "--output-json", str(report), "--quiet"]) == 0
    (layer,) = json.loads(report.read_text())["layers"]
    return Path(layer["path"])


def assert_mount_equals(image: str, truth: Path, workdir: Path) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir(exist_ok=True)
    assert main(["mount", image, str(mnt), "--cache-dir", str(workdir / "cache")]) == 0
    try:
        assert differences(truth, mnt) == []
    finally:
        assert main(["umount", str(mnt)]) == 0


@pytest.mark.parametrize("kind", sorted(DATALESS))
def test_dataless_layer_in_the_middle(tmp_path: Path, kind: str) -> None:
    need_mount()
    tars = [write_tar(tmp_path / f"l{i}.tar", members) for i, members in enumerate([LOWER, DATALESS[kind], TOP])]
    source, truth = umoci_image(tmp_path, tars)

    # one build of the three layers
    built = tmp_path / "built"
    assert main(["build", *map(str, tars), "-o", str(built), "--output-json", str(tmp_path / "b.json"),
                 "--quiet"]) == 0
    layers = json.loads((tmp_path / "b.json").read_text())["layers"]
    assert [layer["chunk_count"] == 0 for layer in layers] == [False, True, False]
    assert not layers[1]["referenced"]
    assert main(["check", str(built)]) == 0
    assert_mount_equals(str(built), truth, tmp_path)

    # the same layers built one by one, then merged: the same bootstrap, every layer blob published
    blobs = [build_one(tar, tmp_path / f"one{i}") for i, tar in enumerate(tars)]
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, blobs), "-o", str(merged), "--output-json", str(tmp_path / "m.json")]) == 0
    assert (merged / "bootstrap").read_bytes() == (built / "bootstrap").read_bytes()
    merged_layers = json.loads((tmp_path / "m.json").read_text())["layers"]
    assert [layer["id"] for layer in merged_layers] == [layer["id"] for layer in layers]
    assert all((merged / "blobs" / "sha256" / layer["id"]).is_file() for layer in layers)

    # the data-less layer blob on its own: readable by every read-side command
    dataless = blobs[1]
    assert main(["check", str(dataless)]) == 0
    assert main(["inspect", str(dataless)]) == 0
    assert main(["unpack", str(dataless), "-o", str(tmp_path / "alone.tar")]) == 0

    # conversion of the umoci image
    out = tmp_path / "converted"
    assert main(["convert", source, f"oci:{out}:v1"]) == 0
    assert main(["check", f"oci:{out}:v1"]) == 0
    assert main(["unpack", f"oci:{out}:v1", "-o", str(tmp_path / "unpacked")]) == 0
    assert differences(truth, tmp_path / "unpacked") == []
    (tmp_path / "mnt").rmdir()
    assert_mount_equals(f"oci:{out}:v1", truth, tmp_path)


def test_merge_of_dataless_layers_only(tmp_path: Path) -> None:
    """Every layer without data: the merged bootstrap has an empty device table, and it still mounts."""
    need_mount()
    root = member(".", tarfile.DIRTYPE, mode=0o755)  # umoci gives an entry-less root the unpack time
    tars = [write_tar(tmp_path / "a.tar", [root, *DATALESS["directories"]]),
            write_tar(tmp_path / "b.tar", [root, *DATALESS["devices"]])]
    _, truth = umoci_image(tmp_path, tars)
    blobs = [build_one(tar, tmp_path / f"one{i}") for i, tar in enumerate(tars)]
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, blobs), "-o", str(merged), "--output-json", str(tmp_path / "m.json")]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["blobs"] == [] and len(doc["layers"]) == 2
    assert main(["check", str(merged)]) == 0
    assert_mount_equals(str(merged), truth, tmp_path)


def test_merge_failure_leaves_no_bootstrap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A merge that cannot finish writes nothing under a final name (it used to fail after the bootstrap)."""
    good = build_one(write_tar(tmp_path / "a.tar", LOWER), tmp_path / "one")
    bad = tmp_path / "not-a-blob"
    bad.write_bytes(b"\0" * 8192)
    out = tmp_path / "merged"
    assert main(["merge", str(good), str(bad), "-o", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_converting_again_reuses_a_layer_without_data(tmp_path: Path) -> None:
    """The second conversion into the same registry tag reuses every layer, the data-less one included (its
    inline bootstrap lists no blob at all)."""
    from tests.test_registry import registry

    tars = [write_tar(tmp_path / f"l{i}.tar", m) for i, m in enumerate([LOWER, DATALESS["deletion"], TOP])]
    source, _ = umoci_image(tmp_path, tars)
    with registry(tmp_path / "registry") as host:
        run(need_tool("skopeo"), "copy", "--dest-tls-verify=false", source, f"docker://{host}/app:1")
        digests = []
        for attempt in ("first", "again"):
            report = tmp_path / f"{attempt}.json"
            assert main(["convert", f"docker://{host}/app:1", f"docker://{host}/app:nydus", "--plain-http",
                         "--output-json", str(report)]) == 0
            doc = json.loads(report.read_text())
            digests.append(doc["manifest"]["digest"])
        assert doc["reused"]["layers"] == 3 and digests[0] == digests[1]
