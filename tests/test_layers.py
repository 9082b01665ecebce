"""Layers: genuine overlayfs upper directories (and OCI tars of them) become per-layer blobs and one merged
bootstrap whose kernel mount equals overlayfs's own read-only view of the same stack."""

from __future__ import annotations

import json
import os
import tarfile
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.trees import fix_times
from nydus_py import read_bootstrap
from nydus_py.blob.reader import BlobReader
from nydus_py.cli.main import main
from nydus_py.read.locate import open_image
from tests.compare import differences
from tests.conftest import mount_output, need_mount
from tests.layers import OverlayStack, upper_to_oci_tar


def base_layer(m: Path) -> None:
    (m / "etc").mkdir()
    (m / "etc" / "config").write_bytes(b"option = 1\n")
    (m / "usr" / "bin").mkdir(parents=True)
    (m / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n" * 100)
    os.chmod(m / "usr" / "bin" / "tool", 0o755)
    (m / "data").mkdir()
    (m / "data" / "a").write_bytes(b"shared " * 5000)
    os.link(m / "data" / "a", m / "data" / "b")
    os.symlink("../etc/config", m / "data" / "link")
    for name in ("gone", "reborn", "dir2file"):
        (m / name / "sub").mkdir(parents=True)
        (m / name / "sub" / "f").write_bytes(name.encode() * 100)
        (m / name / "g").write_bytes(b"g")
    (m / "file2dir").write_bytes(b"a file first")
    (m / "meta").write_bytes(b"metadata changes only")
    os.setxattr(m / "meta", "user.kept", b"from layer 1")
    os.mkfifo(m / "fifo")
    os.mknod(m / "dev", 0o600 | 0o020000, os.makedev(1, 3))
    (m / "big").write_bytes(os.urandom(3 << 20))


def second_layer(m: Path) -> None:
    (m / "usr" / "bin" / "tool").unlink()  # delete a file
    shutil.rmtree(m / "gone")  # delete a directory
    shutil.rmtree(m / "dir2file")  # replace a directory by a file
    (m / "dir2file").write_bytes(b"now a file")
    (m / "file2dir").unlink()  # replace a file by a directory
    (m / "file2dir").mkdir()
    (m / "file2dir" / "inside").write_bytes(b"inside")
    shutil.rmtree(m / "reborn")  # delete and re-create: the directory turns opaque
    (m / "reborn").mkdir()
    (m / "reborn" / "new").write_bytes(b"only this")
    os.chmod(m / "meta", 0o600)  # metadata-only changes (copy-up)
    os.chown(m / "meta", 1000, 1000)
    os.utime(m / "meta", ns=(1_600_000_000_500_000_000, 1_600_000_000_500_000_000))
    with open(m / "data" / "a", "ab") as f:  # copy-up breaks the hardlink
        f.write(b"appended")
    shutil.move(m / "etc" / "config", m / "etc" / "config.new")  # rename
    os.setxattr(m / "data" / "b", "user.added", b"\x00binary\xff")  # add an xattr
    (m / "big2").write_bytes((m / "big").read_bytes())  # same data as a lower layer's file


def third_layer(m: Path) -> None:
    (m / "gone").write_bytes(b"back, as a file")
    (m / "dir2file").unlink()
    (m / "dir2file").mkdir()
    (m / "file2dir" / "inside").unlink()
    (m / "fresh").mkdir()
    (m / "fresh" / "x").write_bytes(b"x")
    (m / "fresh" / "x").unlink()
    (m / "etc" / "config.new").write_bytes(b"option = 3\n")


def fourth_layer(m: Path) -> None:
    (m / "root-file").write_bytes(b"top")
    os.remove(m / "fifo")
    os.symlink("/etc/config.new", m / "fifo")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> OverlayStack:
    need_mount()
    s = OverlayStack(tmp_path_factory.mktemp("stack"))
    for change in (base_layer, second_layer, third_layer, fourth_layer):
        s.add_layer(change)
    return s


def build(*args: str) -> dict:
    out = Path(args[args.index("-o") + 1])
    status = main(["build", *args, "--output-json", str(out) + ".json"])
    assert status == 0
    return json.loads(Path(str(out) + ".json").read_text())


def assert_same_view(stack: OverlayStack, outdir: Path, workdir: Path) -> None:
    with stack.view() as view, mount_output(outdir / "bootstrap", outdir / "blobs" / "sha256", workdir) as mnt:
        assert len(list(view.rglob("*"))) >= 10  # the view is real, not an empty mount
        assert differences(view, mnt) == []


@pytest.mark.parametrize("layers", [2, 4])
def test_overlay_upper_dirs(stack: OverlayStack, tmp_path: Path, layers: int) -> None:
    partial = OverlayStack.__new__(OverlayStack)
    partial.root, partial.uppers = tmp_path, stack.uppers[:layers]
    doc = build(*map(str, partial.uppers), "-o", str(tmp_path / "out"))
    assert len(doc["layers"]) == layers and all(layer["referenced"] for layer in doc["layers"][:2])
    assert_same_view(partial, tmp_path / "out", tmp_path)


def test_layer_blobs_keep_whiteout_markers(stack: OverlayStack, tmp_path: Path) -> None:
    doc = build(*map(str, stack.uppers[:2]), "-o", str(tmp_path / "out"))
    inline = open_image(Path(doc["layers"][1]["path"])).bootstrap.tree
    names = {p for p, _ in inline.walk()}
    assert {b"/usr/bin/.wh.tool", b"/.wh.gone", b"/reborn/.wh..wh..opq"} <= names
    merged = read_bootstrap((tmp_path / "out" / "bootstrap").read_bytes()).tree
    assert not any(b"/.wh." in p for p, _ in merged.walk())
    assert merged.lookup(b"/reborn/sub") is None and merged.lookup(b"/reborn/new") is not None


@pytest.mark.parametrize("compression", ["", "gzip", "zstd"])
def test_oci_tars_of_the_same_stack(stack: OverlayStack, tmp_path: Path, compression: str) -> None:
    tars = [str(upper_to_oci_tar(u, tmp_path / f"layer{i}.tar", compression)) for i, u in enumerate(stack.uppers)]
    build(*tars, "-o", str(tmp_path / "out"))
    assert_same_view(stack, tmp_path / "out", tmp_path)


def test_tar_from_stdin(stack: OverlayStack, tmp_path: Path) -> None:
    tars = [upper_to_oci_tar(u, tmp_path / f"layer{i}.tar", "zstd") for i, u in enumerate(stack.uppers[:2])]
    code = "import sys; from nydus_py.cli.main import main; sys.exit(main(sys.argv[1:]))"
    with open(tars[1], "rb") as stdin:
        done = subprocess.run(["python3", "-c", code, "build", str(tars[0]), "-", "-o", str(tmp_path / "a")],
                              stdin=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr
    build(str(tars[0]), str(tars[1]), "-o", str(tmp_path / "b"))
    assert (tmp_path / "a" / "bootstrap").read_bytes() == (tmp_path / "b" / "bootstrap").read_bytes()


def test_merge_equals_one_multi_layer_build(stack: OverlayStack, tmp_path: Path) -> None:
    whole = build(*map(str, stack.uppers), "-o", str(tmp_path / "whole"))
    blobs = []
    for i, upper in enumerate(stack.uppers):
        doc = build(str(upper), "-o", str(tmp_path / f"single{i}"))
        blobs.append(doc["layers"][0]["path"])
    assert [Path(b).name for b in blobs] == [layer["id"] for layer in whole["layers"]]
    assert main(["merge", *blobs, "-o", str(tmp_path / "merged"), "--output-json", str(tmp_path / "m.json")]) == 0
    assert (tmp_path / "merged" / "bootstrap").read_bytes() == (tmp_path / "whole" / "bootstrap").read_bytes()
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["blobs"] == whole["blobs"] or [b["id"] for b in merged["blobs"]] == [b["id"] for b in whole["blobs"]]
    # a plain bootstrap with real ids merges too, given where its blobs are
    assert main(["merge", str(tmp_path / "whole" / "bootstrap"), "--blob-dir", str(tmp_path / "whole"),
                 "-o", str(tmp_path / "again")]) == 0
    assert_same_view(stack, tmp_path / "again", tmp_path)


def test_device_table_and_layers_in_json(stack: OverlayStack, tmp_path: Path) -> None:
    doc = build(*map(str, stack.uppers), "-o", str(tmp_path / "out"))
    boot = read_bootstrap((tmp_path / "out" / "bootstrap").read_bytes())
    assert [b["id"] for b in doc["blobs"]] == [b.blob_id for b in boot.blobs]
    assert [layer["referenced"] for layer in doc["layers"]] == [
        layer["id"] in {b.blob_id for b in boot.blobs} for layer in doc["layers"]]
    assert boot.prefetch_nids == [boot.root_nid]  # "/" by default, as BuildKit's merge


def test_prefetch_options(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_bytes(b"app")
    (src / "lib").write_bytes(b"lib")
    (tmp_path / "patterns").write_bytes(b"/bin/app\n/missing\n/lib\n")
    build(str(src), "-o", str(tmp_path / "a"), "--prefetch-patterns", str(tmp_path / "patterns"))
    boot = open_image(tmp_path / "a").bootstrap
    assert len(boot.prefetch_nids) == 2 and boot.root_nid not in boot.prefetch_nids
    build(str(src), "-o", str(tmp_path / "b"), "--no-prefetch")
    assert open_image(tmp_path / "b").bootstrap.prefetch_nids == []


def test_cross_layer_dedup(stack: OverlayStack, tmp_path: Path) -> None:
    plain = build(*map(str, stack.uppers[:2]), "-o", str(tmp_path / "plain"))
    dedup = build(*map(str, stack.uppers[:2]), "-o", str(tmp_path / "dedup"), "--cross-layer-dedup")
    assert dedup["layers"][1]["size"] < plain["layers"][1]["size"] - (3 << 20) // 2
    with BlobReader(Path(dedup["layers"][1]["path"])) as blob:
        inline = read_bootstrap(blob.inline_bootstrap())
    assert len(inline.blobs) == 2  # the lower layer's blob, then its own
    partial = OverlayStack.__new__(OverlayStack)
    partial.root, partial.uppers = tmp_path, stack.uppers[:2]
    assert_same_view(partial, tmp_path / "dedup", tmp_path)


def test_xattr_whiteouts_and_user_namespace(tmp_path: Path) -> None:
    need_mount()
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in ("keep", "gone", "opaque"):
        (lower / d).mkdir(parents=True)
        (lower / d / "f").write_bytes(b"lower")
    (upper / "opaque").mkdir(parents=True)
    os.setxattr(upper / "opaque", "user.overlay.opaque", b"y")
    (upper / "gone").write_bytes(b"")
    os.setxattr(upper / "gone", "user.overlay.whiteout", b"")
    os.setxattr(upper, "user.overlay.opaque", b"x")  # only "holds xattr whiteouts"
    os.setxattr(upper / "opaque", "trusted.overlay.origin", b"data in the other namespace")
    fix_times(lower)
    fix_times(upper)
    build(str(lower), str(upper), "-o", str(tmp_path / "out"), "--overlay-xattr-ns", "user")
    tree = open_image(tmp_path / "out").bootstrap.tree
    assert sorted(p for p, _ in tree.walk()) == [b"/", b"/keep", b"/keep/f", b"/opaque"]
    assert tree.lookup(b"/opaque").xattrs == {b"trusted.overlay.origin": b"data in the other namespace"}


def test_redirect_and_metacopy_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/original")
    status = main(["build", str(upper), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "redirect" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_real_wh_file_is_refused_in_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / ".wh.real").write_bytes(b"a real file")
    for spec in ("overlayfs", "none"):
        status = main(["build", str(a), str(b), "-o", str(tmp_path / "out"), "--whiteout-spec", spec])
        assert status == 2 and ".wh." in capsys.readouterr().err
    assert main(["build", str(b), "-o", str(tmp_path / "single"), "--whiteout-spec", "none"]) == 0
    assert open_image(tmp_path / "single").bootstrap.tree.lookup(b"/.wh.real") is not None


def test_too_many_blobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = []
    for i in range(255):
        d = tmp_path / f"l{i}"
        d.mkdir()
        (d / f"f{i}").write_bytes(b"%d" % i)
        layers.append(str(d))
    status = main(["build", *layers, "-o", str(tmp_path / "out"), "--jobs", "1"])
    assert status == 2 and "at most 254" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_opaque_upper_root_keeps_every_lower_entry(tmp_path: Path) -> None:
    """overlayfs ignores `opaque` on a layer's root: the kernel's view of the stack keeps the lower entries, and
    so must the image."""
    need_mount()
    (tmp_path / "stack").mkdir()
    stack = OverlayStack(tmp_path / "stack")
    stack.add_layer(base_layer)
    stack.add_layer(lambda m: (m / "added").write_bytes(b"upper"))
    os.setxattr(stack.uppers[-1], "trusted.overlay.opaque", b"y")
    fix_times(stack.uppers[-1])
    build(*map(str, stack.uppers), "-o", str(tmp_path / "out"))
    with stack.view() as view:
        assert (view / "added").exists() and len(list(view.iterdir())) > 1  # the kernel keeps the lower entries
    assert_same_view(stack, tmp_path / "out", tmp_path)


@pytest.mark.parametrize("xattr", ["redirect", "metacopy"])
def test_an_overlayfs_tar_entry_relying_on_a_lower_layer_is_refused(tmp_path: Path, xattr: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("moved")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {f"SCHILY.xattr.trusted.overlay.{xattr}": "/original"}
        archive.addfile(info)
    status = main(["build", str(layer), "-o", str(tmp_path / "out"), "--whiteout-spec", "overlayfs"])
    err = capsys.readouterr().err
    assert status == 2 and f"'{xattr}' is not supported" in err and "moved" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
