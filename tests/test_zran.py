"""zran (`convert --oci-ref`, the drop-in's `--type targz-ref`): gzip layers referenced in place. nydusd 2.2 and
the kernel serve the images equal to the source; the contexts, chunk infos and digests equal nydus-image 2.2's
for the same layers; nydus-snapshotter's converter packs and merges with our builder; the originals travel with
the image; layers that cannot be referenced in place fall back with a warning; hostile layers end with exit 2."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from nydus_py.blob.reader import BlobReader
from nydus_py.bootstrap.reader import read_bootstrap
from nydus_py.blob.zran import (ZranBlobReader, ZranContext, ZranIndexer, decode_contexts, encode_contexts,
                                inflate_context)
from nydus_py.cli.main import main
from nydus_py.errors import FormatError
from nydus_py.format import oci
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.hostile import blob_path, layout_of_layer, manifest_of, nydus_py, refused, set_manifest
from tests.layers import make_umoci_image
from tests.nydus_stack import need_nydus, nydus_image, nydusd_mount

TAG = "v1"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# fields nydus-image 2.2.0 writes otherwise, each a documented choice of ours (docs/format.md §11.10, §16):
# the CI after no `image.blob` header, CRC-32C per chunk, 512 KiB-aligned mapped_blkaddr, ENCRYPTION_NONE, and
KNOWN_2_2_DIFFERENCES = ["blob[0].ci_offset", "chunk.crc32", "chunk.flags", "device[0].mapped_blkaddr", "ext.s_flags"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """umoci's gzip layers: three of make_umoci_image (hardlink, symlink, deletions, an opaque directory), and
    a fourth with a 6 MiB file of text and noise that spans several restart points, xattrs and a hardlink pair;
    root/truth/rootfs is what umoci unpacks of them."""
    need_mount()
    umoci = need_tool("umoci")
    root = make_umoci_image(tmp_path_factory.mktemp("zran-src"), umoci, TAG)
    rng = random.Random(25)
    large = b"".join(rng.randbytes(50_000) if i % 3 else b"line of text %d\n" % i * 3000 for i in range(90))
    with tarfile.open(root / "layer4.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        srv = tarfile.TarInfo("srv")
        srv.type, srv.mode, srv.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        tar.addfile(srv)
        for name, data, xattrs in [("srv/large", large, {}), ("srv/tagged", b"hello", {"user.origin": "nydus-py"})]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("srv/large-link")
        link.type, link.linkname, link.mtime = tarfile.LNKTYPE, "srv/large", 1700000000
        tar.addfile(link)
    subprocess.run([umoci, "raw", "add-layer", "--image", f"{root / 'image'}:{TAG}", str(root / "layer4.tar")],
                   check=True, capture_output=True)
    shutil.rmtree(root / "truth")
    subprocess.run([umoci, "unpack", "--image", f"{root / 'image'}:{TAG}", str(root / "truth")], check=True,
                   capture_output=True)
    assert os.getxattr(root / "truth" / "rootfs" / "srv" / "tagged", "user.origin") == b"nydus-py"
    return root


@pytest.fixture(scope="module")
def converted(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zran-out") / "image"
    assert main(["convert", "--oci-ref", "-q", f"oci:{source / 'image'}:{TAG}", f"oci:{out}:{TAG}"]) == 0
    return out


def source_layers(source: Path) -> list[dict]:  # type: ignore[type-arg]
    _, manifest = manifest_of(source / "image")
    layers: list[dict] = manifest["layers"]  # type: ignore[type-arg]
    assert layers and all(layer["mediaType"] == GZIP_LAYER for layer in layers)
    return layers


def test_blob_layers_reference_the_originals(source: Path, converted: Path) -> None:
    originals = source_layers(source)
    _, manifest = manifest_of(converted)
    blobs, bootstrap = manifest["layers"][:-1], manifest["layers"][-1]
    assert [b["annotations"][oci.NYDUS_REF_ANNOTATION] for b in blobs] == [o["digest"] for o in originals]
    assert bootstrap["annotations"][oci.NYDUS_BOOTSTRAP_ANNOTATION] == "true"
    for blob, original in zip(blobs, originals, strict=True):
        assert blob["mediaType"] == oci.NYDUS_BLOB
        assert blob["size"] < original["size"] // 10 or original["size"] < 4096  # metadata, not data
        # the original stays in the layout, unchanged, though no manifest lists it
        assert blob_path(converted, original).read_bytes() == blob_path(source / "image", original).read_bytes()
    assert main(["check", f"oci:{converted}:{TAG}", "--require-data"]) == 0
    shown = nydus_py("inspect", str(converted / "bootstrap"), "--json")
    blobs_shown = json.loads(shown.stdout)["blobs"]
    assert {f"sha256:{b['id']}" for b in blobs_shown} == {o["digest"] for o in originals}
    assert {f"sha256:{b['meta_id']}" for b in blobs_shown} == {b["digest"] for b in blobs}


def test_nydusd_and_the_kernel_serve_the_source(source: Path, converted: Path, tmp_path: Path) -> None:
    truth = source / "truth" / "rootfs"  # umoci unpack gives `/` the time it created /srv in it
    with nydusd_mount(converted / "bootstrap", converted / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(truth, mnt, root_mtime=False) == []
    mnt = tmp_path / "kernel"
    mnt.mkdir()
    assert main(["mount", f"oci:{converted}:{TAG}", str(mnt), "--cache-dir", str(tmp_path / "cache")]) == 0
    try:
        assert differences(truth, mnt, root_mtime=False) == []
    finally:
        main(["umount", str(mnt)])
    assert main(["unpack", f"oci:{converted}:{TAG}", "-o", str(tmp_path / "unpacked")]) == 0
    assert differences(truth, tmp_path / "unpacked", root_mtime=False) == []


def meta_facts(meta: Path, layer: Path) -> tuple[list, list, list | None]:  # type: ignore[type-arg]
    """A zran meta blob's chunk infos, contexts (with their windows) and chunk digests."""
    with BlobReader(meta) as plain:
        boot = plain.inline_bootstrap()
    assert boot is not None
    (info,) = read_bootstrap(boot).blobs
    with ZranBlobReader(meta, layer, info) as reader:
        return ([(e.compressed_offset, e.compressed_size, e.uncompressed_size, e.ci_index) for e in reader.entries()],
                reader.contexts(), reader.chunk_digests())


def test_same_index_as_nydus_image(source: Path, tmp_path: Path) -> None:
    """Per layer: nydus-image 2.2 `create -t targz-ref` and ours choose the same restart points, windows and
    chunk ranges, and the blob, device and chunk tables of their inline bootstraps differ only in documented
    fields (how each reads a tar's inodes is tests/test_conformance_layers.py's matter)."""
    most_contexts = 0
    for i, layer in enumerate(source_layers(source)):
        gz = blob_path(source / "image", layer)
        theirs, ours = tmp_path / f"theirs{i}", tmp_path / f"ours{i}"
        nydus_image("create", "-t", "targz-ref", "--blob-inline-meta", "--features", "blob-toc", "--blob", theirs, gz)
        done = subprocess.run([shutil.which("nydus-py-image") or "nydus-py-image", "create", "-t", "targz-ref",
                               "--blob-inline-meta", "--features", "blob-toc", "--blob", str(ours), str(gz)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        facts = meta_facts(ours, gz)
        assert facts == meta_facts(theirs, gz)
        most_contexts = max(most_contexts, len(facts[1]))
        boots = []
        for blob in (ours, theirs):
            with BlobReader(blob) as reader:
                boot = reader.inline_bootstrap()
            assert boot is not None
            boots.append(tmp_path / f"{blob.name}.boot")
            boots[-1].write_bytes(boot)
        ignored = [arg for field in KNOWN_2_2_DIFFERENCES for arg in ("--ignore", field)]
        diff = subprocess.run([sys.executable, "tools/bootstrap_diff.py", *map(str, boots), *ignored],
                              capture_output=True, text=True)
        assert diff.returncode in (0, 1), diff.stderr
        tables = [line for line in diff.stdout.splitlines() if not line.startswith("inode.")]
        assert tables == []
    assert most_contexts >= 5  # the 6 MiB file spans a restart point per chunk or two


def test_snapshotter_converter_packs_and_merges_with_us(source: Path, tmp_path: Path) -> None:
    """nydus-snapshotter's Pack (OCIRef) with nydus-py-image, then its Merge with nydus-image 2.2 and with us:
    nydusd serves both bootstraps from the originals and our meta blobs."""
    harness = need_nydus("nydus-converter-harness")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    args = []
    for i, layer in enumerate(source_layers(source)):
        gz = blob_path(source / "image", layer)
        meta = tmp_path / f"meta{i}"
        run([harness, "pack", "-builder", shutil.which("nydus-py-image") or "", "-oci-ref", "-out", meta, gz])
        shutil.copy(gz, blobs / gz.name)  # nydusd reads the data from the original layer, by its digest
        shutil.copy(meta, blobs / hashlib.sha256(meta.read_bytes()).hexdigest())
        args.append(f"{meta}={layer['digest']}")
    for merger in (need_nydus("nydus-image"), shutil.which("nydus-py-image") or ""):
        out = tmp_path / f"bootstrap-{Path(merger).name}.tar"
        run([harness, "merge", "-builder", merger, "-oci-ref", "-out", out, *args])
        with tarfile.open(out) as tar:
            member = tar.extractfile("image/image.boot")
            assert member is not None
            boot = tmp_path / f"{Path(merger).name}.boot"
            boot.write_bytes(member.read())
        nydus_image("check", "--bootstrap", boot)
        # nydus-image 2.2's merge keeps a lower layer's mtime for a directory an upper layer changes
        exact = merger != need_nydus("nydus-image")
        with nydusd_mount(boot, blobs, tmp_path) as mnt:
            assert differences(source / "truth" / "rootfs", mnt, mtime=exact, root_mtime=False) == [], merger


def run(args: list[str | Path]) -> None:
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# --- layers that cannot be referenced in place, and hostile ones -----------------------------------------


def gzip_layout(layout: Path, layer: bytes, tar: bytes) -> dict[str, str]:
    """A one-layer image whose layer is the gzip bytes `layer` of `tar`; returns the layer's digest."""
    layout_of_layer(layout, layer, GZIP_LAYER, tar, TAG)
    return {"digest": "sha256:" + hashlib.sha256(layer).hexdigest()}


def small_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("a", b"first file\n" * 1000), ("b", bytes(range(256)) * 400)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def gzip_with_header_fields(data: bytes) -> bytes:
    """gzip with FEXTRA, FNAME and FCOMMENT set (RFC 1952 §2.3): the header is longer than 10 bytes."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    extra = b"AB\x04\x00test"
    header = b"\x1f\x8b\x08\x1c" + bytes(4) + b"\x00\xff" + len(extra).to_bytes(2, "little") + extra
    header += b"layer.tar\x00" + b"a comment\x00"
    return header + body + zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")


def test_gzip_header_fields_are_skipped(tmp_path: Path) -> None:
    tar = small_tar()
    gzip_layout(tmp_path / "src", gzip_with_header_fields(tar), tar)
    assert gzip.decompress(gzip_with_header_fields(tar)) == tar
    done = nydus_py("convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}")
    assert done.returncode == 0, done.stderr
    _, manifest = manifest_of(tmp_path / "out")
    assert oci.NYDUS_REF_ANNOTATION in manifest["layers"][0]["annotations"]
    assert main(["unpack", f"oci:{tmp_path / 'out'}:{TAG}", "-o", str(tmp_path / "files")]) == 0
    assert (tmp_path / "files" / "a").read_bytes() == b"first file\n" * 1000


def test_several_gzip_members_fall_back_to_a_data_blob(tmp_path: Path) -> None:
    """nydusd 2.2 cannot decode a context that crosses a member boundary: such a layer gets an ordinary blob
    and a warning naming it."""
    tar = small_tar()
    layer = gzip.compress(tar[:10240], mtime=0) + gzip.compress(tar[10240:], mtime=0)
    desc = gzip_layout(tmp_path / "src", layer, tar)
    done = nydus_py("convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}")
    assert done.returncode == 0, done.stderr
    assert f"layer {desc['digest']}" in done.stderr and "more than one gzip member" in done.stderr
    _, manifest = manifest_of(tmp_path / "out")
    assert oci.NYDUS_REF_ANNOTATION not in manifest["layers"][0]["annotations"]
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}", "--require-data"]) == 0
    drop_in = subprocess.run(["nydus-py-image", "create", "-t", "targz-ref", "--blob-inline-meta", "--blob",
                              str(tmp_path / "meta"), str(blob_path(tmp_path / "src", desc))],
                             capture_output=True, text=True)
    assert drop_in.returncode != 0 and "more than one gzip member" in drop_in.stderr
    assert not (tmp_path / "meta").exists()


def test_truncated_and_tampered_layers_are_refused(tmp_path: Path) -> None:
    tar = small_tar()
    whole = gzip.compress(tar, mtime=0)
    gzip_layout(tmp_path / "cut", whole[: len(whole) // 2], tar)  # its digest is of the cut bytes
    done = nydus_py("convert", "--oci-ref", f"oci:{tmp_path / 'cut'}:{TAG}", f"oci:{tmp_path / 'out1'}:{TAG}")
    refused(done, "layer sha256:")
    desc = gzip_layout(tmp_path / "tampered", whole, tar)
    layer = blob_path(tmp_path / "tampered", desc)
    layer.write_bytes(gzip.compress(tar.replace(b"first", b"FIRST"), mtime=0))
    done = nydus_py("convert", "--oci-ref", f"oci:{tmp_path / 'tampered'}:{TAG}", f"oci:{tmp_path / 'out2'}:{TAG}")
    refused(done, str(desc["digest"]))
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_a_missing_original_is_named(converted: Path, source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "image"
    shutil.copytree(converted, copy)
    original = source_layers(source)[0]
    blob_path(copy, original).unlink()
    done = nydus_py("check", f"oci:{copy}:{TAG}")
    assert done.returncode == 1 and f"the original layer {original['digest']}" in done.stdout
    refused(nydus_py("copy", f"oci:{copy}:{TAG}", f"oci:{tmp_path / 'copied'}:{TAG}"), original["digest"])
    assert not (tmp_path / "copied").exists()
    refused(nydus_py("unpack", f"oci:{copy}:{TAG}", "-o", str(tmp_path / "files")), str(copy),
            original["digest"].removeprefix("sha256:"), "(the original layer) is not available")


def test_a_nydus_ref_that_is_no_digest_is_named_with_its_image(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "image"
    shutil.copytree(converted, copy)
    _, manifest = manifest_of(copy)
    manifest["layers"][0]["annotations"][oci.NYDUS_REF_ANNOTATION] = "../../etc/passwd"
    set_manifest(copy, json.dumps(manifest).encode())
    done = nydus_py("copy", f"oci:{copy}:{TAG}", f"oci:{tmp_path / 'copied'}:{TAG}")
    refused(done, f"oci:{copy}:{TAG}", "'../../etc/passwd' is not a sha256 digest")
    assert not (tmp_path / "copied").exists()


def test_copy_takes_the_originals(converted: Path, source: Path, tmp_path: Path) -> None:
    assert main(["copy", f"oci:{converted}:{TAG}", f"oci:{tmp_path / 'copied'}:{TAG}"]) == 0
    for original in source_layers(source):
        assert blob_path(tmp_path / "copied", original).exists()
    assert main(["check", f"oci:{tmp_path / 'copied'}:{TAG}", "--require-data"]) == 0


def test_a_meta_blob_whose_context_reads_past_the_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A meta blob (built here by a builder made to lie) whose last context reaches past the end of the gzip
    layer: `check` names the blob and the chunk, `unpack` refuses in one line, nothing is written."""
    tar = small_tar()
    gzip_layout(tmp_path / "src", gzip.compress(tar, mtime=0), tar)
    honest = ZranIndexer.finished

    def lying(self: ZranIndexer) -> list[ZranContext]:
        contexts = honest(self)
        return [*contexts[:-1], replace(contexts[-1], in_len=contexts[-1].in_len + 4096)]

    monkeypatch.setattr(ZranIndexer, "finished", lying)
    assert main(["convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}"]) == 1
    assert "reads past the" in capsys.readouterr().out
    done = nydus_py("unpack", f"oci:{tmp_path / 'out'}:{TAG}", "-o", str(tmp_path / "files"))
    refused(done, "zran context", "reads past the")
    assert not (tmp_path / "files").exists()


def test_a_context_that_does_not_decode_is_refused() -> None:
    tar = small_tar()
    data = gzip.compress(tar, mtime=0)
    whole = ZranContext(in_offset=10, out_offset=0, in_len=len(data) - 18, out_len=len(tar), window=b"", ctx_byte=0,
                        ctx_bits=0)
    assert inflate_context(data[10:-8], whole, "layer x") == tar
    with pytest.raises(FormatError, match="layer x: zran context wants"):  # the layer ended before its stretch
        inflate_context(data[10:-100], whole, "layer x")
    longer = ZranContext(in_offset=10, out_offset=0, in_len=len(data) - 18, out_len=len(tar) + 4096, window=b"",
                         ctx_byte=0, ctx_bits=0)
    with pytest.raises(FormatError, match="layer x: zran context"):
        inflate_context(data[10:-8], longer, "layer x")


def test_a_context_asking_too_much_is_refused() -> None:
    """A stranger's context table cannot make us allocate gigabytes: out_len and in_len are capped."""
    huge = ZranContext(in_offset=10, out_offset=0, in_len=1000, out_len=0xFFFF_FFFF, window=b"", ctx_byte=0,
                       ctx_bits=0)
    with pytest.raises(FormatError, match="over the"):
        decode_contexts(encode_contexts([huge]), 1, "meta")


def test_originals_stay_in_their_registry(tmp_path: Path) -> None:
    """Refused before any request: nothing listens on these ports."""
    done = nydus_py("convert", "--oci-ref", "docker://127.0.0.1:9/a:v1", "docker://127.0.0.2:9/b:v1")
    refused(done, "docker://127.0.0.2:9/b:v1", "must stay in 127.0.0.1:9")
    refused(nydus_py("convert", "--oci-ref", f"oci:{tmp_path}:v1"), "give a TARGET")


def test_oci_ref_needs_sha256(tmp_path: Path) -> None:
    tar = small_tar()
    gzip_layout(tmp_path / "src", gzip.compress(tar), tar)
    done = nydus_py("convert", "--oci-ref", "--digester", "blake3", f"oci:{tmp_path / 'src'}:{TAG}",
                    f"oci:{tmp_path / 'out'}:{TAG}")
    refused(done, "--oci-ref", "sha256")


def random_tar(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("noise")
        info.size = size
        tar.addfile(info, io.BytesIO(random.Random(7).randbytes(size)))
    return out.getvalue()


def test_contexts_covering_the_layer_over_and_over_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each context is capped, and so is their sum: contexts that cover the same stretch hundreds of times (a
    meta blob built here by a lying builder) would make a read inflate the layer hundreds of times."""
    tar = small_tar()
    gzip_layout(tmp_path / "src", gzip.compress(tar, mtime=0), tar)
    honest = ZranIndexer.finished
    monkeypatch.setattr(ZranIndexer, "finished", lambda self: honest(self) + [honest(self)[0]] * 300)
    assert main(["convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    monkeypatch.undo()
    done = nydus_py("unpack", f"oci:{tmp_path / 'out'}:{TAG}", "-o", str(tmp_path / "files"))
    refused(done, "zran contexts inflate", "overlap")
    assert not (tmp_path / "files").exists()


def test_a_layer_of_tiny_deflate_blocks_gets_a_data_blob(tmp_path: Path) -> None:
    """A deflate block boundary costs a window copy: a stream of near-empty blocks (valid gzip) is not indexed
    but converted as a data blob, with a warning; the drop-in, which cannot fall back, refuses it."""
    tar = small_tar()
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    layer = b"".join(deflate.compress(tar[i : i + 4]) + deflate.flush(zlib.Z_SYNC_FLUSH)
                     for i in range(0, len(tar), 4)) + deflate.flush()
    assert gzip.decompress(layer) == tar
    desc = gzip_layout(tmp_path / "src", layer, tar)
    done = nydus_py("convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"layer {desc['digest']}") == 1 and "deflate blocks" in done.stderr
    _, manifest = manifest_of(tmp_path / "out")
    assert oci.NYDUS_REF_ANNOTATION not in manifest["layers"][0]["annotations"]
    drop_in = subprocess.run(["nydus-py-image", "create", "-t", "targz-ref", "--blob-inline-meta", "--blob",
                              str(tmp_path / "meta"), str(blob_path(tmp_path / "src", desc))],
                             capture_output=True, text=True)
    assert drop_in.returncode != 0 and "deflate blocks" in drop_in.stderr
    assert not (tmp_path / "meta").exists()


def test_a_layer_needing_too_many_contexts_gets_a_data_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Contexts keep their 32 KiB windows until the meta blob is written: past MAX_CONTEXTS (lowered here from
    8192, a tar of 16 GiB or more) the layer is converted as a data blob instead."""
    tar = random_tar(5 << 20)  # a context at least every 2 MiB of tar: three of them
    gzip_layout(tmp_path / "src", gzip.compress(tar, compresslevel=1, mtime=0), tar)
    monkeypatch.setattr("nydus_py.blob.zran.MAX_CONTEXTS", 2)
    assert main(["convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    assert "needs over 2 zran contexts" in capsys.readouterr().err
    _, manifest = manifest_of(tmp_path / "out")
    assert oci.NYDUS_REF_ANNOTATION not in manifest["layers"][0]["annotations"]
    assert main(["check", f"oci:{tmp_path / 'out'}:{TAG}", "--require-data"]) == 0


def test_a_chunk_info_header_claiming_more_is_refused_before_inflating(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """s_ci_uncompressed_size is a stranger's: a header that claims more than its entries and contexts need
    (a lying builder pads the chunk info here with 1 MiB of zeros) is refused before anything is inflated."""
    from nydus_py.blob import compress
    from nydus_py.blob.writer import BlobWriter

    tar = small_tar()
    gzip_layout(tmp_path / "src", gzip.compress(tar, mtime=0), tar)
    honest = BlobWriter._write_chunk_info

    def padded(self: BlobWriter, ci_raw: bytes, *args: object, **kwargs: object) -> object:
        return honest(self, ci_raw + bytes(1 << 20), *args, **kwargs)  # type: ignore[arg-type]

    def trusting(self: BlobReader, header: object) -> bytes:  # the build reads its blob back: let it believe
        raw = self.read_at(header.ci_offset, header.ci_compressed_size, "chunk info")  # type: ignore[attr-defined]
        return compress.decompress(raw, header.ci_compressor, header.ci_uncompressed_size)  # type: ignore[attr-defined]

    monkeypatch.setattr(BlobWriter, "_write_chunk_info", padded)
    monkeypatch.setattr(BlobReader, "chunk_info_data", trusting)
    assert main(["convert", "--oci-ref", "-q", f"oci:{tmp_path / 'src'}:{TAG}", f"oci:{tmp_path / 'out'}:{TAG}"]) == 0
    monkeypatch.undo()
    done = nydus_py("unpack", f"oci:{tmp_path / 'out'}:{TAG}", "-o", str(tmp_path / "files"))
    refused(done, "s_ci_uncompressed_size=", "more than its")
    done = nydus_py("check", f"oci:{tmp_path / 'out'}:{TAG}")
    assert done.returncode == 1 and "more than its" in done.stdout, done.stdout + done.stderr


def test_merging_a_meta_blob_keeps_it_under_its_own_digest(converted: Path, source: Path, tmp_path: Path) -> None:
    """`merge` of a zran meta blob: the output's blob file is the meta blob under its own digest; the
    bootstrap names the original layer, which unpack then finds in --blob-dir."""
    _, manifest = manifest_of(converted)
    layer = manifest["layers"][0]
    shutil.copy(blob_path(converted, layer), tmp_path / "meta.blob")
    assert main(["merge", str(tmp_path / "meta.blob"), "-o", str(tmp_path / "merged")]) == 0
    for blob in (tmp_path / "merged" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    original = layer["annotations"][oci.NYDUS_REF_ANNOTATION]
    originals = tmp_path / "originals"
    originals.mkdir()
    shutil.copy(blob_path(converted, {"digest": original}), originals)
    assert main(["unpack", str(tmp_path / "merged"), "--blob-dir", str(originals), "-o", str(tmp_path / "files")]) == 0
    assert main(["check", str(tmp_path / "merged"), "--blob-dir", str(originals), "--require-data"]) == 0
