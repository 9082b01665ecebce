#!/usr/bin/env python3
"""Hypothesis-driven fuzzing of the whole pipeline: generated (and byte-mutated) layer tars go through
build, then check, inspect and unpack of what was built.

A build must end in exit 0 or 2 (a clean one-line error), never 3 (our bug) and never a traceback; an image
it built must pass check (exit 0), inspect and unpack. Findings are printed with the failing input kept on
disk; add each as a case to fixtures/bad_inputs.py.
Usage: python3 tools/fuzz.py [--seconds S] [--examples N] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nydus_py.cli.main import main  # noqa: E402

NAMES = st.sampled_from(["a", "b", "dir", "dir/a", "dir/b", "dir/sub/c", "..", "../x", "a/../b", "/abs", ".wh.a",
                         ".wh..wh..opq", "dir/.wh.a", "dir/.wh..wh..opq", "x" * 300, "long/" * 20 + "f", "",
                         "sym/x", "\u00e9t\u00e9", "nul\x00byte"])
TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                         tarfile.FIFOTYPE, b"V"])
MEMBER = st.tuples(NAMES, TYPES, NAMES, st.binary(max_size=3000), st.integers(-5, 2**34),
                   st.sampled_from([{}, {"SCHILY.xattr.user.k": "v"}, {"SCHILY.xattr.bad.k": "v"},
                                    {"mtime": "-12.5"}, {"SCHILY.xattr.user.big": "v" * 70000}]))


def make_tar(members: list[tuple[str, bytes, str, bytes, int, dict[str, str]]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data, owner, headers in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.uid = info.gid = max(0, min(owner, 2**21 - 1))
            info.pax_headers = dict(headers)
            if owner >= 2**21:
                info.pax_headers["uid"] = str(owner)
            body = data if kind == tarfile.REGTYPE else b""
            info.size = len(body)
            try:
                tar.addfile(info, io.BytesIO(body) if body else None)
            except (ValueError, UnicodeError, tarfile.HeaderError):
                continue  # tarfile itself refuses to write it
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    if rng.random() < 0.2:
        del buf[rng.randrange(len(buf) + 1) :]
    return bytes(buf)


def run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(args)
    return status, err.getvalue()


class Fuzzer:
    def __init__(self, work: Path, deadline: float) -> None:
        self.work = work
        self.deadline = deadline
        self.cases = 0
        self.built = 0
        self.failures: list[str] = []

    def one(self, layers: list[list[tuple]], mutation_seed: int) -> None:
        if time.monotonic() > self.deadline:
            return
        self.cases += 1
        case = self.work / f"case{self.cases}"
        case.mkdir()
        rng = random.Random(mutation_seed)
        paths = []
        for i, members in enumerate(layers):
            data = make_tar(members)
            if rng.random() < 0.3:
                data = mutate(data, rng)
            (case / f"l{i}.tar").write_bytes(data)
            paths.append(str(case / f"l{i}.tar"))
        status, err = run(["build", *paths, "-o", str(case / "out"), "--jobs", "1", "--quiet"])
        problems = []
        if status not in (0, 2) or "Traceback" in err or (status == 2 and err.count("\n") != 1):
            problems.append(f"build: exit {status}: {err.strip()[:300]}")
        elif status == 0:
            self.built += 1
            for command in (["check", str(case / "out")], ["inspect", str(case / "out")],
                            ["unpack", str(case / "out"), "-o", str(case / "unpacked")]):
                status, err = run(command)
                if status != 0:
                    problems.append(f"{command[0]}: exit {status}: {err.strip()[:300]}")
        if problems:
            self.failures.append(f"{case}: " + "; ".join(problems))
        else:
            shutil.rmtree(case)


def fuzz(seconds: float, examples: int, seed_value: int, keep: Path | None = None) -> int:
    """Rounds of 25 hypothesis examples (each round its own seed) until the time or the examples run out."""
    work = keep or Path(tempfile.mkdtemp(prefix="nydus-py-fuzz-"))
    fuzzer = Fuzzer(work, time.monotonic() + seconds)
    started = time.monotonic()
    round_number = 0
    while time.monotonic() < fuzzer.deadline and fuzzer.cases < examples:

        @seed(seed_value + round_number)
        @settings(max_examples=min(25, examples - fuzzer.cases), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(st.lists(MEMBER, max_size=12), min_size=1, max_size=3), st.integers(0, 2**32))
        def property_holds(layers: list[list[tuple]], mutation_seed: int) -> None:
            fuzzer.one(layers, mutation_seed)

        property_holds()
        round_number += 1
    print(f"fuzz: {fuzzer.cases} cases ({fuzzer.built} built) in {time.monotonic() - started:.1f}s, "
          f"{len(fuzzer.failures)} failures (seed {seed_value})")
    for failure in fuzzer.failures:
        print(failure)
    if not fuzzer.failures and keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if fuzzer.failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    sys.exit(fuzz(args.seconds, args.examples, args.seed))
