#!/usr/bin/env python3
"""Benchmark nydus-py against peers on the same input, in the same run, alternating runs.

Peers: `nydus-image create` 2.2 (Rust; same compressor, digester and chunk size, `--blob-inline-meta
--features blob-toc`; found on PATH or where tools/install-nydus-stack.sh puts it), `nydus-image merge` for the
merge corpus, `mkfs.erofs --chunksize=1048576 --blobdev=...` (C, erofs-utils; it does not even compress),
`tar -cf - | gzip -6` (what a plain docker build layer costs), `tar -cf - | zstd -3 -T0`, and for tar.gz
input `zcat | zstd -3 -T0`. Prints medians, nydus-py/peer ratios, peak RSS of each whole process tree and
throughput. Corpora are generated here (no network): a distro-like rootfs, a tree shaped like a real
node_modules (NODE_MODULES_SHAPE), many small files, one big file, a stack of layers; or give a directory, a real
node_modules or a layer tar.gz.

Usage: python3 tools/bench.py [--corpus rootfs,nodemodules,small,bigfile,layers,targz,zran,chunkdict[,service]]
                              [--scale F] [--runs N] [--service-images N]
                              [--source DIR] [--node-modules DIR] [--tar-gz FILE] [--workdir DIR] [--jobs N]
                              [--small-files N] [--big-file-mib N]
"""

from __future__ import annotations

import argparse
import json
import compileall
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
WORDS = ("the quick brown fox jumps over lazy dog nydus rafs erofs chunk blob layer image container runtime "
         "kernel mount overlay snapshot registry manifest config digest compress stream").split()


# --- corpora ---------------------------------------------------------------------------------------------


def _text(rng: random.Random, size: int) -> bytes:
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _elf_like(rng: random.Random, size: int) -> bytes:
    """Code-like data: random segments mixed with repeated tables and zero padding (compresses ~2x)."""
    parts = []
    n = 0
    while n < size:
        kind = rng.random()
        length = rng.randint(512, 16384)
        if kind < 0.45:
            part = rng.randbytes(length)
        elif kind < 0.75:
            unit = rng.randbytes(rng.randint(4, 64))
            part = (unit * (length // len(unit) + 1))[:length]
        elif kind < 0.9:
            part = bytes(length)
        else:
            part = _text(rng, length)
        parts.append(part)
        n += length
    return b"".join(parts)[:size]


def make_rootfs(root: Path, scale: float = 1.0, seed: int = 1) -> Path:
    """A distro-like tree: ~200 MB and ~7k entries at scale 1."""
    rng = random.Random(seed)
    dirs = ["etc", "etc/default", "etc/ssl/certs", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu",
            "usr/lib/python3/dist-packages", "usr/share/doc", "usr/share/locale", "usr/share/man/man1",
            "var/lib/dpkg/info", "var/cache/apt/archives", "opt/app/lib"]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    counts = {"bin": int(300 * scale), "text": int(3600 * scale), "archive": int(40 * scale), "conf": int(2200 * scale)}
    for i in range(counts["bin"]):
        d = rng.choice(["usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "opt/app/lib"])
        (root / d / f"bin{i:05d}").write_bytes(_elf_like(rng, int(rng.lognormvariate(12.3, 0.9)) % (4 << 20) + 4096))
    for i in range(counts["text"]):
        d = root / rng.choice(["usr/share/doc", "usr/share/man/man1", "usr/lib/python3/dist-packages",
                               "usr/share/locale"]) / f"pkg{i % 400:03d}"
        d.mkdir(exist_ok=True)
        (d / f"file{i:05d}.txt").write_bytes(_text(rng, rng.randint(200, 30000)))
    for i in range(counts["archive"]):
        (root / "var/cache/apt/archives" / f"pkg{i:03d}.deb").write_bytes(rng.randbytes(rng.randint(200_000, 2_000_000)))
    for i in range(counts["conf"]):
        d = rng.choice(["etc", "etc/default", "etc/ssl/certs", "var/lib/dpkg/info"])
        (root / d / f"conf{i:05d}").write_bytes(_text(rng, rng.randint(20, 900)))
    return root


# The shape of a real `node_modules`, measured on `npm install typescript eslint webpack @babel/core jest`
# (npm 10, November 2026): 11,529 entries, 131 MB on disk. make_node_modules() reproduces it without network.
NODE_MODULES_SHAPE = {
    "dirs": 1490,
    "symlinks": 25,  # in .bin directories
    "files": 10014,  # 102,233,774 bytes; median 1,132 bytes
    "duplicate_files": 1451,  # same content as another file (nested copies of a package, licenses)
    # (from, to, files): file sizes in bytes, from <= size < to
    "sizes": [(0, 1, 7), (1, 256, 1806), (256, 1024, 2723), (1024, 4096, 3073), (4096, 16384, 1599),
              (16384, 65536, 631), (65536, 262144, 151), (262144, 1 << 20, 17), (1 << 20, 4 << 20, 6),
              (24_101_026, 24_101_027, 1)],
    # entries (directories, files, symlinks) at each depth below node_modules, 1 = its children
    "depths": [249, 1412, 1702, 3703, 1457, 1201, 1703, 102],
}
JS_WORDS = ("function return const let var if else for while module exports require import from export default "
            "this null undefined true false new class extends async await typeof instanceof object string number "
            "=> { } ( ) ; , . = === !== + - * / && || ! ? : [ ] options value result error callback node").split()


def make_node_modules(root: Path, scale: float = 1.0, seed: int = 5) -> Path:
    """A tree shaped like a real node_modules (NODE_MODULES_SHAPE): depth, directory and symlink share, file
    size histogram, duplicate files; contents are JavaScript-like text (compresses like the real thing)."""
    rng = random.Random(seed)
    shape = NODE_MODULES_SHAPE
    pool = " ".join(rng.choice(JS_WORDS) for _ in range(1_200_000)).encode()  # ~4 MB to cut files from
    dir_share = shape["dirs"] / (shape["dirs"] + shape["files"] + shape["symlinks"])
    levels: list[list[Path]] = [[root]]
    root.mkdir(parents=True, exist_ok=True)
    file_parents: list[Path] = []
    for depth, count in enumerate(shape["depths"], start=1):
        count = max(1, round(count * scale))
        dirs = max(1, round(count * dir_share)) if depth < len(shape["depths"]) else 0
        level = []
        for i in range(dirs):
            d = rng.choice(levels[-1]) / (f"@scope{i:03d}" if depth == 1 and i % 9 == 0 else f"pkg-{depth}-{i:04d}")
            d.mkdir()
            level.append(d)
        file_parents += [rng.choice(levels[-1]) for _ in range(count - dirs)]
        levels.append(level)
    sizes = [rng.randint(lo, hi - 1) if hi - lo < 256 else int(2 ** rng.uniform(math.log2(lo), math.log2(hi)))
             for lo, hi, n in shape["sizes"] for _ in range(max(1, round(n * scale)) if n > 1 or scale >= 1 else 0)]
    rng.shuffle(sizes)
    duplicate_share = shape["duplicate_files"] / shape["files"]
    made: list[bytes] = []
    for i, parent in enumerate(file_parents[: len(sizes)]):
        if made and rng.random() < duplicate_share:
            data = rng.choice(made)
        else:
            size = sizes[i]
            data = b""
            while len(data) < size:
                start = rng.randrange(len(pool))
                data += pool[start : start + size - len(data)]
            made.append(data)
        (parent / f"{rng.choice(('index', 'lib', 'util', 'README', 'types'))}-{i:05d}"
                  f"{rng.choice(('.js', '.js', '.ts', '.map', '.json', '.md', '.mjs'))}").write_bytes(data)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    for i in range(max(1, round(shape["symlinks"] * scale))):
        os.symlink(f"../pkg-1-{i:04d}/bin/cli.js", bin_dir / f"tool{i:02d}")
    return root


def make_small_files(root: Path, count: int) -> Path:
    """`count` tiny files, 1000 per directory."""
    for i in range(count):
        d = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i % 1000:03d}").write_bytes(b"%d\n" % i)
    return root


def make_big_file(root: Path, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    with open(root / "big.bin", "wb") as f:
        written = 0
        while written < size:
            block = _elf_like(rng, min(8 << 20, size - written))
            f.write(block)
            written += len(block)
    return root


def make_layers(root: Path, layers: int, entries: int) -> list[Path]:
    out = []
    for k in range(layers):
        layer = root / f"layer{k:02d}"
        for i in range(entries):
            d = layer / f"d{i // 500:03d}"
            if i % 500 == 0:
                d.mkdir(parents=True)
            (d / f"f{(i + k * 7) % entries:05d}").write_bytes(b"layer %d entry %d\n" % (k, i))
        out.append(layer)
    return out


def make_tar_gz(source: Path, out: Path) -> Path:
    subprocess.run(f"tar -C {source} -cf - . | gzip -6 > {out}", shell=True, check=True)
    return out


# --- measuring -------------------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


@dataclass
class Measure:
    seconds: list[float] = field(default_factory=list)
    peak_rss: int = 0


def run_measured(command: str, cwd: Path) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"bench: {command!r} failed: {err.decode(errors='replace')[-500:]}")
    return elapsed, peak


def bench(name: str, commands: dict[str, str], work: Path, runs: int, data_bytes: int, entries: int) -> list[str]:
    """Run each command `runs` times, alternating; return table rows."""
    results = {tool: Measure() for tool in commands}
    for _ in range(runs):
        for tool, command in commands.items():
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            seconds, rss = run_measured(command.format(out=out), work)
            results[tool].seconds.append(seconds)
            results[tool].peak_rss = max(results[tool].peak_rss, rss)
    ours = statistics.median(results["nydus-py"].seconds)
    drop_in = statistics.median(results["nydus-py-image create"].seconds) if "nydus-py-image create" in results else None
    rows = []
    for tool, m in results.items():
        median = statistics.median(m.seconds)
        ratio = ours / median
        drop_in_ratio = f"{drop_in / median:.2f}" if drop_in is not None else "-"
        rate = data_bytes / median / (1 << 20)
        rows.append(f"| {name} | {tool} | {median:.2f} | {ratio:.2f} | {drop_in_ratio} | {m.peak_rss / (1 << 20):.0f} "
                    f"| {rate:.0f} | {entries / median:.0f} |")
    return rows


def extract_inline_bootstrap(blob: Path, out: Path) -> Path:
    from nydus_py.blob.reader import BlobReader

    with BlobReader(blob) as reader:
        out.write_bytes(reader.inline_bootstrap() or b"")
    return out


def tree_size(path: Path) -> tuple[int, int]:
    total = entries = 0
    for p in path.rglob("*"):
        entries += 1
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total, entries


def nydus_image() -> str | None:
    """nydus-image 2.2 on PATH, else where tools/install-nydus-stack.sh installs it."""
    cache = Path(os.environ.get("NYDUS_PY_TOOLS", "/var/cache/nydus-py-tools"))
    found = shutil.which("nydus-image") or next((str(p) for p in sorted(cache.glob("*/bin/nydus-image"))), None)
    return found


def nydus_image_create(source: Path, kind: str = "dir-rafs", compressor: str = "zstd") -> dict[str, str]:
    """The nydus-image peer with nydus-py's defaults (zstd, blake3, 1 MiB chunks, inline meta with a TOC)."""
    tool = nydus_image()
    if tool is None:
        return {}
    return {"nydus-image create": f"{tool} create --log-level warn --fs-version 6 -t {kind} --blob-inline-meta "
                                  f"--features blob-toc --compressor {compressor} --digester blake3 "
                                  f"--chunk-size 0x100000 -D {{out}} {source}"}


def drop_in_create(source: Path, kind: str = "dir-rafs", compressor: str = "zstd", jobs: str = "") -> dict[str, str]:
    """nydus-py's drop-in builder with nydus-image create's arguments: the same job (one blob with its
    bootstrap inline, no OCI image around it), for a like-for-like row."""
    return {"nydus-py-image create": f"{PY} -m nydus_py.cli.nydus_image create --log-level warn --fs-version 6 -t {kind} "
                                     f"--blob-inline-meta --features blob-toc --compressor {compressor} "
                                     f"--digester blake3 --chunk-size 0x100000 -D {{out}} {source}"}


def make_versions(rootfs: Path, work: Path, scale: float) -> list[Path]:
    """Three versions of an image: the rootfs, then the rootfs with a python-shaped tree added, then with an
    application on top (each version keeps what the one before had)."""
    versions = []
    for v, seed in enumerate((None, 11, 12)):
        tree = work / f"version{v}"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(versions[-1] if versions else rootfs, tree, symlinks=True)
        if seed is not None:
            make_node_modules(tree / f"opt/added{v}", scale * 0.5, seed=seed)
        versions.append(tree)
    return versions


def bench_chunk_dict(rootfs: Path, work: Path, runs: int, scale: float) -> list[str]:
    """Bytes a third version stores with a dictionary made from the first two, and what a dictionary of
    ~100k chunks costs a build that finds nothing in it."""
    versions = make_versions(rootfs, work, scale)
    images = []
    for i, tree in enumerate(versions[:2]):
        images.append(f"oci:{work / f'cd-image{i}'}")
        subprocess.run([PY, "-m", "nydus_py.cli", "build", str(tree), "-o", str(work / f"cd-image{i}"), "-q"],
                       check=True, capture_output=True)
    subprocess.run([PY, "-m", "nydus_py.cli", "chunkdict", *images, "-o", f"oci:{work / 'cd-dict'}"], check=True,
                   capture_output=True)
    stored = {}
    for name, extra in (("without", []), ("with", ["--chunk-dict", f"oci:{work / 'cd-dict'}"])):
        out = work / f"cd-v2-{name}"
        subprocess.run([PY, "-m", "nydus_py.cli", "build", str(versions[2]), "-o", str(out), "-q", "--output-json",
                        str(work / f"cd-{name}.json"), *extra], check=True, capture_output=True)
        stored[name] = json.loads((work / f"cd-{name}.json").read_text())["layers"][0]["size"]
    print(f"chunkdict: version 3 stores {stored['with']} bytes with the dictionary of versions 1 and 2, "
          f"{stored['without']} without ({stored['with'] / stored['without']:.1%})", file=sys.stderr)
    small = make_small_files(work / "cd-small", max(1000, int(100_000 * scale)))
    subprocess.run([PY, "-m", "nydus_py.cli", "build", str(small), "-o", str(work / "cd-small-image"), "-q"],
                   check=True, capture_output=True)
    subprocess.run([PY, "-m", "nydus_py.cli", "chunkdict", f"oci:{work / 'cd-small-image'}", "--min-count", "1", "-o",
                    f"oci:{work / 'cd-big-dict'}"], check=True, capture_output=True)
    commands = {"nydus-py": f"{PY} -m nydus_py.cli build {rootfs} -o {{out}}/img --chunk-dict oci:{work / 'cd-big-dict'}",
                "nydus-py without a dictionary": f"{PY} -m nydus_py.cli build {rootfs} -o {{out}}/img"}
    size, entries = tree_size(rootfs)
    return bench("rootfs with an unrelated 100k-chunk dictionary", commands, work, runs, size, entries)


def zran_peers(tgz: Path) -> dict[str, str]:
    """Indexing a gzip layer in place (nydus-py-image and nydus-image `create -t targz-ref`, as nydus-snapshotter
    calls them), against building an ordinary blob from it (the data recompressed)."""
    args = f"create --log-level warn -t targz-ref --blob-inline-meta --features blob-toc --blob {{out}}/meta {tgz}"
    out = {"nydus-py": f"{PY} -m nydus_py.cli.nydus_image {args}"}
    if nydus_image():
        out["nydus-image create"] = f"{nydus_image()} {args}"
    out["nydus-py build (full blob)"] = f"{PY} -m nydus_py.cli build {tgz} -o {{out}}/img"
    return out


def peers(source: Path, jobs: str) -> dict[str, str]:
    build = f"{PY} -m nydus_py.cli build {source} -o {{out}}/img {jobs}"
    out = {"nydus-py": build, **drop_in_create(source), **nydus_image_create(source)}
    if shutil.which("mkfs.erofs"):
        out["mkfs.erofs"] = f"mkfs.erofs --quiet --chunksize=1048576 --blobdev={{out}}/blob {{out}}/img {source}"
    out["tar|gzip -6"] = f"tar -C {source} -cf - . | gzip -6 > {{out}}/l.tar.gz"
    if shutil.which("zstd"):
        out["tar|zstd -3 -T0"] = f"tar -C {source} -cf - . | zstd -q -3 -T0 > {{out}}/l.tar.zst"
    return out


def _tree_peers(source: Path, jobs: str) -> dict[str, str]:
    return {k: v for k, v in peers(source, jobs).items() if k in TREE_TOOLS}


TREE_TOOLS = ("nydus-py", "nydus-py-image create", "nydus-image create", "mkfs.erofs")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="rootfs,nodemodules,small,bigfile,layers,targz,zran,chunkdict")
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size factor (CI smoke: 0.01)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, help="benchmark this directory instead of the generated rootfs")
    parser.add_argument("--tar-gz", type=Path, help="benchmark this layer tar.gz for the targz corpus")
    parser.add_argument("--node-modules", type=Path, help="also benchmark this real node_modules directory")
    parser.add_argument("--small-files", type=int, help="files in the small corpus (default: 1M x scale)")
    parser.add_argument("--big-file-mib", type=int, help="size of the big file (default: 2 GiB x scale)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--jobs", default="", help="e.g. --jobs=1 for nydus-py")
    parser.add_argument("--service-images", type=int, default=20,
                        help="images in the service corpus's burst (--corpus service, not a default)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nydus-py-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    jobs = f"--jobs {args.jobs}" if args.jobs else ""
    env_root = Path(__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = str(env_root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    # as pip does on install: without it (PYTHONDONTWRITEBYTECODE set) every run recompiles the changed modules
    compileall.compile_dir(env_root / "nydus_py", quiet=1)
    rows = ["| corpus | tool | median s | nydus-py / tool | nydus-py-image / tool | peak RSS MiB | MiB/s | entries/s |",
            "|---|---|---|---|---|---|---|---|"]
    corpora = args.corpus.split(",")
    try:
        rootfs = args.source
        if any(c in corpora for c in ("rootfs", "targz", "zran", "chunkdict")):
            if rootfs is None:
                rootfs = make_rootfs(work / "rootfs", args.scale)
        if "rootfs" in corpora:
            size, entries = tree_size(rootfs)
            print(f"rootfs: {size / 1e6:.0f} MB, {entries} entries", file=sys.stderr)
            rows += bench("rootfs", peers(rootfs, jobs), work, args.runs, size, entries)
            lz4 = {"nydus-py": peers(rootfs, jobs)["nydus-py"] + " --compressor lz4_block",
                   **drop_in_create(rootfs, compressor="lz4_block"),
                   **nydus_image_create(rootfs, compressor="lz4_block")}
            if shutil.which("mkfs.erofs"):
                lz4["mkfs.erofs"] = peers(rootfs, jobs)["mkfs.erofs"]
            rows += bench("rootfs lz4_block", lz4, work, args.runs, size, entries)
        if "nodemodules" in corpora:
            tree = make_node_modules(work / "node_modules", args.scale)
            size, entries = tree_size(tree)
            print(f"node_modules-shaped: {size / 1e6:.0f} MB, {entries} entries", file=sys.stderr)
            rows += bench("node_modules-shaped", _tree_peers(tree, jobs), work, args.runs, size, entries)
        if args.node_modules is not None:
            size, entries = tree_size(args.node_modules)
            rows += bench("real node_modules", _tree_peers(args.node_modules, jobs), work, args.runs, size, entries)
        if "small" in corpora:
            small = make_small_files(work / "small", args.small_files or max(1000, int(1_000_000 * args.scale)))
            size, entries = tree_size(small)
            rows += bench("small files", _tree_peers(small, jobs), work, args.runs, size, entries)
        if "bigfile" in corpora:
            big = make_big_file(work / "big", (args.big_file_mib << 20) if args.big_file_mib
                                else max(1 << 20, int((2 << 30) * args.scale)))
            size, entries = tree_size(big)
            rows += bench("big file", peers(big, jobs), work, args.runs, size, entries)
        if "targz" in corpora:
            tgz = args.tar_gz or make_tar_gz(rootfs, work / "layer.tar.gz")
            size = tgz.stat().st_size
            commands = {"nydus-py": f"{PY} -m nydus_py.cli build {tgz} -o {{out}}/img {jobs}",
                        **drop_in_create(tgz, kind="tar-rafs"), **nydus_image_create(tgz, kind="targz-rafs")}
            if shutil.which("zstd"):
                commands["zcat|zstd -3 -T0"] = f"zcat {tgz} | zstd -q -3 -T0 > {{out}}/l.tar.zst"
            rows += bench("tar.gz layer", commands, work, args.runs, size, 0)
        if "zran" in corpora:
            tgz = args.tar_gz or make_tar_gz(rootfs, work / "layer.tar.gz")
            rows += bench("zran (tar.gz referenced in place)", zran_peers(tgz), work, args.runs, tgz.stat().st_size, 0)
            meta = work / "zran-size.meta"
            subprocess.run(zran_peers(tgz)["nydus-py"].format(out=work).replace(f"{work}/meta", str(meta)), shell=True,
                           check=True)
            print(f"zran: the meta blob is {meta.stat().st_size} bytes for a {tgz.stat().st_size}-byte layer "
                  f"({meta.stat().st_size / tgz.stat().st_size:.1%})", file=sys.stderr)
        if "chunkdict" in corpora:
            rows += bench_chunk_dict(rootfs, work, args.runs, args.scale)
        if "service" in corpora:  # a burst of pushes for `serve` + workers (tools/bench_service.py)
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import bench_service

            rows += bench_service.run(work / "service", args.service_images, max(64 << 10, int((8 << 20) * args.scale)))
        if "layers" in corpora:
            layers = make_layers(work / "layers", 20, max(100, int(20_000 * args.scale)))
            commands = {"nydus-py": f"{PY} -m nydus_py.cli build {' '.join(map(str, layers))} -o {{out}}/img {jobs}"}
            rows += bench("20 layers (build+merge)", commands, work, args.runs, 0, 20 * len(list(layers[0].rglob('*'))))
            one = work / "layers-built"
            blobs = []
            for i, layer in enumerate(layers):
                subprocess.run([PY, "-m", "nydus_py.cli", "build", str(layer), "-o", str(one / str(i)),
                                "--output-json", str(one / f"{i}.json")], check=True, capture_output=True)
                import json

                blobs.append(json.loads((one / f"{i}.json").read_text())["layers"][0]["path"])
            commands = {"nydus-py": f"{PY} -m nydus_py.cli merge {' '.join(blobs)} -o {{out}}/m"}
            if nydus_image():  # the same layers' inline bootstraps, named by blob id as the snapshotter names them
                boots = [extract_inline_bootstrap(Path(b), one / Path(b).name) for b in blobs]
                commands["nydus-image merge"] = (f"{nydus_image()} merge --log-level warn --bootstrap {{out}}/m "
                                                 f"{' '.join(map(str, boots))}")
            rows += bench("merge of 20 layers", commands, work, args.runs, 0, 0)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
