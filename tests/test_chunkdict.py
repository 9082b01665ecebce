"""Chunk dictionaries (`--chunk-dict`, `nydus-py chunkdict`): a build references the chunks a dictionary has
instead of storing them again. nydusd 2.2 and the kernel serve such images equal to their source; nydus-image 2.2
builds with our dictionaries and we build with its; nydus-snapshotter's converter packs and merges with
nydus-py-image and a dictionary; the image carries the dictionary blobs it references; hostile dictionaries end
with exit 2 and nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from nydus_py.format import erofs, parse, rafs
from tests.compare import differences
from tests.conftest import mount_output
from tests.hostile import manifest_of, nydus_py, refused, snapshot
from tests.nydus_stack import inline_bootstrap, need_nydus, nydus_image, nydusd_mount


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three versions of one tree: a base of 12 files (up to 2.5 MiB, several chunks each), then each version
    adds its own files and keeps most of the base."""
    rng = random.Random(26)
    base = {f"usr/lib/f{i}": rng.randbytes(rng.randint(2000, 5 << 19)) for i in range(12)}
    root = tmp_path_factory.mktemp("versions")
    trees = []
    for v in range(3):
        files = {k: d for i, (k, d) in enumerate(base.items()) if i != v}  # each version drops one base file
        files.update({f"app/v{v}-{i}": rng.randbytes(150_000) for i in range(3)})
        trees.append(write_tree(root / f"v{v}", files))
    return trees


@pytest.fixture(scope="module")
def dictionary(versions: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chunkdict` of the images of versions 0 and 1 (layout `dict:v1`), in blobs of at most 8 MiB."""
    work = tmp_path_factory.mktemp("dict")
    for v in (0, 1):
        assert main(["build", str(versions[v]), "-o", str(work / f"v{v}"), "-q"]) == 0
    out = work / "dict"
    assert main(["chunkdict", f"oci:{work / 'v0'}", f"oci:{work / 'v1'}", "-o", f"oci:{out}:v1", "--max-blob-size",
                 "8MiB", "--output-json", str(work / "dict.json")]) == 0
    return out


def test_chunkdict_keeps_the_shared_chunks(dictionary: Path) -> None:
    doc = json.loads((dictionary.parent / "dict.json").read_text())
    # 10 base files are in both versions: their chunks, and none of the version-only files
    assert doc["chunks"] > 10 and len(doc["image"]["layers"]) >= 2  # more than 8 MiB: several blobs
    assert [i["chunks"] for i in doc["images"]] == [doc["chunks"], doc["chunks"]]
    assert main(["check", f"oci:{dictionary}:v1", "--require-data"]) == 0


def test_a_dictionary_shrinks_the_next_version(versions: list[Path], dictionary: Path, tmp_path: Path) -> None:
    plain, deduped = tmp_path / "plain", tmp_path / "deduped"
    assert main(["build", str(versions[2]), "-o", str(plain), "--output-json", str(tmp_path / "p.json"), "-q"]) == 0
    assert main(["build", str(versions[2]), "-o", str(deduped), "--chunk-dict", f"oci:{dictionary}:v1",
                 "--output-json", str(tmp_path / "d.json"), "-q"]) == 0
    without, with_dict = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "pd")
    own = with_dict["layers"][0]["size"]
    assert own < without["layers"][0]["size"] // 5  # the new files only
    assert with_dict["dedup"]["referenced_elsewhere"]["chunks"] > 10
    dict_blobs = [b for b in with_dict["blobs"] if b["chunk_dict"]]
    assert dict_blobs and all(not b["chunk_dict"] for b in with_dict["layers"])
    # the image lists its own blob, then the dictionary's, then the bootstrap; diff_ids follow
    _, manifest = manifest_of(deduped)
    digests = [layer["digest"].removeprefix("sha256:") for layer in manifest["layers"][:-1]]
    assert digests[0] == with_dict["layers"][0]["id"] and set(digests[1:]) == {b["id"] for b in dict_blobs}
    assert all(layer["annotations"].get("io.github.nydus-py.chunk-dict") == "true"
               for layer in manifest["layers"][1:-1])
    assert main(["check", f"oci:{deduped}", "--require-data"]) == 0
    shown = json.loads(nydus_py("inspect", f"oci:{deduped}", "--json").stdout)["blobs"]
    assert {b["id"] for b in shown if b["chunk_dict"]} == {b["id"] for b in dict_blobs}
    with nydusd_mount(deduped / "bootstrap", deduped / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(versions[2], mnt, root_mtime=False) == []
    with mount_output(deduped / "bootstrap", deduped / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(versions[2], mnt, root_mtime=False) == []
    nydus_image("check", "--bootstrap", deduped / "bootstrap")


def test_nydus_image_and_we_use_each_others_dictionaries(versions: list[Path], dictionary: Path,
                                                          tmp_path: Path) -> None:
    """nydus-image 2.2 builds with our dictionary bootstrap; we build with a bootstrap nydus-image made. Both
    results are served; the new blobs of the two builders differ by less than 5%."""
    built_by_them = tmp_path / "nydus-image"
    built_by_them.mkdir()
    nydus_image("create", "-t", "dir-rafs", "--blob-inline-meta", "--features", "blob-toc", "--chunk-dict",
                f"bootstrap={dictionary / 'bootstrap'}", "-D", built_by_them, "-J", tmp_path / "ni.json", versions[2])
    ni_blobs = json.loads((tmp_path / "ni.json").read_text())["blobs"]
    (new,) = [b for b in ni_blobs if not (dictionary / "blobs" / "sha256" / b).exists()]
    blob_dir = tmp_path / "blobs"
    shutil.copytree(dictionary / "blobs" / "sha256", blob_dir)
    shutil.copy(built_by_them / new, blob_dir / new)
    (tmp_path / "boot").mkdir()  # an inline bootstrap names its own blob by the file's name (nydusd's rule)
    boot = inline_bootstrap(built_by_them / new, tmp_path / "boot" / new)
    with nydusd_mount(boot, blob_dir, tmp_path) as mnt:
        assert differences(versions[2], mnt, root_mtime=False, mtime=False) == []
    assert main(["build", str(versions[2]), "-o", str(tmp_path / "ours"), "--chunk-dict", f"oci:{dictionary}:v1",
                 "--output-json", str(tmp_path / "ours.json"), "-q"]) == 0
    our_new = json.loads((tmp_path / "ours.json").read_text())["layers"][0]["size"]
    assert abs(our_new - (built_by_them / new).stat().st_size) < 0.05 * our_new
    # a dictionary nydus-image made (a separate bootstrap, blobs in a directory), used by us
    made = tmp_path / "ni-dict"
    made.mkdir()
    nydus_image("create", "-t", "dir-rafs", "-B", made / "bootstrap", "-D", made, versions[0])
    with_theirs = tmp_path / "with-theirs"
    assert main(["build", str(versions[2]), "-o", str(with_theirs), "--chunk-dict", str(made / "bootstrap"),
                 "--output-json", str(tmp_path / "t.json"), "-q"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["dedup"]["referenced_elsewhere"]["chunks"] > 10
    with nydusd_mount(with_theirs / "bootstrap", with_theirs / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(versions[2], mnt, root_mtime=False) == []


def test_snapshotter_converter_packs_and_merges_with_a_dictionary(versions: list[Path], dictionary: Path,
                                                                 tmp_path: Path) -> None:
    harness = need_nydus("nydus-converter-harness")
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(versions[2], arcname=".")
    blob = tmp_path / "blob"
    ours = shutil.which("nydus-py-image") or ""
    run([harness, "pack", "-builder", ours, "-chunk-dict", dictionary / "bootstrap", "-out", blob, layer])
    blob_dir = tmp_path / "blobs"
    shutil.copytree(dictionary / "blobs" / "sha256", blob_dir)
    shutil.copy(blob, blob_dir / hashlib.sha256(blob.read_bytes()).hexdigest())
    for merger in (need_nydus("nydus-image"), ours):
        out = tmp_path / f"bootstrap-{Path(merger).name}.tar"
        run([harness, "merge", "-builder", merger, "-chunk-dict", dictionary / "bootstrap", "-out", out, blob])
        with tarfile.open(out) as tar:
            member = tar.extractfile("image/image.boot")
            assert member is not None
            boot = tmp_path / f"{Path(merger).name}.boot"
            boot.write_bytes(member.read())
        with nydusd_mount(boot, blob_dir, tmp_path) as mnt:
            assert differences(versions[2], mnt, root_mtime=False, mtime_ns=False) == [], merger


def run(args: list[str | Path]) -> None:
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# --- hostile dictionaries ---------------------------------------------------------------------------------------


def test_a_dictionary_of_another_kind_is_refused(versions: list[Path], dictionary: Path, tmp_path: Path) -> None:
    for option, value, says in [("--chunk-size", "0x40000", "chunk"), ("--digester", "sha256", "digester")]:
        done = nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out"), "--chunk-dict",
                        f"oci:{dictionary}:v1", option, value)
        refused(done, str(dictionary), says)
        assert not (tmp_path / "out").exists()


def test_a_dictionary_blob_missing_or_not_matching_its_id(versions: list[Path], dictionary: Path,
                                                         tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(dictionary / "bootstrap", bare / "bootstrap")  # a bootstrap without its blobs
    done = nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out1"), "--chunk-dict", str(bare / "bootstrap"))
    refused(done, "chunk dictionary blob", "not found")
    copy = tmp_path / "dict"
    shutil.copytree(dictionary, copy)
    _, manifest = manifest_of(copy)
    victim = copy / "blobs" / "sha256" / manifest["layers"][0]["digest"].removeprefix("sha256:")
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    done = nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out2"), "--chunk-dict", f"oci:{copy}:v1")
    refused(done, victim.name)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    existing = tmp_path / "existing"
    assert main(["build", str(versions[0]), "-o", str(existing), "-q"]) == 0
    before = snapshot(existing)
    refused(nydus_py("build", str(versions[2]), "-o", str(existing), "--chunk-dict", f"oci:{copy}:v1"), victim.name)
    assert snapshot(existing) == before


def test_a_malformed_dictionary_or_one_of_too_many_blobs(versions: list[Path], dictionary: Path,
                                                        tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 8192)
    refused(nydus_py("build", str(versions[2]), "-o", str(tmp_path / "o1"), "--chunk-dict", str(junk)), str(junk))
    refused(nydus_py("build", str(versions[2]), "-o", str(tmp_path / "o2"), "--chunk-dict", "lru=x"),
            "invalid chunk dict type")
    crowded = tmp_path / "crowded.boot"
    crowded.write_bytes(with_blob_table_copies(dictionary / "bootstrap", 300))
    refused(nydus_py("build", str(versions[2]), "-o", str(tmp_path / "o3"), "--chunk-dict", str(crowded)),
            str(crowded), "300 blobs")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def with_blob_table_copies(bootstrap: Path, count: int) -> bytes:
    """The bootstrap with its blob table replaced by `count` entries (copies of the first with other ids),
    appended at the end: a dictionary listing more blobs than RAFS v6 allows."""
    data = bytearray(bootstrap.read_bytes())
    ext = parse(rafs.SuperBlockExt, bytes(data), what="ext", offset=rafs.EXT_SUPER_OFFSET)
    first = bytes(data[ext.s_blob_table_offset : ext.s_blob_table_offset + 256])
    table = b"".join(first[:64].replace(first[:8], b"%08x" % i, 1) + first[64:] for i in range(count))
    offset = len(data)
    data += table + bytes(-len(table) % 4096)
    ext.s_blob_table_offset, ext.s_blob_table_size = offset, len(table)
    data[rafs.EXT_SUPER_OFFSET : rafs.EXT_SUPER_OFFSET + rafs.SuperBlockExt.sizeof()] = rafs.SuperBlockExt.build(ext)
    assert erofs.EROFS_SUPER_OFFSET  # the EROFS superblock stays as it was
    return bytes(data)


def with_chunk_entry(bootstrap: Path, **fields: int) -> bytes:
    """The bootstrap with its first chunk table entry's `fields` overwritten."""
    data = bytearray(bootstrap.read_bytes())
    ext = parse(rafs.SuperBlockExt, bytes(data), what="ext", offset=rafs.EXT_SUPER_OFFSET)
    at = ext.s_chunk_table_offset
    entry = parse(rafs.ChunkInfo, bytes(data), what="chunk", offset=at)
    for name, value in fields.items():
        setattr(entry, name, value)
    data[at : at + rafs.ChunkInfo.sizeof()] = rafs.ChunkInfo.build(entry)
    return bytes(data)


@pytest.mark.parametrize("fields, says", [({"blob_index": 200}, "names blob 200"),
                                          ({"uncompressed_offset": 2**64 - 4096}, "is not a chunk of blob"),
                                          ({"compressed_offset": 2**63}, "lies past the data")])
def test_a_dictionary_chunk_outside_its_blob_is_refused(versions: list[Path], dictionary: Path, tmp_path: Path,
                                                        fields: dict[str, int], says: str) -> None:
    """A dictionary's chunk is copied into the bootstraps that use it: one that names no blob of the
    dictionary, or lies outside its blob, is refused when the dictionary is loaded."""
    bad = tmp_path / "bad.boot"
    bad.write_bytes(with_chunk_entry(dictionary / "bootstrap", **fields))
    done = nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out"), "--chunk-dict", str(bad),
                    "--chunk-dict-blob-dir", str(dictionary / "blobs" / "sha256"))
    refused(done, str(bad), says)
    assert not (tmp_path / "out").exists()


def test_a_dictionary_blob_whose_chunks_were_altered_is_refused(versions: list[Path], tmp_path: Path) -> None:
    """A layer blob given as the dictionary is named by its own sha256, so altering its chunk data keeps it
    "valid": every chunk the new image takes from it is read and digest-checked before anything is written."""
    assert main(["build", str(versions[0]), "-o", str(tmp_path / "v0"), "-q"]) == 0
    blob = max((tmp_path / "v0" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    middle = len(data) // 2  # in a base file's chunk (the first are app/v0-*'s, which version 2 lacks)
    data[middle : middle + 100] = bytes(100)
    altered = tmp_path / "altered.blob"
    altered.write_bytes(bytes(data))
    done = nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out"), "--chunk-dict", str(altered))
    refused(done, str(altered), "digest does not match")
    assert not (tmp_path / "out").exists()


def test_a_fifo_as_dictionary_is_refused_at_once(versions: list[Path], tmp_path: Path) -> None:
    fifo = tmp_path / "dict.fifo"
    os.mkfifo(fifo)
    refused(nydus_py("build", str(versions[2]), "-o", str(tmp_path / "out"), "--chunk-dict", str(fifo)),
            str(fifo), "not a regular file")
    drop_in = subprocess.run(["nydus-py-image", "create", "-t", "dir-rafs", "--blob-inline-meta", "--blob",
                              str(tmp_path / "blob"), "--chunk-dict", f"bootstrap={fifo}", str(versions[2])],
                             capture_output=True, text=True, timeout=60)
    assert drop_in.returncode == 1 and "not a regular file" in drop_in.stderr
