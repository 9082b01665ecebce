#!/usr/bin/env python3
"""Mutation fuzzing of the read side: mutated bootstraps and blobs through `check`, `inspect` and everything
`mount` does before mount(2) (the structural pre-check, blob verification and device-image expansion).

Every run must end in exit 0, 1 or 2 (never 3, our bug), with a one-line message on stderr for exit 2,
within a time bound, with bounded memory. Seeds: the real nydus-image vectors (fixtures/nydus/) and a
small image built here. Prints counts; exits 1 listing the failing cases.
Usage: python3 tools/fuzz_read.py [--cases N] [--seed S] [--max-seconds T] [--max-memory-mib M]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nydus_py.cli.main import main  # noqa: E402

FIXTURES = ROOT / "fixtures" / "nydus"


class Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Timeout


def seeds(work: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(name, {file name: bytes}); the first file of each is what `check` and `inspect` are given."""
    out = []
    if (FIXTURES / "rafs-v6-2.2.boot").exists():
        blob = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
        out.append(("v1", {"boot": (FIXTURES / "rafs-v6-2.2.boot").read_bytes(), blob: (FIXTURES / blob).read_bytes()}))
        inline = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
        out.append(("v2", {inline: (FIXTURES / inline).read_bytes()}))
    src = work / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"nydus " * 3000)
    (src / "small").write_bytes(b"x")
    (src / "link").symlink_to("small")
    with contextlib.redirect_stdout(io.StringIO()):
        main(["build", str(src), "-o", str(work / "built"), "--chunk-size", "4KiB"])
    from nydus_py import read_bootstrap

    (info,) = read_bootstrap((work / "built" / "bootstrap").read_bytes()).blobs
    blob = work / "built" / "blobs" / "sha256" / info.blob_id
    out.append(("built", {"boot": (work / "built" / "bootstrap").read_bytes(), blob.name: blob.read_bytes()}))
    out.append(("built-inline", {blob.name: blob.read_bytes()}))
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and buf:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:  # a field set to an extreme, biased to the headers
        at = rng.randrange(min(len(buf), 0x2000) if rng.random() < 0.7 else len(buf)) & ~3
        buf[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x00\x00\x00\x80", b"\x01\x00\x00\x00"])
    elif kind == 2:  # truncate
        del buf[rng.randrange(len(buf) + 1) :]
    elif kind == 3:  # junk appended
        buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
    elif kind == 4 and buf:  # a block zeroed
        at = rng.randrange(len(buf))
        buf[at : at + rng.randint(1, 64)] = bytes(min(len(buf) - at, 64))[: len(buf[at : at + 64])]
    elif buf:  # the tail (tar headers, TOC) damaged
        at = max(0, len(buf) - rng.randint(1, 1100))
        buf[at] ^= 0xFF
    return bytes(buf)


def premount(image: Path, blob_dir: Path) -> int:
    """What `nydus-py mount` does before mount(2), as an exit status: 0 ready to mount, 2 refused, 3 our bug."""
    from nydus_py.read.mount import prepare_devices, require_sound_bootstrap
    from nydus_py.errors import NydusError
    from nydus_py.read.locate import open_image

    try:
        opened = open_image(image, blob_dir)
        require_sound_bootstrap(opened)
        prepare_devices(opened, blob_dir / "cache")
    except NydusError as exc:
        print(f"nydus-py: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 (the fuzzer's job is to find these)
        print(f"nydus-py: internal error: {exc!r}", file=sys.stderr)
        return 3
    return 0


def run_case(files: dict[str, bytes], case_dir: Path, max_seconds: float) -> list[str]:
    """Problems found running check, inspect and mount's preparation on one mutated image."""
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir()
    for name, data in files.items():
        (case_dir / name).write_bytes(data)
    target = str(case_dir / next(iter(files)))
    problems = []
    for command in (["check", target, "--blob-dir", str(case_dir)], ["inspect", target, "--blob-dir", str(case_dir)],
                    ["premount", target, str(case_dir)]):
        err = io.StringIO()
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, max_seconds)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                status = premount(Path(target), case_dir) if command[0] == "premount" else main(command)
        except Timeout:
            status = -1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        message = err.getvalue()
        if status not in (0, 1, 2):
            problems.append(f"{command[0]}: exit {status} after {time.perf_counter() - started:.2f}s: {message.strip()}")
        elif status == 2 and (message.count("\n") != 1 or "Traceback" in message):
            problems.append(f"{command[0]}: exit 2 without a one-line message: {message!r}")
        elif command[0] == "check" and status == 0 and not message == "":
            problems.append(f"check: exit 0 but wrote to stderr: {message!r}")
    return problems


def fuzz(cases: int, seed: int, max_seconds: float, max_memory_mib: int) -> int:
    if max_memory_mib:
        limit = max_memory_mib << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(seed)
    failures = []
    statuses = {"cases": 0}
    with tempfile.TemporaryDirectory(prefix="nydus-py-fuzz-") as tmp:
        work = Path(tmp)
        corpus = seeds(work)
        started = time.perf_counter()
        for i in range(cases):
            name, files = rng.choice(corpus)
            victim = rng.choice(list(files))
            mutated = dict(files)
            mutated[victim] = mutate(files[victim], rng)
            problems = run_case(mutated, work / "case", max_seconds)
            statuses["cases"] += 1
            if problems:
                keep = work.parent / f"nydus-py-fuzz-failure-{seed}-{i}"
                shutil.copytree(work / "case", keep, dirs_exist_ok=True)
                failures.append(f"case {i} ({name}, mutated {victim[:16]}, kept in {keep}): " + "; ".join(problems))
        elapsed = time.perf_counter() - started
    print(f"fuzz_read: {statuses['cases']} cases (seed {seed}) in {elapsed:.1f}s, {len(failures)} failures")
    for failure in failures:
        print(failure)
    return 1 if failures else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--max-seconds", type=float, default=5.0, help="per command")
    parser.add_argument("--max-memory-mib", type=int, default=2048, help="address-space limit (0: none)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    sys.exit(fuzz(args.cases, args.seed, args.max_seconds, args.max_memory_mib))
