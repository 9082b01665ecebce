"""nydusd's validate() rules (spec §3-§6): our bootstraps pass them (tests/test_build.py), and the checker
catches each rule broken on purpose, so that passing means something."""

from __future__ import annotations


import pytest

from nydus_py.cli.main import main
from nydus_py.read.validate import validate_tables


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("v")
    (root / "src").mkdir()
    (root / "src" / "file").write_bytes(b"some data" * 1000)
    assert main(["build", str(root / "src"), "-o", str(root / "out")]) == 0
    return (root / "out" / "bootstrap").read_bytes()


def patch(data: bytes, offset: int, value: int, size: int) -> bytes:
    return data[:offset] + value.to_bytes(size, "little") + data[offset + size :]


BLOB = 0x1000  # blob table entry 0 of a one-blob bootstrap
RULES = [
    ("checksum", lambda d: patch(d, 0x404, 1, 4), "checksum"),
    ("compat RAFS_V6", lambda d: patch(d, 0x408, 0, 4), "RAFS_V6"),
    ("blkszbits", lambda d: patch(d, 0x40C, 10, 1), "blkszbits"),
    ("extslots", lambda d: patch(d, 0x40D, 1, 1), "sb_extslots"),
    ("inos", lambda d: patch(d, 0x410, 0, 8), "inos=0"),
    ("meta_blkaddr", lambda d: patch(d, 0x428, 10**6, 4), "meta_blkaddr"),
    ("xattr_blkaddr", lambda d: patch(d, 0x42C, 1, 4), "xattr_blkaddr"),
    ("incompat", lambda d: patch(d, 0x450, 0x4, 4), "feature_incompat"),
    ("u1", lambda d: patch(d, 0x454, 1, 2), "u1"),
    ("devt_slotoff", lambda d: patch(d, 0x458, 12, 2), "devt_slotoff"),
    ("size alignment", lambda d: d + b"\0" * 100, "multiple of the block size"),
    ("two compressors", lambda d: patch(d, 0x480, d[0x480] | 0x1, 1), "compression bit"),
    ("no digester", lambda d: patch(d, 0x480, d[0x480] & ~0x4, 1), "digest bit"),
    ("unknown flag", lambda d: patch(d, 0x480, int.from_bytes(d[0x480:0x488], "little") | 0x400, 8), "unknown bits"),
    ("chunk size", lambda d: patch(d, 0x494, 3000, 4), "s_chunk_size"),
    ("blob table offset", lambda d: patch(d, 0x488, 0x1100, 8), "blob table"),
    ("chunk table size", lambda d: patch(d, 0x4A0, 81, 8), "chunk table"),
    ("device blocks", lambda d: patch(d, 0x580 + 64, 0, 4), "blocks=0"),
    ("device tag", lambda d: patch(d, 0x580 + 60, 0, 4), "tag"),
    ("blob index", lambda d: patch(d, BLOB + 64, 3, 4), "blob_index=3"),
    ("blob chunk size", lambda d: patch(d, BLOB + 68, 0x2000, 4), "chunk_size"),
    ("chunk count", lambda d: patch(d, BLOB + 72, (1 << 24) + 1, 4), "chunk_count"),
    ("compression algo", lambda d: patch(d, BLOB + 76, 9, 4), "compression_algo=9"),
    ("digest algo", lambda d: patch(d, BLOB + 80, 7, 4), "digest_algo=7"),
    ("aligned", lambda d: patch(d, BLOB + 84, int.from_bytes(d[BLOB + 84 : BLOB + 88], "little") & ~1, 4), "ALIGNED"),
    ("zran without v2", lambda d: patch(d, BLOB + 84, int.from_bytes(d[BLOB + 84 : BLOB + 88], "little") | 8, 4),
     "CHUNK_INFO_V2"),
    ("compressed size", lambda d: patch(d, BLOB + 88, 1 << 41, 8), "compressed_size"),
    ("uncompressed size", lambda d: patch(d, BLOB + 96, 1 << 45, 8), "uncompressed_size"),
    ("ci sizes", lambda d: patch(d, BLOB + 120, 10**6, 8), "ci_compressed_size"),
    ("ci entries", lambda d: patch(d, BLOB + 128, 17, 8), "16 * chunk_count"),
]


def test_our_bootstrap_passes(bootstrap: bytes) -> None:
    assert validate_tables(bootstrap) == []


@pytest.mark.parametrize(("name", "mutate", "rule"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_is_enforced(bootstrap: bytes, name: str, mutate, rule: str) -> None:  # type: ignore[no-untyped-def]
    defects = validate_tables(mutate(bootstrap))
    assert any(rule in str(d) for d in defects), defects
