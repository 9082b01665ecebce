"""Images as the ecosystem writes them (issue 12, items 5-8): platforms matched as containerd normalizes them
(layouts, archives, registries); every tar layer media type of the OCI and Docker families; `--merge-platform`
that keeps the original manifests valid (skopeo judges) and is left alone when converted again; images with zero
layers. The images come from umoci and skopeo; the right result is what `umoci unpack` makes of the source,
compared with the kernel mount of the conversion, or an exact exit status and a one-line message naming the input."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyzstd
import pytest

from nydus_py.cli.main import main
from nydus_py.format import oci
from nydus_py.oci.platforms import normalize_platform, parse_platform, platform_of
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.layers import make_umoci_image
from tests.test_registry import registry

TAG = "v1"


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# --- the sources: one umoci layout holding three images, and what `umoci unpack` makes of each --------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/image holds tag v1 (three layers: files, deletions, an opaque directory), `small` (one layer, config
    architecture aarch64) and `empty` (no layers at all: `umoci new` and a config change); root/truth-TAG/rootfs
    is `umoci unpack` of each."""
    need_mount()
    umoci = need_tool("umoci")
    root = make_umoci_image(tmp_path_factory.mktemp("images"), umoci, TAG)
    (root / "truth").rename(root / f"truth-{TAG}")
    image = root / "image"
    run(umoci, "new", "--image", f"{image}:small")
    layer = root / "small-layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "small").write_text("the small image\n")
    run("tar", "-C", str(layer), "--owner=0", "--group=0", "-cf", str(root / "small.tar"), "etc")
    run(umoci, "raw", "add-layer", "--image", f"{image}:small", str(root / "small.tar"))
    run(umoci, "config", "--image", f"{image}:small", "--architecture", "aarch64")
    run(umoci, "new", "--image", f"{image}:empty")
    run(umoci, "config", "--image", f"{image}:empty", "--config.env=ONLY=metadata")
    for tag in ("small", "empty"):
        run(umoci, "unpack", "--image", f"{image}:{tag}", str(root / f"truth-{tag}"))
    return root


def truth(images: Path, tag: str) -> Path:
    return images / f"truth-{tag}" / "rootfs"


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def read_json(layout: Path, digest: str) -> dict:
    return json.loads(blob_path(layout, digest).read_bytes())


def put_blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def put_json(layout: Path, doc: dict, media_type: str) -> dict:
    return put_blob(layout, json.dumps(doc).encode(), media_type)


def tagged(layout: Path, tag: str) -> dict:
    """The index.json entry of `tag`, without its annotations."""
    (desc,) = [d for d in json.loads((layout / "index.json").read_text())["manifests"]
               if d.get("annotations", {}).get(oci.REF_NAME) == tag]
    return {k: v for k, v in desc.items() if k != "annotations"}


def set_tag(layout: Path, desc: dict, tag: str = TAG) -> None:
    """Make index.json hold exactly `desc` as `tag`."""
    entry = {**desc, "annotations": {oci.REF_NAME: tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def manifest_of(images: Path, tag: str) -> dict:
    return read_json(images / "image", tagged(images / "image", tag)["digest"])


def copy_layout(images: Path, dest: Path) -> Path:
    shutil.copytree(images / "image", dest)
    return dest


def multi_platform(images: Path, dest: Path, entries: list[tuple[str, str]]) -> Path:
    """A copy of the layout whose tag v1 is an index of (tag, platform as written) entries."""
    layout = copy_layout(images, dest)
    manifests = []
    for tag, platform in entries:
        parts = platform.split("/")
        doc = {"architecture": parts[1], "os": parts[0], **({"variant": parts[2]} if len(parts) == 3 else {})}
        manifests.append({**tagged(layout, tag), "platform": doc})
    set_tag(layout, put_json(layout, {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests},
                             oci.OCI_INDEX))
    return layout


def archived(layout: Path, kind: str, host: str | None = None) -> str:
    """The image v1 of `layout` as SOURCE of the kind asked for, made by skopeo (every platform)."""
    if kind == "oci":
        return f"oci:{layout}:{TAG}"
    skopeo = need_tool("skopeo")
    if kind == "oci-archive":
        target = layout.parent / f"{layout.name}.tar"
        run(skopeo, "copy", "--all", f"oci:{layout}:{TAG}", f"oci-archive:{target}:{TAG}")
        return f"oci-archive:{target}:{TAG}"
    if kind == "docker-archive":
        target = layout.parent / f"{layout.name}-docker.tar"
        run(skopeo, "copy", f"oci:{layout}:{TAG}", f"docker-archive:{target}:example:{TAG}")
        return f"docker-archive:{target}"
    assert kind == "registry" and host is not None
    run(skopeo, "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:{TAG}", f"docker://{host}/{layout.name}:{TAG}")
    return f"docker://{host}/{layout.name}:{TAG}"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Iterator[str]:
    with registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


def convert(capsys: pytest.CaptureFixture[str], source: str, out: Path, *extra: str) -> tuple[int, str, str]:
    more = ("--plain-http",) if source.startswith("docker://") else ()
    return cli(capsys, "convert", source, f"oci:{out}:{TAG}", *more, *extra)


@contextlib.contextmanager
def mounted(image: str, workdir: Path, *extra: str) -> Iterator[Path]:
    mnt = workdir / f"mnt-{len(list(workdir.glob('mnt-*')))}"
    mnt.mkdir()
    assert main(["mount", image, str(mnt), "--cache-dir", str(workdir / "cache"), *extra]) == 0
    try:
        yield mnt
    finally:
        assert main(["umount", str(mnt)]) == 0


def assert_mount_equals(image: str, expected: Path, workdir: Path, *extra: str) -> None:
    with mounted(image, workdir, *extra) as mnt:
        assert differences(expected, mnt) == []


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def source_layers(out: Path) -> list[str]:
    """The source layer digests the converted (single-platform) image was made from."""
    manifest = read_json(out, tagged(out, TAG)["digest"])
    return [layer["annotations"][oci.SOURCE_LAYER_ANNOTATION] for layer in manifest["layers"][:-1]]


# --- item 5: platforms are normalized, then compared exactly -----------------------------------------------

NORMALIZED = [  # (as written, as containerd's platforms package normalizes it)
    ("linux/x86_64", "linux/amd64"), ("linux/x86-64", "linux/amd64"), ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v2", "linux/amd64/v2"), ("linux/aarch64", "linux/arm64"), ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64/8", "linux/arm64"), ("linux/arm64/v8.0", "linux/arm64"), ("linux/aarch64/v8", "linux/arm64"),
    ("linux/arm64/v9.0", "linux/arm64/v9"), ("linux/arm", "linux/arm/v7"), ("linux/arm/7", "linux/arm/v7"),
    ("linux/armhf", "linux/arm/v7"), ("linux/armel", "linux/arm/v6"), ("linux/arm/6", "linux/arm/v6"),
    ("linux/arm/5", "linux/arm/v5"), ("linux/i386", "linux/386"), ("LINUX/AMD64", "linux/amd64"),
    ("macos/arm64", "darwin/arm64"), ("linux/riscv64", "linux/riscv64"),
]


@pytest.mark.parametrize(("written", "normal"), NORMALIZED)
def test_platforms_normalize_as_containerd_does(written: str, normal: str) -> None:
    assert str(platform_of(parse_platform(written))) == normal
    os, arch, *variant = written.split("/")
    assert normalize_platform(os, arch, *variant) == platform_of(parse_platform(normal))


MATCHING = [  # (the index entry's platform, --platform): the same platform
    ("linux/arm64/v8", "linux/arm64"), ("linux/arm64", "linux/arm64/v8"), ("linux/aarch64", "linux/arm64"),
    ("linux/arm64", "linux/arm64/v8.0"), ("linux/arm64/8", "linux/arm64"), ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"), ("linux/amd64/v1", "linux/amd64"), ("linux/amd64", "linux/x86_64/v1"),
    ("linux/arm", "linux/arm/v7"), ("linux/arm/7", "linux/arm/v7"), ("linux/armhf", "linux/arm/v7"),
    ("linux/arm/v7", "linux/armhf"), ("linux/armel", "linux/arm/v6"), ("linux/i386", "linux/386"),
    ("linux/386", "linux/i386"),
]


@pytest.mark.parametrize(("entry", "wanted"), MATCHING)
def test_platform_option_finds_the_normalized_entry(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     entry: str, wanted: str) -> None:
    layout = multi_platform(images, tmp_path / "src", [("small", entry), (TAG, "linux/s390x")])
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out", "--platform", wanted)
    assert status == 0, err
    assert source_layers(tmp_path / "out") == [d["digest"] for d in manifest_of(images, "small")["layers"]]


@pytest.mark.parametrize(("entry", "wanted"), [("linux/arm/v6", "linux/arm"), ("linux/amd64/v2", "linux/amd64"),
                                                ("linux/arm64/v9", "linux/arm64"), ("linux/arm", "linux/arm64")])
def test_platform_option_refuses_another_platform(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  entry: str, wanted: str) -> None:
    layout = multi_platform(images, tmp_path / "src", [("small", entry)])
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out", "--platform", wanted)
    assert status == 2 and one_line(err) == f"nydus-py: oci:{layout}:{TAG}: no image for platform {wanted}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "registry"])
def test_platform_matching_for_each_source_kind(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                kind: str, request: pytest.FixtureRequest) -> None:
    layout = multi_platform(images, tmp_path / f"m{kind.replace('-', '')}",
                            [("small", "linux/arm64/v8"), (TAG, "linux/amd64")])
    source = archived(layout, kind, request.getfixturevalue("host") if kind == "registry" else None)
    status, _, err = convert(capsys, source, tmp_path / "arm", "--platform", "linux/arm64")
    assert status == 0, err
    assert_mount_equals(f"oci:{tmp_path / 'arm'}:{TAG}", truth(images, "small"), tmp_path)
    status, _, err = convert(capsys, source, tmp_path / "amd", "--platform", "linux/x86_64")
    assert status == 0, err
    assert_mount_equals(f"oci:{tmp_path / 'amd'}:{TAG}", truth(images, TAG), tmp_path)


def test_platform_matching_for_a_docker_archive(images: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """docker save holds one image; its platform is its config's (here `aarch64`, as some builders write it)."""
    layout = copy_layout(images, tmp_path / "small")
    set_tag(layout, tagged(layout, "small"))
    source = archived(layout, "docker-archive")
    status, _, err = convert(capsys, source, tmp_path / "out", "--platform", "linux/arm64/v8")
    assert status == 0, err
    assert_mount_equals(f"oci:{tmp_path / 'out'}:{TAG}", truth(images, "small"), tmp_path)
    status, _, err = convert(capsys, source, tmp_path / "none", "--platform", "linux/amd64")
    assert status == 2 and one_line(err) == f"nydus-py: {source}: no image for platform linux/amd64"


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "registry"])
@pytest.mark.parametrize("wanted", [(), ("--platform", "linux/arm64")])
def test_two_entries_for_one_platform_are_an_error(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   kind: str, wanted: tuple[str, ...],
                                                   request: pytest.FixtureRequest) -> None:
    layout = multi_platform(images, tmp_path / f"d{kind.replace('-', '')}",
                            [("small", "linux/arm64/v8"), (TAG, "linux/aarch64")])
    source = archived(layout, kind, request.getfixturevalue("host") if kind == "registry" else None)
    status, _, err = convert(capsys, source, tmp_path / "out", *wanted)
    line = one_line(err)
    small, big = (tagged(images / "image", tag)["digest"] for tag in ("small", TAG))
    assert status == 2 and line.startswith("nydus-py: ") and line.endswith(
        f": index entries {small} (linux/arm64/v8) and {big} (linux/aarch64) are the same platform linux/arm64")
    assert not (tmp_path / "out").exists()


# --- item 6: every tar layer media type converts; non-distributable ones with a warning ---------------------

OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
LAYER_TYPES = [  # (media type, manifest family, restricted)
    (oci.OCI_LAYER_TAR, oci.OCI_MANIFEST, False), (oci.OCI_LAYER_GZIP, oci.OCI_MANIFEST, False),
    (oci.OCI_LAYER_ZSTD, oci.OCI_MANIFEST, False), (OCI_NONDISTRIBUTABLE, oci.OCI_MANIFEST, True),
    (OCI_NONDISTRIBUTABLE + "+gzip", oci.OCI_MANIFEST, True), (OCI_NONDISTRIBUTABLE + "+zstd", oci.OCI_MANIFEST, True),
    (oci.DOCKER_LAYER_TAR, oci.DOCKER_MANIFEST, False), (oci.DOCKER_LAYER_GZIP, oci.DOCKER_MANIFEST, False),
    ("application/vnd.docker.image.rootfs.diff.tar.zstd", oci.DOCKER_MANIFEST, False),
    (DOCKER_FOREIGN, oci.DOCKER_MANIFEST, True), (DOCKER_FOREIGN + ".gzip", oci.DOCKER_MANIFEST, True),
]


def with_layer_type(images: Path, dest: Path, media_type: str, family: str) -> Path:
    """The umoci image v1 with every layer recompressed as `media_type` says (plain, gzip or zstd) and typed so,
    in a manifest of `family` (a Docker manifest in an OCI layout, as docker save >= 25 writes)."""
    layout = copy_layout(images, dest)
    manifest = read_json(layout, tagged(layout, TAG)["digest"])
    layers = []
    for layer in manifest["layers"]:
        tar = gzip.decompress(blob_path(layout, layer["digest"]).read_bytes())
        data = (pyzstd.compress(tar) if "zstd" in media_type else gzip.compress(tar, mtime=0)
                if "gzip" in media_type else tar)
        layers.append(put_blob(layout, data, media_type))
    config_type = oci.DOCKER_CONFIG if family == oci.DOCKER_MANIFEST else oci.OCI_CONFIG
    doc = {"schemaVersion": 2, "mediaType": family, "config": {**manifest["config"], "mediaType": config_type},
           "layers": layers}
    set_tag(layout, put_json(layout, doc, family))
    return layout


@pytest.mark.parametrize(("media_type", "family", "restricted"), LAYER_TYPES)
def test_every_tar_layer_media_type_converts(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             media_type: str, family: str, restricted: bool) -> None:
    layout = with_layer_type(images, tmp_path / "src", media_type, family)
    source = f"oci:{layout}:{TAG}"
    status, _, err = convert(capsys, source, tmp_path / "out")
    assert status == 0, err
    digests = [d["digest"] for d in read_json(layout, tagged(layout, TAG)["digest"])["layers"]]
    expected = [f"nydus-py: warning: {source} (linux/amd64): layer {d} is non-distributable ({media_type}); its "
                "Nydus blob is an ordinary layer, pushed wherever the image goes" for d in digests] if restricted else []
    assert err.splitlines() == expected
    manifest = read_json(tmp_path / "out", tagged(tmp_path / "out", TAG)["digest"])
    assert [layer["mediaType"] for layer in manifest["layers"][:-1]] == [oci.NYDUS_BLOB] * 3  # ordinary blobs
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    assert_mount_equals(f"oci:{tmp_path / 'out'}:{TAG}", truth(images, TAG), tmp_path)


@pytest.mark.parametrize("media_type", [OCI_NONDISTRIBUTABLE + "+zstd", DOCKER_FOREIGN + ".gzip", oci.OCI_LAYER_GZIP])
def test_a_missing_layer_blob_is_refused(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         media_type: str) -> None:
    family = oci.DOCKER_MANIFEST if "docker" in media_type else oci.OCI_MANIFEST
    layout = with_layer_type(images, tmp_path / "src", media_type, family)
    missing = read_json(layout, tagged(layout, TAG)["digest"])["layers"][1]["digest"]
    blob_path(layout, missing).unlink()
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out")
    line = one_line(err)
    assert status == 2 and line.startswith(f"nydus-py: oci:{layout}:{TAG} (linux/amd64): layer {missing} "
                                           "is missing")
    assert not (tmp_path / "out").exists()


def test_a_layer_type_without_a_tar_is_refused(images: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    media_type = "application/vnd.oci.image.layer.v1.tar+encrypted"
    layout = with_layer_type(images, tmp_path / "src", media_type, oci.OCI_MANIFEST)
    first = read_json(layout, tagged(layout, TAG)["digest"])["layers"][0]["digest"]
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out")
    assert status == 2 and one_line(err) == (f"nydus-py: oci:{layout}:{TAG} (linux/amd64): layer {first}: media type "
                                             f"{media_type} cannot be converted")


# --- item 7: --merge-platform keeps the original manifests valid ------------------------------------------


def merged_index(out: Path) -> tuple[dict, dict]:
    """(original manifest, Nydus manifest) of a one-platform --merge-platform output."""
    original, nydus = read_json(out, tagged(out, TAG)["digest"])["manifests"]
    return read_json(out, original["digest"]), read_json(out, nydus["digest"])


def assert_docker_family_kept(out: Path, source_manifest: dict) -> None:
    original, _ = merged_index(out)
    assert original["mediaType"] == oci.DOCKER_MANIFEST and original["config"]["mediaType"] == oci.DOCKER_CONFIG
    assert [layer["mediaType"] for layer in original["layers"]] == [oci.DOCKER_LAYER_GZIP] * 4
    assert original["layers"][0]["annotations"] == {oci.NYDUS_EMPTY_LAYER_ANNOTATION: "true"}
    assert original["layers"][1:] == source_manifest["layers"]
    skopeo = need_tool("skopeo")
    target = f"oci:{out}:{TAG}"
    inspected = json.loads(run(skopeo, "inspect", target))  # the first linux/amd64 entry: the original
    assert inspected["Layers"] == [layer["digest"] for layer in original["layers"]]
    run(skopeo, "copy", target, f"dir:{out.parent / 'dir-copy'}")
    run(skopeo, "copy", "--all", target, f"oci:{out.parent / 'all-copy'}:{TAG}")
    copied = json.loads((out.parent / "dir-copy" / "manifest.json").read_text())
    assert copied["mediaType"] == oci.DOCKER_MANIFEST and copied["layers"] == original["layers"]


def test_merge_platform_docker_schema2_from_a_registry(images: Path, host: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    skopeo = need_tool("skopeo")
    source = f"docker://{host}/schema2:{TAG}"
    run(skopeo, "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{images / 'image'}:{TAG}", source)
    source_manifest = json.loads(run(skopeo, "inspect", "--raw", "--tls-verify=false", source))
    assert source_manifest["mediaType"] == oci.DOCKER_MANIFEST
    status, _, err = convert(capsys, source, tmp_path / "out", "--merge-platform")
    assert status == 0, err
    assert_docker_family_kept(tmp_path / "out", source_manifest)
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    assert_mount_equals(f"oci:{tmp_path / 'out'}:{TAG}", truth(images, TAG), tmp_path)


def test_merge_platform_docker_schema2_in_a_layout(images: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """skopeo writes the schema-2 image to dir:; its manifest and blobs are put in an OCI layout (as docker save
    >= 25 lays out a Docker manifest)."""
    skopeo = need_tool("skopeo")
    run(skopeo, "copy", "--format", "v2s2", f"oci:{images / 'image'}:{TAG}", f"dir:{tmp_path / 'dir'}")
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps(oci.OCI_LAYOUT_VERSION))
    for item in (tmp_path / "dir").iterdir():
        if len(item.name) == 64:
            shutil.copyfile(item, layout / "blobs" / "sha256" / item.name)
    raw = (tmp_path / "dir" / "manifest.json").read_bytes()
    source_manifest = json.loads(raw)
    set_tag(layout, put_blob(layout, raw, oci.DOCKER_MANIFEST))
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out", "--merge-platform")
    assert status == 0, err
    assert_docker_family_kept(tmp_path / "out", source_manifest)
    assert_mount_equals(f"oci:{tmp_path / 'out'}:{TAG}", truth(images, TAG), tmp_path)


def test_merge_platform_with_docker_media_types_keeps_the_docker_family(images: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The Nydus manifest is a Docker one with --docker-media-types: its config keeps the Docker config type (the
    artifactType alone marks it); the original manifest (OCI here) keeps OCI types."""
    status, _, err = convert(capsys, f"oci:{images / 'image'}:{TAG}", tmp_path / "out", "--merge-platform",
                             "--docker-media-types")
    assert status == 0, err
    original, nydus = merged_index(tmp_path / "out")
    assert (nydus["mediaType"], nydus["config"]["mediaType"]) == (oci.DOCKER_MANIFEST, oci.DOCKER_CONFIG)
    assert nydus["layers"][-1]["mediaType"] == oci.DOCKER_LAYER_GZIP
    assert (original["mediaType"], original["config"]["mediaType"]) == (oci.OCI_MANIFEST, oci.OCI_CONFIG)
    assert original["layers"][0]["mediaType"] == oci.OCI_LAYER_GZIP
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0


@pytest.mark.parametrize("history", ["none", "with-empty-layers"])
def test_merge_platform_history_per_layer(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          history: str) -> None:
    layout = copy_layout(images, tmp_path / "src")
    manifest = read_json(layout, tagged(layout, TAG)["digest"])
    config = read_json(layout, manifest["config"]["digest"])
    if history == "none":
        config.pop("history")
        source_history: list[dict] = []
    else:
        source_history = [{"created_by": "ENV A=1", "empty_layer": True}, {"created_by": "COPY a /"},
                          {"created_by": "LABEL x=y", "empty_layer": True}]
        config["history"] = source_history
    manifest["config"] = put_json(layout, config, oci.OCI_CONFIG)
    set_tag(layout, put_json(layout, manifest, oci.OCI_MANIFEST))
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out", "--merge-platform")
    assert status == 0, err
    out = tmp_path / "out"
    original, nydus = merged_index(out)
    padding = [{"created_by": "nydus-py build"}] * (3 - (history != "none"))
    original_history = read_json(out, original["config"]["digest"])["history"]
    assert original_history == [oci.HISTORY_EMPTY_LAYER, *source_history, *padding]
    assert sum(1 for h in original_history if not h.get("empty_layer")) == len(original["layers"]) == 4
    nydus_history = read_json(out, nydus["config"]["digest"])["history"]
    assert nydus_history == [*source_history, *padding, oci.HISTORY_BOOTSTRAP]
    assert sum(1 for h in nydus_history if not h.get("empty_layer")) == len(nydus["layers"]) == 4
    skopeo = need_tool("skopeo")
    run(skopeo, "copy", f"oci:{out}:{TAG}", f"dir:{tmp_path / 'dir-copy'}")  # the original, as a consumer reads it
    assert main(["check", f"oci:{out}:{TAG}"]) == 0


def as_nydusify_marks(out: Path) -> None:
    """Mark the Nydus manifests of a merged index nydusify's way: `os.features`, no artifactType, OCI config."""
    index = read_json(out, tagged(out, TAG)["digest"])
    for entry in index["manifests"]:
        if entry.pop("artifactType", None):
            manifest = read_json(out, entry["digest"])
            manifest["config"]["mediaType"] = oci.OCI_CONFIG
            entry.update(put_json(out, manifest, oci.OCI_MANIFEST))
            entry["platform"] = {**entry["platform"], "os.features": [oci.NYDUS_OS_FEATURE]}
    set_tag(out, put_json(out, index, oci.OCI_INDEX))


@pytest.mark.parametrize("marks", ["artifactType", "os.features"])
@pytest.mark.parametrize("platforms", [1, 2])
def test_a_merged_index_is_already_nydus(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         marks: str, platforms: int) -> None:
    entries = [(TAG, "linux/amd64"), ("small", "linux/arm64")][:platforms]
    layout = multi_platform(images, tmp_path / "src", entries)
    out = tmp_path / "out"
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", out, "--merge-platform")
    assert status == 0, err
    if marks == "os.features":
        as_nydusify_marks(out)
    assert main(["check", f"oci:{out}:{TAG}"]) == 0
    status, stdout, err = convert(capsys, f"oci:{out}:{TAG}", tmp_path / "again")
    assert (status, err) == (0, "") and stdout == f"oci:{out}:{TAG}: already a Nydus image; nothing converted\n"
    assert not (tmp_path / "again").exists()
    status, stdout, _ = convert(capsys, f"oci:{out}:{TAG}", tmp_path / "again", "--merge-platform", "--platform",
                                "linux/amd64")
    assert status == 0 and "already a Nydus image" in stdout and not (tmp_path / "again").exists()


# --- item 8: images with zero layers -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker-archive"])
def test_zero_layer_image_is_an_empty_root(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           kind: str) -> None:
    layout = copy_layout(images, tmp_path / "empty")
    set_tag(layout, tagged(layout, "empty"))
    assert read_json(layout, tagged(layout, TAG)["digest"])["layers"] == []
    status, _, err = convert(capsys, archived(layout, kind), tmp_path / "out")
    assert status == 0, err
    out = tmp_path / "out"
    manifest = read_json(out, tagged(out, TAG)["digest"])
    (bootstrap_layer,) = manifest["layers"]  # no blob layers, only the bootstrap layer
    assert bootstrap_layer["annotations"][oci.NYDUS_BOOTSTRAP_ANNOTATION] == "true"
    config = read_json(out, manifest["config"]["digest"])
    assert len(config["rootfs"]["diff_ids"]) == 1 and config["config"]["Env"][-1] == "ONLY=metadata"
    expected = truth(images, "empty")
    assert list(expected.iterdir()) == []
    for image in (f"oci:{out}:{TAG}", str(out / "bootstrap")):
        status, stdout, err = cli(capsys, "check", image)
        assert status == 0 and "sound (1 inodes, 0 blobs, 0 chunks verified)" in stdout, err
        status, stdout, _ = cli(capsys, "inspect", image, "--json")
        doc = json.loads(stdout)
        assert status == 0 and doc["blobs"] == [] and [line.split()[-1] for line in doc["listing"]] == ["/"]
        unpacked = tmp_path / f"unpacked-{len(list(tmp_path.glob('unpacked-*')))}"
        assert main(["unpack", image, "-o", str(unpacked)]) == 0
        assert differences(expected, unpacked) == []
        assert_mount_equals(image, expected, tmp_path)


def test_zero_layer_platform_does_not_stop_the_others(images: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    layout = multi_platform(images, tmp_path / "src", [("empty", "linux/arm64"), (TAG, "linux/amd64")])
    out = tmp_path / "out"
    status, stdout, err = convert(capsys, f"oci:{layout}:{TAG}", out)
    assert status == 0, err
    assert stdout.splitlines()[:2] == [f"linux/arm64: 0 blob layers, bootstrap {out}/bootstrap.linux-arm64",
                                       f"linux/amd64: 3 blob layers, bootstrap {out}/bootstrap.linux-amd64"]
    assert main(["check", f"oci:{out}:{TAG}"]) == 0
    assert_mount_equals(str(out / "bootstrap.linux-arm64"), truth(images, "empty"), tmp_path, "--blob-dir", str(out))
    assert_mount_equals(str(out / "bootstrap.linux-amd64"), truth(images, TAG), tmp_path, "--blob-dir", str(out))


def test_errors_name_the_image_and_the_platform(images: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    layout = multi_platform(images, tmp_path / "src", [("empty", "linux/arm64"), ("small", "linux/arm/v7")])
    (layer,) = manifest_of(images, "small")["layers"]
    blob_path(layout, layer["digest"]).write_bytes(b"not a tar at all")
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out")
    line = one_line(err)
    assert status == 2 and line.startswith(f"nydus-py: oci:{layout}:{TAG} (linux/arm/v7): layer {layer['digest']}")
    assert not (tmp_path / "out").exists()


def test_layers_umoci_insert_writes_convert(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`umoci insert` writes a layer that ends right after its last member (no end-of-archive blocks); GNU tar,
    Go and containerd accept it, and so do we: the image converts to what `umoci unpack` makes of it."""
    umoci = need_tool("umoci")
    layout = copy_layout(images, tmp_path / "src")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "added.txt").write_bytes(b"inserted by umoci\n")
    run(umoci, "insert", "--image", f"{layout}:{TAG}", str(tmp_path / "extra"), "/inserted")
    run(umoci, "insert", "--image", f"{layout}:{TAG}", "--whiteout", "/app/run.sh")
    for layer in read_json(layout, tagged(layout, TAG)["digest"])["layers"][-2:]:
        tar = gzip.decompress(blob_path(layout, layer["digest"]).read_bytes())
        assert not tar.endswith(bytes(1024))  # what the reader must accept
    run(umoci, "unpack", "--image", f"{layout}:{TAG}", str(tmp_path / "truth"))
    status, _, err = convert(capsys, f"oci:{layout}:{TAG}", tmp_path / "out")
    assert status == 0, err
    assert_mount_equals(f"oci:{tmp_path / 'out'}:{TAG}", tmp_path / "truth" / "rootfs", tmp_path)
