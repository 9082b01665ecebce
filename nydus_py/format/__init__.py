"""On-disk structures of RAFS v6 bootstraps and Nydus blobs, declared with construct.

`parse` and `build` are the only places that catch construct's exceptions: they re-raise them as
`FormatError` naming the structure and the file offset (the pyelftools `struct_parse` pattern).
"""

from __future__ import annotations

from typing import Any

from construct import Construct, ConstructError

from nydus_py.errors import FormatError, InternalError


def parse(fmt: Construct, data: bytes | memoryview, *, what: str, offset: int = 0) -> Any:
    """Parse `fmt` from `data[offset:]`; any failure is a FormatError naming `what` and `offset`."""
    size = fmt.sizeof() if _fixed_size(fmt) else None
    if size is not None and offset + size > len(data):
        raise FormatError(f"{what} at {offset:#x}: truncated ({len(data) - offset} of {size} bytes)")
    try:
        return fmt.parse(bytes(data[offset : offset + size]) if size is not None else bytes(data[offset:]))
    except ConstructError as exc:
        raise FormatError(f"{what} at {offset:#x}: {_describe(exc)}") from exc


def build(fmt: Construct, obj: Any, *, what: str) -> bytes:
    """Build `fmt` from `obj`; a failure is our own bug (the values came from our planner)."""
    try:
        data: bytes = fmt.build(obj)
        return data
    except (ConstructError, KeyError, TypeError, ValueError) as exc:
        raise InternalError(f"cannot encode {what}: {exc}") from exc


def _fixed_size(fmt: Construct) -> bool:
    try:
        fmt.sizeof()
    except ConstructError:
        return False
    return True


def _describe(exc: ConstructError) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__
