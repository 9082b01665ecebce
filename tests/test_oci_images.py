"""nydus_py/oci/images.py: hostile source images (layouts, archives, registries' documents) are verified,
bounded and typed; each ends in exit 2 with one line naming the input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.hostile import (OCI_CONFIG, OCI_INDEX, blob_path, layer_tar, make_layout, manifest_of,
                           nydus_py, put, refused, rewrite_index, set_manifest, tamper)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    make_layout(tmp_path / "src")
    return tmp_path / "src"


def test_a_clean_image_converts(src: Path, tmp_path: Path) -> None:
    done = nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:n")
    assert done.returncode == 0, done.stderr
    assert nydus_py("check", f"oci:{tmp_path / 'out'}:n").returncode == 0


# --- 1. content-addressed means verified ------------------------------------------------------------------


def test_copy_refuses_a_blob_that_is_a_symlink_out_of_the_layout(src: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.write_bytes(b"secret")
    private.chmod(0o600)
    _, manifest = manifest_of(src)
    layer = blob_path(src, manifest["layers"][0])
    layer.unlink()
    layer.symlink_to(private)
    refused(nydus_py("copy", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), str(src), "symlink")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_blob_that_is_not_a_regular_file_is_refused_at_once(src: Path, tmp_path: Path, kind: str) -> None:
    _, manifest = manifest_of(src)
    layer = blob_path(src, manifest["layers"][0])
    layer.unlink()
    if kind == "fifo":
        os.mkfifo(layer)  # a blocking open would hang for ever
    elif kind == "directory":
        layer.mkdir()
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(layer, 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_manifest_that_is_a_symlink_to_dev_zero_is_refused(src: Path, tmp_path: Path) -> None:
    path, _ = manifest_of(src)
    path.unlink()
    path.symlink_to("/dev/zero")
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "symlink")


def test_a_symlinked_blobs_directory_is_refused(src: Path, tmp_path: Path) -> None:
    (src / "blobs").rename(tmp_path / "elsewhere")
    (src / "blobs").symlink_to(tmp_path / "elsewhere")
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "blobs")


def test_convert_refuses_a_tampered_layer_in_a_layout(src: Path, tmp_path: Path) -> None:
    tamper(src)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "does not match its digest")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_tampered_layer_in_an_oci_archive(src: Path, tmp_path: Path) -> None:
    tamper(src)
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    refused(nydus_py("convert", f"oci-archive:{archive}:v1", f"oci:{tmp_path / 'out'}:v1"), "does not match")
    assert not (tmp_path / "out").exists()


def test_copy_refuses_a_tampered_layer(src: Path, tmp_path: Path) -> None:
    tamper(src)
    refused(nydus_py("copy", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "does not match")
    assert not (tmp_path / "out").exists()


def test_a_blob_larger_than_declared_is_refused(src: Path, tmp_path: Path) -> None:
    _, manifest = manifest_of(src)
    layer = blob_path(src, manifest["layers"][0])
    with layer.open("ab") as f:
        f.write(bytes(1 << 20))
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "declared")


# --- docker-archive ---------------------------------------------------------------------------------------


def docker_archive(path: Path, images: list[tuple[str, dict[str, bytes]]], *, manifest: bytes | None = None,
                   tamper: bool = False) -> None:
    entries = []
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, (tag, files) in enumerate(images):
            layer = layer_tar(files)
            config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
                "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            add(config_name, config)
            add(f"l{i}/layer.tar", layer_tar({"etc/evil": b"x"}) if tamper else layer)
            entries.append({"Config": config_name, "RepoTags": [tag], "Layers": [f"l{i}/layer.tar"]})
        add("manifest.json", manifest if manifest is not None else json.dumps(entries).encode())


def test_docker_archive_layer_is_checked_against_its_diff_id(tmp_path: Path) -> None:
    docker_archive(tmp_path / "d.tar", [("example:v1", {"a": b"a"})], tamper=True)
    refused(nydus_py("convert", f"docker-archive:{tmp_path / 'd.tar'}", f"oci:{tmp_path / 'out'}:v1"),
            "does not match")


def test_docker_archive_of_several_images_needs_a_ref(tmp_path: Path) -> None:
    docker_archive(tmp_path / "d.tar", [("example:v1", {"a": b"a"}), ("other:v2", {"b": b"b"})])
    refused(nydus_py("convert", f"docker-archive:{tmp_path / 'd.tar'}", f"oci:{tmp_path / 'out'}:v1"),
            "example:v1", "other:v2")
    done = nydus_py("convert", f"docker-archive:{tmp_path / 'd.tar'}:other:v2", f"oci:{tmp_path / 'out'}:v1")
    assert done.returncode == 0, done.stderr
    done = nydus_py("unpack", f"oci:{tmp_path / 'out'}:v1", "-o", str(tmp_path / "files"))
    assert done.returncode == 0 and (tmp_path / "files" / "b").read_bytes() == b"b"


@pytest.mark.parametrize(("manifest", "words"), [
    (b'[{"RepoTags": ["x:1"], "Layers": []}]', ["manifest.json", "Config"]),
    (b"[{not json", ["manifest.json", "JSON"]),
    (b'[{"Config": "c.json", "Layers": ["missing/layer.tar"]}]', ["c.json"]),
    (b"{}", ["manifest.json", "array"]),
], ids=["no-config", "invalid-json", "layer-not-in-archive", "not-a-list"])
def test_docker_archive_manifest_json_of_the_wrong_shape(tmp_path: Path, manifest: bytes, words: list[str]) -> None:
    docker_archive(tmp_path / "d.tar", [("x:1", {"a": b"a"})], manifest=manifest)
    refused(nydus_py("convert", f"docker-archive:{tmp_path / 'd.tar'}", f"oci:{tmp_path / 'out'}:v1"), *words)


# --- 2. everything is bounded -----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "where"), [
    ("manifests", [1], "$.manifests[0]"),
    ("platform", "linux", "$.manifests[0].platform"),
])
def test_an_index_of_the_wrong_shape_names_the_field(src: Path, tmp_path: Path, field: str, value: object,
                                                      where: str) -> None:
    index = json.loads((src / "index.json").read_text())
    if field == "manifests":
        index["manifests"] = value
    else:
        index["manifests"][0]["platform"] = value
    rewrite_index(src, index)
    refused(nydus_py("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}:v1"), "index.json", where)


@pytest.mark.parametrize(("field", "value", "where"), [
    ("layers", ["x"], "$.layers[0]"),
    ("config", "x", "$.config"),
    ("layers", [{"digest": "sha256:" + "0" * 64, "size": -1}], "$.layers[0].size"),
    ("config", {"digest": "md5:x", "size": 1}, "$.config.digest"),
])
def test_a_manifest_of_the_wrong_shape_names_the_field(src: Path, tmp_path: Path, field: str, value: object,
                                                        where: str) -> None:
    _, manifest = manifest_of(src)
    manifest[field] = value
    set_manifest(src, json.dumps(manifest).encode())
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), str(src), where)


def test_a_config_of_the_wrong_shape_names_the_field(src: Path, tmp_path: Path) -> None:
    _, manifest = manifest_of(src)
    manifest["config"] = {"mediaType": OCI_CONFIG, **put(src, b'{"rootfs": {"diff_ids": "x"}}')}
    set_manifest(src, json.dumps(manifest).encode())
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "config", "$.rootfs.diff_ids")


def test_json_nested_too_deeply_is_refused(src: Path, tmp_path: Path) -> None:
    (src / "index.json").write_text('{"schemaVersion": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(nydus_py("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}:v1"), "index.json", "nested")


def test_an_8_gib_sparse_index_json_is_refused(src: Path, tmp_path: Path) -> None:
    with (src / "index.json").open("r+b") as f:
        f.truncate(8 << 30)
    refused(nydus_py("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}:v1"), "index.json", "limit")


def test_a_huge_manifest_is_refused_before_it_is_read(src: Path, tmp_path: Path) -> None:
    path, manifest = manifest_of(src)
    with path.open("ab") as f:
        f.truncate(64 << 20)
    entry = json.loads((src / "index.json").read_text())["manifests"][0]
    entry["size"] = 64 << 20
    rewrite_index(src, {"schemaVersion": 2, "manifests": [entry]})
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "limit")


def _nested(src: Path, levels: int, fan_out: int) -> None:
    """`levels` indexes, each listing the next one `fan_out` times; the innermost lists the manifest."""
    entry = json.loads((src / "index.json").read_text())["manifests"][0]
    child = {k: v for k, v in entry.items() if k != "annotations"}
    child["platform"] = {"architecture": "amd64", "os": "linux"}
    for _ in range(levels):
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child] * fan_out}).encode()
        child = {"mediaType": OCI_INDEX, **put(src, index), "platform": {"architecture": "amd64", "os": "linux"}}
    child["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    rewrite_index(src, {"schemaVersion": 2, "manifests": [child]})


def test_an_index_fanning_out_to_the_same_manifests_ends_quickly(src: Path, tmp_path: Path) -> None:
    _nested(src, levels=4, fan_out=1000)  # 10^12 paths to one manifest
    done = nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert done.returncode == 0, done.stderr


def test_forty_levels_of_nested_indexes_are_refused(src: Path, tmp_path: Path) -> None:
    _nested(src, levels=40, fan_out=2)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "nested deeper")


def test_an_index_with_too_many_entries_is_refused(src: Path, tmp_path: Path) -> None:
    entry = json.loads((src / "index.json").read_text())["manifests"][0]
    rewrite_index(src, {"schemaVersion": 2, "manifests": [entry] * 5000})
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "$.manifests")


def _raw_header(name: bytes, size: int, typeflag: bytes) -> bytes:
    header = tarfile.TarInfo(name.decode())
    header.size = size
    header.type = typeflag
    return header.tobuf(format=tarfile.USTAR_FORMAT)


def _layer_with_record(path: Path, typeflag: bytes, size: int, body: bytes = b"") -> None:
    """A gzip'd tar whose first member is a header record (PAX `x`, GNU `L`) of `size` bytes."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(_raw_header(b"././@Header", size, typeflag))
        block = (body * (1 << 20 // max(1, len(body))))[: 1 << 20] if body else bytes(1 << 20)
        left = size
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
        out.write(bytes(-size % 512))
        out.write(layer_tar({"a": b"a"}))


def test_a_600_mb_pax_record_is_refused(tmp_path: Path) -> None:
    _layer_with_record(tmp_path / "l.tar.gz", tarfile.XHDTYPE, 600 << 20, b"30 path=" + b"a" * 21 + b"\n")
    refused(nydus_py("build", str(tmp_path / "l.tar.gz"), "-o", str(tmp_path / "out")), "l.tar.gz", "PAX header")
    assert not (tmp_path / "out").exists()


def test_a_600_mb_gnu_long_name_is_refused(tmp_path: Path) -> None:
    _layer_with_record(tmp_path / "l.tar.gz", tarfile.GNUTYPE_LONGNAME, 600 << 20, b"a")
    refused(nydus_py("build", str(tmp_path / "l.tar.gz"), "-o", str(tmp_path / "out")), "GNU long name")


def test_a_pax_sparse_map_of_two_million_extents_is_refused(tmp_path: Path) -> None:
    extents = ",".join(f"{i * 8192},1" for i in range(2_000_000))
    pax = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": extents,
           "GNU.sparse.name": "big", "GNU.sparse.size": str(2_000_000 * 8192)}
    info = tarfile.TarInfo("GNUSparseFile.0/big")
    info.size = 2_000_000
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info.pax_headers = pax
        tar.addfile(info, io.BytesIO(b"x" * info.size))
    (tmp_path / "l.tar.gz").write_bytes(gzip.compress(out.getvalue(), compresslevel=1))
    refused(nydus_py("build", str(tmp_path / "l.tar.gz"), "-o", str(tmp_path / "out")), "PAX header")


def test_a_pax_1_0_sparse_map_of_two_million_extents_is_refused(tmp_path: Path) -> None:
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
           "GNU.sparse.realsize": str(1 << 40)}
    body = b"2000000\n" + b"0\n1\n" * 2_000_000
    info = tarfile.TarInfo("GNUSparseFile.0/big")
    info.size = len(body)
    info.pax_headers = pax
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(body))
    (tmp_path / "l.tar.gz").write_bytes(gzip.compress(out.getvalue(), compresslevel=1))
    refused(nydus_py("build", str(tmp_path / "l.tar.gz"), "-o", str(tmp_path / "out")), "sparse map")


def test_an_old_gnu_sparse_map_of_many_extension_blocks_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("big")
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[482] = 1  # isextended
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    extension = bytearray(512)
    for i in range(21):
        extension[i * 24 : i * 24 + 24] = b"%011o\0%011o\0" % (i * 2 + 1, 1)
    extension[504] = 1
    with gzip.open(tmp_path / "l.tar.gz", "wb", compresslevel=1) as f:
        f.write(bytes(header))
        for _ in range(200_000):  # 4.2 million extents
            f.write(bytes(extension))
        f.write(bytes(1024))
    refused(nydus_py("build", str(tmp_path / "l.tar.gz"), "-o", str(tmp_path / "out")), "sparse map")


# --- 4. messages name the input ---------------------------------------------------------------------------


def test_invalid_index_json_names_the_file(src: Path, tmp_path: Path) -> None:
    (src / "index.json").write_text("")
    refused(nydus_py("convert", f"oci:{src}", f"oci:{tmp_path / 'out'}:v1"), f"oci:{src}: index.json", "JSON")


def test_a_reference_of_no_known_form_is_refused() -> None:
    refused(nydus_py("convert", "registry.example/x", "oci:/nonexistent/out"), "registry.example/x", "oci:DIR")


@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive"])
def test_an_archive_that_is_not_a_tar_is_one_line(tmp_path: Path, kind: str) -> None:
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("root:x:0:0:root:/root:/bin/sh\n" * 40)
    refused(nydus_py("convert", f"{kind}:{not_tar}", f"oci:{tmp_path / 'out'}"), str(not_tar), "not a tar archive")
    assert not (tmp_path / "out").exists()
