"""The cyclic garbage collector, paused while an image's objects are made and used.

A build or merge makes a few objects per entry (trees, plans, chunk lists) that all live to its end and
make no reference cycles (layout plans keep "." and ".." as nids), so reference counting frees them. Every
collection would only rescan them: ~20% of a 100k-file build while it grows, and 0.2 s more if the collector
runs again before they are freed (the image is packaged meanwhile). So builds and merges pause it, and each
command pauses it for its whole run; cycles made meanwhile are collected once it is on again.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, if it is enabled; enable it again after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def without_cyclic_gc(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """`function` run inside `cyclic_gc_paused()`."""

    @functools.wraps(function)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with cyclic_gc_paused():
            return function(*args, **kwargs)

    return paused
