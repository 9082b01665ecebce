"""nydus_py/oci/verify.py: `check IMAGE --source SOURCE` compares a Nydus image's files with the OCI image it was
converted from. A conversion is equal to its source (whiteouts, opaque directories, symlinks, hardlinks, xattrs,
setuid and sticky bits, devices, sparse members, several platforms, layouts and registries); a different source
names exactly the paths that differ; the source's merged view agrees with what umoci unpacks; a source that
cannot be read is exit 2 in one line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.model import FileKind
from nydus_py.oci.images import RegistryOptions, open_source
from nydus_py.oci.ref import parse_image_ref
from nydus_py.errors import FormatError
from nydus_py.oci.verify import FactsNode, source_tree, verify_conversion
from tests.conftest import need_mount, need_tool
from tests.hostile import LAYER_TAR, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, nydus_py, put, refused
from tests.layers import make_umoci_image

TAG = "v1"
MTIME = 1_700_000_000
Member = tuple[tarfile.TarInfo, bytes | None]


# --- making source images ---------------------------------------------------------------------------------------


def entry(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0,
          gid: int = 0, link: str = "", xattrs: dict[str, str] | None = None, device: tuple[int, int] = (0, 0)
          ) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, uid, gid, MTIME, link
    info.devmajor, info.devminor = device
    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
    if data is not None:
        info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    return entry(name, kind=tarfile.DIRTYPE, mode=mode)


def tar_of(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def image_of(layout: Path, layers: list[bytes], platform: str = "amd64") -> dict[str, object]:
    """An OCI image of `layers` (tars, lowest first; the second one gzip'd) in `layout`; its manifest descriptor."""
    blobs = [gzip.compress(tar, mtime=0) if i == 1 else tar for i, tar in enumerate(layers)]
    diff_ids = ["sha256:" + hashlib.sha256(tar).hexdigest() for tar in layers]
    config = {"architecture": platform, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": "test"}] * len(layers)}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, **put(layout, json.dumps(config).encode())},
                "layers": [{"mediaType": LAYER_TAR + ("+gzip" if i == 1 else ""), **put(layout, blob)}
                           for i, blob in enumerate(blobs)]}
    return {"mediaType": OCI_MANIFEST, **put(layout, json.dumps(manifest).encode()),
            "platform": {"architecture": platform, "os": "linux"}}


def layout_of(layout: Path, images: list[dict[str, object]]) -> str:
    """`layout` with `images` (manifest descriptors) under TAG: the one manifest, or an index of several."""
    top = images[0] if len(images) == 1 else {
        "mediaType": OCI_INDEX, **put(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                          "manifests": images}).encode())}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**top, "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    return f"oci:{layout}:{TAG}"


def lower_layer(*, tool_mode: int = 0o2755, fifo: bool = True) -> list[Member]:
    members = [
        directory("etc"), entry("etc/passwd", b"root:x:0:0\n"),
        entry("etc/tagged", b"tagged", xattrs={"user.origin": "nydus-py", "trusted.raw": "\udcff\udcfe\x01"}),
        directory("bin"), entry("bin/su", b"#!/bin/su\n", mode=0o4755),
        entry("bin/tool", b"tool", mode=tool_mode, gid=50),
        entry("bin/sh", kind=tarfile.SYMTYPE, link="su", mode=0o777),
        entry("bin/su-link", kind=tarfile.LNKTYPE, link="bin/su"),
        directory("tmp", 0o1777),
        directory("data"), entry("data/old1", b"old one"), entry("data/old2", b"old two"),
        entry("gone", b"whited out in layer two"),
        directory("home"), directory("home/user", 0o700), entry("home/user/notes", b"mine", uid=1000, gid=1000),
        entry("deep/a/b/file", b"parents implicit"),
        directory("dev"), entry("dev/null", kind=tarfile.CHRTYPE, mode=0o666, device=(1, 3)),
    ]
    if fifo:
        members.append(entry("dev/fifo", kind=tarfile.FIFOTYPE))
    return members


def upper_layer(*, passwd: bytes = b"root:x:0:1\n", whiteouts: bool = True) -> list[Member]:
    members = [
        entry("data/new", b"new in layer two"),
        entry("etc/passwd", passwd),
        entry(".wh.home"), directory("home"), entry("home/other", b"recreated"),
        entry("implicit/x/y", b"two implicit parents"),
    ]
    if whiteouts:
        members += [entry(".wh.gone"), entry("data/.wh..wh..opq")]
    return members


def make_source(layout: Path, lower: list[Member], upper: list[Member]) -> str:
    return layout_of(layout, [image_of(layout, [tar_of(lower), tar_of(upper)])])


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(SOURCE, IMAGE): a two-layer source and its conversion."""
    root = tmp_path_factory.mktemp("verify")
    source = make_source(root / "src", lower_layer(), upper_layer())
    image = f"oci:{root / 'out'}:{TAG}"
    assert main(["convert", "-q", source, image]) == 0
    return source, image


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def view_paths(node: FactsNode, prefix: bytes = b"") -> dict[bytes, FactsNode]:
    out = {prefix or b"/": node}
    for name, child in (node.children or {}).items():
        out.update(view_paths(child, prefix + b"/" + name))
    return out


# --- equal ----------------------------------------------------------------------------------------------


def test_a_conversion_is_equal_to_its_source(converted: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    source, image = converted
    status, out, err = run(capsys, "check", image, "--source", source)
    assert status == 0, out + err
    lines = out.splitlines()
    assert lines[-2].startswith(f"{image}: sound (")
    assert lines[-1].startswith(f"{image}: equal to {source} (") and lines[-1].endswith(" paths compared)")
    assert not any(line.startswith(("differs:", "missing:", "extra:")) for line in lines)
    status, out, _ = run(capsys, "check", image, "--source", source, "--json")
    doc = json.loads(out)
    assert status == 0 and doc["sound"] and doc["equal"] and doc["differences"] == [] and doc["source"] == source
    # every path of the merged view: whiteouts, the opaque directory and the removed home are applied
    paths = sorted(p.decode() for p in view_paths(source_tree(open_source(parse_image_ref(source))[0], "src")))
    assert doc["paths_compared"] == len(paths)
    assert {"/data/new", "/home/other", "/implicit/x/y", "/deep/a/b/file", "/bin/su-link"} <= set(paths)
    assert not {"/gone", "/data/old1", "/data/old2", "/home/user", "/.wh.gone"} & set(paths)


def test_the_source_view_keeps_the_facts(converted: tuple[str, str]) -> None:
    source, _ = converted
    view = view_paths(source_tree(open_source(parse_image_ref(source))[0], "src"))
    su, link, tool = view[b"/bin/su"].facts, view[b"/bin/su-link"].facts, view[b"/bin/tool"].facts
    assert su.mode == 0o4755 and link == su and tool.mode == 0o2755 and tool.gid == 50
    assert su.digest == hashlib.sha256(b"#!/bin/su\n").digest() and su.size == 10 and su.mtime == MTIME
    assert view[b"/tmp"].facts.mode == 0o1777 and view[b"/bin/sh"].facts.target == b"su"
    assert view[b"/bin/sh"].facts.kind is FileKind.SYMLINK and view[b"/bin/sh"].facts.mode == 0o777
    assert dict(view[b"/etc/tagged"].facts.xattrs) == {b"user.origin": b"nydus-py", b"trusted.raw": b"\xff\xfe\x01"}
    assert view[b"/dev/null"].facts.device == (1, 3)
    assert view[b"/etc/passwd"].facts.digest == hashlib.sha256(b"root:x:0:1\n").digest()  # the upper layer's
    assert view[b"/deep"].facts.implicit and view[b"/implicit/x"].facts.implicit and not view[b"/home"].facts.implicit


def test_layers_apply_as_containerd_applies_them(tmp_path: Path) -> None:
    """Whiteouts never hide an entry of their own layer; an opaque directory keeps the upper entries; a hardlink
    may name a lower layer's file; a whiteout and a new entry of one name replace; a parent over a lower file
    replaces it; bsdtar's LIBARCHIVE xattrs are read too."""
    lower = [directory("a"), entry("a/f1", b"1"), entry("a/f2", b"2"), entry("b", b"lower b"), directory("c", 0o700),
             entry("c/old", b"old"), entry("file", b"a file"), entry("x", b"lower x")]
    libarchive = entry("bsd", b"bsd")
    libarchive[0].pax_headers = {"LIBARCHIVE.xattr.user.k%3Dv": "dmFsdWU"}  # user.k=v: b"value", unpadded
    upper = [entry("x", b"kept"), entry(".wh.x"), entry("a/.wh..wh..opq"), entry("a/g", b"g"),
             entry("l", kind=tarfile.LNKTYPE, link="b"), entry(".wh.c"), entry("c", b"now a file", mode=0o600),
             entry("file/inside", b"below what was a file"), libarchive]
    source = make_source(tmp_path / "src", lower, upper)
    view = view_paths(source_tree(open_source(parse_image_ref(source))[0], "src"))
    assert sorted(view) == [b"/", b"/a", b"/a/g", b"/b", b"/bsd", b"/c", b"/file", b"/file/inside", b"/l", b"/x"]
    assert view[b"/l"].facts == view[b"/b"].facts and view[b"/l"].facts.digest == hashlib.sha256(b"lower b").digest()
    assert view[b"/c"].facts.kind is FileKind.REG and view[b"/c"].facts.mode == 0o600
    assert view[b"/file"].facts.implicit and dict(view[b"/bsd"].facts.xattrs) == {b"user.k=v": b"value"}
    assert not view[b"/a"].facts.implicit  # the lower layer's directory keeps its own attributes
    assert view[b"/x"].facts.digest == hashlib.sha256(b"kept").digest()  # .wh.x hid the lower x, not its own
    libarchive[0].pax_headers = {"LIBARCHIVE.xattr.user.k": "not base64!"}
    broken = make_source(tmp_path / "broken", lower, [libarchive])
    with pytest.raises(FormatError, match="'bsd': pax record LIBARCHIVE.xattr.user.k is not base64"):
        source_tree(open_source(parse_image_ref(broken))[0], "src")


def test_the_library_call_of_the_service(converted: tuple[str, str]) -> None:
    source, image = converted
    report = verify_conversion(parse_image_ref(source), parse_image_ref(image), RegistryOptions())
    assert report.equal and report.differences == [] and report.platforms == ["linux/amd64"] and report.paths > 20


# --- different ------------------------------------------------------------------------------------------


def test_a_different_source_names_exactly_the_paths(converted: tuple[str, str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, image = converted
    other = make_source(tmp_path / "other", lower_layer(tool_mode=0o755), upper_layer(passwd=b"root:x:0:9\n"))
    status, out, err = run(capsys, "check", image, "--source", other)
    assert status == 1 and err == ""
    found = [line for line in out.splitlines() if line.startswith(("differs:", "missing:", "extra:"))]
    theirs, ours = (hashlib.sha256(text).hexdigest() for text in (b"root:x:0:9\n", b"root:x:0:1\n"))
    assert found == ["differs: /bin/tool: mode (source 0755, nydus 2755)",
                     f"differs: /etc/passwd: content (source sha256:{theirs}, nydus sha256:{ours})"]
    assert out.splitlines()[-1].startswith(f"{image}: 2 paths differ from {other} (")
    status, out, _ = run(capsys, "check", image, "--source", other, "--json")
    doc = json.loads(out)
    assert status == 1 and doc["sound"] and not doc["equal"]
    assert [(d["path"], d["what"], d["source"], d["nydus"]) for d in doc["differences"]] == [
        ("/bin/tool", "mode", "0755", "2755"),
        ("/etc/passwd", "content", "sha256:" + hashlib.sha256(b"root:x:0:9\n").hexdigest(),
         "sha256:" + hashlib.sha256(b"root:x:0:1\n").hexdigest())]


def test_missing_and_extra_paths(converted: tuple[str, str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A source without the whiteouts still has /gone and data's old files; one without the fifo lacks it."""
    _, image = converted
    other = make_source(tmp_path / "other", lower_layer(fifo=False), upper_layer(whiteouts=False))
    status, out, _ = run(capsys, "check", image, "--source", other)
    assert status == 1
    found = [line for line in out.splitlines() if line.startswith(("differs:", "missing:", "extra:"))]
    assert found == ["missing: /data/old1 (in the source, not in the Nydus image)",
                     "missing: /data/old2 (in the source, not in the Nydus image)",
                     "extra: /dev/fifo (in the Nydus image, not in the source)",
                     "missing: /gone (in the source, not in the Nydus image)"]
    assert f"4 paths differ from {other}" in out.splitlines()[-1]


# --- sparse members, several platforms, umoci, registries ---------------------------------------------------


@pytest.mark.parametrize("tar_format", ["posix", "gnu"])
def test_sparse_members_are_expanded(tmp_path: Path, tar_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    """GNU tar's sparse members (PAX 1.0 and old GNU): the holes hash as zeros, on both sides."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"data in the middle")
        f.truncate(3 << 20)
    layer = subprocess.run(["tar", f"--format={tar_format}", "--sparse", "--numeric-owner", "-C", str(tree), "-cf",
                            "-", "sparse"], check=True, capture_output=True).stdout
    assert b"GNUSparseFile" in layer or tar_format == "gnu"
    source = layout_of(tmp_path / "src", [image_of(tmp_path / "src", [layer])])
    view = view_paths(source_tree(open_source(parse_image_ref(source))[0], "src"))
    assert view[b"/sparse"].facts.digest == hashlib.sha256((tree / "sparse").read_bytes()).digest()
    image = f"oci:{tmp_path / 'out'}:{TAG}"
    assert main(["convert", "-q", source, image]) == 0
    status, out, _ = run(capsys, "check", image, "--source", source)
    assert status == 0 and f"equal to {source} (2 paths compared)" in out


def test_each_platform_is_compared_with_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def source(layout: Path, arm_text: bytes) -> str:
        return layout_of(layout, [image_of(layout, [tar_of([entry("f", b"amd64")])], "amd64"),
                                  image_of(layout, [tar_of([entry("f", arm_text)])], "arm64")])

    original = source(tmp_path / "src", b"arm64")
    image = f"oci:{tmp_path / 'out'}:{TAG}"
    assert main(["convert", "-q", original, image]) == 0
    status, out, _ = run(capsys, "check", image, "--source", original)
    assert status == 0 and f"equal to {original} (4 paths compared)" in out
    changed = source(tmp_path / "changed", b"ARM64")
    status, out, _ = run(capsys, "check", image, "--source", changed, "--json")
    doc = json.loads(out)
    assert status == 1 and doc["platforms"] == ["linux/amd64", "linux/arm64"]
    assert [(d["path"], d["what"], d["platform"]) for d in doc["differences"]] == [("/f", "content", "linux/arm64")]
    status, out, _ = run(capsys, "check", image, "--source", changed)
    assert [line for line in out.splitlines() if line.startswith("differs:")][0].endswith(") [linux/arm64]")
    amd_only = layout_of(tmp_path / "amd", [image_of(tmp_path / "amd", [tar_of([entry("f", b"amd64")])], "amd64"),
                                            image_of(tmp_path / "amd", [tar_of([entry("f", b"s390x")])], "s390x")])
    done = nydus_py("check", image, "--source", amd_only)
    refused(done, amd_only, "linux/arm64")


def test_umoci_layers_agree_with_umoci_unpack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An independent applier: umoci's own gzip layers (deletions, an opaque directory, a hardlink) give the
    paths, modes and contents `umoci unpack` makes, and their conversion is equal to them."""
    need_mount()  # as the other umoci tests: umoci unpack keeps owners, which needs root
    root = make_umoci_image(tmp_path, need_tool("umoci"), TAG)
    source = f"oci:{root / 'image'}:{TAG}"
    view = view_paths(source_tree(open_source(parse_image_ref(source))[0], "src"))
    rootfs = root / "truth" / "rootfs"
    truth = {b"/" + os.fsencode(p.relative_to(rootfs)): p for p in rootfs.rglob("*")}
    assert set(view) - {b"/"} == set(truth)
    for path, real in truth.items():
        facts, st = view[path].facts, real.lstat()
        assert facts.kind.ifmt == st.st_mode & 0o170000, path
        if facts.kind is FileKind.REG:
            assert (facts.mode, facts.digest) == (st.st_mode & 0o7777, hashlib.sha256(real.read_bytes()).digest())
    image = f"oci:{tmp_path / 'out'}:{TAG}"
    assert main(["convert", "-q", source, image]) == 0
    assert run(capsys, "check", image, "--source", source)[0] == 0


def test_a_registry_image_is_fetched_first(converted: tuple[str, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_registry import registry

    source, image = converted
    with registry(tmp_path / "registry") as host:
        assert main(["copy", "--plain-http", image, f"docker://{host}/app:nydus"]) == 0
        assert main(["copy", "--plain-http", source, f"docker://{host}/app:{TAG}"]) == 0
        capsys.readouterr()
        status, out, err = run(capsys, "check", f"docker://{host}/app:nydus", "--plain-http", "--source",
                               f"docker://{host}/app:{TAG}")
        assert status == 0, out + err
        assert out.splitlines()[-1].startswith(f"docker://{host}/app:nydus: equal to docker://{host}/app:{TAG} (")
        report = verify_conversion(parse_image_ref(source), parse_image_ref(f"docker://{host}/app:nydus"),
                                   RegistryOptions(plain_http=True))
        assert report.equal
    assert not list(Path(tempfile.gettempdir()).glob(f"nydus-py-check-{os.getpid()}-*"))  # the copy is gone


# --- cannot run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["nope:x", "oci:{root}/missing:v1", "oci:{root}/src:other", "{image}"],
                         ids=["no transport", "no layout", "no such tag", "a Nydus image"])
def test_a_source_that_cannot_be_read_is_exit_2(converted: tuple[str, str], bad: str) -> None:
    source, image = converted
    reference = bad.format(root=parse_image_ref(source).path.parent, image=image)  # type: ignore[union-attr]
    done = nydus_py("check", image, "--source", reference)
    refused(done, reference)
    assert done.stdout == ""


def test_a_corrupt_source_layer_is_exit_2(converted: tuple[str, str], tmp_path: Path) -> None:
    _, image = converted
    layout = tmp_path / "src"
    source = layout_of(layout, [image_of(layout, [tar_of([entry("f", b"fine")])])])
    for blob in (layout / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        if b"fine" in data and not data.startswith(b"{"):
            blob.write_bytes(data.replace(b"fine", b"evil"))  # a valid tar that no longer matches its digest
    done = nydus_py("check", image, "--source", source)
    refused(done, source, "does not match its digest")
