"""tools/bench.py works (a tiny run of every corpus); timings are never asserted (benchmarks are not tests)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_bench_smoke_run() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--scale", "0.002", "--runs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    corpora = {row.split("|")[1].strip() for row in rows[1:]}
    assert {"rootfs", "rootfs lz4_block", "node_modules-shaped", "small files", "big file", "tar.gz layer",
            "20 layers (build+merge)",
            "merge of 20 layers"} <= corpora
    assert any("| nydus-py |" in row for row in rows)


def test_bench_service_smoke_run() -> None:
    """The service corpus (redis-server, docker-registry, serve and workers) on a burst of 3 small images."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--corpus", "service",
                           "--service-images", "3", "--scale", "0.002", "--runs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 3 images burst |")]
    assert [row.split("|")[2].strip() for row in rows] == ["serial nydus-py convert", "service, 1 worker(s)",
                                                             "service, 2 worker(s)"]
    assert "overhead per conversion" in done.stderr
