"""Converted images run the way users run them: containerd (Debian's 1.6) with nydus-snapshotter as a remote
snapshotter, nydusd in FUSE mode fetching chunks from a registry on demand, runc starting the container.

Installed by tools/install-containerd-stack.sh (containerd-nydus-grpc, our `nydus-py-pull` client that sets the
layer labels remote snapshotters need, the static `fsdigest` tool) and tools/install-nydus-stack.sh (nydusd).
Everything runs in a private mount namespace with a tmpfs on /run and a temporary root, state directory and
sockets, all removed after: the machine's /var/lib/containerd and /run/containerd are never touched.

The image: the umoci image of tests/layers.py (three layers: deletions, an opaque directory, a hardlink, a
symlink) plus a layer with the `fsdigest` binary, a suid file, user xattrs, a fifo, another hardlink group,
owners other than root and a 24 MiB file. It is converted by `nydus-py convert` straight into a local registry,
pulled through a counting proxy of ours and run with `ctr run` (no network: a new, empty network namespace).
`fsdigest` prints a line before it reads anything, then a digest of the container's whole filesystem, which must
equal the digest computed here over `umoci unpack` of the source image.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nydus_py.cli.main import main
from tests.conftest import need_mount, need_tool
from tests.layers import make_umoci_image
from tests.nydus_stack import missing, need_fuse, need_nydus
from tests.test_registry import free_port, registry

TAG = "v1"
NAMESPACE = "nydus-py"
SKIP = ("proc", "sys", "dev", "run")  # mount points containerd's default spec puts in every container
PAYLOAD = 24 << 20
LAZY_FRACTION = 0.25  # bytes served before the first output, at most this share of the image's layer bytes


# --- tools ------------------------------------------------------------------------------------------------------

def need_stack_tool(name: str) -> str:
    """A tool of tools/install-containerd-stack.sh: on PATH, else the newest in the tools cache."""
    return need_nydus(name, installer="tools/install-containerd-stack.sh")


def need_containerd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install containerd runc)")
    return path


# --- the filesystem digest, as tools/containerd/cmd/fsdigest computes it ----------------------------------------

def _esc(data: bytes) -> str:
    return "".join(chr(c) if 0x21 <= c <= 0x7E and c != 0x5C else f"\\x{c:02x}" for c in data)


def fs_digest(root: Path, skip: tuple[str, ...] = SKIP) -> tuple[int, str, list[str]]:
    """(entries, sha256, lines) of the tree below `root`, in fsdigest's format: entries in bytewise order, depth
    first; per entry its path, type, permission bits, owner, size and content digest (files), target (symlinks),
    device numbers, hardlink group (first path of the inode) and xattrs (name=hex, sorted)."""
    lines: list[str] = []
    groups: dict[tuple[int, int], bytes] = {}
    digest = hashlib.sha256()

    def walk(rel: bytes) -> None:
        base = os.path.join(os.fsencode(root), rel) if rel else os.fsencode(root)
        for name in sorted(os.listdir(base)):
            if not rel and os.fsdecode(name) in skip:
                continue
            path = rel + b"/" + name if rel else name
            full = os.path.join(base, name)
            st = os.lstat(full)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                kind, extra = "dir", ""
            elif stat.S_ISREG(mode):
                with open(full, "rb") as f:
                    kind, extra = "reg", f"{st.st_size} {hashlib.file_digest(f, 'sha256').hexdigest()}"
            elif stat.S_ISLNK(mode):
                kind, extra = "lnk", _esc(os.readlink(full))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kind = "chr" if stat.S_ISCHR(mode) else "blk"
                extra = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            elif stat.S_ISFIFO(mode):
                kind, extra = "fifo", ""
            else:
                kind, extra = "sock", ""
            if kind != "dir" and st.st_nlink > 1:
                first = groups.setdefault((st.st_dev, st.st_ino), path)
                extra += " link=" + _esc(first)
            names = sorted(os.listxattr(full, follow_symlinks=False), key=os.fsencode)
            xattrs = ",".join(f"{_esc(os.fsencode(n))}={os.getxattr(full, n, follow_symlinks=False).hex()}"
                              for n in names)
            line = f"{_esc(path)} {kind} {stat.S_IMODE(mode):04o} {st.st_uid}:{st.st_gid} {extra} {xattrs}\n"
            digest.update(line.encode())
            lines.append(line.rstrip("\n"))
            if kind == "dir":
                walk(path)

    walk(b"")
    return len(lines), digest.hexdigest(), lines


# --- a registry behind a proxy that counts the bytes it serves --------------------------------------------------

@dataclass
class Served:
    """Every response body byte the proxy wrote, with the time it was written."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[tuple[float, int, str]] = field(default_factory=list)

    def add(self, nbytes: int, what: str) -> None:
        with self.lock:
            self.log.append((time.monotonic(), nbytes, what))

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def between(self, start: int, until: float = float("inf")) -> tuple[int, int]:
        """(bytes, requests) logged since mark `start` and before time `until`."""
        with self.lock:
            entries = [e for e in self.log[start:] if e[0] < until]
        return sum(e[1] for e in entries), len({e[2] for e in entries})


def counting_proxy(upstream: str, served: Served) -> tuple[http.server.ThreadingHTTPServer, str]:
    up_host, up_port = upstream.split(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                        self.send_header(key, value)
                data_len = resp.getheader("Content-Length")
                if data_len is None and self.command != "HEAD":
                    data = resp.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    served.add(len(data), f"{time.monotonic_ns()} {self.path}")
                    return
                self.end_headers()
                if self.command == "HEAD":
                    return
                tag = f"{time.monotonic_ns()} {self.path}"
                while chunk := resp.read(1 << 16):
                    self.wfile.write(chunk)
                    served.add(len(chunk), tag)
            finally:
                conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


# --- containerd + nydus-snapshotter in a private mount namespace ------------------------------------------------

CONTAINERD_CONFIG = """\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[proxy_plugins.nydus]
  type = "snapshot"
  address = "{d}/nydus/grpc.sock"
"""

SNAPSHOTTER_CONFIG = """\
version = 1
root = "{d}/nydus"
address = "{d}/nydus/grpc.sock"
daemon_mode = "multiple"
cleanup_on_close = true
[system]
enable = false
[daemon]
nydusd_path = "{d}/nydusd"
nydusimage_path = "{nydus_image}"
nydusd_config = "{d}/nydusd-config.json"
fs_driver = "fusedev"
recover_policy = "none"
threads_number = 2
[log]
log_to_stdout = true
level = "info"
[metrics]
address = ""
[remote.mirrors_config]
dir = ""
[snapshot]
enable_nydus_overlayfs = false
sync_remove = true
[cache_manager]
disable = false
gc_period = "24h"
"""

# nydus-snapshotter fills in the registry host and repository from the image reference; prefetch is off so
# that what nydusd fetches is what the container reads
NYDUSD_CONFIG = {
    "device": {
        "backend": {"type": "registry", "config": {"scheme": "http", "timeout": 10, "connect_timeout": 10,
                                                   "retry_limit": 2}},
        "cache": {"type": "blobcache"},
    },
    "mode": "direct",
    "digest_validate": False,  # nydusd 2.2 refuses it for RAFS v6
    "iostats_files": False,
    "enable_xattr": True,
    "fs_prefetch": {"enable": False},
}


@dataclass
class Stack:
    dir: Path
    shell: subprocess.Popen[bytes]
    ctr: str
    pull: str

    def enter(self) -> list[str]:
        """The command prefix that runs a command in the stack's mount namespace."""
        return ["nsenter", f"--mount=/proc/{self.shell.pid}/ns/mnt", "--"]

    def ctr_args(self, *args: str) -> list[str]:
        return [*self.enter(), self.ctr, "--address", f"{self.dir}/containerd.sock", "--namespace", NAMESPACE, *args]

    def logs(self) -> str:
        return "".join(f"--- {name} (tail)\n{(self.dir / name).read_text(errors='replace')[-4000:]}\n"
                       for name in ("containerd.log", "snapshotter.log") if (self.dir / name).exists())


def _namespace_pids(shell_pid: int) -> list[int]:
    """Every process in the mount namespace of `shell_pid` (all started by this test: containerd, the
    snapshotter, nydusd, shims, runc, the container)."""
    try:
        ours = os.readlink(f"/proc/{shell_pid}/ns/mnt")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != shell_pid:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/mnt") == ours:
                    pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    need_mount()
    need_fuse()
    nydusd = need_nydus("nydusd")
    nydus_image_bin = need_nydus("nydus-image")
    containerd = need_containerd_tool("containerd")
    need_containerd_tool("runc")
    need_containerd_tool("containerd-shim-runc-v2")
    ctr = need_containerd_tool("ctr")
    grpc = need_stack_tool("containerd-nydus-grpc")
    pull = need_stack_tool("nydus-py-pull")
    # short: unix socket paths must stay below 108 bytes
    d = Path(tempfile.mkdtemp(prefix="nydus-py-ctd-", dir="/tmp"))
    (d / "nydus").mkdir()
    (d / "containerd.toml").write_text(CONTAINERD_CONFIG.format(d=d))
    (d / "snapshotter.toml").write_text(SNAPSHOTTER_CONFIG.format(d=d, nydus_image=nydus_image_bin))
    (d / "nydusd-config.json").write_text(json.dumps(NYDUSD_CONFIG))
    # nydusd 2.2 raises RLIMIT_NOFILE to 1M by default, which needs CAP_SYS_RESOURCE; the snapshotter has no
    # option for it, so it starts nydusd through this wrapper
    (d / "nydusd").write_text(f'#!/bin/sh\nexec {nydusd} "$@" --rlimit-nofile 0\n')
    (d / "nydusd").chmod(0o755)
    # a tmpfs over /run and /var/lib in the namespace: a default path we missed cannot reach the machine's
    script = (f"set -e; mount -t tmpfs -o mode=0755 nydus-py-run /run; mount -t tmpfs -o mode=0755 nydus-py-lib /var/lib; "
              # v0.6.1's command-line defaults override the config file's root, address and daemon mode
              f"{grpc} --config {d}/snapshotter.toml --root {d}/nydus --address {d}/nydus/grpc.sock "
              f"--daemon-mode multiple --fs-driver fusedev --nydusd-config {d}/nydusd-config.json --log-to-stdout "
              f"> {d}/snapshotter.log 2>&1 & "
              f"{containerd} --config {d}/containerd.toml > {d}/containerd.log 2>&1 & wait")
    # the snapshotter also looks nydusd and nydus-image up on PATH, wherever the tests found them
    path = os.pathsep.join([str(d), os.path.dirname(nydus_image_bin), os.environ.get("PATH", "")])
    shell = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                             start_new_session=True, env={**os.environ, "PATH": path})
    st = Stack(d, shell, ctr, pull)
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(st.ctr_args("plugins", "ls"), capture_output=True, text=True)
            if done.returncode == 0 and any(line.split()[:2] == ["io.containerd.snapshotter.v1", "nydus"]
                                            and line.split()[-1] == "ok" for line in done.stdout.splitlines()):
                break
            if shell.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd with nydus-snapshotter did not start:\n{done.stdout}{done.stderr}"
                            f"{st.logs()}")
            time.sleep(0.2)
        yield st
    finally:
        for pid in _namespace_pids(shell.pid):  # containerd and the snapshotter first: they clean up nydusd
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("containerd", "containerd-nydus"):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _namespace_pids(shell.pid) and time.monotonic() < deadline:
            if all(Path(f"/proc/{p}/comm").read_text().strip() not in ("containerd", "containerd-nydus")
                   for p in _namespace_pids(shell.pid) if Path(f"/proc/{p}").exists()):
                break
            time.sleep(0.1)
        for pid in _namespace_pids(shell.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shell.kill()
        shell.wait()
        # the namespace is gone with its last process, and with it every mount made inside it
        shutil.rmtree(d, ignore_errors=True)


# --- the image --------------------------------------------------------------------------------------------------

def _add_layer(root: Path, umoci: str, fsdigest: str) -> None:
    """A fourth layer: the fsdigest tool, a suid file, user xattrs, a fifo, a hardlink group, other owners and a
    24 MiB file, added to root/image:TAG with `umoci raw add-layer`; root/truth is unpacked again."""
    def info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0, gid: int = 0,
             size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime = kind, mode, uid, gid, size, 1700000000
        return ti

    tool = Path(fsdigest).read_bytes()
    payload = hashlib.shake_256(b"nydus-py payload").digest(PAYLOAD)
    with tarfile.open(root / "layer4.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info("fsdigest", mode=0o755, size=len(tool)), io.BytesIO(tool))
        tar.addfile(info("srv", tarfile.DIRTYPE, 0o2775, 1000, 1000))
        tar.addfile(info("srv/payload.bin", mode=0o640, uid=1000, gid=1000, size=PAYLOAD),
                    io.BytesIO(payload))
        tar.addfile(info("srv/setuid", mode=0o4755, size=12), io.BytesIO(b"#!/bin/true\n"))
        tagged = info("srv/tagged", mode=0o600, uid=1234, gid=5678, size=5)
        tagged.pax_headers = {"SCHILY.xattr.user.origin": "nydus-py"}
        tar.addfile(tagged, io.BytesIO(b"hello"))
        xdir = info("srv/xdir", tarfile.DIRTYPE, 0o1777)
        xdir.pax_headers = {"SCHILY.xattr.user.dir": "yes"}
        tar.addfile(xdir)
        tar.addfile(info("srv/xdir/pipe", tarfile.FIFOTYPE, 0o600))
        tar.addfile(info("srv/xdir/a", mode=0o644, size=4), io.BytesIO(b"same"))
        link = info("srv/xdir/b", tarfile.LNKTYPE)
        link.linkname = "srv/xdir/a"
        tar.addfile(link)
        link2 = info("srv/c", tarfile.LNKTYPE)
        link2.linkname = "srv/xdir/a"
        tar.addfile(link2)
    subprocess.run([umoci, "raw", "add-layer", "--image", f"{root / 'image'}:{TAG}", str(root / "layer4.tar")],
                   check=True, capture_output=True)
    shutil.rmtree(root / "truth")
    subprocess.run([umoci, "unpack", "--image", f"{root / 'image'}:{TAG}", str(root / "truth")], check=True,
                   capture_output=True)


@dataclass
class Images:
    source: Path        # root of make_umoci_image
    truth: Path         # `umoci unpack` of the image
    registry: str       # HOST:PORT of the registry itself
    proxy: str          # HOST:PORT of the counting proxy in front of it
    served: Served


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    need_mount()
    umoci, skopeo = need_tool("umoci"), need_tool("skopeo")
    fsdigest = need_stack_tool("fsdigest")
    root = make_umoci_image(tmp_path_factory.mktemp("ctd-src"), umoci, TAG)
    _add_layer(root, umoci, fsdigest)
    with registry(tmp_path_factory.mktemp("ctd-registry")) as host:
        subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{root / 'image'}:{TAG}",
                        f"docker://{host}/oci:{TAG}"], check=True, capture_output=True)
        assert main(["convert", f"docker://{host}/oci:{TAG}", f"docker://{host}/nydus:{TAG}", "--plain-http"]) == 0
        served = Served()
        server, proxy = counting_proxy(host, served)
        try:
            yield Images(root, root / "truth" / "rootfs", host, proxy, served)
        finally:
            server.shutdown()
            server.server_close()


def layer_bytes(host: str, repo: str) -> tuple[int, list[str]]:
    """Sum of the layer sizes of HOST/REPO:TAG's manifest, and their media types."""
    conn = http.client.HTTPConnection(host, timeout=30)
    accept = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
    conn.request("GET", f"/v2/{repo}/manifests/{TAG}", headers={"Accept": accept})
    manifest = json.loads(conn.getresponse().read())
    conn.close()
    return sum(layer["size"] for layer in manifest["layers"]), [layer["mediaType"] for layer in manifest["layers"]]


@dataclass
class Run:
    pull_s: float
    first_output_s: float   # from `ctr run` to the container's first line
    total_s: float          # from `ctr run` to the container's exit
    bytes_before_first_output: int
    requests_before_first_output: int
    bytes_total: int
    layer_bytes: int
    lines: list[str]


def pull_and_run(stack: Stack, images: Images, repo: str, snapshotter: str) -> Run:
    ref = f"{images.proxy}/{repo}:{TAG}"
    mark = images.served.mark()
    start = time.monotonic()
    done = subprocess.run([*stack.enter(), stack.pull, "--address", f"{stack.dir}/containerd.sock", "--namespace",
                           NAMESPACE, "--snapshotter", snapshotter, "--plain-http", ref],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pull {ref} with {snapshotter}:\n{done.stdout}{done.stderr}{stack.logs()}"
    pulled = time.monotonic()
    name = f"{repo}-{time.monotonic_ns()}"
    args = stack.ctr_args("run", "--rm", "--snapshotter", snapshotter, ref, name,
                          "/fsdigest", "--list", *(a for s in SKIP for a in ("--skip", s)), "/")
    run_start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        first_at = time.monotonic()
        rest = proc.stdout.read()  # not communicate(): it would bypass what readline() buffered
        proc.wait(timeout=300)
        end = time.monotonic()
        err.seek(0)
        assert proc.returncode == 0 and first == b"fsdigest ready\n", (
            f"ctr run {ref} with {snapshotter}: exit {proc.returncode}\n{first!r}\n{rest[-2000:]!r}\n"
            f"{err.read().decode(errors='replace')}{stack.logs()}")
    before, requests = images.served.between(mark, first_at)
    total, _ = images.served.between(mark)
    size, _ = layer_bytes(images.registry, repo)
    return Run(pulled - start, first_at - run_start, end - run_start, before, requests, total, size,
               rest.decode().splitlines())


def report(kind: str, run: Run) -> None:
    mib = 1 << 20
    print(f"\n{kind}: pull {run.pull_s:.2f} s, ctr run -> first output {run.first_output_s:.2f} s "
          f"(pull + run -> first output {run.pull_s + run.first_output_s:.2f} s), "
          f"-> exit {run.total_s:.2f} s; registry served {run.bytes_before_first_output / mib:.2f} MiB in "
          f"{run.requests_before_first_output} responses before the first output "
          f"({run.bytes_before_first_output / run.layer_bytes:.1%} of {run.layer_bytes / mib:.2f} MiB of layers), "
          f"{run.bytes_total / mib:.2f} MiB in all")


def assert_same_tree(run: Run, truth: Path) -> None:
    count, digest, lines = fs_digest(truth)
    listed = [line for line in run.lines if not line.startswith(("entries ", "sha256 "))]
    assert listed == lines, "\n".join(
        [f"- {x}" for x in lines if x not in listed][:20] + [f"+ {x}" for x in listed if x not in lines][:20])
    assert run.lines[-2:] == [f"entries {count}", f"sha256 {digest}"]


# --- the tests --------------------------------------------------------------------------------------------------

def test_source_digest_sees_what_the_image_holds(images: Images) -> None:
    """The digest covers what the test is about: the layer-4 features and the merged view of layers 1-3."""
    _, _, lines = fs_digest(images.truth)
    text = "\n".join(lines)
    assert "srv/setuid reg 4755 0:0" in text and "srv/xdir dir 1777" in text
    assert "user.origin=" + b"nydus-py".hex() in text and "srv/xdir/pipe fifo" in text
    assert "srv/c reg 0644 0:0 4 " in text and "link=srv/c" in text
    assert "app/run-link" in text and "link=app/run-link" in text and "app/sym lnk" in text
    assert "gone" not in text and "app/big" not in text and "data/only" in text and "data/keep" not in text


def test_nydus_image_runs_lazily_through_nydus_snapshotter(stack: Stack, images: Images) -> None:
    size, types = layer_bytes(images.registry, "nydus")
    assert types[:-1] == ["application/vnd.oci.image.layer.nydus.blob.v1"] * (len(types) - 1)
    run = pull_and_run(stack, images, "nydus", "nydus")
    report("nydus image, nydus-snapshotter", run)
    assert_same_tree(run, images.truth)
    # lazy: the container printed before most of the image was fetched; the data came later, on demand
    assert run.bytes_before_first_output < LAZY_FRACTION * run.layer_bytes
    assert run.bytes_total > PAYLOAD
    # nydusd served the container's root: a FUSE mount of the snapshotter's, made in the stack's namespace
    mounts = subprocess.run([*stack.enter(), "cat", "/proc/self/mounts"], capture_output=True, text=True).stdout
    assert any(line.split()[:3:2] == ["rafs", "fuse"] and str(stack.dir) in line for line in mounts.splitlines()), mounts


def test_zran_image_runs_lazily_from_the_original_layers(stack: Stack, images: Images) -> None:
    """`convert --oci-ref` into another repository of the registry: the blob layers are meta blobs, the
    originals are mounted beside them, and nydusd reads the container's files out of the original gzip layers."""
    host = images.registry
    assert main(["convert", "--oci-ref", "-q", f"docker://{host}/oci:{TAG}", f"docker://{host}/zran:{TAG}",
                 "--plain-http"]) == 0
    original_size, _ = layer_bytes(host, "oci")
    size, types = layer_bytes(host, "zran")
    assert types[:-1] == ["application/vnd.oci.image.layer.nydus.blob.v1"] * (len(types) - 1)
    assert size < original_size // 4  # the image adds metadata only
    run = pull_and_run(stack, images, "zran", "nydus")
    report("zran image (--oci-ref), nydus-snapshotter", run)
    assert_same_tree(run, images.truth)
    assert run.bytes_before_first_output < LAZY_FRACTION * original_size
    assert run.bytes_total > PAYLOAD  # the data came from the original layers, on demand


def test_plain_oci_image_runs_through_overlayfs(stack: Stack, images: Images) -> None:
    run = pull_and_run(stack, images, "oci", "overlayfs")
    report("plain OCI image, overlayfs snapshotter", run)
    assert_same_tree(run, images.truth)
    # not lazy: every layer was downloaded before the container started
    assert run.bytes_before_first_output >= run.layer_bytes


def test_an_empty_xattr_value_is_seen_as_containerd_sees_it(stack: Stack, images: Images,
                                                             tmp_path: Path) -> None:
    """A layer whose PAX header holds `SCHILY.xattr.user.empty=` (an xattr with an empty value): containerd's
    layer applier keeps it as an empty xattr (umoci's unpack drops it, so umoci is no judge here), and the Nydus
    image must show what containerd shows for the OCI image."""
    umoci, skopeo = need_tool("umoci"), need_tool("skopeo")
    tool = Path(need_stack_tool("fsdigest")).read_bytes()
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo("fsdigest")
        ti.mode, ti.size = 0o755, len(tool)
        tar.addfile(ti, io.BytesIO(tool))
        ti = tarfile.TarInfo("empty-xattr")
        ti.size, ti.pax_headers = 2, {"SCHILY.xattr.user.empty": "", "SCHILY.xattr.user.full": "x"}
        tar.addfile(ti, io.BytesIO(b"e\n"))
    image = tmp_path / "image"
    for args in (["init", "--layout", str(image)], ["new", "--image", f"{image}:{TAG}"],
                 ["raw", "add-layer", "--image", f"{image}:{TAG}", str(layer)]):
        subprocess.run([umoci, *args], check=True, capture_output=True)
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{image}:{TAG}",
                    f"docker://{images.registry}/empty-oci:{TAG}"], check=True, capture_output=True)
    assert main(["convert", f"docker://{images.registry}/empty-oci:{TAG}",
                 f"docker://{images.registry}/empty-nydus:{TAG}", "--plain-http"]) == 0
    oci = pull_and_run(stack, images, "empty-oci", "overlayfs")
    assert any(line.startswith("empty-xattr ") and "user.empty=,user.full=78" in line for line in oci.lines), oci.lines
    nydus = pull_and_run(stack, images, "empty-nydus", "nydus")
    assert nydus.lines == oci.lines


def test_an_image_built_by_buildkit_with_nydus_py_image_runs_lazily(stack: Stack, images: Images,
                                                                   tmp_path: Path) -> None:
    """The drop-in builder through nydus-snapshotter's converter, as BuildKit runs it: `FROM` the test image (its
    layers re-built as Nydus by nydus-py-image) plus a `COPY`; the container sees what `umoci unpack` of the
    plain OCI export of the same build shows, and starts before most of the image is fetched."""
    from tests.test_buildkit import buildkit_build

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "extra").write_bytes(os.urandom(4 << 20))
    (context / "Dockerfile").write_text(f"FROM {images.registry}/oci:{TAG}\nCOPY extra /srv/extra\n")
    truth = buildkit_build(tmp_path, context, f"{images.registry}/built:{TAG}")
    size, types = layer_bytes(images.registry, "built")
    assert types[:-1] == ["application/vnd.oci.image.layer.nydus.blob.v1"] * (len(types) - 1)
    run = pull_and_run(stack, images, "built", "nydus")
    report("BuildKit image (nydus-py-image), nydus-snapshotter", run)
    assert_same_tree(run, truth)
    assert run.bytes_before_first_output < LAZY_FRACTION * run.layer_bytes
