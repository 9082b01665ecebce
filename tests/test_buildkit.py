"""BuildKit exports Nydus images with nydus-py as its builder: buildkitd (built with the `nydus` tag by
tools/install-nydus-stack.sh) runs as root with the OCI worker and Debian's runc, `NYDUS_BUILDER=nydus-py-image`;
`buildctl build` of a small Dockerfile pushes `compression=nydus` to a local registry and, from the same build, a
plain OCI archive. The Nydus image must pass `nydus-py check`, and nydusd and the kernel must serve it equal to
`umoci unpack` of the plain one. buildkitd runs in a private mount namespace with a tmpfs on /run."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from nydus_py.cli.main import main
from tests.compare import differences
from tests.conftest import need_mount, need_tool
from tests.nydus_stack import need_nydus, nydusd_mount
from tests.test_registry import registry

DOCKERFILE = """\
FROM {base}
RUN mkdir -p /app/d /app/gone && echo one > /app/a && echo x > /app/gone/f && echo old > /app/d/old \\
 && ln /app/a /app/hard && ln -s a /app/link && echo s > /app/suid && chmod 4755 /app/suid
RUN rm -r /app/gone && echo two >> /app/a && rm -r /app/d && mkdir /app/d && echo new > /app/d/c
"""

DRIVER = """\
set -e
mount -t tmpfs tmpfs /run
{buildkitd} --root {work}/root --addr unix://{work}/buildkitd.sock --oci-worker=true --containerd-worker=false \\
    > {work}/buildkitd.log 2>&1 &
daemon=$!
for i in $(seq 100); do [ -S {work}/buildkitd.sock ] && break; sleep 0.1; done
status=0
{buildctl} --addr unix://{work}/buildkitd.sock build --frontend dockerfile.v0 --local context={context} \\
    --local dockerfile={context} \\
    --output type=image,name={target},compression=nydus,force-compression=true,oci-mediatypes=true,push=true,registry.insecure=true \\
    --output type=oci,dest={work}/plain.tar,name=plain,compression=gzip,force-compression=true \\
    > {work}/buildctl.log 2>&1 || status=$?
kill $daemon
wait $daemon || true
exit $status
"""


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True)


def base_image(work: Path, host: str) -> str:
    """A base image holding a static busybox, made by umoci and pushed with skopeo."""
    umoci, skopeo = need_tool("umoci"), need_tool("skopeo")
    busybox = need_tool("busybox")
    layout = work / "base"
    run(umoci, "init", "--layout", layout)
    run(umoci, "new", "--image", f"{layout}:base")
    run(umoci, "unpack", "--image", f"{layout}:base", work / "bundle")
    bin_dir = work / "bundle" / "rootfs" / "bin"
    bin_dir.mkdir()
    shutil.copy(busybox, bin_dir / "busybox")
    for applet in ("sh", "mkdir", "echo", "ln", "chmod", "rm"):
        (bin_dir / applet).symlink_to("busybox")
    run(umoci, "repack", "--image", f"{layout}:base", work / "bundle")
    run(umoci, "config", "--image", f"{layout}:base", "--config.cmd=/bin/sh")
    run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{host}/base:latest")
    return f"{host}/base:latest"


def buildkit_build(work: Path, context: Path, target: str) -> Path:
    """Build `context`'s Dockerfile with buildkitd (NYDUS_BUILDER=nydus-py-image): push the Nydus image to
    `target` and write the same build as a plain OCI archive; returns the plain one's `umoci unpack`ed rootfs."""
    buildkitd, buildctl = need_nydus("buildkitd"), need_nydus("buildctl")
    builder = shutil.which("nydus-py-image")
    assert builder is not None, "nydus-py-image is not installed (pip install -e .)"
    script = DRIVER.format(buildkitd=buildkitd, buildctl=buildctl, work=work, context=context, target=target)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NYDUS_BUILDER": builder},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (work / "buildctl.log").read_text()[-3000:]
    plain = work / "plain"
    plain.mkdir()
    with tarfile.open(work / "plain.tar") as tar:
        tar.extractall(plain)
    index = json.loads((plain / "index.json").read_text())
    ref = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name", "plain")
    run(need_tool("umoci"), "unpack", "--image", f"{plain}:{ref}", work / "truth")
    return work / "truth" / "rootfs"


def test_buildkit_exports_nydus_with_nydus_py_image(tmp_path: Path) -> None:
    need_mount()
    with registry(tmp_path / "registry") as host:
        (tmp_path / "ctx").mkdir()
        (tmp_path / "ctx" / "Dockerfile").write_text(DOCKERFILE.format(base=base_image(tmp_path, host)))
        target = f"{host}/app:nydus"
        truth = buildkit_build(tmp_path, tmp_path / "ctx", target)
        layout = tmp_path / "pulled"
        assert main(["copy", f"docker://{target}", f"oci:{layout}:nydus", "--plain-http"]) == 0
    assert main(["check", f"oci:{layout}:nydus"]) == 0

    assert (truth / "app" / "d" / "c").read_text() == "new\n" and not (truth / "app" / "gone").exists()

    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_text())
    with tarfile.open(layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]) as tar:
        boot = tar.extractfile("image/image.boot")
        assert boot is not None
        (tmp_path / "image.boot").write_bytes(boot.read())
    # the layer blobs were written by nydus-py-image, not by a nydus-image that happened to be around: ours set the
    # ENCRYPTION_NONE superblock flag, which nydus-image 2.2 does not
    from nydus_py.blob.reader import BlobReader
    from nydus_py.bootstrap.reader import read_bootstrap
    from nydus_py.format.rafs import SuperFlags

    for layer in manifest["layers"][:-1]:
        with BlobReader(layout / "blobs" / "sha256" / layer["digest"][7:]) as blob:
            inline = blob.inline_bootstrap()
        assert inline is not None and read_bootstrap(inline).flags & SuperFlags.ENCRYPTION_NONE
    # BuildKit's upper layers carry a root entry dated 0, which umoci applies and merges keep from the lower
    # layer; containerd's applier ignores root entries (`resolved to root`), so the root's time is no contract
    with nydusd_mount(tmp_path / "image.boot", layout / "blobs" / "sha256", tmp_path) as mnt:
        assert differences(truth, mnt, root_mtime=False) == []
    mnt = tmp_path / "kernel"
    mnt.mkdir()
    assert main(["mount", f"oci:{layout}:nydus", str(mnt), "--cache-dir", str(tmp_path / "cache")]) == 0
    try:
        assert differences(truth, mnt, root_mtime=False) == []
    finally:
        assert main(["umount", str(mnt)]) == 0
