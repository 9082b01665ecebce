"""nydus_py/oci/targets.py: images are written into layouts safely (verified blobs, index.json replaced
atomically and last, symlinks never written through), and a failure leaves the target as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.hostile import (make_layout, nydus_py, refused, snapshot, tamper)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    make_layout(tmp_path / "src")
    return tmp_path / "src"


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
    tamper(src)
    refused(nydus_py("convert", f"oci:{src}:v1", f"oci:{out}:v1"), "does not match")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "out", "src"]


def test_no_staging_is_left_after_a_failed_registry_target(src: Path, tmp_path: Path) -> None:
    tamper(src)
    done = nydus_py("copy", f"oci:{src}:v1", "docker://127.0.0.1:1/x:y", env={"TMPDIR": str(tmp_path)})
    refused(done, "does not match")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
