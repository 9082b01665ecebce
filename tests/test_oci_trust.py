"""Hostile images and targets (issue 13's trust rules, issue 15.5's output directory rules).

Every hostile input runs the real command in a child process under `ulimit -v 3000000` (3 GiB of address
space) and a time limit, and must end with exit 2 and one line naming the input; a target must be left as
it was (a new one absent, an existing one unchanged in bytes and names).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

MEMORY_LIMIT = 3_000_000 * 1024  # ulimit -v 3000000 (KiB)
TIME_LIMIT = 30.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def nydus_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process with a 3 GiB address-space limit; it must finish in time."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nydus_py.cli", *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=TIME_LIMIT * 2, env={**os.environ, **(env or {})})
    assert time.monotonic() - started < TIME_LIMIT, f"took {time.monotonic() - started:.1f}s"
    return done


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line on stderr, naming what it must."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every name below `root` (hidden ones too) with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() and not path.is_symlink() else (
            os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return out


# --- making images ---------------------------------------------------------------------------------------


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def put(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(layout: Path, files: dict[str, bytes] | None = None, tag: str = "v1",
                platform: str = "amd64") -> dict[str, object]:
    """A plain OCI image (one gzip layer) in a layout; returns the index entry."""
    layout.mkdir(parents=True, exist_ok=True)
    tar = layer_tar(files or {"etc/hello": b"hello\n"})  # plain tar: a tampered byte keeps it a valid tar
    layer = {"mediaType": LAYER_TAR, **put(layout, tar)}
    config = {"architecture": platform, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        "sha256:" + hashlib.sha256(tar).hexdigest()]}, "history": [{"created_by": "test"}]}
    config_desc = {"mediaType": OCI_CONFIG, **put(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer]}
    entry = {"mediaType": OCI_MANIFEST, **put(layout, json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return entry


def manifest_of(layout: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    path = layout / "blobs" / "sha256" / entry["digest"].split(":")[1]
    return path, json.loads(path.read_text())


def blob_path(layout: Path, desc: dict) -> Path:  # type: ignore[type-arg]
    return layout / "blobs" / "sha256" / desc["digest"].split(":")[1]


def rewrite_index(layout: Path, doc: object) -> None:
    (layout / "index.json").write_text(json.dumps(doc))


def set_manifest(layout: Path, manifest_bytes: bytes) -> None:
    """Point index.json at a new manifest blob (whatever its content)."""
    desc = {"mediaType": OCI_MANIFEST, **put(layout, manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    rewrite_index(layout, {"schemaVersion": 2, "manifests": [desc]})


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


def _tamper(layout: Path) -> None:
    _, manifest = manifest_of(layout)
    layer = blob_path(layout, manifest["layers"][0])
    data = layer.read_bytes()
    assert b"hello\n" in data
    layer.write_bytes(data.replace(b"hello\n", b"evil!\n"))  # same size, same digest named: a valid tar


def test_convert_refuses_a_tampered_layer_in_a_layout(src: Path, tmp_path: Path) -> None:
    _tamper(src)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1"), "does not match its digest")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_tampered_layer_in_an_oci_archive(src: Path, tmp_path: Path) -> None:
    _tamper(src)
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    refused(nydus_py("convert", f"oci-archive:{archive}:v1", f"oci:{tmp_path / 'out'}:v1"), "does not match")
    assert not (tmp_path / "out").exists()


def test_copy_refuses_a_tampered_layer(src: Path, tmp_path: Path) -> None:
    _tamper(src)
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


# --- 3. targets are written safely ------------------------------------------------------------------------


def test_converting_twice_replaces_the_entry(src: Path, tmp_path: Path) -> None:
    for _ in range(2):
        assert nydus_py("convert", f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:n").returncode == 0
    manifests = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert len(manifests) == 1


def test_a_malformed_target_index_stops_before_anything_is_written(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text('{"schemaVersion": 2, "manifests": [{"digest": "sha256:' + "0" * 64 +
                                    '", "size": 1, "annotations": {"a": ["list"]}}]}')
    before = snapshot(out)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{out}:v1"), "index.json", "$.manifests[0].annotations")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging left beside it


def test_a_symlinked_target_blobs_directory_is_refused(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "blobs").symlink_to(tmp_path / "elsewhere")
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{out}:v1"), "blobs")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert sorted(os.listdir(out)) == ["blobs"]


def test_a_symlinked_target_index_json_is_refused(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim").write_text("{}")
    (out / "index.json").symlink_to(tmp_path / "victim")
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{out}:v1"), "symlink")
    assert (tmp_path / "victim").read_text() == "{}" and sorted(os.listdir(out)) == ["index.json"]


def test_an_output_directory_inside_the_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"f")
    refused(nydus_py("build", str(tmp_path / "tree"), "-o", str(tmp_path / "tree" / "out")), "inside the source")
    assert sorted(os.listdir(tmp_path / "tree")) == ["f"]


def test_a_failed_convert_leaves_an_existing_layout_unchanged(src: Path, tmp_path: Path) -> None:
    make_layout(tmp_path / "good", {"x": b"good"})
    out = tmp_path / "out"
    assert nydus_py("convert", f"oci:{tmp_path / 'good'}:v1", f"oci:{out}:keep").returncode == 0
    before = snapshot(out)
    _tamper(src)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{out}:v1"), "does not match")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "out", "src"]


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


def test_no_staging_is_left_after_a_failed_registry_target(src: Path, tmp_path: Path) -> None:
    _tamper(src)
    done = nydus_py("copy", f"oci:{src}:v1", "docker://127.0.0.1:1/x:y", env={"TMPDIR": str(tmp_path)})
    refused(done, "does not match")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


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
