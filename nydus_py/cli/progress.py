"""The progress bar `nydus-py build` and `convert` draw on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import click


class ProgressBar:
    """Files and bytes done, rate and ETA, redrawn on stderr at most 10 times a second (TTYs only)."""

    def __init__(self, total_bytes: int | None) -> None:
        self.total = total_bytes
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self.drawn = 0.0

    def __call__(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self.draw(now)

    def draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.bytes / elapsed
        line = f"{self.files} files, {self.bytes / (1 << 20):.0f} MiB, {rate / (1 << 20):.0f} MiB/s"
        if self.total:
            done = min(self.bytes / self.total, 1.0)
            eta = (self.total - self.bytes) / rate if rate else 0.0
            bar = "#" * int(done * 20)
            line = f"[{bar:<20}] {done * 100:3.0f}% {line}, ETA {eta:.0f}s"
        click.echo(f"\r{line}\x1b[K", nl=False, err=True)

    def close(self) -> None:
        if self.drawn:
            click.echo("\r\x1b[K", nl=False, err=True)


def progress_bar(quiet: bool, output_json: Path | None, layers: list[str] | None = None) -> ProgressBar | None:
    """A progress bar for long builds on a terminal; never with --quiet, --output-json or no TTY."""
    if quiet or output_json is not None or not sys.stderr.isatty():
        return None
    total = 0
    for layer in layers or []:
        if layer != "-" and os.path.isdir(layer):  # a quick estimate, for the ETA
            for dirpath, _, files in os.walk(layer):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
    return ProgressBar(total or None)
