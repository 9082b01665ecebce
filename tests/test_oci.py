"""OCI images: `build` writes an image layout; `convert` turns images made by real tools (umoci, skopeo) into
Nydus images that skopeo accepts, `check` passes and the kernel mounts exactly as umoci unpacks the source."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.format import oci
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.layers import make_umoci_image

TAG = "v1"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def top_manifest(layout: Path, tag: str = TAG) -> dict:
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [d for d in index["manifests"] if d.get("annotations", {}).get(oci.REF_NAME) == tag]
    return json.loads(blob(layout, desc["digest"]))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_mount()
    return make_umoci_image(tmp_path_factory.mktemp("src"), need_tool("umoci"), TAG)


def source_ref(source: Path, form: str) -> str:
    skopeo = need_tool("skopeo")
    image = f"oci:{source / 'image'}:{TAG}"
    if form == "oci":
        return image
    target = source / f"{form}.tar"
    if not target.exists():
        dest = f"oci-archive:{target}:{TAG}" if form == "oci-archive" else f"docker-archive:{target}:example:{TAG}"
        run(skopeo, "copy", image, dest)
    return f"{form}:{target}"


def convert(src: str, out: Path, *extra: str) -> int:
    return main(["convert", src, f"oci:{out}:{TAG}", *extra])


def assert_mount_equals(image: str, truth: Path, workdir: Path) -> None:
    mnt = workdir / "mnt"
    mnt.mkdir()
    assert main(["mount", image, str(mnt), "--cache-dir", str(workdir / "cache")]) == 0
    try:
        assert differences(truth, mnt) == []
    finally:
        main(["umount", str(mnt)])


@pytest.mark.parametrize("form", ["oci", "oci-archive", "docker-archive"])
def test_convert_each_source_form(source: Path, tmp_path: Path, form: str) -> None:
    skopeo = need_tool("skopeo")
    out = tmp_path / "out"
    assert convert(source_ref(source, form), out, "--output-json", str(tmp_path / "r.json")) == 0
    target = f"oci:{out}:{TAG}"
    assert main(["check", target]) == 0
    inspected = json.loads(run(skopeo, "inspect", target).stdout)
    assert len(inspected["Layers"]) == 4  # three blob layers, then the bootstrap layer
    run(skopeo, "copy", target, f"oci:{tmp_path / 'copy'}:{TAG}")
    manifest = top_manifest(out)
    assert manifest["mediaType"] == oci.OCI_MANIFEST  # OCI types by default, docker-archive included
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["manifest"]["digest"] == inspected["Digest"] and doc["bootstrap"] == str(out / "bootstrap")
    assert_mount_equals(target, source / "truth" / "rootfs", tmp_path)


def test_manifest_config_and_bootstrap_layer(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert(source_ref(source, "oci"), out) == 0
    manifest = top_manifest(out)
    layers = manifest["layers"]
    assert all(layer["mediaType"] == oci.NYDUS_BLOB and layer["annotations"][oci.NYDUS_BLOB_ANNOTATION] == "true"
               for layer in layers[:-1])
    source_layers = [layer["digest"] for layer in top_manifest(source / "image")["layers"]]
    assert [layer["annotations"][oci.SOURCE_LAYER_ANNOTATION] for layer in layers[:-1]] == source_layers
    assert layers[-1]["mediaType"] == oci.OCI_LAYER_GZIP
    assert layers[-1]["annotations"] == {oci.NYDUS_BOOTSTRAP_ANNOTATION: "true", oci.NYDUS_FS_VERSION_ANNOTATION: "6"}
    config = json.loads(blob(out, manifest["config"]["digest"]))
    src_manifest = top_manifest(source / "image")
    src_config = json.loads(blob(source / "image", src_manifest["config"]["digest"]))
    for key in src_config:  # only rootfs and history change
        if key not in ("rootfs", "history"):
            assert config[key] == src_config[key], key
    assert config["config"]["Env"] == ["GREETING=hello"] and config["config"]["WorkingDir"] == "/app"
    tar_gz = blob(out, layers[-1]["digest"])
    import gzip

    plain = gzip.decompress(tar_gz)
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers[:-1]] + [
        "sha256:" + hashlib.sha256(plain).hexdigest()]
    assert config["history"][-1] == {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
    assert sum(1 for h in config["history"] if not h.get("empty_layer")) == len(layers)
    with tarfile.open(fileobj=__import__("io").BytesIO(plain)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:2]] == ["image", "image/image.boot"]
    assert members[1].mode == 0o444 and members[1].mtime == 0
    assert all(m.name.endswith(".blob.meta") for m in members[2:]) and len(members) >= 3


def test_reproducible(source: Path, tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        assert convert(source_ref(source, "oci"), tmp_path / name, "--jobs", "1" if name == "a" else "2") == 0
        digests.append(json.loads((tmp_path / name / "index.json").read_text())["manifests"][0]["digest"])
    assert digests[0] == digests[1]


def _multi_platform_source(source: Path, tmp_path: Path) -> Path:
    """The umoci image listed twice in a nested index, as linux/amd64 and linux/arm64."""
    layout = tmp_path / "multi"
    import shutil

    shutil.copytree(source / "image", layout)
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    entries = [{**{k: v for k, v in desc.items() if k != "annotations"}, "platform": {"architecture": arch,
                                                                                       "os": "linux"}}
               for arch in ("amd64", "arm64")]
    nested = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}).encode()
    digest = hashlib.sha256(nested).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(nested)
    index["manifests"] = [{"mediaType": oci.OCI_INDEX, "digest": f"sha256:{digest}", "size": len(nested),
                           "annotations": {oci.REF_NAME: TAG}}]
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_multi_platform_index(source: Path, tmp_path: Path) -> None:
    layout = _multi_platform_source(source, tmp_path)
    out = tmp_path / "out"
    assert convert(f"oci:{layout}:{TAG}", out) == 0
    top = top_manifest(out)
    assert top["mediaType"] == oci.OCI_INDEX
    assert [m["platform"]["architecture"] for m in top["manifests"]] == ["amd64", "arm64"]
    assert main(["check", f"oci:{out}:{TAG}"]) == 0
    single = tmp_path / "single"
    assert convert(f"oci:{layout}:{TAG}", single, "--platform", "linux/arm64") == 0
    assert top_manifest(single)["mediaType"] == oci.OCI_MANIFEST


def test_merge_platform(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert(source_ref(source, "oci"), out, "--merge-platform") == 0
    index = top_manifest(out)
    assert "mediaType" not in index and len(index["manifests"]) == 2
    original, nydus = index["manifests"]
    assert "artifactType" not in original and nydus["artifactType"] == oci.NYDUS_MANIFEST_ARTIFACT
    assert all("features" not in (m.get("platform") or {}).get("os", {}) and "os.features" not in m.get("platform", {})
               for m in index["manifests"])
    plain = json.loads(blob(out, original["digest"]))
    assert plain["layers"][0]["annotations"] == {oci.NYDUS_EMPTY_LAYER_ANNOTATION: "true"}
    plain_config = json.loads(blob(out, plain["config"]["digest"]))
    assert plain_config["rootfs"]["diff_ids"][0] == oci.EMPTY_LAYER_DIFF_ID
    assert plain_config["history"][0] == {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}
    assert hashlib.sha256(__import__("gzip").decompress(blob(out, plain["layers"][0]["digest"]))).hexdigest() == \
        oci.EMPTY_LAYER_DIFF_ID.split(":")[1]
    for layer in plain["layers"]:
        assert (out / "blobs" / "sha256" / layer["digest"].split(":")[1]).is_file()
    nydus_manifest = json.loads(blob(out, nydus["digest"]))
    assert nydus_manifest["config"]["mediaType"] == oci.NYDUS_CONFIG
    assert main(["check", f"oci:{out}:{TAG}"]) == 0


def test_docker_media_types(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert(source_ref(source, "docker-archive"), out, "--docker-media-types") == 0
    manifest = top_manifest(out)
    assert manifest["mediaType"] == oci.DOCKER_MANIFEST and manifest["config"]["mediaType"] == oci.DOCKER_CONFIG
    assert manifest["layers"][-1]["mediaType"] == oci.DOCKER_LAYER_GZIP
    assert {layer["mediaType"] for layer in manifest["layers"][:-1]} == {oci.NYDUS_BLOB}


def test_already_nydus_is_left_alone(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert convert(source_ref(source, "oci"), out) == 0
    capsys.readouterr()
    assert main(["convert", f"oci:{out}:{TAG}", f"oci:{tmp_path / 'again'}:{TAG}"]) == 0
    assert "already a Nydus image" in capsys.readouterr().out and not (tmp_path / "again").exists()


def test_check_finds_manifest_defects(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert convert(source_ref(source, "oci"), out) == 0
    manifest = top_manifest(out)
    (out / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]).unlink()
    capsys.readouterr()
    assert main(["check", f"oci:{out}:{TAG}"]) == 1
    assert "is missing from the layout" in capsys.readouterr().out


def test_build_writes_an_oci_layout(tmp_path: Path) -> None:
    skopeo = need_tool("skopeo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_bytes(b"hello")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "amd64", "os": "linux",
                                                      "config": {"Cmd": ["/hello"]}, "x-extra": {"kept": True}}))
    assert main(["build", str(src), "-o", str(tmp_path / "out"), "--tag", "t", "--platform", "linux/arm64/v8",
                 "--config", str(tmp_path / "config.json")]) == 0
    inspected = json.loads(run(skopeo, "inspect", f"oci:{tmp_path / 'out'}:t").stdout)
    assert inspected["Architecture"] == "arm64" and len(inspected["Layers"]) == 2
    run(skopeo, "inspect", "--config", f"oci:{tmp_path / 'out'}:t")
    config = json.loads(blob(tmp_path / "out", top_manifest(tmp_path / "out", "t")["config"]["digest"]))
    assert config["x-extra"] == {"kept": True} and config["config"]["Cmd"] == ["/hello"]
    assert config["variant"] == "v8"
    assert main(["check", f"oci:{tmp_path / 'out'}:t"]) == 0
