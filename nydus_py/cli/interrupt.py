"""How a command process runs: SIGTERM (what `timeout`, systemd, container runtimes and the converter's context
cancel send) unwinds like Ctrl-C, so every command's cleanup (staging directories, temporary files) runs on
both; a command is invoked without click's standalone handling, so interrupts and broken pipes get our one
line and exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def invoke(group: click.Group, args: list[str], prog_name: str) -> Any:
    """Run a command of `group` as click's `main` would, without what its standalone handling adds: a blank
    line on stderr before an interrupt, and a silent exit 1 when a pipe closes (a `check` verdict's status).
    Interrupts, broken pipes and errors reach the caller's handlers as they are."""
    with group.make_context(prog_name, list(args)) as ctx:
        return group.invoke(ctx)


def silence_stdout() -> None:
    """After stdout's reader went away: point it at /dev/null, so that the flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
