"""Helpers of the hostile-input tests (tests/test_oci_images.py, test_oci_targets.py, test_outdir.py).

Every hostile input runs the real command in a child process under `ulimit -v 3000000` (3 GiB of address
space) and a time limit, and must end with exit 2 and one line naming the input; a target must be left as
it was (a new one absent, an existing one unchanged in bytes and names).
"""

from __future__ import annotations

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
    """A plain OCI image (one uncompressed layer) in a layout; returns the index entry."""
    tar = layer_tar(files or {"etc/hello": b"hello\n"})  # plain tar: a tampered byte keeps it a valid tar
    return layout_of_layer(layout, tar, LAYER_TAR, tar, tag, platform)


def layout_of_layer(layout: Path, blob: bytes, media_type: str, tar: bytes, tag: str = "v1",
                    platform: str = "amd64") -> dict[str, object]:
    """A one-layer OCI image in a layout: the layer is `blob` (of type `media_type`), whose tar is `tar`;
    returns the index entry."""
    layout.mkdir(parents=True, exist_ok=True)
    layer = {"mediaType": media_type, **put(layout, blob)}
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


def tamper(layout: Path) -> None:
    _, manifest = manifest_of(layout)
    layer = blob_path(layout, manifest["layers"][0])
    data = layer.read_bytes()
    assert b"hello\n" in data
    layer.write_bytes(data.replace(b"hello\n", b"evil!\n"))  # same size, same digest named: a valid tar
