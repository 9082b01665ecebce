"""nydus_py/read/check.py: `check` passes real images, ours and nydus-image's, and finds hand-made defects in
bootstraps and blobs (exit 1, one line per defect); when it cannot run, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nydus_py.bootstrap.reader import BootstrapParser, read_bootstrap
from nydus_py.cli.main import main
from nydus_py.format import erofs
from tests.compare import differences
from tests.conftest import V1_BOOT, V2_BLOB, need_mount
from tests.layers import OverlayStack
from tests.test_layers import base_layer, second_layer


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_passes_on_our_images(corpus_image: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, image = corpus_image
    status, out, err = run(capsys, "check", str(image), "--json")
    doc = json.loads(out)
    assert status == 0 and doc["sound"] and doc["blobs_checked"] == 1 and doc["chunks_verified"] > 10
    for info in read_bootstrap((image / "bootstrap").read_bytes()).blobs:  # the layer blob, inline bootstrap
        assert run(capsys, "check", str(image / "blobs" / "sha256" / info.blob_id))[0] == 0


def test_check_passes_on_a_layered_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_mount()
    stack = OverlayStack(tmp_path)
    for change in (base_layer, second_layer):
        stack.add_layer(change)
    assert main(["build", *map(str, stack.uppers), "-o", str(tmp_path / "out")]) == 0
    status, out, _ = run(capsys, "check", str(tmp_path / "out"))
    assert status == 0 and "sound (" in out and "2 blobs" in out
    assert main(["unpack", str(tmp_path / "out"), "-o", str(tmp_path / "x")]) == 0
    with stack.view() as view:
        assert differences(view, tmp_path / "x") == []


@pytest.mark.parametrize("image", ["v1", "v2"])
def test_check_passes_on_real_nydus_images(capsys: pytest.CaptureFixture[str], image: str) -> None:
    status, out, _ = run(capsys, "check", str(V1_BOOT if image == "v1" else V2_BLOB))
    assert status == 0 and "sound" in out and "1 blobs" in out and "defect" not in out


# --- check finds hand-made defects ------------------------------------------------------------------


@pytest.fixture()
def small_image(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, Path]:
    compressor = getattr(request, "param", "zstd")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data").write_bytes(os.urandom(5000) + b"z" * 20000)
    (src / "top").write_bytes(b"top file")
    out = tmp_path / "out"
    assert main(["build", str(src), "-o", str(out), "--compressor", compressor, "--chunk-size", "4KiB"]) == 0
    (info,) = read_bootstrap((out / "bootstrap").read_bytes()).blobs
    return out / "bootstrap", out / "blobs" / "sha256" / info.blob_id, out


def patch_file(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def root_dirents(boot_path: Path) -> int:
    """File offset of the root directory's inline dirents."""
    data = boot_path.read_bytes()
    boot = read_bootstrap(data)
    parser = BootstrapParser(data, boot.meta_blkaddr, boot.chunk_size, boot.chunk_table)
    return parser.raw_inode(boot.root_nid).body_end


def expect_defect(capsys: pytest.CaptureFixture[str], image: Path, text: str) -> None:
    status, out, _ = run(capsys, "check", str(image))
    assert status == 1, out
    assert any(line.startswith("defect: ") and text in line for line in out.splitlines()), out


def test_defect_bad_magic(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    patch_file(boot, erofs.EROFS_SUPER_OFFSET, b"\0\0\0\0")
    expect_defect(capsys, out, "magic")


def test_defect_wrong_counts(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    table = read_bootstrap(boot.read_bytes())
    at = 0x1000 + 72  # blob table entry 0: chunk_count
    patch_file(boot, at, (table.blobs[0].chunk_count + 1).to_bytes(4, "little"))
    expect_defect(capsys, out, "16 * chunk_count")


def test_defect_dirent_past_the_end(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    patch_file(boot, root_dirents(boot) + 12 + 8, (3000).to_bytes(2, "little"))  # dirent 1's nameoff
    expect_defect(capsys, out, "dirent")


def test_defect_loop_in_directory_graph(small_image: tuple[Path, Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    boot, _, out = small_image
    at = root_dirents(boot)
    root_nid = read_bootstrap(boot.read_bytes()).root_nid
    patch_file(boot, at + 2 * 12, root_nid.to_bytes(8, "little"))  # "sub" (sorted after "." and "..") -> root
    expect_defect(capsys, out, "loop")


def test_defect_chunk_fails_to_decompress(small_image: tuple[Path, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    from nydus_py.blob.reader import BlobReader

    with BlobReader(blob) as reader:
        chunk = next(c for c in reader.chunk_infos() if c.compressed)
    patch_file(blob, chunk.compressed_offset + 4, b"\xff" * 8)  # inside a zstd frame
    expect_defect(capsys, out, f"chunk {chunk.ci_index} at {chunk.compressed_offset:#x}: zstd")


@pytest.mark.parametrize("small_image", ["none"], indirect=True)
def test_defect_chunk_digest_differs(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    patch_file(blob, 100, b"\x00\x01\x02")  # stored raw: still "decompresses", but the digest differs
    expect_defect(capsys, out, "digest does not match")


def test_defect_truncated_blob(small_image: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, blob, out = small_image
    os.truncate(blob, blob.stat().st_size - 100)
    expect_defect(capsys, out, "blob")


def test_check_cannot_run_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", str(tmp_path / "missing"))
    assert status == 2 and err.count("\n") == 1


def test_a_bootstrap_finds_its_blobs_where_nydus_py_put_them(corpus_image: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, image = corpus_image
    status, out, _ = run(capsys, "check", str(image / "bootstrap"))
    assert status == 0 and f"note: blob data read from {image}/blobs/sha256" in out and " sound (" in out
    assert "0 chunks verified" not in out
    assert main(["unpack", str(image / "bootstrap"), "-o", str(tmp_path / "x")]) == 0


def test_a_bootstrap_without_its_blobs_says_its_data_was_not_checked(corpus_image: tuple[Path, Path],
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    _, image = corpus_image
    alone = tmp_path / "alone" / "bootstrap"
    alone.parent.mkdir()
    alone.write_bytes((image / "bootstrap").read_bytes())
    status, out, _ = run(capsys, "check", str(alone))
    assert status == 0 and "metadata sound, data NOT checked" in out and "not found" in out
    status, out, _ = run(capsys, "check", str(alone), "--require-data")
    assert status == 1 and "defect: blob" in out and "--require-data" in out
    status, out, _ = run(capsys, "check", str(alone), "--json")
    doc = json.loads(out)
    assert doc["sound"] and not doc["data_checked"] and len(doc["missing_blobs"]) == 1


def test_a_file_that_is_no_image_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("root:x:0:0:root:/root:/bin/sh\n" * 100)
    status, _, err = run(capsys, "check", str(tmp_path / "notes.txt"))
    assert status == 2 and err.count("\n") == 1 and "not an image" in err


def test_an_acl_the_kernel_refuses_is_a_defect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An ACL xattr another builder wrote: its GROUP_OBJ entry turned into a second USER_OBJ, which
    posix_acl_valid refuses (our own writer never writes it: the bytes are changed in place)."""
    from nydus_py.format import posix_acl

    def acl(*entries: tuple[posix_acl.AclTag, int, int]) -> bytes:
        return bytes(posix_acl.PosixAclXattrHeader.build({"a_version": 2})) + b"".join(
            bytes(posix_acl.PosixAclXattrEntry.build({"e_tag": tag, "e_perm": perm, "e_id": uid}))
            for tag, perm, uid in entries)

    tag, anyone = posix_acl.AclTag, 0xFFFFFFFF
    good = acl((tag.USER_OBJ, 6, anyone), (tag.USER, 6, 1000), (tag.GROUP_OBJ, 4, anyone), (tag.MASK, 6, anyone),
               (tag.OTHER, 4, anyone))
    bad = acl((tag.USER_OBJ, 6, anyone), (tag.USER, 6, 1000), (tag.USER_OBJ, 4, anyone), (tag.MASK, 6, anyone),
              (tag.OTHER, 4, anyone))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "system.posix_acl_access", good)
    assert main(["build", str(src), "-o", str(tmp_path / "out")]) == 0
    boot_path = tmp_path / "out" / "bootstrap"
    data = boot_path.read_bytes()
    assert data.count(good) == 1
    boot_path.write_bytes(data.replace(good, bad))
    status, out, _ = run(capsys, "check", str(tmp_path / "out"))
    assert status == 1 and "defect: inode /f" in out and "out of order" in out


def test_a_layout_whose_bootstrap_does_not_decode_is_a_defect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An OCI layout holding a Nydus manifest is an image: a bootstrap in it that does not decode (built here
    by a builder made to lie: its chunk names blob 200) is a defect, exit 1, with the reason; unpack names
    the manifest and the reason in one line."""
    from nydus_py.build import pipeline
    from nydus_py.format import rafs
    from tests.hostile import make_layout

    make_layout(tmp_path / "src", {"a": b"some data\n" * 1000})
    honest = pipeline.bootstrap_bytes

    def lying(*args: object, **kwargs: object) -> tuple[bytes, list[int]]:
        data, keys = honest(*args, **kwargs)  # type: ignore[arg-type]
        boot = bytearray(data)
        at = parse_ext(boot).s_chunk_table_offset + 32  # the first entry's blob_index
        boot[at : at + 4] = (200).to_bytes(4, "little")
        return bytes(boot), keys

    def parse_ext(boot: bytearray) -> object:
        from nydus_py.format import parse
        return parse(rafs.SuperBlockExt, bytes(boot), what="ext", offset=rafs.EXT_SUPER_OFFSET)

    monkeypatch.setattr(pipeline, "bootstrap_bytes", lying)
    monkeypatch.setattr(pipeline, "_one_layer_bootstrap", lambda *args: None)  # render anew, through the liar
    assert main(["convert", "-q", f"oci:{tmp_path / 'src'}:v1", f"oci:{tmp_path / 'bad'}:v1"]) == 0
    monkeypatch.undo()
    status, out, err = run(capsys, "check", f"oci:{tmp_path / 'bad'}:v1")
    assert status == 1 and "has no chunk table entry" in out and "not an image" not in err, out + err
    status, out, err = run(capsys, "unpack", f"oci:{tmp_path / 'bad'}:v1", "-o", str(tmp_path / "files"))
    assert status == 2 and "manifest sha256:" in err and "has no chunk table entry" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "files").exists()
