"""Output stays byte-identical: sha256 of every file `nydus-py build` / `merge` writes for generated trees
(fixed names, modes, owners, mtimes, xattrs, hardlinks, holes), compared with digests stored in
tests/output_digests.json, for several options and for every `--jobs`.

Performance work must not move a byte. The stored digests change only when the format changes on purpose:
regenerate them with `NYDUS_PY_REGEN_DIGESTS=1 python3 -m pytest tests/test_output_digests.py` and say why
in the commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from fixtures.trees import MTIME_NS, fix_times, make_corpus
from nydus_py.cli.main import main
from tests.conftest import need_mount

STORED = Path(__file__).with_name("output_digests.json")
REGEN = os.environ.get("NYDUS_PY_REGEN_DIGESTS") == "1"
OPTIONS = {
    "defaults": [],
    "lz4-sha256-4k": ["--compressor", "lz4_block", "--digester", "sha256", "--chunk-size", "4KiB"],
    "none-16m": ["--compressor", "none", "--chunk-size", "16MiB"],
}


def small_tree(root: Path, count: int = 3000, seed: int = 3) -> Path:
    """Many small files in nested directories, with symlinks, hardlinks, empty files, odd modes and owners:
    the per-entry paths of the walk, the chunker's batches and the layout's tail recycling."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root]
    for i in range(count):
        if i % 37 == 0:
            parent = rng.choice(dirs)
            d = parent / f"dir{i:05d}"
            d.mkdir()
            os.chown(d, rng.randint(0, 3), rng.randint(0, 3))
            dirs.append(d)
        d = rng.choice(dirs)
        roll = rng.random()
        path = d / f"entry-{i:05d}{'-' * (i % 23)}"
        if roll < 0.06:
            os.symlink(f"../target-{i}" * (1 + i % 5), path)
            os.lchown(path, i % 3, i % 5)
            continue
        if roll < 0.09 and i > 0:
            linked = d / f"entry-{i - 1:05d}{'-' * ((i - 1) % 23)}"
            if linked.is_file() and not linked.is_symlink():
                os.link(linked, path)
                continue
        size = int(rng.lognormvariate(7, 2)) if roll > 0.12 else 0
        path.write_bytes(rng.randbytes(min(size, 3 << 20)) if i % 3 else (b"text %d " % i) * (size // 8 + 1))
        os.chmod(path, rng.choice([0o644, 0o755, 0o600, 0o4755, 0o1777, 0o400]))
        os.chown(path, rng.randint(0, 1000), rng.randint(0, 1000))
        if i % 101 == 0:
            os.setxattr(path, b"user.tag", b"value %d" % i)
    fix_times(root)
    return root


def layer_tar(out: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """An OCI layer tar with fixed metadata: (name, data) or (name, None) for a directory."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME_NS // 1_000_000_000
            info.uid = info.gid = 0
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file, by path relative to `out` (directories of the OCI layout included)."""
    found = {}
    for path in sorted(out.rglob("*")):
        if stat.S_ISREG(path.lstat().st_mode):
            found[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_mount()  # owners, devices and trusted.* xattrs need root
    base = tmp_path_factory.mktemp("sources")
    lower = layer_tar(base / "lower.tar", [("etc/", None), ("etc/a", b"a" * 5000), ("etc/b", b"b"), ("keep", b"k")])
    upper = layer_tar(base / "upper.tar", [("etc/", None), ("etc/.wh.a", b""), ("etc/c", b"c" * 70000),
                                           ("new/", None), ("new/x", b"x")])
    (base / "corpus").mkdir()
    return {"corpus": make_corpus(base / "corpus"), "small": small_tree(base / "small"), "lower": lower,
            "upper": upper}


CASES = [
    ("corpus", ["corpus"], "defaults"),
    ("corpus", ["corpus"], "lz4-sha256-4k"),
    ("corpus", ["corpus"], "none-16m"),
    ("small", ["small"], "defaults"),
    ("small", ["small"], "lz4-sha256-4k"),
    ("upper-tar", ["upper"], "defaults"),
    ("layers", ["lower", "upper", "small"], "defaults"),
]


@pytest.mark.parametrize("jobs", ["1", "2", "5"])
@pytest.mark.parametrize(("name", "layers", "options"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_build_digests(sources: dict[str, Path], tmp_path: Path, name: str, layers: list[str], options: str,
                       jobs: str) -> None:
    out = tmp_path / "out"
    assert main(["build", *(str(sources[k]) for k in layers), "-o", str(out), "--jobs", jobs,
                 *OPTIONS[options]]) == 0
    check(f"build {name} {options}", digests(out))


def test_merge_digests(sources: dict[str, Path], tmp_path: Path) -> None:
    """`nydus-py merge` of layer blobs built one by one: the merged bootstrap is fixed too."""
    blobs = []
    for k, layer in enumerate(["lower", "upper", "small"]):
        doc = tmp_path / f"{k}.json"
        assert main(["build", str(sources[layer]), "-o", str(tmp_path / str(k)), "--output-json", str(doc)]) == 0
        blobs.append(json.loads(doc.read_text())["layers"][0]["path"])
    assert main(["merge", *blobs, "-o", str(tmp_path / "merged")]) == 0
    check("merge lower upper small", digests(tmp_path / "merged"))


def check(key: str, found: dict[str, str]) -> None:
    stored = json.loads(STORED.read_text()) if STORED.exists() else {}
    if REGEN:
        stored[key] = found
        STORED.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    assert key in stored, f"no stored digests for {key!r}: regenerate on purpose (NYDUS_PY_REGEN_DIGESTS=1)"
    assert found == stored[key], f"{key}: output bytes changed"


def test_render_refuses_overlapping_records() -> None:
    """The meta area is written in place as it renders; a plan whose records overlap is still an
    InternalError naming both (the check the bytes above rely on)."""
    from nydus_py.bootstrap.layout import plan_layout
    from nydus_py.bootstrap.writer import render_meta_area
    from nydus_py.errors import InternalError
    from nydus_py.format.rafs import CompressAlgo, DigestAlgo
    from nydus_py.model import Entry, FileKind, Inode, Tree, new_directory

    root = new_directory()
    root.entries = [Entry(name=b"a%d" % i, inode=Inode(kind=FileKind.FIFO, mode=stat.S_IFIFO | 0o644)) for i in range(3)]
    plan = plan_layout(Tree(root=root), [], chunk_size=1 << 20, compressor=CompressAlgo.ZSTD,
                       digester=DigestAlgo.BLAKE3)
    plan.inodes[2].offset = plan.inodes[1].offset + 8
    with pytest.raises(InternalError, match=r"inode nid \d+ at 0x[0-9a-f]+ overlaps inode nid \d+"):
        render_meta_area(plan)
